"""Tiny reference models (from the `recurrentgemma` package itself) and comparison helpers for the tests.

Every parameter is perturbed with noise so that zero-initialised biases and norm scales are not zero: a mistake
in any of them then shows in the logits.
"""

import dataclasses

import torch
from recurrentgemma import common
from recurrentgemma.torch import griffin as ref_griffin

from hf_recurrentgemma import GriffinConfig
from hf_recurrentgemma.convert import griffin_from_reference

# The reference's own JAX-vs-torch difference is ~7e-6; the smallest real bug seen moved logits by 7.7e-4.
LOGIT_TOL = 5e-5

R, A = common.TemporalBlockType.RECURRENT, common.TemporalBlockType.ATTENTION


@dataclasses.dataclass(frozen=True)
class Case:
    """One tiny architecture under test."""

    name: str
    block_types: tuple
    width: int = 32
    mlp_width: int = 48
    num_heads: int = 4
    lru_width: int | None = None
    window: int = 6
    soft_cap: float = 30.0
    scale_embeddings: bool = True
    vocab_size: int = 97

    def reference_config(self) -> common.GriffinConfig:
        return common.GriffinConfig(
            vocab_size=self.vocab_size, width=self.width, mlp_expanded_width=self.mlp_width,
            num_heads=self.num_heads, block_types=self.block_types, lru_width=self.lru_width,
            embeddings_scale_by_sqrt_dim=self.scale_embeddings, attention_window_size=self.window,
            logits_soft_cap=self.soft_cap,
        )

    def uninferable(self) -> dict:
        return dict(embeddings_scale_by_sqrt_dim=self.scale_embeddings, attention_window_size=self.window,
                    logits_soft_cap=self.soft_cap)


CASES = [
    Case("griffin", (R, R, A, R, R, A)),
    Case("griffin-lru48-window3", (R, A, R, A), lru_width=48, window=3),
    Case("hawk", (R, R, R), soft_cap=0.0, scale_embeddings=False),
]
CASE_IDS = [c.name for c in CASES]


def reference_model(case: Case, seed: int = 0) -> ref_griffin.Griffin:
    """A reference torch Griffin in float32 with every parameter perturbed."""
    torch.manual_seed(seed)
    model = ref_griffin.Griffin(case.reference_config(), gradient_checkpointing=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def reference_and_ours(case: Case, seed: int = 0):
    ref = reference_model(case, seed)
    ours = griffin_from_reference(ref.state_dict(), **case.uninferable())
    return ref, ours


def our_config(case: Case, **overrides) -> GriffinConfig:
    return GriffinConfig(
        vocab_size=case.vocab_size, hidden_size=case.width, intermediate_size=case.mlp_width,
        num_attention_heads=case.num_heads, lru_width=case.lru_width,
        block_types=["recurrent" if t == R else "attention" for t in case.block_types],
        **case.uninferable(), **overrides,
    )


@torch.no_grad()
def reference_logits(ref, tokens: torch.Tensor, segment_pos: torch.Tensor) -> torch.Tensor:
    logits, _ = ref(tokens, segment_pos, return_cache=False)
    return logits


def document_positions(length: int, starts) -> torch.Tensor:
    """(length,) position of each token in its document; a document starts at 0 and at each index in `starts`."""
    positions, pos = [], 0
    for t in range(length):
        pos = 0 if t == 0 or t in starts else pos + 1
        positions.append(pos)
    return torch.tensor(positions)


@torch.no_grad()
def prefill_then_decode(model, tokens: torch.Tensor, positions: torch.Tensor | None, prefill: int) -> torch.Tensor:
    """Logits of `tokens` computed by one cached forward over the first `prefill` tokens, then one token at a time.
    With `positions=None` the model derives positions itself (from the cache while decoding)."""

    def at(part):
        return None if positions is None else positions[:, part]

    out = model(tokens[:, :prefill], position_ids=at(slice(None, prefill)), use_cache=True)
    logits, cache = [out.logits], out.cache
    for t in range(prefill, tokens.shape[1]):
        out = model(tokens[:, t : t + 1], position_ids=at(slice(t, t + 1)), cache=cache, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = LOGIT_TOL, what: str = "logits"):
    """Asserts and reports the size of the error, not just pass/fail."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = max_error(actual, expected)
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.1g}"
    return err

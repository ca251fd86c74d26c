"""The helpers every test module shares: tiny reference models (from the `recurrentgemma` package itself),
comparison helpers, and checkpoints written by the reference package for the conversion tests.

Every parameter is perturbed with noise so that zero-initialised biases and norm scales are not zero: a mistake
in any of them then shows in the logits. (On the pytest path through `pythonpath` in pyproject.toml.)
"""

import contextlib
import dataclasses
import io
import os
from pathlib import Path

import torch
from recurrentgemma import common
from recurrentgemma.torch import griffin as ref_griffin
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_recurrentgemma import GriffinConfig
from hf_recurrentgemma.convert import griffin_from_reference

# The reference's own JAX-vs-torch difference is ~7e-6; the smallest real bug seen moved logits by 7.7e-4.
LOGIT_TOL = 5e-5

# Tolerance policy (docs/reliability.md, "Tolerances"). Exact equality only where both sides run the same kernels
# on the same shapes, data layout and thread count by construction (the same call twice, a split scan against one
# scan, our kernels built without contraction against their reference). Two float32 computations of the same
# function that may run different kernels -- a GEMM over 24 rows against 2 rows, a GEMV against a GEMM, another
# intra-op thread count, weights at another address (a BLAS peels unaligned rows differently), torch's AVX2 kernels
# against its AVX-512 ones -- differ by summation order only, which is what the reference's JAX-vs-torch difference
# is too: they share its bound. Seen within it: 1.16e-5 (AVX2, decode steps against one forward), 1.5e-6 (AVX2,
# offloaded weights). States (RG-LRU h, conv tails, keys) compared after such a run are held to it too.
KERNEL_TOL = LOGIT_TOL

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


def prompt_ids(length: int, seed: int) -> torch.Tensor:
    """(1, length) random token ids of the tiny test vocabulary (97), above the special ids 0-3."""
    return torch.randint(4, 97, (1, length), generator=torch.Generator().manual_seed(seed))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float = LOGIT_TOL, what: str = "logits"):
    """Asserts and reports the size of the error, not just pass/fail."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = max_error(actual, expected)
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.1g}"
    return err


# --- conversion -------------------------------------------------------------------------------------------------------

# The files a folder of ours holds: its config, weights and model code, nothing else (no loader code).
MODEL_CODE = {"configuration_griffin.py", "modeling_griffin.py", "layers_griffin.py", "cache_griffin.py",
              "ops_griffin.py", "kernel_build_griffin.py", "cpu_scan_griffin.py", "cpu_matvec_griffin.py",
              "cpu_quant_griffin.py", "cpu_quant_digits_griffin.py", "cpu_widen_griffin.py", "scan_triton_griffin.py",
              "scan_autograd_griffin.py", "validation_griffin.py", "load_checks_griffin.py", "compat_griffin.py"}
SAVED_FILES = {"config.json", "generation_config.json", "model.safetensors"} | MODEL_CODE


def convert(src, out, case: Case | None = None, **kwargs):
    """`convert_checkpoint(src, out)` with the case's three uninferable hyperparameters as overrides."""
    from hf_recurrentgemma.convert import convert_checkpoint

    overrides = case.uninferable() if case is not None else None
    return convert_checkpoint(src, out, overrides=kwargs.pop("overrides", overrides), **kwargs)


def run_cli(*args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `hf-recurrentgemma ARGS`, run in this process."""
    from hf_recurrentgemma.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def hyper_flags(case) -> list[str]:
    """The three hyperparameters the weights cannot tell, as flags."""
    return ["--embeddings-scale-by-sqrt-dim", str(case.scale_embeddings).lower(),
            "--attention-window-size", str(case.window), "--logits-soft-cap", str(case.soft_cap)]


def save_torch_checkpoint(case, path: Path, dtype=torch.float32, seed: int = 0):
    """The reference torch model's state dict, as the PyTorch release stores it. Returns the model (float32)."""
    ref = reference_model(case, seed)
    torch.save({k: v.to(dtype) for k, v in ref.state_dict().items()}, path)
    return ref


def flax_params(ref, dtype=None) -> dict:
    """The reference model's parameters as the JAX release holds them, made by the reference's own converter."""
    import jax.numpy as jnp
    from recurrentgemma import conversion

    params = conversion.pytorch_state_dict_to_flax_params({"params." + k: v for k, v in ref.state_dict().items()})
    params = params["params"]
    if dtype is not None:
        import jax

        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=dtype), params)
    return params


def save_orbax_checkpoint(case, path: Path, dtype=None, seed: int = 0):
    """An Orbax checkpoint written by `recurrentgemma.jax.utils.save_parameters`. Returns the torch reference."""
    from recurrentgemma.jax import utils

    ref = reference_model(case, seed)
    utils.save_parameters(str(path), flax_params(ref, dtype))
    return ref


def random_tokens(case, length: int = 20, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, case.vocab_size, (2, length), generator=generator)
    return tokens, torch.arange(length).expand(2, length)


def assert_folder_matches_reference(folder: Path, ref, case, tol: float = LOGIT_TOL) -> float:
    """Logits of the converted folder (float32) against the reference torch model, longer than the window."""
    from hf_recurrentgemma import GriffinForCausalLM

    model = GriffinForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokens, positions = random_tokens(case)
    with torch.no_grad():
        ours = model(input_ids=tokens, position_ids=positions, use_cache=False).logits
    return assert_close(ours, reference_logits(ref, tokens, positions), tol)


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(Path(folder) / name, framework="pt") as f:
                tensors.update({k: f.get_tensor(k) for k in f.keys()})
    return tensors


def assert_nothing_left(out: Path) -> None:
    """No OUT and no staging folder beside it."""
    assert not out.exists(), f"{out} was left behind"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, f"staging leftovers: {leftovers}"


def assert_one_line_error(status: int, stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, f"exit status {status}, stderr: {stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not a one-line error: {stderr!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


# A tokenizer for tests that need text in and out of a random-weight model (no SentencePiece training needed).
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's ids 0..3
WORDS = (
    "the a an of to in and or is was be it that this on for with as by at from griffin hawk gemma recurrent "
    "attention local window state memory token sequence model layer gate linear scan long short fast slow "
    "river stone light night day sun moon tree wind rain sea ship road city house door book word song time "
    "one two three four five six seven eight nine ten red blue green white black old new small large"
).split()


LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]


def word_tokenizer():
    """A WordPiece `PreTrainedTokenizerFast` over a small built-in vocabulary (whole words, plus letters so that
    any lowercase word can be spelled), with Gemma's special-token ids."""
    pieces = SPECIAL_TOKENS + WORDS + [c for c in LETTERS if c not in WORDS] + ["##" + c for c in LETTERS]
    vocab = {token: i for i, token in enumerate(pieces)}
    backend = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces and pieces without
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        padding_side="left",
    )

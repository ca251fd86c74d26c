"""`--verify`: run a few tokens through the converted folder and through the source, compare the logits.

The source runs in Google DeepMind's reference torch model (`recurrentgemma.torch.Griffin`) when the package is
installed, else in our model built in memory from the source tensors (that still checks the written files). Both
run in float32. The source weights are first rounded to the stored dtype, so that the comparison measures the
conversion, not the precision chosen with `--dtype`: a bfloat16 folder from a float32 source is held to the same
5e-5 bound (the rounding itself changes logits by far more; it is a choice, not an error).

Memory: the source and the converted model are both held in float32 (about 8 bytes per parameter).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from ..griffin.configuration_griffin import ATTENTION, GriffinConfig

TOLERANCE = 5e-5  # float32; the reference's own JAX-vs-torch difference is ~7e-6


@dataclass
class Verification:
    max_diff: float
    tolerance: float
    against: str  # what the converted model was compared with

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance

    def summary(self) -> str:
        return (f"max |logit diff| = {self.max_diff:.3g} against {self.against} "
                f"(tolerance {self.tolerance:g}): {'OK' if self.ok else 'FAILED'}")


def _reference_model(config: GriffinConfig, state: dict[str, torch.Tensor]):
    from recurrentgemma import common
    from recurrentgemma.torch import griffin

    block_types = tuple(common.TemporalBlockType.ATTENTION if t == ATTENTION
                        else common.TemporalBlockType.RECURRENT for t in config.block_types)
    ref_config = common.GriffinConfig(
        vocab_size=config.vocab_size, width=config.hidden_size, mlp_expanded_width=config.intermediate_size,
        num_heads=config.num_attention_heads, block_types=block_types, lru_width=config.lru_width,
        embeddings_scale_by_sqrt_dim=config.embeddings_scale_by_sqrt_dim,
        attention_window_size=config.attention_window_size, logits_soft_cap=config.logits_soft_cap,
    )
    model = griffin.Griffin(ref_config, gradient_checkpointing=False, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _have_reference() -> bool:
    try:
        import recurrentgemma.torch  # noqa: F401
    except ImportError:
        return False
    return True


def _load_quietly(folder: Path, allow_nonfinite: bool):
    """The converted folder in float32, without Transformers' loading bar (the conversion shows its own progress,
    and `--quiet` means quiet) and, with `allow_nonfinite`, without repeating the conversion's warning."""
    import warnings

    from transformers.utils import logging as hf_logging

    from ..griffin.modeling_griffin import GriffinForCausalLM

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*NaN or infinite values")
            return GriffinForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                      nonfinite="warn" if allow_nonfinite else "error").eval()
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


@torch.no_grad()
def verify_folder(folder: Path, source, config: GriffinConfig, dtype: torch.dtype, num_tokens: int = 12,
                  tolerance: float = TOLERANCE, seed: int = 0, allow_nonfinite: bool = False) -> Verification:
    """Compares the logits of the converted `folder` with those of `source` on `num_tokens` random tokens.
    `allow_nonfinite`: the folder may hold NaN or infinite values (the conversion warned about them); it is loaded
    anyway, and logits they make non-finite fail the comparison."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size, (1, num_tokens), generator=generator)
    positions = torch.arange(num_tokens)[None]
    state = {k: v.to(dtype).float() for k, v in source.reference_state(config).items()}  # rounded as stored
    if _have_reference():
        reference = _reference_model(config, state)
        expected, _ = reference(tokens, positions, return_cache=False)
        against = "the reference (recurrentgemma.torch)"
    else:
        from .reference import griffin_from_reference

        reference = griffin_from_reference(state, config=config, dtype=torch.float32)
        expected = reference(input_ids=tokens, position_ids=positions, use_cache=False).logits
        against = "the source loaded in memory (recurrentgemma not installed)"
    del reference, state
    converted = _load_quietly(folder, allow_nonfinite)
    logits = converted(input_ids=tokens, position_ids=positions, use_cache=False).logits
    max_diff = (logits.float() - expected.float()).abs().max().item()
    return Verification(max_diff=max_diff, tolerance=tolerance, against=against)


__all__ = ["verify_folder", "Verification", "TOLERANCE"]

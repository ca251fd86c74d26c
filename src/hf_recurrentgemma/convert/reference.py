"""Build our model from the reference's parameters: a Flax parameter tree (`recurrentgemma.jax`) or the
reference torch state dict (`recurrentgemma.torch`).

The weights tell every shape (vocabulary, width, MLP width, heads, LRU width, block types); the three
hyperparameters they cannot tell (embedding scale, attention window, logit soft cap) come from a preset or
explicit arguments, and without either it is an error.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..griffin.configuration_griffin import ATTENTION, PRESETS, RECURRENT, GriffinConfig
from ..griffin.modeling_griffin import GriffinForCausalLM
from .errors import KeyMismatchError
from .keymap import reference_to_ours

# The hyperparameters the weights cannot tell: from a preset or given explicitly.
UNINFERABLE = ("embeddings_scale_by_sqrt_dim", "attention_window_size", "logits_soft_cap")


def numpy_to_torch(value: Any) -> torch.Tensor:
    """A numpy (or JAX) array as a torch tensor, zero-copy where possible. bfloat16 (ml_dtypes, which `from_numpy`
    does not know) is reinterpreted through uint16, bit for bit; read-only buffers (JAX's) are copied."""
    if isinstance(value, torch.Tensor):
        return value
    array = np.ascontiguousarray(np.asarray(value))
    if not array.flags.writeable:
        array = array.copy()
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def flatten_flax_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested Flax dict -> {"blocks.0.mlp_block.ffw_up.w": array, ...} (a top-level "params" is unwrapped)."""
    if not prefix and set(params) == {"params"}:
        params = params["params"]
    flat = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten_flax_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flax_key_to_torch(key: str) -> tuple[str, bool]:
    """Reference Flax key -> (reference torch key, whether the 2D kernel must be transposed)."""
    if key.endswith(".kernel"):
        return key[: -len("kernel")] + "weight", True
    return key, False


def torch_state_dict_from_flax(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Flax parameter tree -> reference torch state dict (Dense kernels (in, out) become weights (out, in))."""
    state = {}
    for key, value in flatten_flax_params(params).items():
        torch_key, transpose = flax_key_to_torch(key)
        tensor = numpy_to_torch(value)
        state[torch_key] = tensor.T.contiguous() if transpose else tensor
    return state


def infer_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Hyperparameters the reference torch state dict determines."""
    try:
        vocab_size, width = state_dict["embedder.input_embedding"].shape
        mlp_width = state_dict["blocks.0.mlp_block.ffw_up.w"].shape[-1]
    except KeyError as err:
        raise KeyMismatchError(f"missing key in reference checkpoint: {err.args[0]!r}") from None
    block_types, num_heads, lru_width = [], None, None
    i = 0
    while f"blocks.{i}.channel_pre_norm.scale" in state_dict:
        if f"blocks.{i}.recurrent_block.rg_lru.a_gate.w" in state_dict:
            block_types.append(RECURRENT)
            num_heads, head_width, _ = state_dict[f"blocks.{i}.recurrent_block.rg_lru.a_gate.w"].shape
            lru_width = num_heads * head_width
        elif f"blocks.{i}.attention_block.proj_k.weight" in state_dict:
            block_types.append(ATTENTION)
            num_heads = width // state_dict[f"blocks.{i}.attention_block.proj_k.weight"].shape[0]
        else:
            raise KeyMismatchError(f"cannot tell the type of block {i}: no rg_lru.a_gate.w nor proj_k.weight")
        i += 1
    if not block_types:
        raise KeyMismatchError("no blocks found (expected keys like 'blocks.0.channel_pre_norm.scale')")
    return dict(vocab_size=int(vocab_size), hidden_size=int(width), intermediate_size=int(mlp_width),
                num_attention_heads=int(num_heads), lru_width=int(lru_width or width), block_types=block_types)


def config_from_reference(
    state_dict: Mapping[str, torch.Tensor], preset: str | None = None, **overrides
) -> GriffinConfig:
    """A `GriffinConfig` whose shapes come from the weights and whose other hyperparameters come from `preset`
    and/or `overrides` (explicit values win). Shapes that contradict the preset are an error naming the field."""
    shapes = infer_shapes(state_dict)
    values = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known presets: {sorted(PRESETS)}")
        for key, value in shapes.items():
            if key != "vocab_size" and PRESETS[preset][key] != value:
                raise ValueError(
                    f"the weights do not match preset {preset!r}: {key} is {value} in the weights but "
                    f"{PRESETS[preset][key]} in the preset"
                )
        values.update({key: PRESETS[preset][key] for key in UNINFERABLE})
    values.update({k: v for k, v in overrides.items() if v is not None})
    missing = [key for key in UNINFERABLE if key not in values]
    if missing:
        raise ValueError(f"the weights cannot tell {', '.join(missing)}: pass a preset or set them explicitly")
    return GriffinConfig(**shapes, **values)


def griffin_from_reference(
    params_or_state_dict: Mapping[str, Any],
    config: GriffinConfig | None = None,
    preset: str | None = None,
    dtype: torch.dtype | None = None,
    **overrides,
) -> GriffinForCausalLM:
    """Our `GriffinForCausalLM` holding the reference's weights.

    Args:
        params_or_state_dict: a Flax tree (`{"params": {...}}` or the inner dict, as `recurrentgemma.jax` and its
            Orbax checkpoints hold) or a reference torch state dict (`recurrentgemma.torch.Griffin.state_dict()`).
        config: use this config instead of inferring one (shapes are still checked).
        preset, overrides: see `config_from_reference`.
        dtype: cast the weights (default: keep the checkpoint's dtype).

    Example:
        >>> ref = recurrentgemma.torch.Griffin(ref_config)
        >>> model = griffin_from_reference(ref.state_dict(), preset="recurrentgemma-2b")
    """
    state = dict(params_or_state_dict)
    if "params" in state or any(isinstance(v, Mapping) for v in state.values()):
        state = torch_state_dict_from_flax(state)
    if config is None:
        config = config_from_reference(state, preset=preset, **overrides)
    ours = reference_to_ours(state, config)
    dtype = dtype or next(iter(ours.values())).dtype
    with torch.device("meta"):
        model = GriffinForCausalLM(config)
    model.load_state_dict({k: v.to(dtype) for k, v in ours.items()}, strict=False, assign=True)
    model.tie_weights()
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise KeyMismatchError(f"no weight for {missing[0]!r}")
    return model.eval()

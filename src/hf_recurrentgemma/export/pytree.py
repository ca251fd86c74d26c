"""`GriffinCache` as a `torch.export` pytree node: it flattens to its state tensors and is rebuilt from them.

Transformers' exporters register every cache class with a generic flatten that walks the object's attributes and
keeps everything that is not a tensor (the whole config, the rollback settings, a `_is_user_defined` flag that
`generate()` sets) in the tree spec. An exported program then refuses a cache made elsewhere (a spec mismatch),
and a saved Dynamo program cannot be read back. Registered here first (the exporters skip a class that is already
registered), a cache flattens through its public state API (`state_dict()` / `from_state_dict()`), and the spec
holds only what fixes the tensors' meaning: the architecture fields, the dtype and the tensor names.

Leaf order: every layer's state (layer order, then the fields of `RecurrentState` / `AttentionState`), then
`seen_tokens` (0-d) and `next_position` (B,). It is the order in which the exporters name an ONNX program's inputs
(a walk of the cache's attributes, `transformers.exporters.utils.get_leaf_tensors`); ONNX names are given by
position, so the two must agree (tests/export/test_pytree.py checks it).
"""

import functools
import json

import torch

from ..griffin.cache_griffin import ARCHITECTURE_FIELDS, GriffinCache
from ..griffin.configuration_griffin import GriffinConfig

SERIALIZED_NAME = "hf_recurrentgemma.GriffinCache"
_COUNTERS = ("seen_tokens", "next_position")


def leaf_names(state_tensors) -> list[str]:
    """The names of `state_dict()["tensors"]` in leaf order (see the module docstring)."""
    names = [name for name in state_tensors if name.startswith("layers.")]
    return names + [name for name in _COUNTERS if name in state_tensors]


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def flatten(cache: GriffinCache):
    """(leaves, context) of a cache; the context is JSON (it is saved in the programs' tree specs)."""
    if cache.recording:
        raise ValueError("an exported program takes a GriffinCache without rollback recording; call "
                         "cache.deactivate_past_recording() first")
    state = cache.state_dict()
    tensors = dict(state["tensors"])
    if "seen_tokens" in tensors:
        tensors["seen_tokens"] = tensors["seen_tokens"].reshape(())  # the cache keeps it 0-d
    names = leaf_names(tensors)
    context = {"architecture": {k: _jsonable(v) for k, v in state["architecture"].items()},
               "dtype": state["dtype"], "names": names}
    return [tensors[name] for name in names], context


@functools.lru_cache(maxsize=None)
def _config(architecture_json: str) -> GriffinConfig:
    """A config with the architecture a cache needs (buffer shapes, window): enough to hold and check a state."""
    arch = json.loads(architecture_json)
    return GriffinConfig(vocab_size=arch["vocab_size"], hidden_size=arch["hidden_size"],
                         num_attention_heads=arch["hidden_size"] // arch["head_dim"], lru_width=arch["lru_width"],
                         block_types=arch["block_types"], num_hidden_layers=arch["num_hidden_layers"],
                         attention_window_size=arch["attention_window_size"], conv1d_width=arch["conv1d_width"])


def unflatten(leaves, context) -> GriffinCache:
    arch = context["architecture"]
    config = _config(json.dumps(arch, sort_keys=True))
    if not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
        # ExecuTorch rebuilds a program's inputs from placeholder leaves (ints) only to flatten them again into its
        # container description: a cache of the same structure, on the meta device, serves.
        dtype = getattr(torch, context["dtype"]) if context["dtype"] else None
        return GriffinCache(config, batch_size=1 if context["names"] else None, dtype=dtype, device="meta")
    state = {"architecture": arch, "dtype": context["dtype"], "tensors": dict(zip(context["names"], leaves))}
    return GriffinCache.from_state_dict(config, state)


def _flatten_with_keys(cache: GriffinCache):
    leaves, context = flatten(cache)
    return [(torch.utils._pytree.MappingKey(name), leaf) for name, leaf in zip(context["names"], leaves)], context


def register() -> None:
    """Registers `GriffinCache` (idempotent). Importing `hf_recurrentgemma.export` calls it."""
    if GriffinCache in torch.utils._pytree.SUPPORTED_NODES:
        return
    torch.utils._pytree.register_pytree_node(
        GriffinCache, flatten, unflatten, serialized_type_name=SERIALIZED_NAME,
        flatten_with_keys_fn=_flatten_with_keys,
    )


def architecture_fields() -> tuple:
    return ARCHITECTURE_FIELDS


__all__ = ["SERIALIZED_NAME", "flatten", "unflatten", "leaf_names", "register"]

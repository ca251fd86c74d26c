"""Our folder -> an Orbax checkpoint of the original JAX release (`{"params": <Flax tree>}`, as
`recurrentgemma.jax.utils.save_parameters` writes it), so Orbax -> HF -> Orbax round-trips bit for bit.

The folder's safetensors are read lazily, one rule (one reference tensor) at a time; Orbax saves a whole tree
at once, so peak memory is the model's size in its stored dtype (plus one tensor).
"""

import json
from pathlib import Path

import numpy as np
import torch

from ..configuration_griffin import GriffinConfig
from .keymap import KeyMismatchError, expected_shapes, rules_for
from .safetensors_folder import FolderReader, safetensors_headers
from .sources import ConversionError, _import_orbax
from .writer import OutputFolder


def torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """bfloat16 is reinterpreted as ml_dtypes.bfloat16 (the dtype JAX uses), not upcast."""
    tensor = tensor.contiguous()
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def reference_key_to_flax(key: str) -> tuple[tuple[str, ...], bool]:
    """'blocks.0.mlp_block.ffw_down.weight' -> (('blocks.0', 'mlp_block', 'ffw_down', 'kernel'), transpose).
    Flax names each block 'blocks.<i>' (one key, dot included); torch Linear weights are Flax Dense kernels."""
    parts = key.split(".")
    if parts[0] == "blocks":
        parts = [f"blocks.{parts[1]}"] + parts[2:]
    transpose = parts[-1] == "weight"
    if transpose:
        parts[-1] = "kernel"
    return tuple(parts), transpose


def flax_params_from_folder(folder: Path) -> tuple[GriffinConfig, dict]:
    """(config, nested Flax params as JAX arrays) of one of our folders, every key checked."""
    import jax.numpy as jnp

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{folder}: no config.json")
    if json.loads(config_path.read_text()).get("model_type") != "griffin":
        raise ConversionError(f"{config_path}: not a griffin model (convert it with `hf-recurrentgemma convert` first)")
    config = GriffinConfig.from_pretrained(folder)
    shapes = expected_shapes(config)
    headers = safetensors_headers(folder)
    tensors = FolderReader(folder, headers)
    unexpected = set(headers) - set(shapes) - {"lm_head.weight"}
    if unexpected:
        raise KeyMismatchError(f"{folder}: unexpected key {sorted(unexpected)[0]!r}")
    params: dict = {}
    for rule in rules_for(config):
        ours = []
        for key in rule.targets:
            tensor = tensors.get(key)
            if tuple(tensor.shape) != shapes[key]:
                raise KeyMismatchError(f"{folder}: {key!r} has shape {tuple(tensor.shape)}, expected {shapes[key]}")
            ours.append(tensor)
        path, transpose = reference_key_to_flax(rule.source)
        value = rule.backward(*ours)
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        # jnp arrays, as save_parameters receives them from the model, so the metadata matches too.
        node[path[-1]] = jnp.asarray(torch_to_numpy(value.T if transpose else value))
    return config, params


def export_orbax(folder: str | Path, out: str | Path, force: bool = False) -> Path:
    """Writes an Orbax checkpoint of `folder` at `out` (atomically; an existing `out` needs `force`)."""
    folder = Path(folder)
    ocp = _import_orbax()
    output = OutputFolder(out, force)
    _, params = flax_params_from_folder(folder)
    with output as staged:
        # What recurrentgemma.jax.utils.save_parameters does.
        ocp.PyTreeCheckpointer().save(staged, {"params": params})
    return output.out


__all__ = ["export_orbax", "flax_params_from_folder", "reference_key_to_flax", "torch_to_numpy"]

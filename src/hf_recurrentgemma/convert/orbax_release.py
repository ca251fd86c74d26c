"""The JAX release: Orbax checkpoints of `{"params": <Flax tree>}`, as `recurrentgemma.jax.utils.save_parameters`
writes them, read tensor by tensor (`OrbaxSource`) and written back from our folders (`export_orbax`).

Current layouts (`_METADATA`, OCDBT or per-array zarr) are read one tensor at a time by partial restore; old ones
(only the msgpack `checkpoint` file) are restored whole. Tensors come under the reference torch names (Dense kernels
transposed). The export holds the whole model (Orbax saves a tree at once) and round-trips bit for bit.
"""

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..griffin.configuration_griffin import GriffinConfig
from .errors import ConversionError, first_line
from .keymap import rules_for
from .reference import flax_key_to_torch, numpy_to_torch
from .safetensors_folder import read_griffin_folder
from .sources import ReferenceSource, meta
from .writer import OutputFolder, refuse_overlap

# Files whose presence marks an Orbax PyTree checkpoint directory (current and old layouts).
ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "checkpoint", "manifest.ocdbt")
NUMPY_TO_TORCH = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
                  "float64": torch.float64}


def _is_orbax_dir(path: Path) -> bool:
    if any((path / name).is_file() for name in ORBAX_MARKERS):
        return True
    # Old non-OCDBT layout: one zarr folder per array.
    return any(child.is_dir() and ((child / ".zarray").exists() or (child / "zarr.json").exists())
               for child in path.iterdir())


def import_orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ConversionError("reading Orbax checkpoints needs orbax-checkpoint: "
                              "pip install -e '.[orbax]' in a clone of hf-recurrentgemma") from None
    try:  # Orbax logs a warning per restored array through absl.
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
    return ocp


def _path_keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


class OrbaxSource(ReferenceSource):
    """A Flax parameter tree in an Orbax checkpoint, read one array at a time.

    Flax Dense kernels (in, out) are returned transposed, as the reference torch weights (out, in). Old layouts
    (no `_METADATA`) and Orbax versions without partial restore are restored whole: peak memory is then the whole
    checkpoint.
    """

    name, title = "orbax", "JAX (Orbax)"

    @classmethod
    def detect(cls, path: Path) -> Path | None:
        """An Orbax checkpoint directory, or a folder (a download) holding exactly one and no config.json."""
        if not path.is_dir():
            return None
        if _is_orbax_dir(path):
            return path
        if (path / "config.json").is_file():
            return None
        children = [c for c in sorted(path.iterdir()) if c.is_dir() and _is_orbax_dir(c)]
        return children[0] if len(children) == 1 else None

    def __init__(self, path: Path):
        super().__init__(Path(path).absolute())  # Orbax refuses relative paths
        path = self.path
        self.ocp = import_orbax()
        self.checkpointer = self.ocp.PyTreeCheckpointer()
        self.arrays: dict[str, np.ndarray] | None = None  # set when restored whole
        self.leaves: dict[str, tuple[tuple[str, ...], tuple[int, ...], torch.dtype]] = {}
        tree = self._metadata_tree() if (path / "_METADATA").is_file() else None
        if tree is not None and self._supports_partial_restore():
            try:
                self._index(tree, lambda leaf: (tuple(leaf.shape), np.dtype(leaf.dtype)))
            except (AttributeError, TypeError):  # metadata leaves without shape/dtype: read the old way
                self.leaves, tree = {}, None
        if not self.leaves:
            try:
                with warnings.catch_warnings():  # "Sharding info not provided": we want host arrays anyway
                    warnings.simplefilter("ignore", UserWarning)
                    restored = self.checkpointer.restore(path)
            except Exception as err:
                raise ConversionError(f"{path}: cannot restore the Orbax checkpoint (truncated or corrupt?): "
                                      f"{first_line(err)}") from None
            self.arrays = {}
            self._index(restored, lambda leaf: (tuple(np.shape(leaf)), np.asarray(leaf).dtype), keep=True)

    def _metadata_tree(self):
        try:
            meta = self.checkpointer.metadata(self.path)
        except Exception as err:
            raise ConversionError(f"{self.path}: cannot read the Orbax metadata: {first_line(err)}") from None
        # orbax < 0.11 returns the tree itself; later versions wrap it (StepMetadata.item_metadata.tree).
        meta = getattr(meta, "item_metadata", meta)
        return getattr(meta, "tree", meta)

    def _supports_partial_restore(self) -> bool:
        fields = getattr(self.ocp.args.PyTreeRestore, "__dataclass_fields__", {})
        return "partial_restore" in fields

    def _index(self, tree, shape_dtype: Callable, keep: bool = False) -> None:
        import jax

        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = _path_keys(path)
            flat = keys[1:] if keys[0] == "params" else keys
            torch_key, transpose = flax_key_to_torch(".".join(flat))
            shape, dtype = shape_dtype(leaf)
            if dtype.name not in NUMPY_TO_TORCH:
                raise ConversionError(f"{self.path}: {'.'.join(flat)!r} has dtype {dtype}, not a float type")
            if transpose:
                shape = shape[::-1]
            self.leaves[torch_key] = (keys, shape, NUMPY_TO_TORCH[dtype.name])
            if keep:
                self.arrays[torch_key] = leaf

    def metas(self) -> dict[str, torch.Tensor]:
        return {k: meta(shape, dtype) for k, (_, shape, dtype) in self.leaves.items()}

    def load(self, key: str) -> torch.Tensor:
        keys = self.leaves[key][0]
        if self.arrays is not None:
            array = np.asarray(self.arrays.pop(key))  # handed over: the whole tree shrinks as we go
        else:
            array = self._restore_one(keys)
        tensor = numpy_to_torch(array)
        return tensor.T if keys[-1] == "kernel" else tensor

    def _restore_one(self, keys: tuple[str, ...]) -> np.ndarray:
        item, args = {}, {}
        node_i, node_a = item, args
        for k in keys[:-1]:
            node_i = node_i.setdefault(k, {})
            node_a = node_a.setdefault(k, {})
        node_i[keys[-1]] = 0
        node_a[keys[-1]] = self.ocp.RestoreArgs(restore_type=np.ndarray)
        try:
            restored = self.checkpointer.restore(
                self.path, args=self.ocp.args.PyTreeRestore(item=item, restore_args=args, partial_restore=True))
        except Exception as err:
            raise ConversionError(f"{self.path}: cannot read {'.'.join(keys)!r} (truncated or corrupt?): "
                                  f"{first_line(err)}") from None
        for k in keys:
            restored = restored[k]
        return restored

    def close(self) -> None:
        self.arrays = None


# --- export -------------------------------------------------------------------------------------------------------

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


def flax_params_from_folder(folder: str | Path) -> tuple[GriffinConfig, dict]:
    """(config, nested Flax params as JAX arrays) of one of our folders, every key checked."""
    import jax.numpy as jnp

    config, reader = read_griffin_folder(folder)
    params: dict = {}
    for rule in rules_for(config):
        path, transpose = reference_key_to_flax(rule.source)
        value = rule.backward(*(reader.get(key) for key in rule.targets))
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        # jnp arrays, as save_parameters receives them from the model, so the metadata matches too.
        node[path[-1]] = jnp.asarray(torch_to_numpy(value.T if transpose else value))
    reader.close()
    return config, params


def export_orbax(folder: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Writes an Orbax checkpoint of our `folder` at `out`, as `recurrentgemma.jax.utils.save_parameters` does;
    returns `out` (absolute). Atomic: nothing is left at `out` on failure; an existing `out` needs `force`.

    Example:
        >>> export_orbax("recurrentgemma-2b-hf", "2b-orbax")
    """
    refuse_overlap(folder, out)
    ocp = import_orbax()
    output = OutputFolder(out, force)
    _, params = flax_params_from_folder(folder)
    with output as staged:
        ocp.PyTreeCheckpointer().save(staged, {"params": params})
    return output.out


__all__ = ["OrbaxSource", "export_orbax", "flax_params_from_folder", "reference_key_to_flax", "torch_to_numpy"]

"""Reading the original checkpoints tensor by tensor: format detection, Orbax and PyTorch readers.

Formats:
  * ``orbax``: a directory written by ``recurrentgemma.jax.utils.save_parameters`` (a PyTree ``{"params": ...}``
    saved by ``orbax.checkpoint.PyTreeCheckpointer``). Current layouts (``_METADATA`` + OCDBT ``manifest.ocdbt``/``d/``
    or per-array zarr folders) are read one tensor at a time with a partial restore; old layouts without
    ``_METADATA`` (only the msgpack ``checkpoint`` structure file) are restored whole, into host memory.
  * ``torch``: a state-dict file of ``recurrentgemma.torch.Griffin`` (``torch.save(model.state_dict())``), memory
    mapped, so only the tensors being converted are resident.
  * ``builtin``: a folder of Transformers' ``recurrent_gemma`` model (read by ``builtin.py``; yields our names).

A reader exposes the reference torch names (``blocks.0.mlp_block.ffw_up.w``...) with their shapes before reading
any data (`metas`), so keys and shapes are checked up front, then `load(key)` returns one tensor.
"""

import ctypes
import json
import mmap
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from ..configuration_griffin import GriffinConfig
from . import builtin
from .keymap import KeyMismatchError, expected_shapes, reference_to_ours, rules_for
from .reference import flax_key_to_torch

# Files whose presence marks an Orbax PyTree checkpoint directory (current and old layouts).
ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "checkpoint", "manifest.ocdbt")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
NUMPY_TO_TORCH = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
                  "float64": torch.float64}


class ConversionError(Exception):
    """A one-line, user-facing conversion failure naming the file, key or shape at fault."""


def _first_line(err: BaseException, limit: int = 400) -> str:
    """The gist of an exception: first line, without TensorStore's spec dump, at most `limit` characters."""
    text = (str(err).strip() or type(err).__name__).splitlines()[0]
    text = text.split(" [tensorstore_spec=")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_orbax_dir(path: Path) -> bool:
    if any((path / name).is_file() for name in ORBAX_MARKERS):
        return True
    # Old non-OCDBT layout: one zarr folder per array.
    return any(child.is_dir() and ((child / ".zarray").exists() or (child / "zarr.json").exists())
               for child in path.iterdir())


def _folder_model_type(path: Path) -> str | None:
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("model_type")
    except (ValueError, AttributeError):
        raise ConversionError(f"{config}: not a valid JSON config") from None


def detect_format(path: str | Path) -> tuple[str, Path]:
    """("orbax" | "torch" | "builtin", the checkpoint path). A folder holding exactly one Orbax checkpoint (as the
    Kaggle downloads do: ``2b/``) is resolved to it."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or directory")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(4)
        # New torch.save files are zip archives (PK..), legacy ones start with a pickle protocol byte (0x80).
        if head.startswith(b"PK") or head[:1] == b"\x80" or path.suffix in TORCH_SUFFIXES:
            return "torch", path
        raise ConversionError(
            f"{path}: not a checkpoint (expected a PyTorch state-dict file, an Orbax checkpoint directory or a "
            "Transformers recurrent_gemma folder)"
        )
    if _is_orbax_dir(path):
        return "orbax", path
    model_type = _folder_model_type(path)
    if builtin.is_builtin_folder(path):
        return "builtin", path
    if model_type == "griffin":
        raise ConversionError(f"{path}: already a hf-recurrentgemma folder; load it with from_pretrained")
    children = [c for c in sorted(path.iterdir()) if c.is_dir() and _is_orbax_dir(c)]
    if len(children) == 1:
        return "orbax", children[0]
    raise ConversionError(
        f"{path}: not a checkpoint directory (no Orbax {'/'.join(ORBAX_MARKERS)} files, no config.json)"
    )


def numpy_to_torch(array: np.ndarray) -> torch.Tensor:
    """Zero-copy where possible; bfloat16 (ml_dtypes) is reinterpreted through uint16, not upcast."""
    array = np.ascontiguousarray(array)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _meta(shape, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


class TorchSource:
    """A reference torch state dict, memory-mapped: `load` touches only that tensor's pages and `release` gives
    them back (madvise), so resident memory stays near what is being written."""

    format = "torch"

    def __init__(self, path: Path):
        self.path = path
        self.mmapped = True
        self._loaded: list[torch.Tensor] = []
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise ConversionError(f"{path}: cannot read the PyTorch checkpoint (truncated or corrupt?): "
                                      f"{_first_line(err)}") from None
            # Legacy (pre-zip) torch.save files cannot be mapped; they are read whole.
            self.mmapped = False
            state = self._load_plain(path)
        except Exception as err:  # pickle, zip and EOF errors of damaged files
            raise ConversionError(f"{path}: cannot read the PyTorch checkpoint (truncated or corrupt?): "
                                  f"{_first_line(err)}") from None
        self.state = self._unwrap(state)

    def _load_plain(self, path: Path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ConversionError(f"{path}: cannot read the PyTorch checkpoint (truncated or corrupt?): "
                                  f"{_first_line(err)}") from None

    def _unwrap(self, state) -> dict[str, torch.Tensor]:
        if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
            state = next(iter(state.values()))  # {"state_dict": {...}} / {"params": {...}}
        if not isinstance(state, dict):
            raise ConversionError(f"{self.path}: expected a state dict, found a {type(state).__name__}")
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise ConversionError(f"{self.path}: entry {key!r} is a {type(value).__name__}, not a tensor")
            if not value.is_floating_point():
                raise ConversionError(f"{self.path}: {key!r} has dtype {value.dtype}, not a float type")
        if state and all(k.startswith("params.") for k in state):
            state = {k[len("params."):]: v for k, v in state.items()}
        return state

    def metas(self) -> dict[str, torch.Tensor]:
        return {k: _meta(v.shape, v.dtype) for k, v in self.state.items()}

    def load(self, key: str) -> torch.Tensor:
        tensor = self.state[key]
        if self.mmapped:
            self._loaded.append(tensor)
        return tensor

    def consumed(self, tensor: torch.Tensor, outputs: list[torch.Tensor]) -> None:
        """Called once `tensor` is converted: when the outputs are copies (transposed, split or cast), its pages
        are no longer needed; when they are views, they go at the next `release`."""
        if self.mmapped and all(o.untyped_storage().data_ptr() != tensor.untyped_storage().data_ptr()
                                for o in outputs):
            _drop_mapped_pages(tensor)
            self._loaded = [t for t in self._loaded if t is not tensor]

    def release(self) -> None:
        """Called once the tensors loaded so far are written: lets their pages go."""
        for tensor in self._loaded:
            _drop_mapped_pages(tensor)
        self._loaded = []

    def close(self) -> None:
        self.state, self._loaded = {}, []


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # Linux
_LIBC = None


def _drop_mapped_pages(tensor: torch.Tensor) -> None:
    """Lets the kernel drop the resident pages of a tensor that lives in torch.load's private, read-only-used file
    mapping. Those pages are clean, so a later access re-reads them from the file: this changes memory use, never
    values. Only ever called on tensors of an mmap=True load."""
    if not sys.platform.startswith("linux") or tensor.numel() == 0:
        return
    start = tensor.untyped_storage().data_ptr()
    end = start + tensor.untyped_storage().nbytes()
    start -= start % _PAGE  # the mapping starts on a page boundary, so rounding out stays inside it
    end += -end % _PAGE
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def _import_orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ConversionError("reading Orbax checkpoints needs orbax-checkpoint: "
                              "pip install 'hf-recurrentgemma[orbax]'") from None
    try:  # Orbax logs a warning per restored array through absl.
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
    return ocp


def _path_keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


class OrbaxSource:
    """A Flax parameter tree in an Orbax checkpoint, read one array at a time.

    Flax Dense kernels (in, out) are returned transposed, as the reference torch weights (out, in). Old layouts
    (no `_METADATA`) and Orbax versions without partial restore are restored whole: peak memory is then the whole
    checkpoint.
    """

    format = "orbax"

    def __init__(self, path: Path):
        self.path = path.absolute()  # Orbax refuses relative paths
        path = self.path
        self.ocp = _import_orbax()
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
                                      f"{_first_line(err)}") from None
            self.arrays = {}
            self._index(restored, lambda leaf: (tuple(np.shape(leaf)), np.asarray(leaf).dtype), keep=True)

    def _metadata_tree(self):
        try:
            meta = self.checkpointer.metadata(self.path)
        except Exception as err:
            raise ConversionError(f"{self.path}: cannot read the Orbax metadata: {_first_line(err)}") from None
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
        return {k: _meta(shape, dtype) for k, (_, shape, dtype) in self.leaves.items()}

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
                                  f"{_first_line(err)}") from None
        for k in keys:
            restored = restored[k]
        return restored

    def consumed(self, tensor: torch.Tensor, outputs: list[torch.Tensor]) -> None:
        pass  # restored arrays are owned by the tensors: dropping those frees the memory

    def release(self) -> None:
        pass

    def close(self) -> None:
        self.arrays = None


class BuiltinSource:
    """A Transformers `recurrent_gemma` folder, read by `builtin.read_builtin_folder` (config included; tensors
    come under our names, one at a time)."""

    format = "builtin"

    def __init__(self, path: Path):
        self.path = path
        self.config, _ = self._read()

    def _read(self):
        try:
            return builtin.read_builtin_folder(self.path)
        except (ValueError, OSError) as err:
            raise ConversionError(f"{self.path}: {_first_line(err)}") from None

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self._read()[1]

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_source(fmt: str, path: Path):
    """A reader for a detected format."""
    readers = {"torch": TorchSource, "orbax": OrbaxSource, "builtin": BuiltinSource}
    if fmt not in readers:
        raise ValueError(f"no reader for format {fmt!r}")
    return readers[fmt](path)


def check_source(source, config: GriffinConfig) -> None:
    """Every key consumed, every target produced, with the right shapes: checked on meta tensors, before any data
    is read (raises `KeyMismatchError` naming the key or shape)."""
    try:
        reference_to_ours(source.metas(), config)
    except KeyMismatchError as err:
        raise KeyMismatchError(f"{source.path}: {err}") from None


def _from_rules(source, config: GriffinConfig, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor, str]]:
    for rule in rules_for(config):
        tensor = source.load(rule.source)
        outs = [out.to(dtype).contiguous() for out in rule.forward(tensor)]
        source.consumed(tensor, outs)
        for key, out in zip(rule.targets, outs):
            yield key, out, rule.source


def our_tensors(source, config: GriffinConfig, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(our name, contiguous tensor in `dtype`) for every parameter, one source tensor at a time (in rule order for
    reference sources). Shapes are checked again on the real data; no name may come twice, every one must come."""
    shapes = expected_shapes(config)
    if source.format == "builtin":
        items = ((key, tensor, key) for key, tensor in source.tensors())
    else:
        items = _from_rules(source, config, dtype)
    produced = set()
    for key, out, origin in items:
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied to the embeddings: not stored
        if key not in shapes:
            raise KeyMismatchError(f"{source.path}: unexpected key {key!r}")
        if key in produced:
            raise KeyMismatchError(f"{source.path}: {key!r} produced twice")
        if tuple(out.shape) != shapes[key]:
            raise KeyMismatchError(f"{source.path}: {origin!r} gives {key!r} the shape {tuple(out.shape)}, "
                                   f"expected {shapes[key]}")
        produced.add(key)
        yield key, out.to(dtype).contiguous()
    missing = set(shapes) - produced
    if missing:
        raise KeyMismatchError(f"{source.path}: no tensor for {sorted(missing)[0]!r}")


__all__ = ["ConversionError", "detect_format", "open_source", "TorchSource", "OrbaxSource", "BuiltinSource",
           "check_source",
           "our_tensors", "numpy_to_torch"]

"""The PyTorch release: a state-dict file of `recurrentgemma.torch.Griffin` (`torch.save(model.state_dict())`),
memory-mapped, so only the tensors being converted are resident."""

import ctypes
import mmap
import sys
from pathlib import Path

import torch

from .errors import ConversionError, first_line
from .sources import ReferenceSource, meta

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class TorchSource(ReferenceSource):
    """A reference torch state dict, memory-mapped: `load` touches only that tensor's pages and `release` gives
    them back (madvise), so resident memory stays near what is being written."""

    name, title = "torch", "PyTorch"

    @classmethod
    def detect(cls, path: Path) -> Path | None:
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            head = f.read(4)
        # New torch.save files are zip archives (PK..), legacy ones start with a pickle protocol byte (0x80).
        return path if head.startswith(b"PK") or head[:1] == b"\x80" or path.suffix in TORCH_SUFFIXES else None

    def __init__(self, path: Path):
        super().__init__(path)
        self._loaded: list[torch.Tensor] = []
        self.mmapped = True
        try:
            try:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as err:
                if "mmap" not in str(err):
                    raise
                # Legacy (pre-zip) torch.save files cannot be mapped; they are read whole.
                self.mmapped = False
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle, zip and EOF errors of damaged files
            raise ConversionError(f"{path}: cannot read the PyTorch checkpoint (truncated or corrupt?): "
                                  f"{first_line(err)}") from None
        self.state = self._unwrap(state)

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
        return {k: meta(v.shape, v.dtype) for k, v in self.state.items()}

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


__all__ = ["TorchSource"]

"""The checkpoint formats `convert_checkpoint` reads, and detection of which one a path holds.

Adding a format: write one module with a `Source` subclass (see sources.py and docs/conversion.md), and add the
class to `FORMATS`. Detection asks each class in order; the first that recognises the path reads it.
"""

from pathlib import Path

from .builtin import BuiltinSource
from .errors import ConversionError
from .orbax_release import ORBAX_MARKERS, OrbaxSource
from .safetensors_folder import folder_config
from .sources import Source
from .torch_release import TorchSource

FORMATS: tuple[type[Source], ...] = (TorchSource, OrbaxSource, BuiltinSource)


def detect_source(path: str | Path) -> tuple[type[Source], Path]:
    """(the format's class, the checkpoint path) for `path`; a `ConversionError` says why it is none of them."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or directory")
    for fmt in FORMATS:
        found = fmt.detect(path)
        if found is not None:
            return fmt, found
    if path.is_file():
        raise ConversionError(f"{path}: not a checkpoint (expected a PyTorch state-dict file, an Orbax checkpoint "
                              "directory or a Transformers recurrent_gemma folder)")
    if (folder_config(path) or {}).get("model_type") == "griffin":
        raise ConversionError(f"{path}: already a hf-recurrentgemma folder; load it with from_pretrained")
    raise ConversionError(f"{path}: not a checkpoint directory (no Orbax {'/'.join(ORBAX_MARKERS)} files, "
                          "no config.json)")


__all__ = ["FORMATS", "detect_source"]

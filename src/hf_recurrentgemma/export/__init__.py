"""Griffin through Transformers' own exporters (`transformers.exporters`, Transformers >= 5.24): ONNX, ExecuTorch
(XNNPACK), OpenVINO and torch.export programs for generation, the whole fixed-size state as the programs' inputs and
outputs, run by each backend's `ModelRunner` (docs/export.md).

Importing this package registers `GriffinCache` as a `torch.export` pytree node (pytree.py). Not part of the Hub
remote code: the model files only gained what an export needs (the torch paths under `torch.export`, the
recurrence in a loop operator, no Python loop over the prompt length).
"""

from . import pytree
from .exporting import DEFAULT_MAX_PREFILL, INFO_FILE, export_griffin, prefill_limits, state_layout
from .formats import EXTRA, FORMATS, BackendNotInstalled, get_format
from .running import ExportedGriffin, load_exported

pytree.register()

__all__ = ["BackendNotInstalled", "DEFAULT_MAX_PREFILL", "EXTRA", "ExportedGriffin", "FORMATS", "INFO_FILE",
           "export_griffin", "get_format", "load_exported", "prefill_limits", "state_layout"]

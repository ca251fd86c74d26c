"""The export formats of Transformers' exporters that Griffin goes through, with what each needs: one entry per
format (a new one is one entry), read by the exporter, the runner, the command and the tests."""

import importlib.util
from dataclasses import dataclass, field

EXTRA = "from a clone of hf-recurrentgemma: pip install -e '.[export]'"


class BackendNotInstalled(ImportError):
    """A format's packages are missing; the message names them and the extra that installs them."""


@dataclass(frozen=True)
class ExportFormat:
    name: str
    config_class: str  # the `transformers.exporters` config
    modules: tuple  # the import names it needs (exporter and runtime)
    loop: str  # the loop operator its runtime lowers (ops_griffin.EXPORT_LOOPS)
    quantizers: tuple = field(default=())  # values of `--quantize` it accepts (quantize.py)
    what: str = ""

    def missing(self) -> list[str]:
        return [m for m in self.modules if importlib.util.find_spec(m) is None]

    def require(self) -> "ExportFormat":
        missing = self.missing()
        if missing:
            raise BackendNotInstalled(f"the {self.name} format needs {', '.join(missing)}, which "
                                      f"{'is' if len(missing) == 1 else 'are'} not installed: {EXTRA}")
        return self


FORMATS = {
    f.name: f
    for f in (
        ExportFormat("onnx", "OnnxConfig", ("onnx", "onnxscript", "onnxruntime"), "scan", ("int8-dynamic",),
                     "ONNX graphs run by ONNX Runtime"),
        ExportFormat("executorch", "ExecutorchConfig", ("executorch",), "scan", ("int8",),
                     "ExecuTorch programs (.pte) lowered to XNNPACK"),
        ExportFormat("openvino", "OpenVINOConfig", ("openvino",), "while_loop", (),
                     "OpenVINO IR (.xml/.bin) run by OpenVINO"),
        ExportFormat("dynamo", "DynamoConfig", (), "scan", (), "torch.export programs (.pt2)"),
    )
}


def get_format(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown export format {name!r}; available: {', '.join(FORMATS)}")
    return FORMATS[name]


__all__ = ["BackendNotInstalled", "EXTRA", "ExportFormat", "FORMATS", "get_format"]

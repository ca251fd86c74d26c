"""The quantizers of Transformers' exporters that `--quantize` names, per format (formats.py lists which)."""


def quantizer(format_name: str, name: str | None):
    """The `transformers.exporters` quantizer for `--quantize name` on `format_name`, or None for no quantization.

    - onnx, `int8-dynamic`: ONNX Runtime's dynamic quantization (int8 weights, activations quantized per call).
    - executorch, `int8`: PT2E with ExecuTorch's XNNPACK quantizer, int8 per-channel weights and dynamically
      quantized int8 activations (XNNPACK runs the products in int8).
    """
    from .formats import get_format

    fmt = get_format(format_name)
    if name is None:
        return None
    if name not in fmt.quantizers:
        offered = ", ".join(fmt.quantizers) or "none"
        raise ValueError(f"--quantize {name} is not offered for the {format_name} format (offered: {offered})")
    if (format_name, name) == ("onnx", "int8-dynamic"):
        from transformers.exporters import OnnxRuntimeDynamicConfig, OnnxRuntimeQuantizer

        return OnnxRuntimeQuantizer(OnnxRuntimeDynamicConfig())
    if (format_name, name) == ("executorch", "int8"):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from transformers.exporters import PT2EQuantizer

        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        return PT2EQuantizer(XNNPACKQuantizer().set_global(config))
    raise AssertionError(f"formats.py offers --quantize {name} for {format_name} but quantize.py has no entry")


__all__ = ["quantizer"]

"""Checks made once, when `from_pretrained` loads a checkpoint: the stored dtypes before loading, and after it that
every parameter was read and holds finite values. (What every call checks is in `validation_griffin.py`.)

This file ships as Hub remote code with the model files; it imports nothing from this package.
"""

import json
import os
import warnings

import torch


def check_stored_dtypes(folder) -> None:
    """Before a local folder is loaded: every tensor its safetensors files declare is floating point, in the dtype
    its config.json declares (when it declares one). Transformers casts what it reads to the model's dtype, so
    integers, or bfloat16 bits declared float16, would otherwise load as silently different numbers. Reads only
    the headers; a file whose header cannot be read is left to the loader, which names it."""
    from safetensors import safe_open  # a dependency of Transformers, imported when a folder is checked

    declared = None
    try:
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        declared = config.get("dtype", config.get("torch_dtype")) if isinstance(config, dict) else None
        if isinstance(config, dict) and config.get("quantization_config"):
            return  # a quantized folder (e.g. torchao's): integer codes and float32 scales are its format
    except (OSError, ValueError):
        pass
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".safetensors"):
            continue
        try:
            handle = safe_open(os.path.join(folder, name), framework="pt")
            dtypes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
        except Exception:  # noqa: BLE001 - a damaged header: the loader's own error names it
            continue
        for key, dtype in sorted(dtypes.items()):
            if dtype not in ("F16", "BF16", "F32", "F64"):
                raise ValueError(f"{os.path.join(folder, name)}: tensor {key} is stored as {dtype}; expected a "
                                 "floating-point dtype")
            if isinstance(declared, str) and _SAFETENSORS_NAMES.get(declared, dtype) != dtype:
                raise ValueError(f"{os.path.join(folder, name)}: tensor {key} is stored as {dtype} but config.json "
                                 f"declares dtype {declared}")


_SAFETENSORS_NAMES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}


def check_loaded_weights(model, info: dict, source, strict: bool = True, nonfinite: str = "error") -> None:
    """After `from_pretrained`: a checkpoint that lacks a parameter or holds one the model does not have is refused
    (Transformers alone would warn and initialise the missing one at random: a silently different model), and so
    is one with a NaN or infinite value (`nonfinite="warn"` warns instead, naming the tensor). `strict=False` keeps
    Transformers' behaviour for keys. Quantized and distributed tensors (subclasses) are not scanned for values."""
    if nonfinite not in ("error", "warn"):
        raise ValueError(f"nonfinite must be 'error' or 'warn', got {nonfinite!r}")
    if strict and getattr(model, "hf_quantizer", None) is None:
        for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            keys = sorted(k if isinstance(k, str) else f"{k[0]} (checkpoint {tuple(k[1])}, model {tuple(k[2])})"
                          for k in info.get(kind) or ())
            if keys:
                shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
                raise ValueError(f"{source}: the checkpoint's tensors do not match the model: {kind.replace('_', ' ')}"
                                 f" {shown} (pass strict=False to load anyway)")
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if type(tensor.data) is not torch.Tensor or not tensor.dtype.is_floating_point or tensor.is_meta:
            continue
        if not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            message = f"{source}: tensor {name} holds {count} NaN or infinite values"
            if nonfinite == "error":
                raise ValueError(message + " (pass nonfinite='warn' to load anyway)")
            warnings.warn(message, stacklevel=3)


__all__ = ["check_loaded_weights", "check_stored_dtypes"]

"""Exporting a Griffin for generation through Transformers' exporters: a prefill program (a prompt of any length
from `min_prefill` to `max_prefill` tokens, continuing from a state) and a decode program (one token), both taking
and returning the whole state as tensors (the `GriffinCache`, pytree.py)."""

import json
import time
from pathlib import Path

import torch

from ..griffin.cache_griffin import GriffinCache
from ..griffin.layers_griffin import query_chunk_size
from ..griffin.modeling_griffin import PREFILL_SEGMENT
from ..griffin.ops_griffin import export_loop
from . import pytree
from .compat import drop_example_inputs, exporters_available, exporters_fixed
from .formats import get_format
from .quantize import quantizer as make_quantizer

INFO_FILE = "griffin_export.json"  # what the runner needs beyond Transformers' export.json
DEFAULT_MAX_PREFILL = 256


def prefill_limits(config, max_prefill: int = DEFAULT_MAX_PREFILL) -> tuple[int, int]:
    """(min, max) prompt tokens one prefill call takes. The maximum is capped where the model's forward would loop
    in Python over the prompt (query chunks of the local attention, prefill segments), which would fix the length
    in the program; the minimum is the conv1d width, below which torch.export adds guards on the length (the conv
    tail's slices). Fewer tokens go through the decode program one at a time."""
    if isinstance(max_prefill, bool) or not isinstance(max_prefill, int):
        raise ValueError(f"max_prefill must be an int, got {max_prefill!r}")
    low = max(2, config.conv1d_width)
    cap = min(query_chunk_size(config.attention_window_size), PREFILL_SEGMENT)
    if not low < max_prefill <= cap:
        raise ValueError(f"max_prefill must be in ({low}, {cap}] for this model (the attention's query chunk and "
                         f"the prefill segment bound it), got {max_prefill}")
    return low, max_prefill


def _configs(fmt, sample_cache, low: int, high: int, quantizer) -> dict:
    import transformers.exporters as exporters

    config_class = getattr(exporters, fmt.config_class)
    tokens = torch.export.Dim("tokens", min=low, max=high)
    state = [None] * len(torch.utils._pytree.tree_leaves(sample_cache))  # the state's shapes are fixed
    prefill = {"input_ids": {1: tokens}, "position_ids": {1: tokens}, "cache": state}
    # OpenVINO would fold the state into variables inside each compiled model (`stateful`); the prefill and decode
    # programs are two models that must share it, so it stays their inputs and outputs, as in the other formats.
    extra = {"stateful": False} if fmt.name == "openvino" else {}
    return {"prefill": config_class(dynamic_shapes=prefill, quantizer=quantizer, **extra),
            "decode": config_class(quantizer=quantizer, **extra)}


@torch.no_grad()
def export_griffin(model, export_format: str, out: str | Path | None = None, max_prefill: int = DEFAULT_MAX_PREFILL,
                   quantize: str | None = None):
    """Exports `model` (a `GriffinForCausalLM`, batch 1) with Transformers' exporter for `export_format`.

    Args:
        model: the model, in the dtype the programs should run in.
        export_format: one of `formats.FORMATS` ("onnx", "executorch", "openvino", "dynamo").
        out: a folder to write (`ExportedModel.save_pretrained`, plus `griffin_export.json`); None writes nothing.
        max_prefill: the most prompt tokens one prefill call takes (longer prompts are run in chunks).
        quantize: a quantizer the format offers (`formats.FORMATS[...].quantizers`), or None.

    Returns:
        (`transformers.exporters.ExportedModel` with components "prefill" and "decode", info dict).

    Example:
        >>> exported, info = export_griffin(model, "onnx", "griffin-onnx")
        >>> ExportedGriffin.from_pretrained("griffin-onnx").generate(input_ids, max_new_tokens=20)
    """
    reason = exporters_available()
    if reason:
        raise ImportError(reason)
    fmt = get_format(export_format).require()
    quantizer = make_quantizer(fmt.name, quantize)
    low, high = prefill_limits(model.config, max_prefill)
    pytree.register()
    from transformers.exporters import AutoHfExporter

    model = model.eval()
    dtype, device = model.dtype, model.device
    if dtype != torch.float32:
        # Transformers' exporters cast every cache tensor to the model's dtype (`cast_leaf_tensors`); the RG-LRU
        # state is float32 whatever the model dtype, so a bfloat16 program would run with a rounded state.
        raise ValueError(f"only float32 models export for now, this one is {str(dtype).removeprefix('torch.')}: "
                         "Transformers' exporters cast the float32 RG-LRU state to the model's dtype "
                         "(load with dtype=torch.float32; docs/export.md)")
    cache = GriffinCache(model.config, batch_size=1, dtype=dtype, device=device)  # allocated: the prefill continues
    length = min(high, 2 * low + 1)  # a sample length inside the range, not a bound itself
    vocab = model.config.vocab_size
    ids = (torch.arange(length, device=device) % max(1, vocab - 4) + min(4, vocab - 1))[None]
    sample = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "cache": cache}
    configs = _configs(fmt, cache, low, high, quantizer)
    exporter = AutoHfExporter.from_config(configs["decode"])
    start = time.perf_counter()
    with exporters_fixed(), export_loop(fmt.loop):
        exported = exporter.export_for_generation(model, sample, configs)
    seconds = time.perf_counter() - start
    info = {"format": fmt.name, "loop": fmt.loop, "min_prefill": low, "max_prefill": high, "batch_size": 1,
            "dtype": str(dtype).removeprefix("torch."), "quantize": quantize, "export_seconds": round(seconds, 2),
            "state": state_layout(model.config, dtype)}
    if out is not None:
        save(exported, info, out)
    return exported, info


def state_layout(config, dtype) -> list[dict]:
    """The state tensors in program order: name (as `GriffinCache.state_dict()` and the ONNX inputs, with a
    `cache.` prefix there, name them), shape and dtype (what a C++ or mobile runner allocates)."""
    cache = GriffinCache(config, batch_size=1, dtype=dtype, device="meta")
    leaves, context = pytree.flatten(cache)
    return [{"name": name, "shape": list(leaf.shape), "dtype": str(leaf.dtype).removeprefix("torch.")}
            for name, leaf in zip(context["names"], leaves)]


def save(exported, info: dict, out: str | Path) -> Path:
    out = Path(out)
    for component in exported.components.values():
        drop_example_inputs(component.program)
    exported.save_pretrained(out)
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


__all__ = ["DEFAULT_MAX_PREFILL", "INFO_FILE", "export_griffin", "prefill_limits", "save", "state_layout"]

"""Weight-only int8 and int4 quantization of a Griffin model for CPU decoding, in torchao's formats.

    int8   torchao `Int8WeightOnlyConfig`: one float32 scale per output row.
    int4   torchao 0.18 `PrototypeInt4WeightOnlyConfig` (torch's CPU int4 pack): a bfloat16 scale and zero per
           group of `group_size` (32, 64, 128) inputs of each output row.

Every linear layer is quantized, the LM head included (its own copy when tied to the embedding, whose lookup stays
exact); the products then run through `griffin/cpu_quant_griffin.py` (1..16 rows) or torchao's own paths. A layer
torch's int4 pack cannot hold (outputs not a multiple of 16, or inputs not a multiple of the group) stays as it
is. Needs torchao (`pip install torchao`).

    >>> model = load_quantized("path/to/folder", "int4")            # quantizes while loading, tensor by tensor
    >>> model = quantize_model(GriffinForCausalLM(config), "int8")  # or a model already in memory
"""

import os

import torch
from torch import nn

FORMATS = ("int8", "int4")
GROUP_SIZES = (32, 64, 128)  # torchao's CPU int4 groups
DEFAULT_GROUP_SIZE = 128


def check_format(fmt: str, group_size: int = DEFAULT_GROUP_SIZE) -> None:
    """A clear error for an unknown format or group size, or where torchao is missing."""
    if fmt not in FORMATS:
        raise ValueError(f"quantization format must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "int4" and group_size not in GROUP_SIZES:
        raise ValueError(f"int4 group size must be one of {list(GROUP_SIZES)}, got {group_size!r}")
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise ImportError(f"{fmt} quantization needs torchao (from a clone of hf-recurrentgemma: pip install -e "
                          "'.[quantize]')") from None


def torchao_config(fmt: str, group_size: int = DEFAULT_GROUP_SIZE):
    """torchao's weight-only config for `fmt` ("int8", or "int4" with `group_size`)."""
    check_format(fmt, group_size)
    if fmt == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig()
    from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

    return PrototypeInt4WeightOnlyConfig(group_size=group_size)


def quantizable(layer: nn.Module, fmt: str, group_size: int = DEFAULT_GROUP_SIZE) -> bool:
    """Whether torchao's `fmt` layout can hold this linear layer's weight."""
    if not isinstance(layer, nn.Linear) or type(layer.weight) not in (torch.Tensor, nn.Parameter):
        return False
    out_features, in_features = layer.weight.shape
    return fmt == "int8" or (out_features % 16 == 0 and in_features % group_size == 0)


def untie_head(model) -> None:
    """Gives the LM head its own weight when it shares the embedding's, so quantizing the head leaves the lookup
    exact; the config then says the weights are untied (a saved folder stores both)."""
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is embedding.weight:
        _set_head_weight(model, embedding.weight.detach().clone())


def _set_head_weight(model, weight: torch.Tensor) -> None:
    model.get_output_embeddings().weight = nn.Parameter(weight, requires_grad=False)
    model.config.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = {}


# Rows of a weight quantized at a time by `quantize_rows` (a multiple of torch's 64-row int4 block): the head of the
# 9B shape (256,000 x 4,096) quantized whole needed about 7 GB of float32 temporaries beside the model.
CHUNK_ROWS = 16384
# The dimension along which each inner tensor of torchao's weights holds the output rows.
_ROW_DIMS = {"Int8Tensor": {"qdata": 0, "scale": 0, "zero_point": 0},
             "Int4OpaqueTensor": {"qdata": 0, "scale_and_zero": 1}}


def quantize_rows(weight: torch.Tensor, fmt: str, group_size: int = DEFAULT_GROUP_SIZE,
                  chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """torchao's `fmt` tensor for a (N, K) weight, quantized `chunk_rows` output rows at a time and joined (both
    formats quantize each output row on its own, so the result equals quantizing it whole: tested). The weight is
    only read, so a head tied to the embedding needs no full-precision copy."""
    from torchao.quantization import quantize_

    if chunk_rows <= 0 or chunk_rows % 64:
        raise ValueError(f"chunk_rows must be a positive multiple of 64 (torch's int4 block), got {chunk_rows}")
    config = torchao_config(fmt, group_size)
    n, k = weight.shape
    parts = []
    with torch.no_grad():
        for n0 in range(0, n, chunk_rows):
            piece = nn.Linear(k, min(n, n0 + chunk_rows) - n0, bias=False, device="meta")
            piece.weight = nn.Parameter(weight[n0:n0 + chunk_rows].detach().clone(), requires_grad=False)
            quantize_(piece, config)
            parts.append(piece.weight)
    if len(parts) == 1:
        return parts[0].data if isinstance(parts[0], nn.Parameter) else parts[0]
    kind = type(parts[0]).__name__
    if kind not in _ROW_DIMS:
        raise TypeError(f"cannot join quantized row chunks of type {kind} (torchao changed its layouts?)")
    names, context = parts[0].__tensor_flatten__()
    inner = {}
    for name in names:
        pieces = [getattr(part, name) for part in parts]
        inner[name] = None if pieces[0] is None else torch.cat(pieces, _ROW_DIMS[kind][name])
    if isinstance(context, dict) and "shape" in context:
        context = {**context, "shape": torch.Size((n, k))}
    return type(parts[0]).__tensor_unflatten__(inner, context, torch.Size((n, k)), None)


def quantize_head(model, fmt: str, group_size: int = DEFAULT_GROUP_SIZE) -> None:
    """Quantizes the LM head in row chunks (`quantize_rows`), untied from the embedding, whose lookup stays
    exact; a head the format cannot hold stays as it is."""
    head = model.get_output_embeddings()
    if head is not None and quantizable(head, fmt, group_size):
        _set_head_weight(model, quantize_rows(head.weight, fmt, group_size))


def quantize_model(model, fmt: str, group_size: int = DEFAULT_GROUP_SIZE, head: bool = True):
    """Quantizes every linear layer of `model` in place with torchao's `quantize_()` (the head too when `head`,
    after untying it); returns the model. Weights are quantized from their dtype now (bfloat16 is what the int4
    layout stores its scales in)."""
    from torchao.quantization import quantize_

    config = torchao_config(fmt, group_size)
    skip = {id(model.get_output_embeddings())}  # the head: in row chunks below
    with torch.no_grad():
        quantize_(model, config,
                  filter_fn=lambda module, name: id(module) not in skip and quantizable(module, fmt, group_size))
    if head:
        quantize_head(model, fmt, group_size)
    return model


def quantization_config(model_config, fmt: str, group_size: int = DEFAULT_GROUP_SIZE):
    """Transformers' `TorchAoConfig` for `from_pretrained(..., quantization_config=...)`: every linear layer of a
    model with `model_config` that the format can hold (layers it cannot hold are listed as not to convert).
    Transformers leaves the tied head alone; `load_quantized` quantizes it afterwards."""
    from transformers import TorchAoConfig

    from .griffin.modeling_griffin import GriffinForCausalLM

    with torch.device("meta"):
        skeleton = GriffinForCausalLM(model_config)
    keep = [name for name, module in skeleton.named_modules()
            if isinstance(module, nn.Linear) and not quantizable(module, fmt, group_size)]
    return TorchAoConfig(torchao_config(fmt, group_size), modules_to_not_convert=keep or None)


def load_quantized(path, fmt: str, group_size: int = DEFAULT_GROUP_SIZE, dtype=torch.bfloat16, **kwargs):
    """A `GriffinForCausalLM` from `path` with every linear layer quantized to `fmt` as its tensor loads, the head
    from the embedding in row chunks (`quantize_head`; the lookup stays exact). `dtype` is the activations' dtype
    and that of the layers left unquantized (the embedding, norms, recurrence).

    A local folder of full-precision safetensors with no other loading options is read shard by shard
    (`_load_streaming`): each tensor is copied out of its shard and quantized at once, and each shard's memory map
    is closed before the next opens, so peak memory stays near the quantized model plus one shard's pages.
    Anything else (a Hub name, a folder saved quantized, extra `from_pretrained` options) goes through
    `from_pretrained(..., quantization_config=TorchAoConfig(...))`, which also quantizes tensor by tensor but keeps
    the shards mapped while any tensor views them (their pages count in the process's resident memory: up to 12.6
    GiB of them when loading the 9B shape, docs/performance.md)."""
    from .griffin.configuration_griffin import GriffinConfig
    from .griffin.modeling_griffin import GriffinForCausalLM

    check_format(fmt, group_size)
    config = GriffinConfig.from_pretrained(path)
    shards = None if kwargs else _plain_shards(path, config)
    if shards is not None:
        model = _load_streaming(path, config, shards, fmt, group_size, dtype)
    else:
        model = GriffinForCausalLM.from_pretrained(path, dtype=dtype,
                                                   quantization_config=quantization_config(config, fmt, group_size),
                                                   **kwargs)
    quantize_head(model, fmt, group_size)
    return model.eval()


def _plain_shards(path, config) -> list | None:
    """The safetensors files of a local folder holding full-precision weights (no quantization_config), or None."""
    import json

    if not os.path.isdir(path) or getattr(config, "quantization_config", None):
        return None
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, name) for name in names]
    single = os.path.join(path, "model.safetensors")
    return [single] if os.path.isfile(single) else None


def _load_streaming(path, config, shards: list, fmt: str, group_size: int, dtype):
    """The model built on the meta device and filled shard by shard: every tensor copied out of its shard in
    `dtype` (the copy lets the shard's map close), each linear weight the format can hold quantized as soon as it
    is read; then the TorchAoConfig and its quantizer attached as `from_pretrained` attaches them, so the model
    saves as a quantized folder. Unknown, misshapen and missing tensors are errors naming them and the folder."""
    from safetensors import safe_open
    from torchao.quantization import quantize_
    from transformers import GenerationConfig
    from transformers.quantizers import AutoHfQuantizer

    from .griffin.modeling_griffin import GriffinForCausalLM

    with torch.device("meta"):
        model = GriffinForCausalLM(config)
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    expected = dict(model.named_parameters())  # a tied head appears once, as the embedding
    quant_config, seen = torchao_config(fmt, group_size), set()
    for shard in shards:
        with safe_open(shard, framework="pt") as f:
            for name in f.keys():
                if tied and name == "lm_head.weight":
                    continue  # the embedding's values (tied): the head is quantized from the embedding
                if name not in expected:
                    raise ValueError(f"{shard}: tensor {name!r} is not a parameter of this Griffin")
                tensor = f.get_tensor(name).to(dtype, copy=True)
                if tuple(tensor.shape) != tuple(expected[name].shape):
                    raise ValueError(f"{shard}: tensor {name!r} has shape {tuple(tensor.shape)}, the model expects "
                                     f"{tuple(expected[name].shape)}")
                owner_name, _, attribute = name.rpartition(".")
                owner = model.get_submodule(owner_name)
                setattr(owner, attribute, nn.Parameter(tensor, requires_grad=False))
                if attribute == "weight" and owner is not head and quantizable(owner, fmt, group_size):
                    with torch.no_grad():
                        quantize_(owner, quant_config, filter_fn=lambda module, _: module is owner)
                seen.add(name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise ValueError(f"the checkpoint in {path} lacks {len(missing)} tensors: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}")
    if tied:
        head.weight = model.get_input_embeddings().weight
    model.config.dtype = dtype
    model.config.quantization_config = quantization_config(config, fmt, group_size)
    model.hf_quantizer = AutoHfQuantizer.from_config(model.config.quantization_config, pre_quantized=False)
    if os.path.isfile(os.path.join(path, "generation_config.json")):
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


__all__ = ["DEFAULT_GROUP_SIZE", "FORMATS", "GROUP_SIZES", "check_format", "load_quantized", "quantization_config",
           "quantizable", "quantize_head", "quantize_model", "quantize_rows", "torchao_config", "untie_head"]

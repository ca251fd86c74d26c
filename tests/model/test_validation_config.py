"""Bad configs are refused at construction and when a config.json on disk carries them, naming the field, before
any weight is allocated."""

import json
import time

import pytest
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig

from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_attention_heads=4,
             block_types=["recurrent", "attention"], attention_window_size=6)

# (id, fields changed from SMALL, pattern the message must match: the field, and the value given)
BAD = [
    ("unknown-block-type", dict(block_types=["recurrent", "mlp"]), r"block_types: entries must be one of .*'mlp'"),
    ("block-types-string", dict(block_types="recurrent"), r"block_types"),
    ("block-types-empty", dict(block_types=[]), r"block_types must be a non-empty list"),
    ("layers-vs-block-types", dict(num_hidden_layers=3), r"num_hidden_layers=3 but block_types has 2 entries"),
    ("width-vs-heads", dict(hidden_size=30), r"hidden_size=30 is not divisible by num_attention_heads=4"),
    ("lru-width-vs-heads", dict(lru_width=30), r"lru_width=30 is not divisible by num_attention_heads=4"),
    ("odd-head-dim", dict(hidden_size=36, intermediate_size=48), r"head_dim=9 times partial_rotary_factor=0.5"),
    ("rope-factor", dict(partial_rotary_factor=1.5), r"partial_rotary_factor must be in \(0, 1\], got 1.5"),
    ("rope-theta", dict(rope_theta=0.0), r"rope_theta must be > 0, got 0.0"),
    ("window-zero", dict(attention_window_size=0), r"attention_window_size must be a positive integer, got 0"),
    ("window-negative", dict(attention_window_size=-3), r"attention_window_size must be a positive integer, got -3"),
    ("window-huge", dict(attention_window_size=1 << 30), r"attention_window_size must be <= 1048576"),
    ("conv-width", dict(conv1d_width=0), r"conv1d_width must be a positive integer, got 0"),
    ("kv-heads", dict(num_key_value_heads=2), r"num_key_value_heads must be 1"),
    ("soft-cap", dict(logits_soft_cap=-1.0), r"logits_soft_cap must be >= 0"),
    ("soft-cap-nan", dict(logits_soft_cap=float("nan")), r"logits_soft_cap must be a finite number, got nan"),
    ("eps", dict(rms_norm_eps=0.0), r"rms_norm_eps must be > 0"),
    ("scan-backend", dict(scan_backend="cuda"), r"scan_backend must be one of .*'cuda'"),
    ("huge-vocab", dict(vocab_size=10**12), r"vocab_size=1000000000000.* parameters, more than the 1e\+11 allowed"),
    ("huge-width", dict(hidden_size=1 << 20, intermediate_size=1 << 20), r"hidden_size=1048576.* parameters"),
    ("vocab-type", dict(vocab_size="97"), r"vocab_size"),
    ("width-type", dict(hidden_size=32.0), r"hidden_size"),
]


def _one_line(err: Exception) -> str:
    """The message without the header line that huggingface_hub's @strict puts above a validator's error
    ("Class validation error for validator 'validate_architecture':" or "Validation error for field 'x':")."""
    lines = [line.strip() for line in str(err).strip().splitlines()]
    if len(lines) == 2 and lines[0].endswith(":") and "error for" in lines[0]:
        lines = lines[1:]
    assert len(lines) == 1, f"not a one-line error: {str(err)!r}"
    return lines[0]


@pytest.mark.parametrize("change, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_construction_names_the_field(change, pattern):
    with pytest.raises(StrictDataclassError, match=pattern) as info:
        GriffinConfig(**{**SMALL, **change})
    _one_line(info.value)


@pytest.mark.parametrize("change, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_config_json_from_disk_names_the_field(change, pattern, tmp_path):
    """The same errors when the bad value arrives in a config.json, through every way of reading it, including a
    full model load (which must fail in the config, before allocating: the huge cases would need terabytes)."""
    GriffinConfig(**SMALL).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.update(change)
    if "block_types" in change:
        data.pop("num_hidden_layers")
    (tmp_path / "config.json").write_text(json.dumps(data))
    for load in (GriffinConfig.from_pretrained, AutoConfig.from_pretrained, GriffinForCausalLM.from_pretrained):
        start = time.perf_counter()
        with pytest.raises(StrictDataclassError, match=pattern) as info:
            load(tmp_path)
        _one_line(info.value)
        assert time.perf_counter() - start < 10, f"{load.__qualname__} took long to refuse"


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match=r"unknown preset 'griffin-2b'; known presets: \[.*'recurrentgemma-2b'"):
        GriffinConfig.from_preset("griffin-2b")


def test_parameter_estimate_matches_the_model():
    """The bound on sizes reads an estimate; it must be the real count up to biases and norms (< 0.5 %)."""
    import torch

    for name in ("recurrentgemma-2b", "recurrentgemma-9b", "griffin-7b", "hawk-7b"):
        config = GriffinConfig.from_preset(name)
        with torch.device("meta"):
            real = GriffinForCausalLM(config).num_parameters()
        assert abs(config.num_parameters_estimate() - real) / real < 5e-3, name


def test_valid_edge_values_are_accepted():
    GriffinConfig(**{**SMALL, "conv1d_width": 1, "attention_window_size": 1, "partial_rotary_factor": 1.0})
    GriffinConfig(**{**SMALL, "block_types": ["recurrent"], "logits_soft_cap": 0.0})


@pytest.mark.parametrize("layers", [0, 10**12])
def test_layer_count_is_checked_before_the_layout_is_built(layers, tmp_path):
    """Without block_types the layout is built from num_hidden_layers: 1e12 must fail at once, not fill memory."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"num_hidden_layers must be in \[1, 100000\], got {layers}"):
        GriffinConfig(num_hidden_layers=layers)
    data = {"model_type": "griffin", "num_hidden_layers": layers}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="num_hidden_layers must be in"):
        AutoConfig.from_pretrained(tmp_path)
    assert time.perf_counter() - start < 5


def test_dtype_that_names_no_torch_dtype(tmp_path):
    """Found by tests/model/test_fuzz.py: a config.json `dtype` of "\\r" made PreTrainedConfig raise an AttributeError
    naming no field."""
    with pytest.raises(ValueError, match=r"dtype must name a torch dtype \(e.g. 'bfloat16'\), got 'float31'"):
        GriffinConfig(**SMALL, dtype="float31")
    GriffinConfig(**SMALL).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**data, "dtype": "\r"}))
    with pytest.raises(ValueError, match=r"dtype must name a torch dtype"):
        GriffinForCausalLM.from_pretrained(tmp_path)
    assert GriffinConfig(**SMALL, dtype="bfloat16").dtype is not None


def test_embedding_scale_equals_torch_bfloat16_rounding_for_every_width():
    """The reference multiplies embeddings by `torch.tensor(sqrt(D)).type(torch.bfloat16)`: sqrt rounded to
    float32, then to bfloat16 to nearest-even. Every width up to 16384 must give torch's own value, including the
    widths where truncating to bfloat16 would differ (48: sqrt = 6.928, truncated 6.90625, rounded 6.9375)."""
    import math

    import torch

    from hf_recurrentgemma.griffin.configuration_griffin import _round_to_bfloat16

    widths = torch.arange(1, 16385)
    expected = torch.sqrt(widths.double()).float().to(torch.bfloat16).float()
    ours = torch.tensor([_round_to_bfloat16(math.sqrt(w)) for w in range(1, 16385)])
    bad = (ours != expected).nonzero().flatten()
    assert bad.numel() == 0, f"widths {[int(widths[i]) for i in bad[:5]]} differ from torch's bfloat16 rounding"
    truncated = (torch.sqrt(widths.float()).view(torch.int32) & -65536).view(torch.float32)
    assert (truncated != expected).sum() > 1000, "too few widths where truncation and rounding differ"
    for width in (48, 2560, 4096, 32):
        config = GriffinConfig(**{**SMALL, "hidden_size": width, "intermediate_size": 8, "num_attention_heads": 4})
        assert config.embedding_scale == torch.tensor(math.sqrt(width)).type(torch.bfloat16).item(), width
    assert GriffinConfig(**{**SMALL, "hidden_size": 48, "num_attention_heads": 4}).embedding_scale == 6.9375

"""A folder exported by `export_builtin` carries what the other readers of RecurrentGemma read: Transformers'
built-in class, mlx-lm (`mlx_lm/models/recurrent_gemma.py`) and candle
(`candle-transformers/src/models/recurrent_gemma.rs`). Neither MLX (Apple silicon) nor a Rust toolchain with candle
runs here, so the contract is checked as those readers state it in their source (docs/interop.md lists what each
reads, from which file): the config fields they require, and every tensor they load, by name and shape. mlx-lm
loads strictly (a tensor it does not expect is an error), so the tensor set must be exactly theirs.
"""

import json

import pytest
import torch
from transformers import RecurrentGemmaForCausalLM

from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM
from hf_recurrentgemma.convert import export_builtin
from reference_helpers import assert_close, folder_tensors

# mlx-lm ModelArgs: the fields without a default (rope_theta may come from rope_parameters only in __post_init__,
# after the dataclass constructor already required it), and block_types or its alias _block_types.
MLX_REQUIRED = {"model_type": str, "attention_bias": bool, "conv1d_width": int, "hidden_size": int,
                "intermediate_size": int, "logits_soft_cap": float, "num_attention_heads": int,
                "num_hidden_layers": int, "num_key_value_heads": int, "rms_norm_eps": float, "rope_theta": float,
                "attention_window_size": int, "vocab_size": int, "block_types": list}
# candle Config: every field but the Option `lru_width` and `max_seq_len` (serde default).
CANDLE_REQUIRED = {"num_hidden_layers": int, "vocab_size": int, "hidden_size": int, "intermediate_size": int,
                   "num_attention_heads": int, "num_key_value_heads": int, "head_dim": int,
                   "attention_window_size": int, "conv1d_width": int, "logits_soft_cap": float,
                   "hidden_activation": str, "partial_rotary_factor": float, "rms_norm_eps": float,
                   "rope_theta": float, "block_types": list, "attention_bias": bool}
CANDLE_ACTIVATIONS = {"gelu_pytorch_tanh"}  # candle_nn::Activation's alias for GeluPytorchTanh (tanh GELU)


def readers_tensors(c: dict) -> dict[str, tuple]:
    """Every tensor mlx-lm and candle load for a built-in config dict `c`, with its shape, as their model code
    builds it (written from their source, independently of our key map): both put the model under `model.`, repeat
    `block_types` over the layers, use an MLP width of intermediate_size // 2, take `lm_head` from the embedding when
    the checkpoint has none, and give the MLP, linear_x/y/out, conv_1d and o_proj a bias (q/k/v: attention_bias)."""
    d, heads, hd, k = c["hidden_size"], c["num_attention_heads"], c["head_dim"], c["conv1d_width"]
    lru, f, kv = c.get("lru_width") or d, c["intermediate_size"] // 2, c["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], d), "model.final_norm.weight": (d,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "temporal_pre_norm.weight": (d,), p + "channel_pre_norm.weight": (d,)}
        for name, shape in (("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))):
            shapes |= {p + f"mlp_block.{name}.weight": shape, p + f"mlp_block.{name}.bias": (shape[0],)}
        t = p + "temporal_block."
        if c["block_types"][i % len(c["block_types"])] == "recurrent":
            for name, shape in (("linear_x", (lru, d)), ("linear_y", (lru, d)), ("linear_out", (d, lru))):
                shapes |= {t + f"{name}.weight": shape, t + f"{name}.bias": (shape[0],)}
            shapes |= {t + "conv_1d.weight": (lru, 1, k), t + "conv_1d.bias": (lru,),  # groups = lru_width
                       t + "rg_lru.recurrent_param": (lru,)}
            for gate in ("input_gate", "recurrent_gate"):
                shapes |= {t + f"rg_lru.{gate}_weight": (heads, lru // heads, lru // heads),
                           t + f"rg_lru.{gate}_bias": (heads, lru // heads)}
        else:
            shapes |= {t + "q_proj.weight": (heads * hd, d), t + "k_proj.weight": (kv * hd, d),
                       t + "v_proj.weight": (kv * hd, d), t + "o_proj.weight": (d, heads * hd),
                       t + "o_proj.bias": (d,)}
            if c["attention_bias"]:
                shapes |= {t + f"{n}_proj.bias": (s,) for n, s in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd))}
    return shapes


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Our tiny model (perturbed, 5 layers of both kinds), saved and exported to the built-in format."""
    root = tmp_path_factory.mktemp("interop")
    config = GriffinConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                           attention_window_size=6, block_types=["recurrent", "recurrent", "attention"] * 2)
    torch.manual_seed(0)
    model = GriffinForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.save_pretrained(root / "ours")
    export_builtin(root / "ours", root / "builtin")
    return model, root


@pytest.mark.parametrize("reader,required", [("mlx-lm", MLX_REQUIRED), ("candle", CANDLE_REQUIRED)])
def test_export_config_has_every_field_the_reader_requires(exported, reader, required):
    _, root = exported
    c = json.loads((root / "builtin" / "config.json").read_text())
    for key, kind in required.items():
        assert key in c, f"{reader} requires {key!r}; the exported config.json lacks it"
        value = c[key]
        assert isinstance(value, kind) or (kind is float and isinstance(value, int)), f"{reader}: {key}={value!r}"
    assert c["model_type"] == "recurrent_gemma"  # how mlx-lm picks its recurrent_gemma module
    assert set(c["block_types"]) <= {"recurrent", "attention"}  # candle's TemporalBlockType, snake_case
    assert c["hidden_activation"] in CANDLE_ACTIVATIONS
    assert c["partial_rotary_factor"] == 0.5  # candle refuses any other value
    # The top-level values agree with Transformers 5.x's rope_parameters (the same model for every reader).
    assert c["rope_theta"] == c["rope_parameters"]["rope_theta"]
    assert c["partial_rotary_factor"] == c["rope_parameters"]["partial_rotary_factor"]
    # mlx-lm builds recurrent blocks with lru_width = hidden_size; the released RecurrentGemma models have that.
    assert c["lru_width"] == c["hidden_size"]


def test_export_holds_exactly_the_tensors_the_readers_load(exported):
    model, root = exported
    c = json.loads((root / "builtin" / "config.json").read_text())
    expected = readers_tensors(c)
    tensors = folder_tensors(root / "builtin")
    assert set(tensors) == set(expected), (
        f"missing: {sorted(set(expected) - set(tensors))[:5]}, extra: {sorted(set(tensors) - set(expected))[:5]}")
    for key, shape in expected.items():
        assert tuple(tensors[key].shape) == shape, f"{key}: {tuple(tensors[key].shape)} != {shape}"
        assert tensors[key].dtype == torch.float32
    # Values, not just names: conv taps land where nn.Conv1d(groups=L) (candle, and mlx-lm after its moveaxis)
    # reads them, so tap K-1 (ours: the current token) is the last of the kernel axis.
    ours = model.model.layers[0].temporal_block.conv_1d.weight  # (K, L)
    assert torch.equal(tensors["model.layers.0.temporal_block.conv_1d.weight"][:, 0, :], ours.T)
    assert torch.equal(tensors["model.layers.0.temporal_block.rg_lru.recurrent_param"],
                       model.model.layers[0].temporal_block.rg_lru.a_param)


def test_builtin_class_computes_ours_and_the_round_trip_is_exact(exported, tmp_path):
    model, root = exported
    builtin = RecurrentGemmaForCausalLM.from_pretrained(root / "builtin").eval()
    tokens = torch.randint(0, 97, (2, 5))  # shorter than the window: the built-in masks the window differently
    with torch.no_grad():
        assert_close(builtin(tokens).logits, model(tokens).logits, what="built-in class logits")
    # ours -> built-in -> ours: the same config and bit-identical tensors.
    back = GriffinForCausalLM.from_pretrained(root / "builtin")
    for field in ("attention_window_size", "block_types", "lru_width", "intermediate_size", "logits_soft_cap",
                  "embeddings_scale_by_sqrt_dim", "rope_theta", "partial_rotary_factor", "vocab_size", "hidden_size",
                  "num_attention_heads", "conv1d_width", "rms_norm_eps"):
        assert getattr(back.config, field) == getattr(model.config, field), field
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name

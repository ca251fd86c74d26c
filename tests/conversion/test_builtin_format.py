"""Transformers' built-in `recurrent_gemma` format: key map, configs (today's and 4.40's), export, read-back,
`from_pretrained` of built-in folders, and bad inputs.

Built-in models here are `transformers.RecurrentGemmaForCausalLM` in float32 with perturbed weights. Its window
`W` sees `W - 1` previous tokens where the reference sees `W`: sequences shorter than the window agree whatever
the window, longer ones agree only when the built-in is given `W + 1` (what the export writes).
"""

import json
import os
from pathlib import Path

import pytest
import torch
from reference_helpers import (
    CASE_IDS,
    CASES,
    LOGIT_TOL,
    Case,
    assert_close,
    max_error,
    our_config,
    reference_and_ours,
    reference_logits,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, RecurrentGemmaConfig, RecurrentGemmaForCausalLM
from transformers.utils import logging as hf_logging

from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM, GriffinModel
from hf_recurrentgemma.convert.builtin import (
    EXPORT_MARKER,
    BuiltinSource,
    builtin_dict_from_griffin,
    builtin_to_ours,
    config_from_builtin,
    export_builtin,
    ours_to_builtin,
)
from hf_recurrentgemma.convert.errors import ConversionError, KeyMismatchError

R, A = CASES[0].block_types[0], CASES[0].block_types[2]
NOCAP = Case("griffin-nocap", (R, A, R), soft_cap=0.0, window=4)
EXPORTABLE = [c for c in CASES if c.scale_embeddings] + [NOCAP]  # the built-in always scales embeddings
BOOKKEEPING = ("architectures", "auto_map", "transformers_version", "_name_or_path")

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


def perturbed_builtin(window=6, layers=6, soft_cap=30.0, seed=0) -> RecurrentGemmaForCausalLM:
    torch.manual_seed(seed)
    config = RecurrentGemmaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=96, num_attention_heads=4, num_key_value_heads=1,
        num_hidden_layers=layers, block_types=["recurrent", "recurrent", "attention"], attention_window_size=window,
        logits_soft_cap=soft_cap,
    )
    model = RecurrentGemmaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def ours_from_state(config: GriffinConfig, state: dict) -> GriffinForCausalLM:
    model = GriffinForCausalLM(config).eval()
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model


@torch.no_grad()
def logits(model, ids):
    return model(ids, use_cache=False).logits


def tokens(case_or_vocab, length, seed=1):
    torch.manual_seed(seed)
    vocab = getattr(case_or_vocab, "vocab_size", case_or_vocab)
    return torch.randint(0, vocab, (2, length))


def comparable(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING}


def leftovers(parent) -> list[str]:
    """Staging folders left beside an output (`OutputFolder` stages in `.<name>.tmp-*`)."""
    return sorted(e for e in os.listdir(parent) if ".tmp-" in e)


def is_builtin_folder(path) -> bool:
    return BuiltinSource.detect(Path(path)) is not None


def read_builtin_folder(path):
    """(our config, {our name: tensor}) of a built-in folder, every key and shape checked first."""
    with BuiltinSource(path) as source:
        config = source.config()
        return config, dict(source.tensors(config))


# --- key map ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_key_map_round_trip(case):
    _, ours = reference_and_ours(case)
    state = {k: v for k, v in ours.state_dict().items() if k != "lm_head.weight"}
    builtin = ours_to_builtin(state, ours.config)
    back = builtin_to_ours(builtin, ours.config)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    if case.scale_embeddings:  # the names and shapes are exactly those of the built-in model
        config = RecurrentGemmaConfig.from_dict(builtin_dict_from_griffin(ours.config))
        expected = {k: tuple(v.shape) for k, v in RecurrentGemmaForCausalLM(config).state_dict().items()}
        expected.pop("lm_head.weight")
        assert {k: tuple(v.shape) for k, v in builtin.items()} == expected


def test_builtin_model_equals_ours_shorter_than_window():
    builtin = perturbed_builtin(window=6)
    config = config_from_builtin(builtin.config.to_dict())
    ours = ours_from_state(config, builtin_to_ours(builtin.state_dict(), config))
    short = tokens(97, 6)  # the last query sees 5 previous tokens: within both windows
    assert_close(logits(ours, short), logits(builtin, short))
    # Longer, the built-in's window of 6 sees 5 previous tokens, ours 6: a real difference, not noise.
    long = tokens(97, 20)
    assert max_error(logits(ours, long), logits(builtin, long)) > 100 * LOGIT_TOL


@pytest.mark.parametrize("case", EXPORTABLE, ids=[c.name for c in EXPORTABLE])
def test_chain_reference_ours_builtin_ours(case):
    """reference -> ours -> built-in (window W + 1) -> ours: still the reference's function, beyond the window."""
    ref, ours = reference_and_ours(case)
    ids = tokens(case, 3 * case.window + 5)
    expected = reference_logits(ref, ids, torch.arange(ids.shape[1]).expand_as(ids))
    assert_close(logits(ours, ids), expected, what="ours vs reference")
    builtin_config = RecurrentGemmaConfig.from_dict(builtin_dict_from_griffin(ours.config))
    builtin = RecurrentGemmaForCausalLM(builtin_config).eval()
    state = ours_to_builtin({k: v for k, v in ours.state_dict().items() if k != "lm_head.weight"}, ours.config)
    builtin.load_state_dict(state, strict=False)
    builtin.tie_weights()
    assert_close(logits(builtin, ids), expected, what="built-in (W + 1) vs reference")
    config = config_from_builtin(builtin_config.to_dict())
    assert comparable(config) == comparable(ours.config)
    again = ours_from_state(config, builtin_to_ours(builtin.state_dict(), config))
    assert torch.equal(logits(again, ids), logits(ours, ids))


# --- configs ---------------------------------------------------------------------------------------------------------

def config_440(**changes) -> dict:
    """config.json as Transformers 4.40 wrote it (every attribute its __init__ set, `torch_dtype`, top-level rope
    fields, `block_types` a pattern repeated over `num_hidden_layers`): here a tiny recurrentgemma-2b."""
    config = {
        "architectures": ["RecurrentGemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "attention_window_size": 6, "block_types": ["recurrent", "recurrent", "attention"], "bos_token_id": 2,
        "conv1d_width": 4, "embeddings_scale_by_sqrt_dim": True, "eos_token_id": 1,
        "final_w_init_variance_scale": 0.3333333333333333, "head_dim": 8, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 32, "intermediate_size": 96, "logits_soft_cap": 30.0, "lru_width": 32,
        "model_type": "recurrent_gemma", "num_attention_heads": 4, "num_hidden_layers": 6, "num_key_value_heads": 1,
        "pad_token_id": 0, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "torch_dtype": "float32", "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": 97,
        "w_init_variance_scale": 0.01,
    }
    config.update(changes)
    return config


def test_config_440_translation():
    config = config_from_builtin(config_440())
    assert config.block_types == ["recurrent", "recurrent", "attention"] * 2 and config.num_hidden_layers == 6
    assert (config.hidden_size, config.intermediate_size, config.lru_width) == (32, 48, 32)  # MLP width halved
    assert config.attention_window_size == 6  # the reference meaning, as the Hub repos' 2048
    assert (config.rope_theta, config.partial_rotary_factor, config.logits_soft_cap) == (10000.0, 0.5, 30.0)
    assert config.embeddings_scale_by_sqrt_dim and config.num_key_value_heads == 1
    assert str(config.dtype).endswith("float32")
    # 4.40 never wrote embeddings_scale_by_sqrt_dim (it always scaled); a 7-layer model repeats the pattern.
    no_scale = config_440(num_hidden_layers=7, partial_rotary_factor=0.25, rope_theta=500.0)
    del no_scale["embeddings_scale_by_sqrt_dim"]
    config = config_from_builtin(no_scale)
    assert config.block_types[-1] == "recurrent" and config.embeddings_scale_by_sqrt_dim
    assert (config.rope_theta, config.partial_rotary_factor) == (500.0, 0.25)


def test_config_today_round_trip():
    ours = our_config(CASES[1])
    written = RecurrentGemmaConfig.from_dict(builtin_dict_from_griffin(ours)).to_dict()
    assert "rope_parameters" in written and "rope_theta" not in written  # today's layout
    assert written["attention_window_size"] == ours.attention_window_size + 1
    assert written[EXPORT_MARKER] == {"attention_window_size": ours.attention_window_size}
    assert comparable(config_from_builtin(written)) == comparable(ours)


@pytest.mark.parametrize("change, message", [
    ({"num_key_value_heads": 4}, "num_key_value_heads=4"),
    ({"hidden_activation": "gelu"}, "hidden_activation='gelu'"),
    ({"attention_bias": True}, "attention_bias"),
    ({"intermediate_size": 95}, "intermediate_size=95"),
    ({"embeddings_scale_by_sqrt_dim": False}, "embeddings_scale_by_sqrt_dim"),
    ({"head_dim": 16}, "head_dim=16"),
    ({EXPORT_MARKER: {"attention_window_size": 6}}, "griffin_export says attention_window_size=6 was exported as 7"),
    ({EXPORT_MARKER: {"embeddings_scale_by_sqrt_dim": False}}, "cannot undo"),
])
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        config_from_builtin(config_440(**change))


# --- folders ---------------------------------------------------------------------------------------------------------

def write_builtin_folder(folder, model, config_dict=None, shard="20KB"):
    model.save_pretrained(folder, max_shard_size=shard)
    if config_dict is not None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config_dict, f)
    return str(folder)


def test_read_440_folder_equals_builtin(tmp_path):
    builtin = perturbed_builtin(window=6)
    folder = write_builtin_folder(tmp_path / "bi", builtin, config_440())
    assert is_builtin_folder(folder) and not is_builtin_folder(tmp_path)
    config, state = read_builtin_folder(folder)
    ours = ours_from_state(config, state)
    short = tokens(97, 6)
    assert_close(logits(ours, short), logits(builtin, short))
    loaded = GriffinForCausalLM.from_pretrained(folder)
    assert type(loaded) is GriffinForCausalLM and loaded.config.model_type == "griffin"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("case", EXPORTABLE, ids=[c.name for c in EXPORTABLE])
def test_export_loads_in_builtin_and_reads_back_exactly(case, tmp_path):
    _, ours = reference_and_ours(case)
    ours.save_pretrained(tmp_path / "ours")
    (tmp_path / "ours" / "tokenizer_config.json").write_text("{}")
    out = export_builtin(tmp_path / "ours", tmp_path / "bi", max_shard_size="20KB")
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json")) and not leftovers(tmp_path)
    assert "tokenizer_config.json" in os.listdir(out)  # copied; our remote code is not
    assert not any(name.endswith(".py") for name in os.listdir(out))
    builtin = RecurrentGemmaForCausalLM.from_pretrained(out).eval()
    ids = tokens(case, 3 * case.window + 5)  # well past the window
    assert_close(logits(builtin, ids), logits(ours, ids), what="built-in export vs ours")
    config, state = read_builtin_folder(out)
    saved = load_file(os.path.join(tmp_path, "ours", "model.safetensors"))
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert comparable(config) == comparable(GriffinConfig.from_pretrained(tmp_path / "ours"))


def test_export_refuses_unscaled_embeddings(tmp_path):
    _, hawk = reference_and_ours(CASES[2])
    hawk.save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match="embeddings_scale_by_sqrt_dim"):
        export_builtin(tmp_path / "ours", tmp_path / "bi")
    assert not os.path.exists(tmp_path / "bi") and not leftovers(tmp_path)


def test_from_pretrained_builtin_equals_reference(tmp_path):
    case = CASES[0]
    ref, ours = reference_and_ours(case)
    ours.save_pretrained(tmp_path / "ours")
    export_builtin(tmp_path / "ours", tmp_path / "bi", max_shard_size="20KB")
    ids = tokens(case, 3 * case.window + 5)
    expected = reference_logits(ref, ids, torch.arange(ids.shape[1]).expand_as(ids))
    loaded = GriffinForCausalLM.from_pretrained(tmp_path / "bi")
    assert type(loaded) is GriffinForCausalLM and loaded.config.attention_window_size == case.window
    assert_close(logits(loaded, ids), expected)
    # AutoModelForCausalLM keeps the built-in class for a built-in folder; with our config it gives ours.
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "bi")) is RecurrentGemmaForCausalLM
    config = GriffinConfig.from_pretrained(tmp_path / "bi", use_cache=False)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "bi", config=config)
    assert type(auto) is GriffinForCausalLM and not auto.config.use_cache
    # Saving writes our names and shapes, not the built-in's.
    loaded.save_pretrained(tmp_path / "resaved")
    with safe_open(os.path.join(tmp_path, "resaved", "model.safetensors"), "pt") as f:
        assert "model.layers.0.mlp.gate_proj.weight" in f.keys()
        assert f.get_slice("model.layers.0.temporal_block.conv_1d.weight").get_shape() == [4, case.width]
    assert json.load(open(tmp_path / "resaved" / "config.json"))["model_type"] == "griffin"
    assert_close(logits(GriffinForCausalLM.from_pretrained(tmp_path / "resaved"), ids), expected)
    # The trunk alone loads from the same folder (the built-in's "model." prefix is the base-model prefix).
    trunk = GriffinModel.from_pretrained(tmp_path / "bi").eval()
    assert type(trunk) is GriffinModel
    with torch.no_grad():
        assert torch.equal(trunk(ids).last_hidden_state, loaded.model(ids).last_hidden_state)


# --- bad inputs ------------------------------------------------------------------------------------------------------

@pytest.fixture
def builtin_folder(tmp_path):
    """A one-file built-in folder of a 3-layer model (R, R, A), and its state dict."""
    model = perturbed_builtin(layers=3)
    folder = write_builtin_folder(tmp_path / "bi", model, shard="1GB")
    return folder, load_file(os.path.join(folder, "model.safetensors"))


CONV = "model.layers.0.temporal_block.conv_1d.weight"


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("model.layers.1.mlp_block.up_proj.bias"), r"missing key .*'model.layers.1.mlp_block.up_proj"),
    (lambda s: s.update(extra=torch.zeros(1)), r"unexpected key .*'extra'"),
    (lambda s: s.update({CONV: torch.zeros(32, 1, 5)}), r"conv_1d.weight' .*\(32, 1, 5\), expected \(32, 1, 4\)"),
])
def test_bad_weights_named_and_nothing_written(builtin_folder, edit, message):
    folder, state = builtin_folder
    edit(state)
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    with BuiltinSource(folder) as source, pytest.raises(KeyMismatchError, match=message):
        source.tensors(source.config())  # raises before reading any tensor


def test_truncated_safetensors_named(builtin_folder):
    folder, _ = builtin_folder
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 100])
    with pytest.raises(ValueError, match="model.safetensors: corrupt"):
        read_builtin_folder(folder)


def test_not_a_checkpoint(tmp_path, builtin_folder):
    with pytest.raises(ConversionError, match="no config.json"):
        read_builtin_folder(tmp_path)
    folder, _ = builtin_folder
    os.remove(os.path.join(folder, "model.safetensors"))
    with pytest.raises(ConversionError, match="no model.safetensors"):
        read_builtin_folder(folder)


def test_export_bad_source_leaves_nothing(tmp_path):
    _, ours = reference_and_ours(CASES[1])
    ours.save_pretrained(tmp_path / "ours")
    weights = os.path.join(tmp_path, "ours", "model.safetensors")
    state = load_file(weights)
    state.pop("model.final_norm.weight")
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(KeyMismatchError, match="'model.final_norm.weight'"):
        export_builtin(tmp_path / "ours", tmp_path / "bi")
    assert not os.path.exists(tmp_path / "bi") and not leftovers(tmp_path)
    with pytest.raises(ConversionError, match="holds the source"):
        export_builtin(tmp_path / "ours", tmp_path, force=True)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ConversionError, match="no config.json"):
        export_builtin(tmp_path / "empty", tmp_path / "bi")
    assert not os.path.exists(tmp_path / "bi") and not leftovers(tmp_path)


def test_export_existing_out_needs_force(tmp_path):
    _, ours = reference_and_ours(CASES[1])
    ours.save_pretrained(tmp_path / "ours")
    (tmp_path / "bi").mkdir()
    (tmp_path / "bi" / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="bi already exists; pass --force"):
        export_builtin(tmp_path / "ours", tmp_path / "bi")
    assert os.listdir(tmp_path / "bi") == ["keep.txt"] and not leftovers(tmp_path)
    export_builtin(tmp_path / "ours", tmp_path / "bi", force=True)
    assert "keep.txt" not in os.listdir(tmp_path / "bi") and is_builtin_folder(tmp_path / "bi")
    assert not leftovers(tmp_path)

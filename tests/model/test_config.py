import json

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError
from recurrentgemma import common

from hf_recurrentgemma import PRESETS, GriffinConfig

REFERENCE_PRESETS = {
    "recurrentgemma-2b": common.Preset.RECURRENT_GEMMA_2B_V1,
    "recurrentgemma-9b": common.Preset.RECURRENT_GEMMA_9B_V1,
    "griffin-7b": common.Preset.GRIFFIN_PAPER_7B,
    "hawk-7b": common.Preset.HAWK_PAPER_7B,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_PRESETS))
def test_presets_equal_the_reference(name):
    ref = common.GriffinConfig.from_preset(REFERENCE_PRESETS[name])
    ours = GriffinConfig.from_preset(name)
    assert (ours.vocab_size, ours.width, ours.mlp_expanded_width, ours.num_heads, ours.lru_width) == (
        ref.vocab_size, ref.width, ref.mlp_expanded_width, ref.num_heads, ref.lru_width)
    assert ours.block_types == [t.name.lower() for t in ref.block_types]
    assert ours.num_hidden_layers == ref.num_layers
    assert (ours.embeddings_scale_by_sqrt_dim, ours.attention_window_size, ours.logits_soft_cap) == (
        ref.embeddings_scale_by_sqrt_dim, ref.attention_window_size, ref.logits_soft_cap)


def test_it_presets_share_the_base_architecture():
    assert GriffinConfig.from_preset("recurrentgemma-2b-it").to_dict() == GriffinConfig.from_preset(
        "recurrentgemma-2b").to_dict()
    assert set(PRESETS) >= {"recurrentgemma-9b-it", "griffin-7b", "hawk-7b"}


def test_reference_names_are_aliases_and_json_round_trips(tmp_path):
    config = GriffinConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, lru_width=80,
                           block_types=["recurrent", "attention"], attention_window_size=8)
    assert (config.width, config.mlp_expanded_width, config.num_heads) == (64, 96, 4)
    assert config.head_dim == 16
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "griffin" and data["lru_width"] == 80 and data["num_hidden_layers"] == 2
    assert GriffinConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_embedding_scale_is_rounded_to_bfloat16():
    assert GriffinConfig.from_preset("recurrentgemma-2b").embedding_scale == 50.5  # sqrt(2560) = 50.596...
    assert GriffinConfig.from_preset("griffin-7b").embedding_scale == 1.0


@pytest.mark.parametrize("kwargs, field", [
    (dict(block_types=["recurrent", "mlp"]), "block_types"),
    (dict(block_types=["recurrent"], num_hidden_layers=3), "num_hidden_layers"),
    (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
    (dict(lru_width=30, num_attention_heads=4, hidden_size=32), "lru_width"),
    (dict(num_key_value_heads=2), "num_key_value_heads"),
    (dict(logits_soft_cap=-1.0), "logits_soft_cap"),
    (dict(attention_window_size=0), "attention_window_size"),
])
def test_validation_names_the_bad_field(kwargs, field):
    with pytest.raises(StrictDataclassClassValidationError, match=field):
        GriffinConfig(**kwargs)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="recurrentgemma-2b"):
        GriffinConfig.from_preset("gemma-7b")

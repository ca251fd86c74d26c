"""Saving, loading (with and without the package installed), Auto classes and pipelines."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from reference_helpers import (
    CASES,
    SAVED_FILES,
    assert_close,
    convert,
    our_config,
    reference_and_ours,
    save_torch_checkpoint,
    word_tokenizer,
)
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, pipeline

from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM, GriffinModel
from hf_recurrentgemma.griffin.compat_griffin import CACHE_NAME


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = GriffinForCausalLM(our_config(CASES[0])).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("griffin")
    model.save_pretrained(folder)
    return model, folder


def _ids(n=11):
    return torch.randint(0, 97, (2, n), generator=torch.Generator().manual_seed(0))


def test_save_load_round_trip(saved):
    model, folder = saved
    loaded = GriffinForCausalLM.from_pretrained(folder).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr(), "embeddings not tied"
    with torch.no_grad():
        assert torch.equal(model(_ids()).logits, loaded(_ids()).logits)
    strip = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert strip(loaded.config.to_dict()) == strip(model.config.to_dict())


def test_saved_folder_holds_exactly_the_model(saved):
    """Config, weights and the model's own code (auto_map): no loader or conversion code ships with a model."""
    _, folder = saved
    assert {p.name for p in folder.iterdir()} == SAVED_FILES
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "griffin"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_griffin.GriffinForCausalLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_griffin.GriffinConfig"


def test_auto_classes(saved):
    model, folder = saved
    assert isinstance(AutoConfig.from_pretrained(folder), GriffinConfig)
    assert isinstance(AutoModel.from_pretrained(folder), GriffinModel)
    auto = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(auto) is GriffinForCausalLM
    with torch.no_grad():
        assert torch.equal(auto(_ids()).logits, model(_ids()).logits)


def _folder(made_by: str, saved, tmp_path):
    """(folder, model it holds) written by save_pretrained, or by convert_checkpoint from a reference checkpoint."""
    if made_by == "save_pretrained":
        return saved[1], saved[0]
    case = CASES[0]
    save_torch_checkpoint(case, tmp_path / "src.pt")
    convert(tmp_path / "src.pt", tmp_path / "converted", case)
    return tmp_path / "converted", reference_and_ours(case)[1]


@pytest.mark.parametrize("made_by", ["save_pretrained", "convert_checkpoint"])
def test_remote_code_without_the_package(made_by, saved, tmp_path):
    """A folder loads with trust_remote_code where hf_recurrentgemma cannot be imported, gives the same logits
    and generates."""
    folder, model = _folder(made_by, saved, tmp_path)
    with torch.no_grad():
        expected = model(_ids()).logits
    torch.save({"ids": _ids(), "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(f"""
        import sys
        class Block:  # any import of the package now fails
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "hf_recurrentgemma":
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import torch
        from transformers import AutoModelForCausalLM
        data = torch.load({str(tmp_path / "io.pt")!r})
        model = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True,
                                                     dtype=torch.float32).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            err = (model(data["ids"]).logits - data["expected"]).abs().max().item()
        out = model.generate(data["ids"][:1], max_new_tokens=4, do_sample=False)
        assert "hf_recurrentgemma" not in sys.modules
        print("ERR", err, out.shape[1])
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("ERR")][-1]
    err, length = float(line.split()[1]), int(line.split()[2])
    assert err == 0.0 and length == 15


def test_text_generation_pipeline_with_left_padding(saved):
    _, folder = saved
    tokenizer = word_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    prompts = ["the river is long", "a small red ship of the old city in the night"]
    batched = generator(prompts, max_new_tokens=6, do_sample=False, batch_size=2)
    alone = [generator(p, max_new_tokens=6, do_sample=False) for p in prompts]
    assert [b[0]["generated_text"] for b in batched] == [a[0]["generated_text"] for a in alone]
    assert all(b[0]["generated_text"].startswith(p) for b, p in zip(batched, prompts))


def test_hidden_states_and_tuple_outputs(saved):
    model, _ = saved
    with torch.no_grad():
        out = model(_ids(), output_hidden_states=True)
        as_tuple = model(_ids(), return_dict=False, use_cache=False)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert torch.equal(as_tuple[0], out.logits)


def test_logits_to_keep(saved):
    model, _ = saved
    with torch.no_grad():
        full = model(_ids()).logits
        last = model(_ids(), logits_to_keep=1).logits
    assert_close(last, full[:, -1:])


def test_fresh_model_initialisation_follows_the_reference():
    torch.manual_seed(0)
    config = our_config(CASES[1])
    model = GriffinForCausalLM(config)
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        if name.endswith("norm.weight") or (name.endswith(".bias") and "gate_proj" not in name and "up_proj" not in name):
            assert torch.count_nonzero(p) == 0, f"{name} should start at zero"
    for layer in model.model.layers:
        if layer.block_type == "recurrent":
            base_decay = torch.exp(-torch.nn.functional.softplus(layer.temporal_block.rg_lru.a_param))
            assert base_decay.min() >= 0.9 - 1e-6 and base_decay.max() <= 0.999 + 1e-6
    assert abs(model.model.embed_tokens.weight.std().item() - config.hidden_size**-0.5) < 0.05


def test_eager_and_sdpa_attention_agree(saved):
    _, folder = saved
    sdpa = GriffinForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    eager = GriffinForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    ids = _ids(23)
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    with torch.no_grad():
        assert_close(eager(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits, tol=1e-5)


def test_unsupported_arguments_are_named(saved):
    model, _ = saved
    if CACHE_NAME == "cache":
        with pytest.raises(TypeError, match="past_key_values"):
            model(_ids(), past_key_values=None)
    else:  # before 5.24, generate() itself passes the cache as past_key_values (tests/model/test_compat_cache.py)
        model(_ids(), past_key_values=None)
    with pytest.raises(ValueError, match="output_attentions"):
        model(_ids(), output_attentions=True)
    with pytest.raises(ValueError, match="attention_mask"):
        model(_ids(), attention_mask=torch.ones(2, 3, 11, 11))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()


def test_inputs_embeds_equal_input_ids(saved):
    model, _ = saved
    with torch.no_grad():
        embeds = model.get_input_embeddings()(_ids())
        assert torch.equal(model(inputs_embeds=embeds).logits, model(_ids()).logits)


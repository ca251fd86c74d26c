"""`convert_checkpoint` from the PyTorch release's format (a `recurrentgemma.torch.Griffin` state dict), and the
command line over it."""

import json
import os
import sys

import pytest
import torch
from reference_helpers import (
    CASE_IDS,
    CASES,
    LOGIT_TOL,
    MODEL_CODE,
    assert_folder_matches_reference,
    assert_nothing_left,
    convert,
    folder_tensors,
    hyper_flags,
    run_cli,
    save_torch_checkpoint,
)

from hf_recurrentgemma import PRESETS
from hf_recurrentgemma.convert import ConversionError
from hf_recurrentgemma.convert.keymap import expected_shapes
from hf_recurrentgemma.convert.sources import Source
from hf_recurrentgemma.convert.torch_release import TorchSource, _drop_mapped_pages


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_converted_folder_matches_reference(case, tmp_path):
    ref = save_torch_checkpoint(case, tmp_path / "griffin.pt")
    out = tmp_path / "out"
    result = convert(tmp_path / "griffin.pt", out, case, max_shard_size="30KB")
    assert result.out == out and result.source_format == "torch" and result.dtype == torch.float32
    shards = {name for name in result.files if name.endswith(".safetensors")}
    assert set(result.files) == MODEL_CODE | shards | {"config.json", "generation_config.json", "README.md",
                                                       "model.safetensors.index.json"}
    error = assert_folder_matches_reference(out, ref, case)
    assert error <= LOGIT_TOL
    index = json.loads((out / "model.safetensors.index.json").read_text())
    config = json.loads((out / "config.json").read_text())
    from hf_recurrentgemma import GriffinConfig

    assert set(index["weight_map"]) == set(expected_shapes(GriffinConfig.from_pretrained(out)))
    assert len(set(index["weight_map"].values())) > 1
    assert all((out / name).is_file() for name in index["weight_map"].values())
    assert config["model_type"] == "griffin" and config["dtype"] == "float32"
    assert config["attention_window_size"] == case.window and config["logits_soft_cap"] == case.soft_cap
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_griffin.GriffinForCausalLM"
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["pad_token_id"], generation["eos_token_id"], generation["bos_token_id"]) == (0, 1, 2)


@pytest.mark.parametrize("source_dtype, flag, stored", [
    (torch.float32, "bfloat16", torch.bfloat16),  # rounded on request
    (torch.bfloat16, "auto", torch.bfloat16),  # as released: kept bit for bit
    (torch.bfloat16, "float32", torch.float32),  # widened exactly
])
def test_dtypes(source_dtype, flag, stored, tmp_path):
    case = CASES[0]
    save_torch_checkpoint(case, tmp_path / "src.pt", dtype=source_dtype)
    out = tmp_path / "out"
    result = convert(tmp_path / "src.pt", out, case, dtype=flag, verify=True)
    # The reference is fed the source rounded to the stored dtype, so the conversion is held to 5e-5 either way.
    assert result.verification.ok and result.verification.max_diff <= 5e-5 and result.dtype == stored
    source = torch.load(tmp_path / "src.pt", weights_only=True)
    from hf_recurrentgemma.convert.keymap import reference_to_ours
    from reference_helpers import our_config

    expected = reference_to_ours(source, our_config(case))
    written = folder_tensors(out)
    assert set(written) == set(expected)
    for key, tensor in written.items():
        assert tensor.dtype == stored, key
        assert torch.equal(tensor, expected[key].to(stored)), key
    assert json.loads((out / "config.json").read_text())["dtype"] == str(stored).removeprefix("torch.")
    assert "Verified at conversion: max |logit diff|" in (out / "README.md").read_text()


def test_cli_preset_gives_hyperparameters_and_model_card(tmp_path, monkeypatch):
    case = CASES[0]
    # A preset with this tiny architecture (the published ones are billions of parameters).
    monkeypatch.setitem(PRESETS, "tiny-test", dict(
        vocab_size=case.vocab_size, hidden_size=case.width, intermediate_size=case.mlp_width,
        num_attention_heads=case.num_heads, lru_width=case.width,
        block_types=["attention" if "ATTENTION" in str(t) else "recurrent" for t in case.block_types],
        embeddings_scale_by_sqrt_dim=case.scale_embeddings, attention_window_size=case.window,
        logits_soft_cap=case.soft_cap))
    ref = save_torch_checkpoint(case, tmp_path / "2b.pt")
    out = tmp_path / "out"
    status, _, err = run_cli("convert", tmp_path / "2b.pt", out, "--preset", "tiny-test")
    assert status == 0, err
    assert "converting" in err and "tensors" in err  # the progress bar (tensors and bytes)
    assert_folder_matches_reference(out, ref, case)
    card = (out / "README.md").read_text()
    for needle in ("`2b.pt`", "torch", "`tiny-test`", "float32", "hf-recurrentgemma convert", "--preset tiny-test",
                   "library_name: transformers", "trust_remote_code=True"):
        assert needle in card, needle
    assert str(tmp_path) not in card  # no local directories in a card meant for the Hub


def test_explicit_flags_override_preset(tmp_path, monkeypatch):
    case = CASES[2]  # hawk: no scaling, no soft cap
    monkeypatch.setitem(PRESETS, "tiny-hawk", dict(
        vocab_size=case.vocab_size, hidden_size=case.width, intermediate_size=case.mlp_width,
        num_attention_heads=case.num_heads, lru_width=case.width, block_types=["recurrent"] * 3,
        embeddings_scale_by_sqrt_dim=True, attention_window_size=99, logits_soft_cap=5.0))
    ref = save_torch_checkpoint(case, tmp_path / "hawk.pt")
    out = tmp_path / "out"
    convert(tmp_path / "hawk.pt", out, preset="tiny-hawk",
            overrides={"embeddings_scale_by_sqrt_dim": False, "logits_soft_cap": 0.0, "attention_window_size": None})
    config = json.loads((out / "config.json").read_text())
    assert (config["embeddings_scale_by_sqrt_dim"], config["logits_soft_cap"], config["attention_window_size"]) == (
        False, 0.0, 99)
    assert_folder_matches_reference(out, ref, case)


def test_cli_verify_failure_exits_1_and_writes_nothing(tmp_path, monkeypatch):
    case = CASES[0]
    save_torch_checkpoint(case, tmp_path / "src.pt")
    original = Source._stream

    def corrupted(self, *args):  # a conversion bug: one norm scale off by 0.01
        for name, tensor in original(self, *args):
            yield name, tensor + 0.01 if name == "model.final_norm.weight" else tensor

    monkeypatch.setattr(Source, "_stream", corrupted)
    out = tmp_path / "out"
    status, stdout, err = run_cli("convert", tmp_path / "src.pt", out, *hyper_flags(case), "--verify", "--quiet")
    assert status == 1
    assert "FAILED" in stdout and "verification failed" in err
    assert_nothing_left(out)


def test_mapped_pages_are_released_without_changing_values(tmp_path):
    """The streaming reader gives back the pages of tensors already written (resident memory stays near one
    shard); the values stay readable and unchanged."""
    big = torch.randn(4096, 4096)  # 64 MiB
    torch.save({"embedder.input_embedding": big}, tmp_path / "big.pt")
    source = TorchSource(tmp_path / "big.pt")
    tensor = source.load("embedder.input_embedding")
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    before = rss()
    assert float(tensor.sum()) == pytest.approx(float(big.sum()), rel=1e-4)  # touches every page
    touched = rss()
    _drop_mapped_pages(tensor)
    released = rss()
    assert touched - before > 48 * 2**20
    assert touched - released > 48 * 2**20
    assert torch.equal(tensor, big)
    source.release()
    source.close()


def test_cli_module_runs_without_the_console_script(tmp_path, monkeypatch):
    """`python -m hf_recurrentgemma.cli convert ...` (a source checkout without the console script on PATH)."""
    import runpy

    case = CASES[2]
    save_torch_checkpoint(case, tmp_path / "src.pt")
    monkeypatch.setattr(sys, "argv", ["hf_recurrentgemma.cli", "convert", str(tmp_path / "src.pt"),
                                      str(tmp_path / "out"), *hyper_flags(case), "--quiet"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("hf_recurrentgemma.cli", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_verify_without_the_reference_package(tmp_path, monkeypatch):
    """Without `recurrentgemma`, --verify compares with our model built in memory from the source."""
    import hf_recurrentgemma.convert.verify as verify

    monkeypatch.setattr(verify, "_have_reference", lambda: False)
    case = CASES[1]
    save_torch_checkpoint(case, tmp_path / "src.pt")
    verification = convert(tmp_path / "src.pt", tmp_path / "out", case, verify=True).verification
    assert verification.ok and verification.against.startswith("the source loaded in memory")


def test_it_preset_without_tokenizer(tmp_path, monkeypatch):
    case = CASES[2]
    monkeypatch.setitem(PRESETS, "tiny-hawk-it", dict(
        vocab_size=case.vocab_size, hidden_size=case.width, intermediate_size=case.mlp_width,
        num_attention_heads=case.num_heads, lru_width=case.width, block_types=["recurrent"] * 3,
        embeddings_scale_by_sqrt_dim=False, attention_window_size=case.window, logits_soft_cap=0.0))
    save_torch_checkpoint(case, tmp_path / "src.pt")
    convert(tmp_path / "src.pt", tmp_path / "out", preset="tiny-hawk-it")
    assert not (tmp_path / "out" / "tokenizer.json").exists()
    with pytest.raises(ConversionError, match="--chat-template needs --tokenizer"):
        convert(tmp_path / "src.pt", tmp_path / "out2", preset="tiny-hawk-it", chat_template=True)
    assert_nothing_left(tmp_path / "out2")

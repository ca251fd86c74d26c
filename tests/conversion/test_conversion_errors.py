"""Bad input: each gets a one-line `ConversionError` naming the key / shape / file and nothing half-written; on the
command line, that line as `error: ...` with exit status 2."""

import json
import os
import subprocess
import sys

import pytest
import torch
from reference_helpers import (
    CASES,
    assert_nothing_left,
    assert_one_line_error,
    convert,
    flax_params,
    hyper_flags,
    reference_model,
    run_cli,
    save_orbax_checkpoint,
)

from hf_recurrentgemma.convert import ConversionError
from hf_recurrentgemma.convert.sources import Source

CASE = CASES[0]
FLAGS = hyper_flags(CASE)
# After a failed restore, Orbax's asyncio callbacks may hit a closed event loop when garbage-collected (whichever
# test is running then); that is Orbax's clean-up, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def torch_checkpoint(tmp_path, edit=None):
    state = reference_model(CASE).state_dict()
    if edit is not None:
        edit(state)
    torch.save(state, tmp_path / "src.pt")
    return tmp_path / "src.pt"


def convert_fails(src, out, *needles, **kwargs):
    """convert_checkpoint raises one `ConversionError` line holding every needle, and leaves nothing."""
    with pytest.raises(ConversionError) as info:
        convert(src, out, None if "preset" in kwargs or "overrides" in kwargs else CASE, **kwargs)
    message = str(info.value)
    assert "\n" not in message and all(needle in message for needle in needles), message
    assert_nothing_left(out)


def test_missing_key(tmp_path):
    src = torch_checkpoint(tmp_path, lambda s: s.pop("blocks.3.recurrent_block.rg_lru.a_param"))
    convert_fails(src, tmp_path / "out", "missing key", "'blocks.3.recurrent_block.rg_lru.a_param'", "src.pt")


def test_unexpected_key(tmp_path):
    src = torch_checkpoint(tmp_path, lambda s: s.update({"blocks.1.recurrent_block.extra": torch.zeros(3)}))
    convert_fails(src, tmp_path / "out", "unexpected key", "'blocks.1.recurrent_block.extra'")


def test_wrong_shape(tmp_path):
    src = torch_checkpoint(tmp_path,
                           lambda s: s.update({"blocks.2.attention_block.proj_q.weight": torch.zeros(32, 16)}))
    convert_fails(src, tmp_path / "out", "'blocks.2.attention_block.proj_q.weight'", "(32, 16)", "(32, 32)")


def test_non_tensor_entry(tmp_path):
    src = torch_checkpoint(tmp_path, lambda s: s.update({"step": 3}))
    convert_fails(src, tmp_path / "out", "'step'", "not a tensor")


def test_truncated_torch_file(tmp_path):
    src = torch_checkpoint(tmp_path)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    convert_fails(src, tmp_path / "out", str(src), "truncated or corrupt")


def test_corrupt_torch_file(tmp_path):
    src = tmp_path / "garbage.pt"
    src.write_bytes(os.urandom(4096))
    convert_fails(src, tmp_path / "out", str(src), "cannot read the PyTorch checkpoint")


def test_file_that_is_no_checkpoint(tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("hello")
    convert_fails(src, tmp_path / "out", str(src), "not a checkpoint")


def test_missing_source(tmp_path):
    convert_fails(tmp_path / "nowhere", tmp_path / "out", str(tmp_path / "nowhere"), "no such file")


@pytest.mark.parametrize("content", [{}, {"readme.txt": "x", "sub/data.bin": "y"}], ids=["empty", "other-files"])
def test_directory_that_is_no_checkpoint(content, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in content.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    convert_fails(src, tmp_path / "out", str(src), "not a checkpoint directory")


def test_preset_contradicting_shapes(tmp_path):
    src = torch_checkpoint(tmp_path)
    convert_fails(src, tmp_path / "out", "preset 'recurrentgemma-2b'", "hidden_size is 32 in the weights but 2560",
                  preset="recurrentgemma-2b")


@pytest.mark.parametrize("overrides, missing", [
    ({}, "embeddings_scale_by_sqrt_dim, attention_window_size, logits_soft_cap"),
    ({"attention_window_size": 6}, "embeddings_scale_by_sqrt_dim, logits_soft_cap"),
])
def test_hyperparameters_without_preset(overrides, missing, tmp_path):
    src = torch_checkpoint(tmp_path)
    convert_fails(src, tmp_path / "out", f"cannot tell {missing}", "preset", overrides=overrides)


def test_orbax_missing_key(tmp_path):
    from recurrentgemma.jax import utils

    params = flax_params(reference_model(CASE))
    del params["blocks.4"]["recurrent_block"]["conv_1d"]["b"]
    utils.save_parameters(str(tmp_path / "ckpt"), params)
    convert_fails(tmp_path / "ckpt", tmp_path / "out", "missing key", "'blocks.4.recurrent_block.conv_1d.b'")


def test_orbax_truncated_data(tmp_path):
    save_orbax_checkpoint(CASE, tmp_path / "ckpt")
    data_files = [p for p in (tmp_path / "ckpt").rglob("d/*") if p.is_file()]
    assert data_files
    for path in data_files:
        path.write_bytes(path.read_bytes()[:20])
    convert_fails(tmp_path / "ckpt", tmp_path / "out", str(tmp_path / "ckpt"), "truncated or corrupt")


def test_orbax_truncated_array_is_named(tmp_path):
    """Per-array layout: the metadata reads, one array's data is cut short; the error names that array."""
    import orbax.checkpoint as ocp

    ckpt = tmp_path / "ckpt"
    ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=False)).save(
        ckpt, {"params": flax_params(reference_model(CASE))})
    chunks = [p for p in (ckpt / "params.blocks.1.mlp_block.ffw_up.w").iterdir() if not p.name.startswith(".")]
    assert chunks
    for chunk in chunks:
        chunk.write_bytes(chunk.read_bytes()[:7])
    convert_fails(ckpt, tmp_path / "out", "'params.blocks.1.mlp_block.ffw_up.w'", "truncated or corrupt")


def test_cli_relative_paths(tmp_path, monkeypatch):
    save_orbax_checkpoint(CASE, tmp_path / "ckpt")
    monkeypatch.chdir(tmp_path)
    status, _, err = run_cli("convert", "ckpt", "out", *FLAGS, "--quiet")
    assert status == 0, err
    assert (tmp_path / "out" / "model.safetensors").is_file()
    status, _, err = run_cli("export-orbax", "out", "back")
    assert status == 0, err
    assert (tmp_path / "back" / "_METADATA").is_file()


def test_orbax_corrupt_metadata(tmp_path):
    save_orbax_checkpoint(CASE, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "_METADATA").write_text("{not json")
    convert_fails(tmp_path / "ckpt", tmp_path / "out", str(tmp_path / "ckpt"), "Orbax")


def test_cli_existing_out_is_refused_without_force(tmp_path):
    src = torch_checkpoint(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    status, _, err = run_cli("convert", src, out, *FLAGS, "--quiet")
    assert_one_line_error(status, err, str(out), "already exists", "--force")
    assert sorted(os.listdir(out)) == ["keep.txt"]
    status, _, err = run_cli("convert", src, out, *FLAGS, "--quiet", "--force")
    assert status == 0, err
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src.pt"]


def test_unwritable_out(tmp_path):
    src = torch_checkpoint(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConversionError, match=f"cannot write to {blocker}"):
        convert(src, blocker / "out", CASE)
    assert blocker.read_text() == "x"


def test_cli_out_holding_the_source_is_refused(tmp_path):
    src = torch_checkpoint(tmp_path)
    status, _, err = run_cli("convert", src, tmp_path, *FLAGS, "--force", "--quiet")
    assert_one_line_error(status, err, "holds the source")
    assert src.is_file()


def test_bad_max_shard_size(tmp_path):
    src = torch_checkpoint(tmp_path)
    convert_fails(src, tmp_path / "out", "cannot parse size 'big'", max_shard_size="big")


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    """A failure after shards are on disk (disk full, a bad tensor, ...) removes everything staged."""
    src = torch_checkpoint(tmp_path)
    original = Source._stream

    def failing(self, *args):
        for count, item in enumerate(original(self, *args)):
            if count == 60:
                raise OSError(28, "No space left on device", str(tmp_path / "out"))
            yield item

    monkeypatch.setattr(Source, "_stream", failing)
    with pytest.raises(OSError, match="No space left on device"):
        convert(src, tmp_path / "out", CASE, max_shard_size="10KB")
    assert_nothing_left(tmp_path / "out")


def test_cli_export_orbax_bad_inputs(tmp_path):
    src = torch_checkpoint(tmp_path)
    convert(src, tmp_path / "hf", CASE)
    status, _, err = run_cli("export-orbax", tmp_path, tmp_path / "ckpt")
    assert_one_line_error(status, err, "no config.json")
    assert_nothing_left(tmp_path / "ckpt")
    (tmp_path / "ckpt").mkdir()
    status, _, err = run_cli("export-orbax", tmp_path / "hf", tmp_path / "ckpt")
    assert_one_line_error(status, err, "already exists")
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.bias"] = torch.zeros(7)
    save_file(tensors, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    status, _, err = run_cli("export-orbax", tmp_path / "hf", tmp_path / "ckpt2")
    assert_one_line_error(status, err, "'model.layers.0.mlp.up_proj.bias'", "(7,)", "(48,)")
    assert_nothing_left(tmp_path / "ckpt2")


def test_push_to_hub_offline_keeps_the_converted_folder(tmp_path, monkeypatch):
    """The upload runs after the folder is complete; its failure is one line and the folder stays."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    src = torch_checkpoint(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=f"push to someone/tiny-griffin failed .*the converted folder is at {out}"):
        convert(src, out, CASE, push_to_hub="someone/tiny-griffin", private=True)
    assert (out / "config.json").is_file() and (out / "README.md").is_file()
    assert "someone/tiny-griffin" in (out / "README.md").read_text()


def test_push_to_hub_calls(tmp_path, monkeypatch):
    """Stops at the first Hub call, before the network, and checks what would be sent."""
    from huggingface_hub import HfApi

    calls = []

    class Stop(Exception):
        pass

    def create_repo(self, repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        raise Stop("stopped before the network")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    src = torch_checkpoint(tmp_path)
    status, _, err = run_cli("convert", src, tmp_path / "out", *FLAGS, "--quiet", "--push-to-hub", "me/griffin",
                             "--private")
    assert_one_line_error(status, err, "stopped before the network")
    assert calls == [("me/griffin", {"private": True, "exist_ok": True, "repo_type": "model"})]


def test_cli_console_script_error_is_one_line(tmp_path):
    """The installed `hf-recurrentgemma` command: exit status 2, one line on stderr, no traceback."""
    script = os.path.join(os.path.dirname(sys.executable), "hf-recurrentgemma")
    result = subprocess.run([script, "convert", str(tmp_path / "missing.pt"), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing.pt'}: no such file or directory"]
    assert json.dumps(result.stdout) == '""'

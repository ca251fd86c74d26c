"""Helpers shared by the conversion tests (checkpoints written by the reference package itself), and the tests of
the output machinery (sizes, shards, atomic folders)."""

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from reference_helpers import LOGIT_TOL, assert_close, reference_logits, reference_model

from hf_recurrentgemma.cli import main
from hf_recurrentgemma.convert.sources import ConversionError
from hf_recurrentgemma.convert.writer import OutputFolder, ShardWriter, parse_size


def run_cli(*args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `hf-recurrentgemma ARGS`, run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def hyper_flags(case) -> list[str]:
    """The three hyperparameters the weights cannot tell, as flags."""
    return ["--embeddings-scale-by-sqrt-dim", str(case.scale_embeddings).lower(),
            "--attention-window-size", str(case.window), "--logits-soft-cap", str(case.soft_cap)]


def save_torch_checkpoint(case, path: Path, dtype=torch.float32, seed: int = 0):
    """The reference torch model's state dict, as the PyTorch release stores it. Returns the model (float32)."""
    ref = reference_model(case, seed)
    torch.save({k: v.to(dtype) for k, v in ref.state_dict().items()}, path)
    return ref


def flax_params(ref, dtype=None) -> dict:
    """The reference model's parameters as the JAX release holds them, made by the reference's own converter."""
    import jax.numpy as jnp
    from recurrentgemma import conversion

    params = conversion.pytorch_state_dict_to_flax_params({"params." + k: v for k, v in ref.state_dict().items()})
    params = params["params"]
    if dtype is not None:
        import jax

        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=dtype), params)
    return params


def save_orbax_checkpoint(case, path: Path, dtype=None, seed: int = 0):
    """An Orbax checkpoint written by `recurrentgemma.jax.utils.save_parameters`. Returns the torch reference."""
    from recurrentgemma.jax import utils

    ref = reference_model(case, seed)
    utils.save_parameters(str(path), flax_params(ref, dtype))
    return ref


def random_tokens(case, length: int = 20, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, case.vocab_size, (2, length), generator=generator)
    return tokens, torch.arange(length).expand(2, length)


def assert_folder_matches_reference(folder: Path, ref, case, tol: float = LOGIT_TOL) -> float:
    """Logits of the converted folder (float32) against the reference torch model, longer than the window."""
    from hf_recurrentgemma import GriffinForCausalLM

    model = GriffinForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokens, positions = random_tokens(case)
    with torch.no_grad():
        ours = model(input_ids=tokens, position_ids=positions, use_cache=False).logits
    return assert_close(ours, reference_logits(ref, tokens, positions), tol)


def assert_nothing_left(out: Path) -> None:
    """No OUT and no staging folder beside it."""
    assert not out.exists(), f"{out} was left behind"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, f"staging leftovers: {leftovers}"


def assert_one_line_error(status: int, stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status == 2, f"exit status {status}, stderr: {stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not a one-line error: {stderr!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


# --- tests of the output machinery --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("512MiB", 512 * 2**20),
                                            ("1.5KB", 1500), ("1000", 1000), ("3 gib", 3 * 2**30)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "5XB", "0GB", "-1GB"])
def test_parse_size_rejects(text):
    with pytest.raises(ConversionError, match="size"):
        parse_size(text)


def test_shard_writer_splits_names_and_indexes(tmp_path):
    flushed = []
    writer = ShardWriter(tmp_path, max_shard_bytes=100, on_flush=lambda: flushed.append(1))
    tensors = {f"t{i}": torch.full((10,), float(i)) for i in range(5)}  # 40 bytes each -> 2 per shard
    tensors["big"] = torch.zeros(50)  # larger than a shard: a shard of its own
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    names = writer.close()
    assert names == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)] + ["model.safetensors.index.json"]
    assert len(flushed) == 4
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 40 + 200
    assert index["weight_map"]["big"] == "model-00004-of-00004.safetensors"
    from safetensors.torch import load_file

    loaded = {}
    for name in names[:-1]:
        loaded.update(load_file(tmp_path / name))
    assert set(loaded) == set(tensors) and all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


def test_shard_writer_single_file_and_duplicates(tmp_path):
    writer = ShardWriter(tmp_path, max_shard_bytes=10**6)
    writer.add("a", torch.ones(3))
    with pytest.raises(ConversionError, match="'a' produced twice"):
        writer.add("a", torch.ones(3))
    assert writer.close() == ["model.safetensors"]


def test_output_folder_is_atomic(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with OutputFolder(out) as staged:
            staged.mkdir()
            (staged / "half.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert_nothing_left(out)
    with OutputFolder(out) as staged:
        staged.mkdir()
        (staged / "done.txt").write_text("x")
    assert (out / "done.txt").read_text() == "x"
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)  # published with the umask, not mkdtemp's 0700
    with pytest.raises(ConversionError, match="already exists; pass --force"):
        OutputFolder(out)
    with OutputFolder(out, force=True) as staged:
        staged.mkdir()
        (staged / "new.txt").write_text("y")
    assert sorted(os.listdir(out)) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("convert", "export-orbax", "export-builtin"))

"""Non-finite weights and staging paths: a NaN or an infinity in any source format is refused as it streams, with the
tensor and the count named and nothing left beside OUT; `allow_nonfinite` / `--allow-nonfinite` converts anyway
with one warning naming the tensors; and every error names the user's OUT, never the staging folder."""

import math

import numpy as np
import pytest
import torch
from reference_helpers import (
    CASES,
    assert_nothing_left,
    assert_one_line_error,
    convert,
    flax_params,
    folder_tensors,
    hyper_flags,
    reference_model,
    run_cli,
)
from safetensors.torch import load_file, save_file

from hf_recurrentgemma import GriffinForCausalLM
from hf_recurrentgemma.convert import ConversionError, NonFiniteWeightsWarning, export_builtin
from hf_recurrentgemma.convert.finite import all_finite, describe_counts
from hf_recurrentgemma.convert.writer import OutputFolder, ShardWriter

CASE = CASES[0]
FLAGS = hyper_flags(CASE)
BAD = {"nan": (float("nan"), float("nan")), "inf": (float("inf"), -float("inf"))}
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax's clean-up


# --- the check itself ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("size", [1, 7, 1000, 4099])
def test_all_finite_agrees_with_isfinite_everywhere(dtype, size):
    """aminmax-based `all_finite` against `torch.isfinite(t).all()`, with the bad value at the first, a middle and
    the last position (vectorised loops have heads and tails) and for each kind of non-finite value."""
    clean = torch.randn(size, dtype=torch.float64).to(dtype)
    assert all_finite(clean)
    for value in (math.nan, math.inf, -math.inf):
        for position in sorted({0, size // 2, size - 1}):
            bad = clean.clone()
            bad[position] = value
            assert all_finite(bad) == bool(torch.isfinite(bad).all()) is False, (value, position)
    assert all_finite(torch.empty(0, dtype=dtype))
    assert all_finite(torch.full((3, 5), torch.finfo(dtype).max, dtype=dtype))


def test_describe_counts():
    assert describe_counts(1, 0) == "1 NaN value"
    assert describe_counts(0, 1) == "1 infinite value"
    assert describe_counts(2, 3) == "2 NaN and 3 infinite values"


# --- one source per format, each with two bad values in one tensor -------------------------------------------------

def torch_source(tmp_path, bad):
    """The PyTorch release; the bad values in the gate and the up half of one MLP input projection (one source
    tensor that becomes two of ours)."""
    state = reference_model(CASE).state_dict()
    key = "blocks.0.mlp_block.ffw_up.w"  # (2, D, F): [0] is the gate, [1] the up projection
    state[key][0, 1, 2], state[key][1, 3, 4] = bad
    torch.save(state, tmp_path / "src.pt")
    return tmp_path / "src.pt", key, ("model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight")


def orbax_source(tmp_path, bad):
    """The JAX release (written by `recurrentgemma.jax.utils.save_parameters`); the bad values in a Dense kernel."""
    from recurrentgemma.jax import utils

    params = flax_params(reference_model(CASE))
    kernel = np.array(params["blocks.1"]["mlp_block"]["ffw_down"]["kernel"])
    kernel[0, 1], kernel[5, 7] = bad
    params["blocks.1"]["mlp_block"]["ffw_down"]["kernel"] = kernel
    utils.save_parameters(str(tmp_path / "ckpt"), params)
    return tmp_path / "ckpt", "blocks.1.mlp_block.ffw_down.weight", ("model.layers.1.mlp.down_proj.weight",)


def builtin_source(tmp_path, bad):
    """Transformers' built-in recurrent_gemma folder (our export); the bad values in the embedding."""
    torch.save(reference_model(CASE).state_dict(), tmp_path / "src.pt")
    convert(tmp_path / "src.pt", tmp_path / "ours", CASE)
    export_builtin(tmp_path / "ours", tmp_path / "builtin")
    tensors = load_file(tmp_path / "builtin" / "model.safetensors")
    key = "model.embed_tokens.weight"
    tensors[key][3, 0], tensors[key][50, 9] = bad
    save_file(tensors, tmp_path / "builtin" / "model.safetensors", metadata={"format": "pt"})
    return tmp_path / "builtin", key, (key,)


SOURCES = {"torch": torch_source, "orbax": orbax_source, "builtin": builtin_source}


def _convert(src, out, **kwargs):
    """The built-in folder carries its own config; the releases get the case's hyperparameters."""
    return convert(src, out, None if src.name == "builtin" else CASE, **kwargs)


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_nonfinite_source_is_refused_naming_the_tensor(fmt, kind, tmp_path):
    src, source_key, ours = SOURCES[fmt](tmp_path, BAD[kind])
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as info:
        _convert(src, out, max_shard_size="4KB")  # small shards: some are on disk when the bad tensor comes
    message = str(info.value)
    counts = "2 NaN values" if kind == "nan" else "2 infinite values"
    assert "\n" not in message, message
    for needle in (str(src), repr(source_key), *map(repr, ours), counts, "--allow-nonfinite"):
        assert needle in message, f"{needle!r} not in {message!r}"
    assert_nothing_left(out)


@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_allow_nonfinite_converts_with_one_warning(fmt, tmp_path):
    src, source_key, ours = SOURCES[fmt](tmp_path, BAD["nan"])
    out = tmp_path / "out"
    with pytest.warns(NonFiniteWeightsWarning) as caught:
        _convert(src, out, allow_nonfinite=True)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "\n" not in message and repr(source_key) in message and "2 NaN values" in message, message
    written = folder_tensors(out)
    assert sum(int(torch.isnan(written[key]).sum()) for key in ours) == 2
    assert all(all_finite(t) for key, t in written.items() if key not in ours and key != "lm_head.weight")
    with pytest.raises(ValueError, match="NaN or infinite"):  # loading still refuses it by default
        GriffinForCausalLM.from_pretrained(out)


def test_cli_refuses_and_allow_nonfinite_warns_in_one_line(tmp_path):
    src, source_key, _ = torch_source(tmp_path, BAD["inf"])
    state = torch.load(src, weights_only=True)
    state["blocks.5.mlp_block.ffw_down.bias"][0] = math.nan  # a later tensor: the one warning names both
    torch.save(state, src)
    out = tmp_path / "out"
    status, _, err = run_cli("convert", src, out, *FLAGS, "--quiet")
    assert_one_line_error(status, err, str(src), repr(source_key), "2 infinite values", "--allow-nonfinite")
    assert_nothing_left(out)
    status, _, err = run_cli("convert", src, out, *FLAGS, "--quiet", "--allow-nonfinite")
    assert status == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: "), err
    assert "converted 2 tensors" in lines[0] and repr(source_key) in lines[0]
    assert "'blocks.5.mlp_block.ffw_down.bias'" in lines[0]
    assert (out / "model.safetensors").is_file()


def test_overflow_in_the_stored_dtype_is_named_as_such(tmp_path):
    """Finite in the source, infinite once cast: float32's largest values are beyond bfloat16's."""
    state = reference_model(CASE).state_dict()
    state["final_norm.scale"][3] = torch.finfo(torch.float32).max
    torch.save(state, tmp_path / "src.pt")
    with pytest.raises(ConversionError, match=r"'final_norm.scale' .*overflows to 1 infinite value when cast to "
                                              r"bfloat16"):
        convert(tmp_path / "src.pt", tmp_path / "out", CASE, dtype="bfloat16")
    assert_nothing_left(tmp_path / "out")


# --- staging paths never reach the user -----------------------------------------------------------------------------

def test_verify_failure_names_out_not_the_staging_folder(tmp_path, monkeypatch):
    """The written folder itself is refused when `--verify` loads it (a value damaged after the stream's check):
    the load check's error names OUT, as the user asked for it, and nothing is left."""
    torch.save(reference_model(CASE).state_dict(), tmp_path / "src.pt")
    add = ShardWriter.add

    def damaged(self, name, tensor):
        if name == "model.final_norm.weight":
            tensor = tensor.clone()
            tensor[0] = math.nan
        add(self, name, tensor)

    monkeypatch.setattr(ShardWriter, "add", damaged)
    out = tmp_path / "out"
    status, _, err = run_cli("convert", tmp_path / "src.pt", out, *FLAGS, "--quiet", "--verify")
    assert_one_line_error(status, err, f"{out}: tensor model.final_norm.weight holds 1 NaN")
    assert ".tmp-" not in err, err
    assert_nothing_left(out)


def test_write_error_names_out_not_the_staging_folder(tmp_path, monkeypatch):
    """An OSError naming a staged file (a full disk while writing config files) names the file under OUT."""
    import hf_recurrentgemma.convert.pipeline as pipeline

    def full_disk(folder, *args, **kwargs):
        raise OSError(28, "No space left on device", str(folder / "config.json"))

    monkeypatch.setattr(pipeline, "write_config_files", full_disk)
    torch.save(reference_model(CASE).state_dict(), tmp_path / "src.pt")
    out = tmp_path / "out"
    status, _, err = run_cli("convert", tmp_path / "src.pt", out, *FLAGS, "--quiet")
    assert_one_line_error(status, err, f"{out / 'config.json'}: No space left on device")
    assert ".tmp-" not in err, err
    assert_nothing_left(out)


@pytest.mark.parametrize("make", [
    lambda staged: ValueError(f"{staged}/model.safetensors: broken", 3),
    lambda staged: OSError(18, "Invalid cross-device link", str(staged), str(staged.parent / ("old-" + "0" * 32))),
    lambda staged: ConversionError(f"{staged.resolve()}: resolved spelling"),
], ids=["message", "oserror-both-names", "resolved"])
def test_output_folder_names_out_in_any_error(make, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        with OutputFolder(out) as staged:
            staged.mkdir()
            raise make(staged)
    text = str(info.value)
    assert ".tmp-" not in text and str(out) in text, text
    assert type(info.value) is type(make(out))
    assert_nothing_left(out)

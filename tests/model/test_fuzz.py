"""Untrusted files: damaged or hostile checkpoints and configs either load as the original or fail with a one-line
error, and a failed conversion leaves nothing behind.

Hypothesis mutates a small saved folder (safetensors bytes and header, sharded index, config.json) and a small
reference torch checkpoint fed to `convert_checkpoint`. Runs are deterministic (`derandomize`); the CI profile runs
a few dozen cases per test, `HF_RG_FUZZ=long` runs the long profile (cases counted in `FUZZ_COUNTS`, printed at the
end of the session with `-s`).
"""

import collections
import json
import os
import struct
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference_helpers import Case, R, A, save_torch_checkpoint
from safetensors.torch import load_file, save_file

from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM
from hf_recurrentgemma.convert.sources import Source

LONG = os.environ.get("HF_RG_FUZZ") == "long"
FUZZ_COUNTS = collections.Counter()


def fuzz_settings(ci_examples: int):
    return settings(max_examples=ci_examples * (40 if LONG else 1), derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    print("\nfuzz cases run:", dict(FUZZ_COUNTS))


CONFIG = GriffinConfig(vocab_size=31, hidden_size=16, intermediate_size=24, num_attention_heads=2,
                       block_types=["recurrent", "attention"], attention_window_size=3)
CASE = Case("fuzz", (R, A), width=16, mlp_width=24, num_heads=2, window=3, vocab_size=31)


def one_line(err: BaseException) -> str:
    """The error's message, asserted to be one line (after the header @strict puts above a config validator's)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) == 2 and lines[0].endswith(":") and "error for" in lines[0]:
        lines = lines[1:]
    assert len(lines) == 1, f"{type(err).__name__} is not a one-line error: {str(err)!r}"
    return lines[0]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """(folder written by save_pretrained, its state dict)."""
    torch.manual_seed(0)
    model = GriffinForCausalLM(CONFIG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = tmp_path_factory.mktemp("original")
    model.save_pretrained(folder)
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


def _copy(folder, dest):
    dest.mkdir()
    for name in os.listdir(folder):
        (dest / name).write_bytes((folder / name).read_bytes())
    return dest


def _load(folder):
    """('ok', state dict) or ('error', one-line message)."""
    try:
        model = GriffinForCausalLM.from_pretrained(folder)
    except Exception as err:  # noqa: BLE001 - every failure must be a one-line error, whatever its type
        FUZZ_COUNTS["outcome: load refused"] += 1
        return "error", one_line(err)
    FUZZ_COUNTS["outcome: loaded"] += 1
    return "ok", model.state_dict()


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _header(data: bytes):
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8 : 8 + length])


def _with_header(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + payload


# --- deterministic cases ---------------------------------------------------------------------------------------------

def _rewrite(folder, edit):
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s.pop("model.final_norm.weight"), r"missing keys model.final_norm.weight"),
    (lambda s: s.__setitem__("model.extra.weight", torch.zeros(2)), r"unexpected keys model.extra.weight"),
    (lambda s: s.__setitem__("model.final_norm.weight", torch.zeros(3)), r"final_norm.weight"),
    (lambda s: s["model.final_norm.weight"].__setitem__(2, float("nan")),
     r"tensor model.final_norm.weight holds 1 NaN or infinite values"),
    (lambda s: s["model.embed_tokens.weight"].__setitem__((0, 0), float("inf")), r"model.embed_tokens.weight holds"),
    (lambda s: s.__setitem__("model.final_norm.weight", s["model.final_norm.weight"].view(torch.int32)),
     r"tensor model.final_norm.weight is stored as I32; expected a floating-point dtype"),
    (lambda s: s.__setitem__("model.final_norm.weight", torch.zeros(16, dtype=torch.float16)),
     r"tensor model.final_norm.weight is stored as F16 but config.json declares dtype float32"),
], ids=["missing", "unexpected", "shape", "nan", "inf", "integer-dtype", "other-float-dtype"])
def test_bad_tensors_are_refused_naming_them(original, tmp_path, edit, pattern):
    folder = _copy(original[0], tmp_path / "f")
    _rewrite(folder, edit)
    status, message = _load(folder)
    assert status == "error"
    assert __import__("re").search(pattern, message), message


def test_flags_load_anyway_with_a_warning(original, tmp_path):
    folder = _copy(original[0], tmp_path / "f")
    _rewrite(folder, lambda s: s["model.final_norm.weight"].__setitem__(0, float("nan")))
    with pytest.warns(UserWarning, match="model.final_norm.weight holds 1 NaN"):
        model = GriffinForCausalLM.from_pretrained(folder, nonfinite="warn")
    assert torch.isnan(model.model.final_norm.weight[0])
    _rewrite(folder, lambda s: s.pop("model.final_norm.weight"))
    model, info = GriffinForCausalLM.from_pretrained(folder, strict=False, output_loading_info=True)
    assert info["missing_keys"] == {"model.final_norm.weight"}


def test_absurd_declared_shape_fails_before_allocation(original, tmp_path):
    """A header declaring a 2^40-element tensor is refused by the header check, not by an allocation attempt."""
    folder = _copy(original[0], tmp_path / "f")
    data = (folder / "model.safetensors").read_bytes()
    length, header = _header(data)
    header["model.final_norm.weight"]["shape"] = [1 << 20, 1 << 20]
    (folder / "model.safetensors").write_bytes(_with_header(header, data[8 + length :]))
    status, message = _load(folder)
    assert status == "error", "a header declaring a 2^40-element tensor loaded"
    assert "model.safetensors" in message or "header" in message.lower(), message


# --- property-based fuzzing ------------------------------------------------------------------------------------------

def _tensor_of_byte(header: dict, payload_offset: int):
    for key, entry in header.items():
        if key != "__metadata__" and entry["data_offsets"][0] <= payload_offset < entry["data_offsets"][1]:
            return key
    return None


@fuzz_settings(25)
@given(data=st.data())
def test_fuzz_safetensors_bytes(original, tmp_path_factory, data):
    """Truncation or a flipped bit anywhere: an error, or a load equal to the original except, for a bit in the
    data section, in the one tensor that holds it (safetensors has no checksum; a NaN there is refused)."""
    folder, state = original
    raw = (folder / "model.safetensors").read_bytes()
    length, header = _header(raw)
    work = _copy(folder, tmp_path_factory.mktemp("bytes") / "f")
    if data.draw(st.booleans(), label="truncate"):
        cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
        (work / "model.safetensors").write_bytes(raw[:cut])
        changed = "any"
        FUZZ_COUNTS["safetensors truncate"] += 1
    else:
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        bit = data.draw(st.integers(0, 7), label="bit")
        mutated = bytearray(raw)
        mutated[pos] ^= 1 << bit
        (work / "model.safetensors").write_bytes(bytes(mutated))
        changed = _tensor_of_byte(header, pos - 8 - length) if pos >= 8 + length else "any"
        FUZZ_COUNTS["safetensors bit flip"] += 1
    status, result = _load(work)
    if status == "ok":
        differing = {k for k in state if not torch.equal(state[k], result[k])}
        assert result.keys() == state.keys()
        if changed == "any":
            assert not differing, f"header damage loaded as a different model: {sorted(differing)}"
        else:  # lm_head is tied to the embedding: they change together
            assert differing <= {changed, "lm_head.weight" if changed == "model.embed_tokens.weight" else changed}


HEADER_EDITS = ["rename", "drop", "add", "shape", "dtype", "offsets", "length-prefix", "metadata"]


@fuzz_settings(30)
@given(data=st.data())
def test_fuzz_safetensors_header(original, tmp_path_factory, data):
    """Edits of the header (keys, shapes, dtypes, offsets, its length prefix): an error naming the problem, or a
    load equal to the original."""
    folder, state = original
    raw = (folder / "model.safetensors").read_bytes()
    length, header = _header(raw)
    payload = raw[8 + length :]
    keys = sorted(k for k in header if k != "__metadata__")
    edit = data.draw(st.sampled_from(HEADER_EDITS), label="edit")
    key = data.draw(st.sampled_from(keys), label="key")
    FUZZ_COUNTS[f"header {edit}"] += 1
    if edit == "rename":
        header[data.draw(st.text("abcdefgh._0123", min_size=1, max_size=30), label="name")] = header.pop(key)
    elif edit == "drop":
        header.pop(key)
    elif edit == "add":
        header[key + data.draw(st.sampled_from([".x", "_copy", "2"]))] = dict(header[key])
    elif edit == "shape":
        header[key]["shape"] = data.draw(st.lists(st.integers(0, 1 << 40), max_size=4), label="shape")
    elif edit == "dtype":
        header[key]["dtype"] = data.draw(st.sampled_from(["F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "I8",
                                                          "F8_E4M3", "XYZ"]), label="dtype")
    elif edit == "offsets":
        header[key]["data_offsets"] = data.draw(st.lists(st.integers(-5, len(payload) + 64), min_size=0,
                                                         max_size=3), label="offsets")
    elif edit == "metadata":
        header["__metadata__"] = data.draw(st.one_of(st.none(), st.just({"format": "np"}), st.just([1]),
                                                     st.just({"format": 3})), label="metadata")
    blob = _with_header(header, payload)
    if edit == "length-prefix":
        blob = struct.pack("<Q", data.draw(st.integers(0, 1 << 63), label="length")) + blob[8:]
    work = _copy(folder, tmp_path_factory.mktemp("header") / "f")
    (work / "model.safetensors").write_bytes(blob)
    status, result = _load(work)
    if status == "ok":
        assert _equal(result, state), f"edit {edit!r} of {key!r} loaded as a different model"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    torch.manual_seed(1)
    model = GriffinForCausalLM(CONFIG).eval()
    folder = tmp_path_factory.mktemp("sharded")
    model.save_pretrained(folder, max_shard_size="8KB")
    assert (folder / "model.safetensors.index.json").exists()
    return folder, {k: v.clone() for k, v in model.state_dict().items()}


@fuzz_settings(15)
@given(data=st.data())
def test_fuzz_index_file(sharded, tmp_path_factory, data):
    """A sharded folder's index: invalid JSON, entries dropped, added, or pointing at a missing or wrong shard."""
    folder, state = sharded
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    keys, shards = sorted(weight_map), sorted(set(weight_map.values()))
    edit = data.draw(st.sampled_from(["truncate", "drop", "add", "missing-file", "other-shard", "not-a-map"]))
    FUZZ_COUNTS[f"index {edit}"] += 1
    key = data.draw(st.sampled_from(keys))
    text = None
    if edit == "truncate":
        full = json.dumps(index)
        text = full[: data.draw(st.integers(0, len(full) - 1))]
    elif edit == "drop":
        weight_map.pop(key)
    elif edit == "add":
        weight_map[key + ".extra"] = weight_map[key]
    elif edit == "missing-file":
        weight_map[key] = "model-99999-of-99999.safetensors"
    elif edit == "other-shard":
        others = [s for s in shards if s != weight_map[key]]
        assume(others)
        weight_map[key] = data.draw(st.sampled_from(others))
    elif edit == "not-a-map":
        index["weight_map"] = data.draw(st.sampled_from([[], "x", None, 3]))
    work = _copy(folder, tmp_path_factory.mktemp("index") / "f")
    (work / "model.safetensors.index.json").write_text(text if text is not None else json.dumps(index))
    status, result = _load(work)
    if status == "ok":
        assert _equal(result, state), f"index edit {edit!r} loaded as a different model"


CONFIG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.sampled_from([0, 1 << 40, 10**12, 7]),
                          st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                          st.lists(st.sampled_from(["recurrent", "attention", "mlp"]), max_size=4))


@fuzz_settings(40)
@given(data=st.data())
def test_fuzz_config_json(original, tmp_path_factory, data):
    """A config.json with a field set to an arbitrary value, dropped, or the file cut short: a one-line error, or
    a model whose weights equal the original (a changed non-shape field, e.g. the soft cap, is another valid
    model, not damage)."""
    folder, state = original
    config = json.loads((folder / "config.json").read_text())
    field = data.draw(st.sampled_from(sorted(config)), label="field")
    edit = data.draw(st.sampled_from(["set", "drop", "truncate"]), label="edit")
    FUZZ_COUNTS[f"config {edit}"] += 1
    text = json.dumps(config)
    if edit == "set":
        config[field] = data.draw(CONFIG_VALUES, label="value")
        text = json.dumps(config)
    elif edit == "drop":
        config.pop(field)
        text = json.dumps(config)
    else:
        text = text[: data.draw(st.integers(0, len(text) - 1), label="cut")]
    work = _copy(folder, tmp_path_factory.mktemp("config") / "f")
    (work / "config.json").write_text(text)
    status, result = _load(work)
    if status == "ok":
        assert _equal(result, state), f"config edit {edit} {field!r} loaded different weights"


# --- conversion ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_source(tmp_path_factory):
    """(reference .pt file, the tensors its conversion produces)."""
    from reference_helpers import convert, folder_tensors

    root = tmp_path_factory.mktemp("convert")
    save_torch_checkpoint(CASE, root / "src.pt")
    convert(root / "src.pt", root / "out", CASE)
    return root / "src.pt", folder_tensors(root / "out")


@fuzz_settings(25)
@given(data=st.data())
def test_fuzz_conversion(torch_source, tmp_path_factory, data):
    """A damaged source checkpoint (bytes cut or flipped; keys renamed, dropped or added; shapes or dtypes
    changed), or a disk that fills up while shards are written: conversion either produces the original folder's
    tensors or fails with a one-line `ConversionError` (or the disk's OSError; a flipped bit that makes a NaN or
    an infinity is refused naming the tensor), and in both cases leaves nothing but the finished folder beside
    OUT."""
    from reference_helpers import convert, folder_tensors

    src, expected = torch_source
    work = tmp_path_factory.mktemp("conv")
    edit = data.draw(st.sampled_from(["truncate", "flip", "rename", "drop", "add", "shape", "dtype"]), label="edit")
    FUZZ_COUNTS[f"conversion {edit}"] += 1
    flipped_data = False
    if edit in ("truncate", "flip"):
        raw = bytearray(src.read_bytes())
        if edit == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
        else:
            pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
            raw[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
            flipped_data = True
        (work / "src.pt").write_bytes(bytes(raw))
    else:
        state = torch.load(src, weights_only=True)
        key = data.draw(st.sampled_from(sorted(state)), label="key")
        if edit == "rename":
            state[key + data.draw(st.sampled_from(["_", ".w", "x"]))] = state.pop(key)
        elif edit == "drop":
            state.pop(key)
        elif edit == "add":
            state["extra." + key] = state[key].clone()
        elif edit == "shape":
            shape = data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=3), label="shape")
            assume(tuple(shape) != tuple(state[key].shape))
            state[key] = torch.zeros(shape)
        elif edit == "dtype":
            dtype = data.draw(st.sampled_from([torch.int64, torch.int8, torch.bool, torch.float16, torch.complex64]))
            state[key] = state[key].to(dtype)
        torch.save(state, work / "src.pt")
    # Damage is mostly found before anything is staged (keys and shapes are checked first); a disk that fills up
    # after `disk_full_after` tensors fails once shards are on disk, so the check below has something to find.
    disk_full_after = data.draw(st.one_of(st.none(), st.integers(0, 40)), label="disk full after")
    original_stream = Source._stream

    def stream(self, *args):
        for count, item in enumerate(original_stream(self, *args)):
            if count == disk_full_after:
                raise OSError(28, "No space left on device", str(work / "out"))
            yield item

    before = set(os.listdir(work))
    try:
        with mock.patch.object(Source, "_stream", stream):
            convert(work / "src.pt", work / "out", CASE, max_shard_size="4KB")
    except Exception as err:  # noqa: BLE001
        from hf_recurrentgemma.convert.errors import ConversionError

        if isinstance(err, OSError) and err.errno == 28:
            FUZZ_COUNTS["outcome: disk full while writing"] += 1
        else:
            assert isinstance(err, ConversionError), f"{type(err).__name__}: {err}"
            if "--allow-nonfinite" in str(err):  # a flipped bit made a NaN or an infinity: refused, named
                FUZZ_COUNTS["outcome: non-finite value refused"] += 1
        FUZZ_COUNTS["outcome: conversion refused"] += 1
        one_line(err)
        assert set(os.listdir(work)) == before, f"left behind: {set(os.listdir(work)) - before}"
        return
    FUZZ_COUNTS["outcome: converted"] += 1
    assert set(os.listdir(work)) == before | {"out"}, f"left behind: {set(os.listdir(work)) - before - {'out'}}"
    got = folder_tensors(work / "out")
    assert got.keys() == expected.keys()
    differing = {k for k in got if not torch.equal(got[k], expected[k])}
    if edit == "dtype":  # a lossless or lossy cast of one tensor is a valid (different) source
        assert len(differing) <= 2
    elif flipped_data:  # a bit in the data of one tensor (the zip has CRCs, but torch does not check them)
        assert len(differing) <= 3  # one source tensor feeds up to three of ours (gate/up split, tied head)
    else:
        assert not differing, f"edit {edit!r} converted to different tensors: {sorted(differing)}"

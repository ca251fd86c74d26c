"""Exported prefill and decode programs, run by each backend's runner (Transformers' exporters), give the tokens of
`model.generate()`: greedy, float32, 64 new tokens (fewer where both stop at EOS), prompts shorter than the prefill minimum (decode program only),
longer than the window and longer than the prefill maximum (chunked). Default run: ONNX Runtime and ExecuTorch on
the tiny Griffin; marked slow: every format on the reference test architectures (a Griffin, one with
`lru_width != width`, a Hawk) and on the shipped model."""

import json

import pytest
import torch

from hf_recurrentgemma import GriffinForCausalLM
from hf_recurrentgemma.export import FORMATS, INFO_FILE, ExportedGriffin, export_griffin, state_layout

from export_helpers import MAX_PREFILL, requires

NEW_TOKENS = 64


def reference_tokens(model, prompt: torch.Tensor) -> torch.Tensor:
    """generate()'s greedy tokens: NEW_TOKENS of them, or fewer ending at EOS (the exported loop is run with the
    same EOS; `min_new_tokens` would instead forbid EOS where it is the model's argmax)."""
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              max_new_tokens=NEW_TOKENS)


def assert_same_tokens(model, exported: ExportedGriffin, lengths, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for length in lengths:
        prompt = torch.randint(4, model.config.vocab_size, (1, length), generator=generator)
        want = reference_tokens(model, prompt)
        got = exported.generate(prompt, NEW_TOKENS, eos_token_id=model.generation_config.eos_token_id)
        where = f"{exported.info['format']}: prompt of {length} tokens"
        assert want.shape == got.shape, f"{where}: {tuple(got.shape)} tokens, generate() gave {tuple(want.shape)}"
        mismatch = (want != got).nonzero()
        assert torch.equal(want, got), f"{where}, first differing position {mismatch[0].tolist()}"


def count_calls(exported: ExportedGriffin) -> dict:
    """Wraps the two runners to count their calls."""
    calls = {"prefill": 0, "decode": 0}
    for name in calls:
        runner = getattr(exported, f"{name}_runner")

        def counted(*args, _runner=runner, _name=name, **kwargs):
            calls[_name] += 1
            return _runner(*args, **kwargs)

        setattr(exported, f"{name}_runner", counted)
    return calls


@pytest.fixture(scope="module")
def tiny_model(tiny_folder):
    return GriffinForCausalLM.from_pretrained(tiny_folder).eval()


@pytest.mark.parametrize("fmt", ["onnx", "executorch"])
def test_tiny_griffin_tokens_equal_generate(fmt, request, tiny_model):
    """Through the saved folder (save_pretrained, ExportedModel.from_pretrained) and the backend's runner."""
    folder = request.getfixturevalue(f"{fmt}_folder")
    exported = ExportedGriffin.from_pretrained(folder)
    info = json.loads((folder / INFO_FILE).read_text())
    assert (info["format"], info["min_prefill"], info["max_prefill"]) == (fmt, 4, MAX_PREFILL)
    assert info["state"] == state_layout(tiny_model.config, torch.float32)
    # 1 and 3 tokens: decode program only; 9: one prefill call, past the window (4); 40: chunked 16 + 16 + 8.
    assert_same_tokens(tiny_model, exported, (1, 3, 9, 40))


def test_one_prefill_call_per_chunk_and_one_decode_call_per_token(onnx_folder):
    exported = ExportedGriffin.from_pretrained(onnx_folder)
    calls = count_calls(exported)
    exported.generate(torch.arange(4, 4 + 2 * MAX_PREFILL + 2)[None], 5)  # 34 tokens: 16 + 14 + 4
    assert calls == {"prefill": 3, "decode": 4}


def test_state_shape_mismatch_is_refused(onnx_folder, tmp_path):
    import shutil

    folder = tmp_path / "edited"
    shutil.copytree(onnx_folder, folder)
    info = json.loads((folder / INFO_FILE).read_text())
    info["state"][1]["shape"] = [1, 32]
    (folder / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"state tensor 1 of the export .* this package's cache holds"):
        ExportedGriffin.from_pretrained(folder)


def test_one_sequence_at_a_time(onnx_folder):
    exported = ExportedGriffin.from_pretrained(onnx_folder)
    with pytest.raises(ValueError, match=r"one sequence: token ids of shape \(1, T\), got \(2, 3\)"):
        exported.generate(torch.ones(2, 3, dtype=torch.long), 2)


# --- Slow: every installed format, the reference test architectures and the shipped model ------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case_index", [0, 1, 2], ids=["griffin", "griffin-lru48-window3", "hawk"])
def test_reference_cases_every_format(fmt, case_index, tmp_path):
    from reference_helpers import CASES, reference_and_ours

    if FORMATS[fmt].missing():
        pytest.skip(f"{fmt} is not installed")
    _, model = reference_and_ours(CASES[case_index])
    model = model.eval()
    export_griffin(model, fmt, tmp_path / "out", max_prefill=32)
    assert_same_tokens(model, ExportedGriffin.from_pretrained(tmp_path / "out"), (2, 7, 30, 75))


@pytest.fixture(scope="module")
def shipped_folder(tmp_path_factory):
    from hf_recurrentgemma.convert.pipeline import convert_checkpoint
    from hf_recurrentgemma.demo import BUNDLED_CHECKPOINT, BUNDLED_PRESET, BUNDLED_RELEASE

    out = tmp_path_factory.mktemp("shipped") / "griffin-austen-hf"
    convert_checkpoint(BUNDLED_CHECKPOINT, out, preset=BUNDLED_PRESET, tokenizer=BUNDLED_RELEASE / "tokenizer.model",
                       progress=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_shipped_model_every_format(fmt, shipped_folder, tmp_path):
    """The shipped 6M Griffin (window 128) in float32: prompts shorter than, inside and longer than the window and
    longer than the prefill maximum."""
    if FORMATS[fmt].missing():
        pytest.skip(f"{fmt} is not installed")
    model = GriffinForCausalLM.from_pretrained(shipped_folder, dtype=torch.float32).eval()
    export_griffin(model, fmt, tmp_path / "out", max_prefill=256)
    assert_same_tokens(model, ExportedGriffin.from_pretrained(tmp_path / "out"), (3, 60, 200, 300))


def test_every_format_listed_has_a_test():
    assert set(FORMATS) == {"onnx", "executorch", "openvino", "dynamo"}
    requires("onnx")  # the helper builds a mark for any listed format


def test_a_bfloat16_model_is_refused_with_the_reason(tiny_model):
    """The exporters cast every cache tensor to the model's dtype; the float32 RG-LRU state must not be rounded."""
    import copy

    with pytest.raises(ValueError, match=r"only float32 models export for now, this one is bfloat16"):
        export_griffin(copy.deepcopy(tiny_model).to(torch.bfloat16), "dynamo")

"""`hf-recurrentgemma export` and `hf-recurrentgemma generate EXPORT_FOLDER`: the exported folder streams the text
the model folder streams (greedy), and every refusal is one line naming what failed."""

import shutil

import pytest

from hf_recurrentgemma.export import FORMATS
from hf_recurrentgemma.export.formats import ExportFormat

from reference_helpers import assert_one_line_error, run_cli

PROMPT = "the river and the"


def test_export_folder_generates_the_model_folders_text(tiny_folder, onnx_folder):
    names = {p.name for p in onnx_folder.iterdir()}
    assert {"prefill.onnx", "decode.onnx", "export.json", "griffin_export.json", "config.json",
            "tokenizer.json", "generation_config.json"} <= names
    status, want, _ = run_cli("generate", tiny_folder, PROMPT, "--max-new-tokens", 24)
    assert status == 0
    status, got, err = run_cli("generate", onnx_folder, PROMPT, "--max-new-tokens", 24)
    assert status == 0, err
    assert got == want and got.strip()
    assert "onnx" in err  # the statistics line names the backend


def test_prompts_file_and_sampling_flags(tiny_folder, onnx_folder, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the river\nthe long road\n")
    status, want, _ = run_cli("generate", tiny_folder, "--prompts-file", prompts, "--max-new-tokens", 8)
    assert status == 0
    status, got, err = run_cli("generate", onnx_folder, "--prompts-file", prompts, "--max-new-tokens", 8)
    assert status == 0, err
    assert got == want
    status, out, err = run_cli("generate", onnx_folder, PROMPT, "--do-sample", "--top-k", 5, "--temperature", 0.7,
                               "--seed", 1, "--max-new-tokens", 6)
    assert status == 0, err
    assert out == run_cli("generate", onnx_folder, PROMPT, "--do-sample", "--top-k", 5, "--temperature", 0.7,
                          "--seed", 1, "--max-new-tokens", 6)[1]  # the seed makes sampling reproducible


@pytest.mark.parametrize("args, needles", [
    (["--quantize", "int8"], ["--quantize int8 is not offered for the onnx format", "int8-dynamic"]),
    (["--max-prefill", "3"], ["max_prefill must be in (4, 256]", "got 3"]),
    (["--max-prefill", "5000"], ["max_prefill must be in (4, 256]"]),
])
def test_export_refusals(tiny_folder, tmp_path, args, needles):
    out = tmp_path / "out"
    status, _, err = run_cli("export", tiny_folder, out, "--format", "onnx", *args)
    assert_one_line_error(status, err, *needles)
    assert not out.exists()


def test_backend_not_installed_names_the_extra(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(ExportFormat, "missing", lambda self: ["openvino"])
    status, _, err = run_cli("export", tiny_folder, tmp_path / "out", "--format", "openvino")
    assert_one_line_error(status, err, "the openvino format needs openvino", "pip install -e '.[export]'")


def test_existing_output_needs_force(tiny_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    status, _, err = run_cli("export", tiny_folder, out, "--format", "onnx")
    assert_one_line_error(status, err, "exists; pass --force")


@pytest.mark.parametrize("args, needles", [
    (["--assistant", "x"], ["--assistant and --prompt-lookup need a model folder"]),
    (["--dtype", "bfloat16"], ["--dtype and --device apply to a model folder"]),
    (["--top-k", "3"], ["--top-k only applies with --do-sample"]),
])
def test_generate_refusals_on_an_export_folder(onnx_folder, args, needles):
    status, _, err = run_cli("generate", onnx_folder, PROMPT, *args)
    assert_one_line_error(status, err, *needles)


def test_generate_refuses_a_mismatched_state(onnx_folder, tmp_path):
    import json

    folder = tmp_path / "edited"
    shutil.copytree(onnx_folder, folder)
    info = json.loads((folder / "griffin_export.json").read_text())
    info["state"][0]["shape"] = [1, 3, 7]
    (folder / "griffin_export.json").write_text(json.dumps(info))
    status, _, err = run_cli("generate", folder, PROMPT)
    assert_one_line_error(status, err, "state tensor 0 of the export", "export the model again")


def test_formats_listed_in_the_help():
    from hf_recurrentgemma.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["export"].format_help()
    for name in FORMATS:
        assert name in help_text

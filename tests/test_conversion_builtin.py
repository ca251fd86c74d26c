"""The CLI's wiring of Transformers' built-in `recurrent_gemma` folders (`convert` from them, `export-builtin` to
them); the format itself is tested in test_builtin_format.py."""

import json

import torch
from reference_helpers import CASES
from test_conversion_common import (
    assert_folder_matches_reference,
    assert_nothing_left,
    assert_one_line_error,
    hyper_flags,
    run_cli,
    save_torch_checkpoint,
)
from test_conversion_torch import folder_tensors


def test_builtin_round_trip_through_the_cli(tmp_path):
    case = CASES[1]
    ref = save_torch_checkpoint(case, tmp_path / "src.pt", dtype=torch.bfloat16)
    assert run_cli("convert", tmp_path / "src.pt", tmp_path / "ours", *hyper_flags(case), "--quiet")[0] == 0
    status, _, err = run_cli("export-builtin", tmp_path / "ours", tmp_path / "builtin")
    assert status == 0, err
    assert json.loads((tmp_path / "builtin" / "config.json").read_text())["model_type"] == "recurrent_gemma"
    out = tmp_path / "back"
    status, stdout, err = run_cli("convert", tmp_path / "builtin", out, "--verify", "--quiet")
    assert status == 0, err
    assert "OK" in stdout
    original, back = folder_tensors(tmp_path / "ours"), folder_tensors(out)
    assert set(original) == set(back)
    assert all(back[k].dtype == torch.bfloat16 and torch.equal(original[k], back[k]) for k in original)
    first, second = (json.loads((p / "config.json").read_text()) for p in (tmp_path / "ours", out))
    for key in ("attention_window_size", "logits_soft_cap", "embeddings_scale_by_sqrt_dim", "block_types",
                "lru_width", "intermediate_size", "dtype"):
        assert first[key] == second[key], key
    assert "Transformers recurrent_gemma" in (out / "README.md").read_text()
    ref = ref.to(torch.bfloat16).float()  # the weights as stored
    assert_folder_matches_reference(out, ref, case)


def test_builtin_source_checked_against_explicit_values(tmp_path):
    case = CASES[0]
    save_torch_checkpoint(case, tmp_path / "src.pt")
    assert run_cli("convert", tmp_path / "src.pt", tmp_path / "ours", *hyper_flags(case), "--quiet")[0] == 0
    assert run_cli("export-builtin", tmp_path / "ours", tmp_path / "builtin")[0] == 0
    status, _, err = run_cli("convert", tmp_path / "builtin", tmp_path / "out", "--attention-window-size", "99",
                             "--quiet")
    assert_one_line_error(status, err, "attention_window_size is 6 in the folder's config, not 99")
    assert_nothing_left(tmp_path / "out")


def test_builtin_folder_with_a_missing_shard(tmp_path):
    case = CASES[0]
    save_torch_checkpoint(case, tmp_path / "src.pt")
    assert run_cli("convert", tmp_path / "src.pt", tmp_path / "ours", *hyper_flags(case), "--quiet")[0] == 0
    assert run_cli("export-builtin", tmp_path / "ours", tmp_path / "builtin")[0] == 0
    (tmp_path / "builtin" / "model.safetensors").unlink()
    status, _, err = run_cli("convert", tmp_path / "builtin", tmp_path / "out", "--quiet")
    assert_one_line_error(status, err, str(tmp_path / "builtin"), "model.safetensors")
    assert_nothing_left(tmp_path / "out")


def test_export_builtin_refuses_existing_out(tmp_path):
    case = CASES[0]
    save_torch_checkpoint(case, tmp_path / "src.pt")
    assert run_cli("convert", tmp_path / "src.pt", tmp_path / "ours", *hyper_flags(case), "--quiet")[0] == 0
    (tmp_path / "taken").mkdir()
    status, _, err = run_cli("export-builtin", tmp_path / "ours", tmp_path / "taken")
    assert_one_line_error(status, err, "already exists")

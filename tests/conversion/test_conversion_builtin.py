"""Conversion from and to Transformers' built-in `recurrent_gemma` folders (`convert_checkpoint` from them,
`export_builtin` to them); the format itself is tested in test_builtin_format.py."""

import json

import pytest
import torch
from reference_helpers import (
    CASES,
    assert_folder_matches_reference,
    assert_nothing_left,
    convert,
    folder_tensors,
    save_torch_checkpoint,
)

from hf_recurrentgemma.convert import ConversionError, export_builtin


def ours_and_builtin(tmp_path, case, dtype=torch.float32):
    """A torch checkpoint converted to our folder, exported to the built-in format. Returns the reference."""
    ref = save_torch_checkpoint(case, tmp_path / "src.pt", dtype=dtype)
    convert(tmp_path / "src.pt", tmp_path / "ours", case)
    assert export_builtin(tmp_path / "ours", tmp_path / "builtin") == tmp_path / "builtin"
    return ref


def test_builtin_round_trip(tmp_path):
    case = CASES[1]
    ref = ours_and_builtin(tmp_path, case, dtype=torch.bfloat16)
    assert json.loads((tmp_path / "builtin" / "config.json").read_text())["model_type"] == "recurrent_gemma"
    out = tmp_path / "back"
    result = convert(tmp_path / "builtin", out, verify=True)
    assert result.verification.ok and result.source_format == "builtin" and result.dtype == torch.bfloat16
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
    ours_and_builtin(tmp_path, CASES[0])
    with pytest.raises(ConversionError, match="attention_window_size is 6 in the folder's config, not 99"):
        convert(tmp_path / "builtin", tmp_path / "out", overrides={"attention_window_size": 99})
    assert_nothing_left(tmp_path / "out")


def test_builtin_folder_with_a_missing_shard(tmp_path):
    ours_and_builtin(tmp_path, CASES[0])
    (tmp_path / "builtin" / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match=f"{tmp_path / 'builtin'}.*model.safetensors"):
        convert(tmp_path / "builtin", tmp_path / "out")
    assert_nothing_left(tmp_path / "out")


def test_export_builtin_refuses_existing_out(tmp_path):
    ours_and_builtin(tmp_path, CASES[0])
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConversionError, match="already exists"):
        export_builtin(tmp_path / "ours", tmp_path / "taken")

"""`convert_checkpoint` from Orbax checkpoints of the JAX release (written by
`recurrentgemma.jax.utils.save_parameters`), old Orbax layouts, and `export_orbax` back, bit for bit."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
from reference_helpers import (
    CASE_IDS,
    CASES,
    assert_folder_matches_reference,
    convert,
    flax_params,
    random_tokens,
    reference_logits,
    reference_model,
    save_orbax_checkpoint,
)

from hf_recurrentgemma.convert import export_orbax
from hf_recurrentgemma.convert.orbax_release import OrbaxSource


def flat(tree) -> dict:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_identical(a, b):
    fa, fb = flat(a), flat(b)
    assert set(fa) == set(fb), sorted(set(fa) ^ set(fb))[:3]
    for key in fa:
        x, y = np.asarray(fa[key]), np.asarray(fb[key])
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert x.tobytes() == y.tobytes(), key  # bit for bit (NaN-safe, -0.0-safe)


@pytest.mark.parametrize("case", CASES[:2], ids=CASE_IDS[:2])
def test_save_parameters_checkpoint_matches_reference(case, tmp_path):
    ref = save_orbax_checkpoint(case, tmp_path / "ckpt")
    out = tmp_path / "out"
    result = convert(tmp_path / "ckpt", out, case, verify=True)
    assert result.verification.ok and result.source_format == "orbax"
    assert_folder_matches_reference(out, ref, case)
    assert "JAX (Orbax)" in (out / "README.md").read_text()


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bfloat16", "float32"])
def test_orbax_hf_orbax_round_trip_is_exact(dtype, tmp_path):
    case = CASES[1]
    save_orbax_checkpoint(case, tmp_path / "ckpt", dtype=dtype)
    convert(tmp_path / "ckpt", tmp_path / "hf", case)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == jnp.dtype(dtype).name
    assert export_orbax(tmp_path / "hf", tmp_path / "back") == tmp_path / "back"
    checkpointer = ocp.PyTreeCheckpointer()
    original, exported = checkpointer.restore(tmp_path / "ckpt"), checkpointer.restore(tmp_path / "back")
    assert set(original) == set(exported) == {"params"}
    assert_trees_identical(original, exported)
    # Same stored metadata (value types, shapes, dtypes) as the reference's own save_parameters.
    def metadata(path):
        tree = json.loads((path / "_METADATA").read_text())["tree_metadata"]
        return {k: v["value_metadata"]["value_type"] for k, v in tree.items()}

    assert metadata(tmp_path / "ckpt") == metadata(tmp_path / "back")


def test_reference_loads_and_runs_the_export(tmp_path, monkeypatch):
    """The reference's own `load_parameters` and JAX model read our export. (Its loader needs the metadata tree
    that orbax-checkpoint <= 0.11.21 returned; newer Orbax wraps it, which breaks the reference as released.)"""
    from recurrentgemma import jax as rg_jax
    from recurrentgemma.jax import utils

    case = CASES[0]
    ref = save_orbax_checkpoint(case, tmp_path / "ckpt")
    convert(tmp_path / "ckpt", tmp_path / "hf", case)
    export_orbax(tmp_path / "hf", tmp_path / "back")
    original_metadata = ocp.PyTreeCheckpointer.metadata

    def tree_metadata(self, path):
        meta = original_metadata(self, path)
        return getattr(getattr(meta, "item_metadata", meta), "tree", meta)

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "metadata", tree_metadata)
    params = utils.load_parameters(str(tmp_path / "back"), "single_device")
    model = rg_jax.Griffin(case.reference_config())
    tokens, positions = random_tokens(case, length=10)
    logits, _ = model.apply(params, jnp.asarray(tokens.numpy()), jnp.asarray(positions.numpy()))
    expected = reference_logits(ref, tokens, positions).numpy()
    assert np.abs(np.asarray(logits) - expected).max() <= 5e-5  # the reference's own JAX-vs-torch gap is ~7e-6


def _save_layout(params, path, ocdbt: bool, legacy: bool):
    """The layouts of older orbax-checkpoint releases: per-array zarr folders (no OCDBT) and/or only the msgpack
    `checkpoint` structure file (with PLACEHOLDER:// leaves) instead of `_METADATA`."""
    ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=ocdbt)).save(path, {"params": params})
    if legacy:
        from orbax.checkpoint import msgpack_utils

        structure = jax.tree_util.tree_map_with_path(
            lambda keys, _: "PLACEHOLDER://" + ".".join(k.key for k in keys), {"params": params})
        (path / "checkpoint").write_bytes(msgpack_utils.msgpack_serialize(structure))
        for name in ("_METADATA", "_CHECKPOINT_METADATA", "_sharding", "array_metadatas"):
            target = path / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)


@pytest.mark.parametrize("ocdbt, legacy", [(False, False), (True, True), (False, True)],
                         ids=["zarr-per-array", "msgpack-ocdbt", "msgpack-zarr-per-array"])
def test_old_orbax_layouts(ocdbt, legacy, tmp_path):
    case = CASES[0]
    ref = reference_model(case)
    _save_layout(flax_params(ref, jnp.bfloat16), tmp_path / "ckpt", ocdbt, legacy)
    if not ocdbt:
        assert any((p / ".zarray").exists() for p in (tmp_path / "ckpt").iterdir() if p.is_dir())
    assert (tmp_path / "ckpt" / "_METADATA").exists() != legacy
    source = OrbaxSource(tmp_path / "ckpt")
    assert (source.arrays is not None) == legacy  # old layouts are restored whole, current ones per tensor
    out = tmp_path / "out"
    assert convert(tmp_path / "ckpt", out, case, verify=True).verification.ok
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", framework="pt") as f:
        embedding = f.get_tensor("model.embed_tokens.weight")
    assert embedding.dtype == torch.bfloat16
    assert torch.equal(embedding, ref.state_dict()["embedder.input_embedding"].to(torch.bfloat16))


def test_download_folder_holding_one_checkpoint(tmp_path, capsys):
    """Kaggle downloads hold the checkpoint one level down (`2b/`) next to tokenizer.model."""
    case = CASES[2]
    ref = save_orbax_checkpoint(case, tmp_path / "download" / "2b")
    (tmp_path / "download" / "notes.txt").write_text("not a checkpoint")
    convert(tmp_path / "download", tmp_path / "out", case, progress=True)
    assert f"reading the JAX (Orbax) checkpoint in {tmp_path / 'download' / '2b'}" in capsys.readouterr().err
    assert_folder_matches_reference(tmp_path / "out", ref, case)


def test_per_tensor_restore_reads_one_array(tmp_path):
    case = CASES[0]
    ref = reference_model(case)
    from recurrentgemma.jax import utils

    utils.save_parameters(str(tmp_path / "ckpt"), flax_params(ref))
    source = OrbaxSource(tmp_path / "ckpt")
    assert source.arrays is None
    metas = source.metas()
    key = "blocks.0.mlp_block.ffw_down.weight"
    assert metas[key].shape == ref.state_dict()[key].shape
    for key, expected in ref.state_dict().items():
        assert torch.equal(source.load(key), expected), key
    assert os.path.isdir(tmp_path / "ckpt")

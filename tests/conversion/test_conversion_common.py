"""The output machinery of conversion (sizes, shards, atomic folders, overlap), the import graph, and the help of
the command line."""

import ast
import json
import os
from pathlib import Path

import pytest
import torch
from reference_helpers import assert_nothing_left

from hf_recurrentgemma.cli import main
from hf_recurrentgemma.convert.errors import ConversionError
from hf_recurrentgemma.convert.writer import OutputFolder, ShardWriter, parse_size, refuse_overlap


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


def test_refuse_overlap(tmp_path):
    (tmp_path / "src").mkdir()
    for out in (tmp_path / "src", tmp_path):
        with pytest.raises(ConversionError, match="holds the source"):
            refuse_overlap(tmp_path / "src", out)
    refuse_overlap(tmp_path / "src", tmp_path / "out")
    refuse_overlap(tmp_path / "src", tmp_path / "src" / "out")  # inside the source is fine


def _module_imports(package: Path) -> dict[str, set[str]]:
    """{module: modules of the package it imports}, imports inside functions included."""
    graph = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package_of = module if parts[-1] == "__init__" else module.rsplit(".", 1)[0]
        graph[module] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package_of.rsplit(".", node.level - 1)[0] if node.level > 1 else package_of
                target = f"{base}.{node.module}" if node.module else base
                graph[module].add(target)
                graph[module].update(f"{target}.{a.name}" for a in node.names)
    return {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}


def test_no_import_cycle():
    """No module of the package imports one that imports it back, however indirectly, even inside a function. A
    package's `__init__` importing its own modules, and a module reading its package's `__init__`
    (`from .. import __version__`), are not cycles."""
    import hf_recurrentgemma

    graph = _module_imports(Path(hf_recurrentgemma.__file__).parent)
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
        graph[module] = {t for t in graph[module] if not module.startswith(t + ".") or t == module}

    def visit(module, stack):
        assert module not in stack, " -> ".join([*stack[stack.index(module):], module])
        for target in graph[module]:
            visit(target, [*stack, module])

    for module in graph:
        visit(module, [])


def test_add_a_format_recipe_from_the_docs(tmp_path, monkeypatch):
    """The "Adding a format" example of docs/conversion.md, run as written: one Source subclass plus one FORMATS
    entry give a working format (detected, checked, converted, verified)."""
    import re
    import types

    import numpy as np
    from reference_helpers import CASES, assert_folder_matches_reference, convert, reference_model

    from hf_recurrentgemma.convert import formats

    doc = (Path(__file__).parents[2] / "docs" / "conversion.md").read_text()
    code = re.search(r"# src/hf_recurrentgemma/convert/npz_release.py\n(.*?)```", doc, re.S).group(1)
    module = types.ModuleType("hf_recurrentgemma.convert.npz_release")
    module.__package__ = "hf_recurrentgemma.convert"
    exec(compile(code, "docs/conversion.md", "exec"), module.__dict__)
    monkeypatch.setattr(formats, "FORMATS", (module.NpzSource, *formats.FORMATS))
    case = CASES[2]
    ref = reference_model(case)
    np.savez(tmp_path / "ref.npz", **{k: v.numpy() for k, v in ref.state_dict().items()})
    result = convert(tmp_path / "ref.npz", tmp_path / "out", case, verify=True)
    assert result.source_format == "npz" and result.verification.ok
    assert_folder_matches_reference(tmp_path / "out", ref, case)

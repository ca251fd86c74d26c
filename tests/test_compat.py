"""compat_griffin.py, the one place the model files take Transformers internals from, refuses an unsupported
Transformers at import with one error naming what is missing and the supported range (loaded here as a fresh
module from its file, so the package's own import is left alone)."""

import importlib.util
import sys
from pathlib import Path

import pytest
from transformers.generation import GenerationMixin

import hf_recurrentgemma
from reference_helpers import MODEL_CODE

COMPAT = Path(hf_recurrentgemma.__file__).parent / "compat_griffin.py"


def _load_fresh():
    spec = importlib.util.spec_from_file_location("compat_griffin_under_test", COMPAT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_transformers_passes():
    module = _load_fresh()
    assert module.MIN_TRANSFORMERS <= module._version_tuple(sys.modules["transformers"].__version__)


def test_older_transformers_is_refused_by_version(monkeypatch):
    # The module object `import transformers` gives now (Transformers swaps its lazy module in sys.modules).
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.23.0")
    with pytest.raises(ImportError, match=r">= 5\.24 .*Transformers 5\.23\.0 lacks.*tested: 5\.24"):
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

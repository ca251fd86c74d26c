"""Shared by the export tests (tests/export/): the tiny architecture they export and the skip for a format whose
packages are not installed."""

import pytest

from hf_recurrentgemma.export import EXTRA, FORMATS

# Both block kinds, `lru_width != width`, and a window shorter than the tests' prompts.
TINY = dict(block_types=["recurrent", "attention"], lru_width=48, attention_window_size=4)
MAX_PREFILL = 16  # small, so the tests' prompts also run in chunks


def requires(fmt: str):
    """Skips a test only where the format's packages are not installed (onnx and executorch are in the `test`
    extra, OpenVINO in `export` only), saying which."""
    missing = FORMATS[fmt].missing()
    return pytest.mark.skipif(bool(missing), reason=f"{fmt} needs {missing}: {EXTRA}")

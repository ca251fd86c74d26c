"""Export folders shared by the export tests (each export takes seconds to a minute): a tiny Griffin with both block
kinds, `lru_width != width` and a window shorter than the prompts, exported once per session per format."""

import pytest

from hf_recurrentgemma.export import EXTRA, FORMATS
from export_helpers import MAX_PREFILL, TINY


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    from command_helpers import save_tiny_folder

    return save_tiny_folder(tmp_path_factory.mktemp("tiny") / "model", **TINY)


@pytest.fixture(scope="session")
def onnx_folder(tiny_folder, tmp_path_factory):
    """The tiny model exported by the command (`hf-recurrentgemma export --format onnx`)."""
    from reference_helpers import run_cli

    if FORMATS["onnx"].missing():
        pytest.skip(f"onnx needs {FORMATS['onnx'].missing()}: {EXTRA}")
    out = tmp_path_factory.mktemp("onnx") / "exported"
    status, _, err = run_cli("export", tiny_folder, out, "--format", "onnx", "--max-prefill", MAX_PREFILL)
    assert status == 0, err
    return out


@pytest.fixture(scope="session")
def executorch_folder(tiny_folder, tmp_path_factory):
    from hf_recurrentgemma import GriffinForCausalLM
    from hf_recurrentgemma.export import export_griffin

    if FORMATS["executorch"].missing():
        pytest.skip(f"executorch is not installed: {EXTRA}")
    out = tmp_path_factory.mktemp("executorch") / "exported"
    export_griffin(GriffinForCausalLM.from_pretrained(tiny_folder), "executorch", out, max_prefill=MAX_PREFILL)
    return out

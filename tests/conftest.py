import os

import pytest
import torch

# Keep runs reproducible and light on a 2-core machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Runs a test on one intra-op thread (`pytestmark = pytest.mark.usefixtures("one_thread")`), restoring the
    count after. The tiny models gain nothing from intra-op threads, and on a loaded machine the OpenMP decode
    kernels stall at their barriers (measured: 2.5 s instead of 5 ms a step with 2 threads on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The longest test files (minutes each, measured with --durations), handed out first. CI runs the suite on two
# pytest-xdist workers a file at a time (`--dist loadfile --no-loadscope-reorder`: in collection order, rather than
# xdist's default of the files with most tests first), so that no long file starts last and runs alone on one
# worker while the other core idles.
LONGEST_FILES = ("tests/tools/test_docs.py", "tests/serving/test_vllm.py", "tests/serving/test_vllm_engines.py",
                 "tests/model/test_batch_invariance.py",
                 "tests/commands/test_shipped_model.py", "tests/export/test_programs.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: every other file keeps its order

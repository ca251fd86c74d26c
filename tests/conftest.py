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

"""One core per pytest-xdist worker for the vLLM engines and servers these tests start.

vLLM binds its worker's OpenMP threads to VLLM_CPU_OMP_THREADS_BIND (the tests default to all cores). Under CI's
two xdist workers two engines then ran at once with two threads each on two cores, and OpenMP's barriers stall
when their threads share cores. So each xdist worker binds its engines to a core of its own, unless the caller
chose a binding. Without xdist nothing changes.
"""

import os


def _one_core_per_worker() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cores = sorted(os.sched_getaffinity(0))
    if worker.startswith("gw") and count > 1 and len(cores) >= count and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(cores[int(worker[2:]) % len(cores)])


_one_core_per_worker()

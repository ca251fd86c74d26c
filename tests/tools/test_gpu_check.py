"""checks/gpu_check.py: the dry run (`--device cpu`) runs every check on a tiny model and writes its JSON and
summary; the script refuses to overwrite them; an unsupported Transformers is named with what to carry; the
time budget skips and stops checks, and a failure or an error never stops the run."""

import importlib
import json
import os
import subprocess
import sys
import time

import pytest
from packaging.requirements import Requirement

from hf_recurrentgemma.griffin.compat_griffin import TRANSFORMERS_REQUIREMENT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Run as the docs say: `python -m checks.gpu_check` from the repository root.
COMMAND = [sys.executable, "-m", "checks.gpu_check"]
CHECKS = ["requirements", "triton_scan", "logits_vs_cpu_fp32", "bf16_generation", "compiled_decoding",
          "bench_prefill", "bench_decode", "bench_training", "bench_scan"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    start = time.perf_counter()
    done = subprocess.run([*COMMAND, "--device", "cpu", "--out", str(out)], capture_output=True, cwd=ROOT,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text()), time.perf_counter() - start


def test_dry_run_runs_every_check_without_errors(dry_run):
    out, result, seconds = dry_run
    print(f"dry run: {seconds:.1f} s")
    assert list(result["checks"]) == CHECKS and result["complete"] and result["dry_run"]
    for name, check in result["checks"].items():
        if name == "triton_scan" and check["status"] == "skipped":  # triton not installed here: the reason says so
            assert "triton is not installed" in check["message"], check
            continue
        assert check["status"] == "pass", (name, check["status"], check["message"])
    checks = result["checks"]
    assert checks["requirements"]["details"]["transformers"] == result["environment"]["transformers"]
    assert result["carry"] is None  # everything the package needs is installed here
    if checks["triton_scan"]["status"] == "pass":
        assert "interpreter" in checks["triton_scan"]["details"]["mode"]
        assert len(checks["triton_scan"]["details"]["cases"]) == 4
    assert checks["compiled_decoding"]["details"]["unique_graphs"] == 1
    assert checks["compiled_decoding"]["details"]["speedup"] > 0
    assert max(checks["logits_vs_cpu_fp32"]["details"]["max_abs_logit_error"].values()) <= 5e-5
    for section in ("prefill", "decode", "training", "scan"):
        assert checks[f"bench_{section}"]["details"]["tables"], section
    assert "built-in s" in checks["bench_prefill"]["details"]["tables"][0]["header"]
    summary = (out / "gpu_check.txt").read_text()
    assert all(f"PASS     {name}" in summary or name == "triton_scan" for name in CHECKS), summary
    assert seconds < 60


def test_existing_results_are_kept_without_force(dry_run):
    out, _, _ = dry_run
    before = (out / "gpu_check.json").read_bytes()
    done = subprocess.run([*COMMAND, "--device", "cpu", "--out", str(out), "--only", "requirements"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode != 0 and "pass --force to overwrite" in done.stderr, done.stderr
    assert (out / "gpu_check.json").read_bytes() == before
    assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.txt"]  # no temporary file left


@pytest.fixture
def gpu_check():
    return importlib.import_module("checks.gpu_check")


def test_old_transformers_is_named_with_what_to_carry(gpu_check, monkeypatch):
    """What the GPU machine has (Transformers 5.17): the requirements check fails naming it and what to bring,
    and the checks needing the package are skipped with that reason."""
    real = importlib.metadata.version
    monkeypatch.setattr(gpu_check.importlib.metadata, "version",
                        lambda name: "5.17.0" if name == "transformers" else real(name))
    monkeypatch.setattr(gpu_check, "_package_error", lambda: "ImportError: hf-recurrentgemma's model code needs "
                                                             "Transformers >= 5.24")
    # The supported range, as pyproject declares it (compat_griffin's constant; tests/model/test_compat.py ties them).
    spec = str(Requirement(TRANSFORMERS_REQUIREMENT).specifier)
    ctx = gpu_check.Context(gpu_check.torch.device("cpu"), 60)
    check = gpu_check.run_check(ctx, "requirements", gpu_check.check_requirements)
    assert check["status"] == "fail" and f"transformers 5.17.0 (needs {spec})" in check["message"], check
    carry = ctx.carry
    assert carry["requirements"] == [f"transformers{spec}"]
    assert "pip download --dest wheels" in carry["download_elsewhere"]
    assert f"'transformers{spec}'" in carry["download_elsewhere"]
    assert "--no-deps" not in carry["download_elsewhere"]
    assert "--target /tmp/site" in carry["install_here"]
    # accelerate's dependencies include torch: downloaded without them (psutil added), never torch's CUDA wheels
    both = gpu_check.carry_advice([{"name": "transformers", "spec": ">=5.24"},
                                   {"name": "accelerate", "spec": ">=1.0"}])
    assert "--no-deps" in both["download_elsewhere"] and "'psutil'" in both["download_elsewhere"], both
    skipped = gpu_check.run_check(ctx, "logits_vs_cpu_fp32", gpu_check.check_logits)
    assert skipped["status"] == "skipped" and "requirements.carry" in skipped["message"], skipped


def test_budget_skips_and_stops_and_failures_do_not_stop(gpu_check):
    ctx = gpu_check.Context(gpu_check.torch.device("cpu"), 1.5)
    assert gpu_check.run_check(ctx, "bench_scan", lambda ctx: {})["status"] == "skipped"  # estimate 5 s > 1.5 s
    stopped = gpu_check.run_check(ctx, "requirements", lambda ctx: time.sleep(10))  # estimate 1 s: starts
    assert stopped["status"] == "skipped" and "ran out" in stopped["message"] and stopped["seconds"] < 5, stopped
    ctx = gpu_check.Context(gpu_check.torch.device("cpu"), 60)

    def failing(ctx):
        assert 1 + 1 == 3, "arithmetic is off"

    def broken(ctx):
        raise RuntimeError("no kernel image\nsecond line")

    assert gpu_check.run_check(ctx, "requirements", failing)["status"] == "fail"
    error = gpu_check.run_check(ctx, "requirements", broken)
    assert error["status"] == "error" and error["message"] == "RuntimeError: no kernel image", error
    assert "traceback" in error["details"]

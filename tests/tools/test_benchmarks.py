"""Smoke test of the issue-6 benchmark (`benchmarks/run_all.py --quick`): every section runs on toy sizes and
writes its JSON and plots. Speed figures are not checked (this is not a timed test)."""

import importlib
import json

import pytest
import torch

SECTIONS = ["peaks", "scan", "prefill", "decode", "throughput", "training"]
PLOTS = ["scan.png", "prefill.png", "decode.png", "throughput.png", "training.png"]


@pytest.fixture
def run_all():
    """benchmarks/run_all.py (the `suite` section of `python -m benchmarks`), imported in this process."""
    threads = torch.get_num_threads()
    yield importlib.import_module("benchmarks.run_all")
    torch.set_num_threads(threads)


def test_run_all_quick_writes_json_and_plots(run_all, tmp_path, capsys):
    out = tmp_path / "results.json"
    # One thread: on a shared machine, a second thread waiting for a busy core makes every op ~10 ms slower.
    written = run_all.main(["--quick", "--threads", "1", "--json", str(out), "--img-dir", str(tmp_path / "img"),
                            "--prefill-lens", "32,64", "--train-lens", "32,64"])
    assert "Targets of issue 6" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert written["json"] == str(out)
    assert sorted(results["sections"]) == sorted(SECTIONS)
    for key in ("matmul_fp32_gflops", "matmul_bf16_gflops", "gemv_fp32_gbs", "gemv_bf16_gbs", "reduce_fp32_gbs"):
        assert results["peaks"][key] > 0, key
    scan = results["sections"]["scan"]["data"]
    assert "sequential" in scan["backends"] and scan["sweep"]
    for name, data in scan.items():
        if name.startswith("errors/"):  # every fast backend equals the reference on these small inputs
            assert max(v for k, v in data.items() if k != "T") < 1e-3, (name, data)
    assert any(c["section"] == "prefill" for c in results["checks"])
    assert "large/ours bf16" in results["sections"]["decode"]["data"]
    for name in PLOTS:
        path = tmp_path / "img" / name
        assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG", name


@pytest.fixture
def bench_speculative():
    """benchmarks/bench_speculative.py imported in this process."""
    threads = torch.get_num_threads()
    yield importlib.import_module("benchmarks.bench_speculative")
    torch.set_num_threads(threads)


def test_bench_speculative_runs_both_sections(bench_speculative, tmp_path, capsys):
    """The shipped model with its draft and prompt lookup, and the oracle sweep on a tiny stand-in for the 2B
    shape: every speculative output is plain greedy's, and the oracle's acceptance is what it was built to be."""
    out = tmp_path / "speculative.json"
    bench_speculative.main(["--repeats", "1", "--new-tokens", "8", "--tasks", "copy,demo-sampled",
                            "--big-shape", "tiny", "--big-layers", "3",
                            "--big-new-tokens", "8", "--ks", "2,4", "--rates", "1.0,0.5", "--json", str(out),
                            "--img-dir", str(tmp_path / "img")])
    printed = capsys.readouterr().out
    assert "Targets of issue 14" in printed and ("AVX" in printed or "neither" in printed)
    results = json.loads(out.read_text())
    tasks = results["shipped"]["tasks"]
    assert all(row["identical_to_plain"] for row in tasks["copy"]["methods"].values())
    assert all(row["identical_to_plain"] is None for row in tasks["demo-sampled"]["methods"].values())  # samples
    for methods in (tasks["copy"]["methods"], tasks["demo-sampled"]["methods"]):
        assert methods["plain"]["tokens_per_s"] > 0 and methods["draft"]["drafted"] > 0
    big = results["big"]
    assert big["oracle_k4"]["identical_to_plain"] and big["oracle_k4"]["acceptance_rate"] == 1.0
    assert {(r["k"], r["q"]) for r in big["sweep"]} == {(2, 1.0), (2, 0.5), (4, 1.0), (4, 0.5)}
    assert all(r["acceptance_rate"] == 1.0 for r in big["sweep"] if r["q"] == 1.0)
    assert all(r["acceptance_rate"] < 1.0 for r in big["sweep"] if r["q"] == 0.5)
    assert set(big["forward_cost"]) == {"1", "3", "5"}
    assert len(results["checks"]) == 3
    for name in ("speculative_shipped.png", "speculative_big.png"):
        assert (tmp_path / "img" / name).read_bytes()[:4] == b"\x89PNG", name


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_bench_speculative_oracle_with_a_quantized_target(bench_speculative, tmp_path, weights):
    """`--big-weights`: the oracle sweep on a tiny stand-in quantized to int8 or int4 (issue 22's speculation with
    a quantized target): its linear layers are torchao's (int4 in groups of 32: the stand-in is 64 wide), and the
    all-accepted oracle still gives plain greedy."""
    pytest.importorskip("torchao")
    out = tmp_path / "speculative.json"
    bench_speculative.main(["--repeats", "1", "--skip-shipped", "--big-shape", "tiny", "--big-layers", "3",
                            "--big-weights", weights, "--big-group-size", "32", "--big-new-tokens", "8", "--ks", "2", "--rates", "1.0",
                            "--avx2-pass", "off", "--json", str(out), "--img-dir", str(tmp_path / "img")])
    big = json.loads(out.read_text())["big"]
    assert big["weights"] == weights and big["quantized_layers"] > 0
    assert big["oracle_k4"]["identical_to_plain"] and big["oracle_k4"]["acceptance_rate"] == 1.0
    assert all(r["identical_to_plain"] for r in big["sweep"])


def test_runner_lists_every_section_and_refuses_unknown_ones(capsys):
    """`python -m benchmarks` is the one runner: each section is a module of the package with `main(argv)`."""
    import ast
    from pathlib import Path

    from benchmarks.__main__ import SECTIONS, main

    assert main([]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in SECTIONS), listed
    assert main(["no-such-section"]) == 2 and "unknown section 'no-such-section'" in capsys.readouterr().err
    package = Path(importlib.import_module("benchmarks").__file__).parent
    for name, (module, _) in SECTIONS.items():
        tree = ast.parse((package / f"{module}.py").read_text())  # parsed, not imported: some need vLLM
        mains = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "main"]
        assert mains and [a.arg for a in mains[0].args.args] == ["argv"], f"{name}: {module}.main(argv=None)"
    scripts = {p.stem for p in package.glob("bench_*.py")}
    assert scripts <= {module for module, _ in SECTIONS.values()}, "a benchmark module that no section runs"

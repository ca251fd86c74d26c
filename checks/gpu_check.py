"""One command for the first minutes on a CUDA GPU: the CUDA checks, then the benchmark sections, in one budget.

    python -m checks.gpu_check --out DIR                 # on a CUDA machine (default budget 480 s)
    python -m checks.gpu_check --device cpu --out DIR    # dry run on a tiny model (well under a minute)

Checks, in order (each records pass / fail / error / skipped with its message; a failure never stops the run):

- requirements: what the package needs beyond torch and Triton (pyproject.toml's dependencies), installed or not.
  An unsupported Transformers is named with what to carry (`carry` in the JSON: the wheels to download here and
  the command that installs them there); checks that need the package are then skipped, the Triton scan still runs.
- triton_scan: `scan_triton_griffin.rnn_scan_triton` against `ops_griffin.rnn_scan_sequential`, forward and
  backward (x, a and h0), with document resets and a random h0, float32 and bfloat16. On CPU the kernels run in
  Triton's interpreter in a subprocess (as tests/ops/test_scan_triton.py does).
- logits_vs_cpu_fp32: model logits on the device against CPU float32 with the sequential scan, same random
  weights, a prompt longer than the window with a document start, then cached decoding steps (TF32 off).
- bf16_generation: greedy `generate()` in bfloat16 on the device; the cached logits against an uncached forward
  over the generated tokens, all finite.
- compiled_decoding: `generate()` with a static cache and a compiled decode step (inductor with CUDA graphs,
  `mode="reduce-overhead"`; on CPU the eager backend): exactly one graph, no CUDA-graph skip, no recompilation
  for a second prompt length; its per-token speed-up over eager.
- bench_prefill, bench_decode, bench_training, bench_scan: the sections of benchmarks/sections/ (ours against
  Transformers' built-in `RecurrentGemmaForCausalLM` on the same weights, as run_all.py builds them).

A global budget (`--budget-s`) skips a check that its estimate says would not fit and stops one that overruns
(recorded as skipped, with the reason). DIR gets gpu_check.json and gpu_check.txt, rewritten atomically after
every check (a run killed half-way still leaves what it measured); existing files are kept unless `--force`.
"""

import argparse
import copy
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_FILES = os.path.join(ROOT, "src", "hf_recurrentgemma", "griffin")
if importlib.util.find_spec("hf_recurrentgemma") is None:  # a checkout copied to the GPU machine, not installed
    sys.path.append(os.path.join(ROOT, "src"))
FILES = ("gpu_check.json", "gpu_check.txt")
LOGIT_TOL = 5e-5  # float32 logits, the reference tolerance (tests/reference_helpers.py)
BF16_CACHED_TOL = 1.0  # bfloat16 logits (soft cap 30): the stated bf16 bound of tests/model/test_long_runs.py
# Estimated seconds per check (cuda, cpu dry run): a check is skipped when it would not fit in what is left.
ESTIMATES = {"requirements": (1, 1), "triton_scan": (40, 15), "logits_vs_cpu_fp32": (20, 3),
             "bf16_generation": (20, 3), "compiled_decoding": (120, 10), "bench_prefill": (60, 5),
             "bench_decode": (100, 5), "bench_training": (60, 5), "bench_scan": (40, 5)}


class Skip(Exception):
    """A check that cannot run here; the message says why."""


class OutOfTime(BaseException):
    """Raised by the alarm when the global budget runs out during a check."""


# --- what the package needs -----------------------------------------------------------------------------------------

def requirements() -> list[dict]:
    """pyproject.toml's runtime dependencies and the `gpu` extra: spec, installed version, satisfied."""
    import tomllib

    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    rows = []
    for text in project["dependencies"] + project["optional-dependencies"].get("gpu", []):
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        ok = installed is not None and req.specifier.contains(installed, prereleases=True)
        rows.append({"name": req.name, "spec": str(req.specifier), "installed": installed, "ok": ok})
    return rows


def carry_advice(missing: list[dict]) -> dict:
    """What to bring to this machine as wheels for the requirements it lacks, and how to install them. accelerate
    is downloaded without its dependencies, which include torch (and with it gigabytes of CUDA wheels); psutil is
    the one it needs beyond what Transformers brings."""
    specs = [f"{r['name']}{r['spec']}" for r in missing]
    with_deps = [s for s, r in zip(specs, missing) if r["name"] not in ("accelerate", "torch", "triton")]
    without_deps = [s for s, r in zip(specs, missing) if r["name"] == "accelerate"]
    where = (f"--only-binary=:all: --python-version {sys.version_info.major}.{sys.version_info.minor} "
             f"--platform {_platform_tag()}")
    quoted = lambda items: " ".join(f"'{s}'" for s in items)  # noqa: E731
    download = []
    if with_deps or without_deps:
        extra = ["psutil"] if without_deps else []
        download.append(f"pip download --dest wheels {where} {quoted(with_deps + extra)}")
    if without_deps:
        download.append(f"pip download --dest wheels --no-deps {where} {quoted(without_deps)}")
    return {
        "requirements": specs,
        "download_elsewhere": " && ".join(download) + "  # where PyPI is reachable (Python 3.12: 33 wheels, 46 MB)",
        "install_here": "pip install --no-index --no-deps --target /tmp/site wheels/*.whl && "
                        f"PYTHONPATH=/tmp/site python -m checks.gpu_check ...  # installs {quoted(specs)}",
    }


def _platform_tag() -> str:
    return f"manylinux2014_{platform.machine()}" if sys.platform.startswith("linux") else "<platform tag>"


def check_requirements(ctx) -> dict:
    rows = requirements()
    missing = [r for r in rows if not r["ok"]]
    ctx.package_error = _package_error()
    details = {"needs_beyond_torch_and_triton": [r for r in rows if r["name"] not in ("torch", "triton")],
               "torch": torch.__version__, "triton": _version("triton"), "transformers": _version("transformers"),
               "python": platform.python_version()}
    if missing:
        ctx.carry = carry_advice(missing)
        what = ", ".join(f"{r['name']} {r['installed'] or 'missing'} (needs {r['spec']})" for r in missing)
        raise AssertionError(f"unsupported here: {what}; carry wheels of {', '.join(ctx.carry['requirements'])}")
    if ctx.package_error:
        raise AssertionError(f"every requirement is met, but hf-recurrentgemma does not import: {ctx.package_error}")
    return details


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_error() -> str | None:
    """Why `import hf_recurrentgemma` fails here (e.g. an old Transformers), or None."""
    try:
        importlib.import_module("hf_recurrentgemma")
    except Exception as error:  # noqa: BLE001 - any reason is reported, the run goes on
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def need_package(ctx) -> None:
    if ctx.package_error:
        raise Skip(f"hf-recurrentgemma does not import here ({ctx.package_error}); see requirements.carry")


# --- the Triton scan ----------------------------------------------------------------------------------------------

def model_files():
    """The model files as a bare package of flat siblings (as Hub remote code loads them): the scan modules import
    only torch and triton, so this works whatever the Transformers version."""
    if "gpu_check_files" not in sys.modules:
        package = types.ModuleType("gpu_check_files")
        package.__path__ = [MODEL_FILES]
        sys.modules["gpu_check_files"] = package
    return (importlib.import_module("gpu_check_files.ops_griffin"),
            importlib.import_module("gpu_check_files.scan_triton_griffin"))


def scan_inputs(batch, seq_len, width, dtype, device, seed=0, reset_every=11):
    """x, a with a document start every `reset_every` steps (a = 0), h0, and upstream gradients dy, dh."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq_len, width, generator=gen).to(dtype)
    a = torch.rand(batch, seq_len, width, generator=gen).to(dtype)
    a[:, ::reset_every] = 0
    h0, dy, dh = (torch.randn(batch, width, generator=gen), torch.randn(batch, seq_len, width, generator=gen),
                  torch.randn(batch, width, generator=gen))
    return [t.to(device) for t in (x, a, h0, dy, dh)]


def run_scan(scan, x, a, h0, dy, dh) -> list[torch.Tensor]:
    """(y, h_last, dx, da, dh0) of `scan` (forward and backward)."""
    leaves = [t.clone().requires_grad_() for t in (x, a, h0)]
    y, h = scan(*leaves)
    ((y.float() * dy).sum() + (h * dh).sum()).backward()
    return [y.detach(), h.detach(), *[t.grad for t in leaves]]


def scan_errors(results, reference) -> dict:
    """float32: max error relative to the reference's largest magnitude; bfloat16: in bfloat16 ulps."""
    errors = {}
    for what, fast, ref in zip(("y", "h_last", "dx", "da", "dh0"), results, reference):
        diff = (fast.float().cpu() - ref.float().cpu()).abs()
        if ref.dtype == torch.bfloat16:
            _, exponent = torch.frexp(ref.float().cpu())
            errors[what + "_ulp"] = (diff / torch.ldexp(torch.ones_like(diff), exponent - 8)).max().item()
        else:
            errors[what + "_rel"] = diff.max().item() / max(1.0, ref.abs().max().item())
    return errors


SCAN_CASES = {"cuda": [(2, 300, 1000), (4, 1024, 2560)], "cpu": [(2, 37, 200), (3, 23, 130)]}


def check_triton_scan(ctx) -> dict:
    ops, triton_module = model_files()
    if triton_module.triton is None:
        raise Skip(triton_module._IMPORT_ERROR)
    cases = {f"B{b}-T{t}-L{w}-{str(d)[6:]}": (b, t, w, d) for b, t, w in SCAN_CASES[ctx.device.type]
             for d in (torch.float32, torch.bfloat16)}
    inputs = {name: scan_inputs(*case, ctx.device) for name, case in cases.items()}
    if ctx.device.type == "cuda":
        results = {name: run_scan(triton_module.rnn_scan_triton, *tensors) for name, tensors in inputs.items()}
        mode = "compiled kernels on " + torch.cuda.get_device_name(ctx.device)
    else:
        results = interpreted_scans(inputs)
        mode = "Triton's CPU interpreter (TRITON_INTERPRET=1, subprocess)"
    details, worst = {"mode": mode, "cases": {}}, []
    for name, tensors in inputs.items():
        errors = scan_errors(results[name], run_scan(ops.rnn_scan_sequential, *tensors))
        details["cases"][name] = errors
        worst += [(v, name, k) for k, v in errors.items() if (v > 1.0 if k.endswith("_ulp") else v > 1e-6)]
    if ctx.device.type == "cuda":
        details["seconds_fwd_bwd_B4_T1024_L2560_fp32"] = {
            name: _time_cuda(lambda fn=fn: run_scan(fn, *inputs["B4-T1024-L2560-float32"]))
            for name, fn in (("triton", triton_module.rnn_scan_triton), ("sequential", ops.rnn_scan_sequential))}
    if worst:
        raise AssertionError("triton scan differs from rnn_scan_sequential: " + "; ".join(
            f"{name} {what} = {value:.3g}" for value, name, what in sorted(worst, reverse=True)[:3]))
    return details


def interpreted_scans(inputs: dict) -> dict:
    """`run_scan` of the Triton kernels for each input, in a subprocess with TRITON_INTERPRET=1 (it must be set
    before the kernels are decorated)."""
    with tempfile.TemporaryDirectory() as folder:
        torch.save(inputs, os.path.join(folder, "in.pt"))
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--interpreted-scans", folder],
                              env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                              timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"interpreter subprocess failed: {done.stderr.strip().splitlines()[-1:]}")
        return torch.load(os.path.join(folder, "out.pt"))


def _interpreted_scans_main(folder: str) -> None:
    _, triton_module = model_files()
    inputs = torch.load(os.path.join(folder, "in.pt"))
    torch.save({name: run_scan(triton_module.rnn_scan_triton, *tensors) for name, tensors in inputs.items()},
               os.path.join(folder, "out.pt"))


def _time_cuda(fn, repeats: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


# --- the model on the device ----------------------------------------------------------------------------------------

def tiny_model(seed: int = 0):
    """A small Griffin (recurrent, recurrent, attention x2) in float32 on CPU, every parameter perturbed (so
    zero-initialised biases and norms show a mistake)."""
    from hf_recurrentgemma import GriffinConfig, GriffinForCausalLM

    config = GriffinConfig(vocab_size=512, hidden_size=128, intermediate_size=384, num_attention_heads=2,
                           block_types=["recurrent", "recurrent", "attention"] * 2, attention_window_size=32,
                           logits_soft_cap=30.0)
    torch.manual_seed(seed)
    model = GriffinForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def check_logits(ctx) -> dict:
    need_package(ctx)
    cpu = tiny_model()
    cpu.config.scan_backend = "sequential"  # the reference scan on the CPU side
    device_model = copy.deepcopy(cpu).to(ctx.device)
    device_model.config.scan_backend = "auto"
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 512, (2, 80), generator=gen)
    positions = torch.arange(80).repeat(2, 1)
    positions[1, 45:] -= 45  # a document starts at 45 in the second row
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            expected = cpu(tokens, position_ids=positions, use_cache=False).logits
            full = device_model(tokens.to(ctx.device), position_ids=positions.to(ctx.device), use_cache=False).logits
            out = device_model(tokens[:, :72].to(ctx.device), position_ids=positions[:, :72].to(ctx.device),
                               use_cache=True)
            steps = [out.logits]
            for t in range(72, 80):
                out = device_model(tokens[:, t:t + 1].to(ctx.device), position_ids=positions[:, t:t + 1].to(ctx.device),
                                   cache=out.cache, use_cache=True)
                steps.append(out.logits)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    errors = {"full_forward": (full.cpu() - expected).abs().max().item(),
              "prefill_then_decode": (torch.cat(steps, 1).cpu() - expected).abs().max().item()}
    details = {"max_abs_logit_error": errors, "tolerance": LOGIT_TOL, "device_scan": _auto_scan(ctx, torch.float32)}
    if max(errors.values()) > LOGIT_TOL:
        raise AssertionError(f"logits on {ctx.device} differ from CPU float32: {errors} > {LOGIT_TOL}")
    return details


def _auto_scan(ctx, dtype) -> str:
    from hf_recurrentgemma.griffin import ops_griffin

    return ops_griffin.resolve_scan_backend("auto", ctx.device, dtype)


def check_bf16_generation(ctx) -> dict:
    need_package(ctx)
    model = tiny_model().to(ctx.device, torch.bfloat16)
    prompt = torch.randint(3, 512, (2, 40), generator=torch.Generator().manual_seed(2)).to(ctx.device)
    new = 24
    with torch.no_grad():
        _sync(ctx)
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
                             eos_token_id=None, return_dict_in_generate=True, output_logits=True)
        _sync(ctx)
        seconds = time.perf_counter() - start
        cached = torch.stack(out.logits, 1).float()  # (B, new, V)
        uncached = model(out.sequences[:, :-1], use_cache=False).logits[:, prompt.shape[1] - 1:].float()
    finite = bool(torch.isfinite(cached).all())
    error = (cached - uncached).abs().max().item()
    agreement = (uncached.argmax(-1) == out.sequences[:, prompt.shape[1]:]).float().mean().item()
    details = {"new_tokens": new, "batch": 2, "seconds": seconds, "tokens_per_s": 2 * new / seconds,
               "max_abs_cached_vs_uncached": error, "tolerance": BF16_CACHED_TOL, "greedy_agreement": agreement,
               "scan_backend": _auto_scan(ctx, torch.bfloat16)}
    if not finite or error > BF16_CACHED_TOL:
        raise AssertionError(f"bfloat16 generation: finite={finite}, cached vs uncached logits {error:.3g} > "
                             f"{BF16_CACHED_TOL}")
    return details


def check_compiled_decoding(ctx) -> dict:
    need_package(ctx)
    from benchmarks.common import decode_latency
    from transformers import CompileConfig

    cuda = ctx.device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = tiny_model().to(ctx.device, dtype)
    config = CompileConfig(backend="inductor" if cuda else "eager", mode="reduce-overhead" if cuda else None,
                           fullgraph=True)
    config._compile_all_devices = True  # generate() compiles only on GPUs unless told
    compiled = {"cache_implementation": "static", "compile_config": config}
    ids = torch.randint(3, 512, (1, 32), generator=torch.Generator().manual_seed(3)).to(ctx.device)
    tokens = 32 if cuda else 8
    counters = torch._dynamo.utils.counters
    torch._dynamo.reset()
    counters.clear()
    with torch.inference_mode():
        eager = decode_latency(model, ids, tokens, 3 if cuda else 1, ctx.device)
        fast = decode_latency(model, ids, tokens, 3 if cuda else 1, ctx.device, **compiled)
        graphs = counters["stats"]["unique_graphs"]
        longer = torch.cat([ids, ids[:, :7]], 1)  # another prompt length: the decode step must not recompile
        model.generate(longer, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0,
                       eos_token_id=None, **compiled)
    details = {"backend": config.backend, "mode": config.mode, "dtype": str(dtype)[6:], "unique_graphs": graphs,
               "graphs_after_second_prompt_length": counters["stats"]["unique_graphs"],
               "recompiles": dict(counters["recompiles"]), "graph_breaks": dict(counters["graph_break"]),
               "cudagraph_skips": dict(counters["inductor"]).get("cudagraph_skips", 0),
               "eager_ms_per_token": eager["per_token_s"] * 1e3, "compiled_ms_per_token": fast["per_token_s"] * 1e3,
               "speedup": eager["per_token_s"] / fast["per_token_s"]}
    problems = []
    if graphs != 1 or details["graphs_after_second_prompt_length"] != 1:
        problems.append(f"{graphs} graphs ({details['graphs_after_second_prompt_length']} after a second prompt "
                        "length), expected exactly 1")
    if details["graph_breaks"]:
        problems.append(f"graph breaks {details['graph_breaks']}")
    if cuda and details["cudagraph_skips"]:
        problems.append(f"CUDA graphs skipped {details['cudagraph_skips']} times")
    if problems:
        raise AssertionError("compiled decoding: " + "; ".join(problems))
    return details


def _sync(ctx) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()


# --- the benchmark sections -----------------------------------------------------------------------------------------

SECTION_SIZES = {
    "cuda": ["--width", "1024", "--layers", "6", "--window", "2048", "--vocab", "32000", "--dtypes", "fp32,bf16",
             "--prefill-lens", "2k,8k", "--others-max-len", "8k", "--decode-contexts", "1k,8k",
             "--decode-tokens", "32", "--big-preset", "recurrentgemma-2b", "--big-prompt", "32", "--big-tokens", "16",
             "--train-lens", "1k,2k", "--train-builtin-max-len", "2k", "--scan-len", "4096", "--scan-width", "2560",
             "--scan-batches", "1,8", "--scan-sweep", "1k,4k", "--compile-backend", "inductor"],
    "cpu": ["--quick", "--threads", "1", "--prefill-lens", "32,64", "--train-lens", "32", "--decode-contexts", "16",
            "--big-preset", "none", "--compile-backend", "none", "--scan-sweep", "64,128"],
}


def section_check(name: str):
    def check(ctx) -> dict:
        need_package(ctx)
        run_all = _run_all()
        if ctx.bench is None:
            args = run_all.parse_args(["--repeats", "3" if ctx.device.type == "cuda" else "1", "--no-plots",
                                       "--device", str(ctx.device), "--json", os.devnull,
                                       *SECTION_SIZES[ctx.device.type]])
            if args.threads:
                torch.set_num_threads(args.threads)
            from benchmarks.common import Report, machine

            ctx.bench = run_all.Context(args, ctx.device, Report(), machine(ctx.device),
                                        run_all.QUICK_BIG if args.quick else {})
        # One measurement may use a quarter of what is left, so that the later sections still run.
        ctx.bench.args.max_seconds = max(2.0, min(60.0, ctx.seconds_left() / 4))
        ctx.bench.report.sections.pop(name, None)
        before = len(ctx.bench.report.checks)
        run_all.SECTIONS[name].run(ctx.bench)
        section = ctx.bench.report.section(name)
        details = {"tables": section["tables"], "data": section["data"], "notes": section["notes"],
                   "targets": [vars(c) for c in ctx.bench.report.checks[before:]],
                   "max_seconds_per_measurement": ctx.bench.args.max_seconds}
        failed = [note for note in section["notes"] if " failed: " in note]
        if failed:
            raise AssertionError(f"{len(failed)} measurement(s) failed: {failed[0]}")
        return details
    return check


def _run_all():
    return importlib.import_module("benchmarks.run_all")


CHECKS = {"requirements": check_requirements, "triton_scan": check_triton_scan, "logits_vs_cpu_fp32": check_logits,
          "bf16_generation": check_bf16_generation, "compiled_decoding": check_compiled_decoding,
          **{f"bench_{name}": section_check(name) for name in ("prefill", "decode", "training", "scan")}}


# --- running and writing --------------------------------------------------------------------------------------------

class Context:
    def __init__(self, device: torch.device, budget_s: float):
        self.device, self.budget_s, self.start = device, budget_s, time.monotonic()
        self.package_error: str | None = None
        self.carry: dict | None = None
        self.bench = None

    def seconds_left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)


def run_check(ctx, name: str, fn) -> dict:
    estimate = ESTIMATES[name][0 if ctx.device.type == "cuda" else 1]
    left = ctx.seconds_left()
    if estimate > left:
        return {"status": "skipped", "message": f"would exceed the time budget: ~{estimate} s needed, {left:.0f} s "
                                                f"left of {ctx.budget_s:.0f} s", "seconds": 0.0, "details": {}}

    def out_of_time(signum, frame):
        raise OutOfTime()

    previous = signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, max(left, 0.1))
    start = time.perf_counter()
    try:
        details = fn(ctx) or {}
        status, message = "pass", ""
    except Skip as why:
        status, message, details = "skipped", str(why), {}
    except OutOfTime:
        status, message, details = "skipped", f"stopped: the time budget of {ctx.budget_s:.0f} s ran out", {}
    except AssertionError as error:
        status, message, details = "fail", str(error), {}
    except Exception as error:  # noqa: BLE001 - every error is recorded and the run goes on
        status, message = "error", f"{type(error).__name__}: {error}"
        details = {"traceback": traceback.format_exc(limit=6)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return {"status": status, "message": message.splitlines()[0] if message else "",
            "seconds": time.perf_counter() - start, "details": details}


def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": _version("triton"),
            "transformers": _version("transformers"), "device": str(device), "cpu": platform.processor() or
            platform.machine(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda)
    return info


def summary_text(result: dict) -> str:
    lines = [f"gpu_check on {result['environment'].get('gpu', result['environment']['device'])}: "
             f"{'complete' if result['complete'] else 'INCOMPLETE'}, {result['elapsed_s']:.0f} s of a "
             f"{result['budget_s']:.0f} s budget",
             f"torch {result['environment']['torch']}, triton {result['environment']['triton']}, transformers "
             f"{result['environment']['transformers']}, python {result['environment']['python']}"]
    if result.get("carry"):
        lines.append(f"carry: {', '.join(result['carry']['requirements'])} -- {result['carry']['download_elsewhere']}")
    for name, check in result["checks"].items():
        lines.append(f"{check['status'].upper():8} {name:22} {check['seconds']:6.1f} s  {check['message']}")
        for key in ("speedup", "unique_graphs", "max_abs_logit_error", "max_abs_cached_vs_uncached", "tokens_per_s",
                    "seconds_fwd_bwd_B4_T1024_L2560_fp32"):
            if key in check["details"]:
                lines.append(f"{'':31} {key} = {_short(check['details'][key])}")
        for target in check["details"].get("targets", []):
            verdict = {True: "PASS", False: "MISS", None: "n/a"}[target["passed"]]
            lines.append(f"{'':31} {target['measure']}: {_short(target['value'])} (target {target['target']}) "
                         f"{verdict}")
    return "\n".join(lines) + "\n"


def _short(value):
    """Floats to 3 significant digits, inside dicts too."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return value


def write_atomically(folder: str, name: str, text: str) -> None:
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)  # mkstemp's 0600 would hide the results from other users
    os.replace(temp, os.path.join(folder, name))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="folder for gpu_check.json and gpu_check.txt (created if missing)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run on a tiny model)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="global time budget in seconds (default 480)")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated checks of {list(CHECKS)}")
    parser.add_argument("--force", action="store_true", help="overwrite gpu_check.json/.txt already in --out")
    parser.add_argument("--interpreted-scans", metavar="FOLDER", help=argparse.SUPPRESS)  # the subprocess
    args = parser.parse_args(argv)
    if args.interpreted_scans is None and not args.out:
        parser.error("--out DIR is required")
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in args.only if c not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {list(CHECKS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.interpreted_scans:
        _interpreted_scans_main(args.interpreted_scans)
        return {}
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run with --device cpu for the dry run")
    os.makedirs(args.out, exist_ok=True)
    taken = [name for name in FILES if os.path.exists(os.path.join(args.out, name))]
    if taken and not args.force:
        raise SystemExit(f"error: {args.out} already holds {', '.join(taken)}; pass --force to overwrite")
    ctx = Context(device, args.budget_s)
    result = {"command": " ".join(["checks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
              "dry_run": device.type != "cuda", "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "budget_s": args.budget_s, "environment": environment(device), "checks": {}, "complete": False,
              "elapsed_s": 0.0}
    print(f"gpu_check: {result['environment']}", flush=True)
    for name in CHECKS:
        if name not in args.only:
            continue
        print(f"--- {name}", flush=True)
        result["checks"][name] = check = run_check(ctx, name, CHECKS[name])
        if name == "requirements":
            print(f"    needs beyond torch and triton: {check['details'].get('needs_beyond_torch_and_triton') or ''}")
        result["carry"] = ctx.carry
        result["elapsed_s"] = time.monotonic() - ctx.start
        print(f"    {check['status']} ({check['seconds']:.1f} s) {check['message']}", flush=True)
        write_results(args.out, result)
    result["complete"] = True
    result["elapsed_s"] = time.monotonic() - ctx.start
    write_results(args.out, result)
    print("\n" + summary_text(result), flush=True)
    return result


def write_results(folder: str, result: dict) -> None:
    """Both files, each replaced atomically (after every check, so that a killed run leaves what it measured)."""
    write_atomically(folder, FILES[0], json.dumps(result, indent=1, default=str) + "\n")
    write_atomically(folder, FILES[1], summary_text(result))


if __name__ == "__main__":
    main()

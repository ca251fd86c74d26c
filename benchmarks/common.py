"""Pieces every benchmark shares: timing (median after a warm-up), per-step clocks inside `generate()`, the
machine's description, and a report that prints tables and collects every figure for the JSON file.

Ratios are always "other implementation / ours": above 1 means ours is faster.
"""

import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList


def sync(device) -> None:
    """Waits for queued GPU work so that wall-clock time covers it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@dataclasses.dataclass
class Timing:
    """Seconds of each timed run after the warm-up; `median` is the figure reported."""

    runs: list[float]
    warmup: float

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def as_dict(self) -> dict:
        return {"median_s": self.median, "runs_s": self.runs, "warmup_s": self.warmup}


def time_it(fn: Callable[[], object], repeats: int = 3, device="cpu", budget_s: float | None = None) -> Timing:
    """Runs `fn` once to warm up, then `repeats` times; returns every run's wall time.

    With `budget_s`, fewer runs are made when the warm-up shows that `repeats` runs would exceed it, so a slow
    baseline cannot hold up the whole benchmark; a warm-up longer than the budget is itself the only sample.
    """
    start = time.perf_counter()
    fn()
    sync(device)
    warmup = time.perf_counter() - start
    if budget_s is not None and warmup > budget_s:
        return Timing([warmup], warmup)
    if budget_s is not None and warmup * repeats > budget_s:
        repeats = max(1, int(budget_s // max(warmup, 1e-9)))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        runs.append(time.perf_counter() - start)
    return Timing(runs, warmup)


def time_interleaved(calls: dict[str, Callable[[], object]], repeats: int = 3, device="cpu",
                     budget_s: float | None = None, on_error=None) -> dict[str, Timing]:
    """`time_it` for several implementations at once, their runs taken in turn (a, b, c, a, b, c, ...) so that a
    change in the machine's load during the measurement hits all of them alike. Each warms up first and keeps
    its own budget. A call that raises is left out (and passed to `on_error(name, error)` if given)."""
    warm, runs, allowed = {}, {}, {}
    for name, fn in calls.items():
        try:
            start = time.perf_counter()
            fn()
            sync(device)
            warm[name] = time.perf_counter() - start
        except Exception as error:
            if on_error is None:
                raise
            on_error(name, error)
            continue
        runs[name] = []
        allowed[name] = repeats
        if budget_s is not None and warm[name] > budget_s:
            allowed[name], runs[name] = 0, [warm[name]]
        elif budget_s is not None and warm[name] * repeats > budget_s:
            allowed[name] = max(1, int(budget_s // max(warm[name], 1e-9)))
    for round_ in range(repeats):
        for name in runs:
            if round_ < allowed[name]:
                start = time.perf_counter()
                calls[name]()
                sync(device)
                runs[name].append(time.perf_counter() - start)
    return {name: Timing(runs[name], warm[name]) for name in runs}


class StepClock(LogitsProcessor):
    """A logits processor that only records when `generate()` reaches it: once per new token, right after that
    token's forward. Differences between consecutive stamps are per-token decode latencies (forward plus
    generate's own per-step work); the first stamp minus the start is the prefill."""

    def __init__(self, device="cpu"):
        self.device = device
        self.stamps: list[float] = []
        self.start = 0.0

    def reset(self) -> "StepClock":
        self.stamps = []
        self.start = time.perf_counter()
        return self

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores

    @property
    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]

    def processors(self) -> LogitsProcessorList:
        return LogitsProcessorList([self])


def greedy_kwargs(new_tokens: int, clock: StepClock | None = None, **extra) -> dict:
    """`generate()` arguments for exactly `new_tokens` greedy tokens (end-of-sequence never stops it)."""
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0,
                  eos_token_id=None)
    if clock is not None:
        kwargs["logits_processor"] = clock.processors()
    return {**kwargs, **extra}


def decode_latency(model, input_ids, new_tokens: int, repeats: int, device="cpu", **generate_kwargs) -> dict:
    """Per-token latency of `model.generate` after prefilling `input_ids`: each run's median step interval,
    then the median over `repeats` runs after one warm-up run. Also returns the prefill seconds."""
    clock = StepClock(device)
    per_run, prefill = [], []
    for run in range(repeats + 1):
        clock.reset()
        model.generate(input_ids, **greedy_kwargs(new_tokens, clock, **generate_kwargs))
        if run:  # the first run warms up (and compiles, where asked)
            per_run.append(statistics.median(clock.intervals))
            prefill.append(clock.stamps[0] - clock.start)
    return {"per_token_s": statistics.median(per_run), "runs_s": per_run, "prefill_s": statistics.median(prefill)}


def rss_mib() -> float:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU features that decide which matmul kernels run (AVX-512, bf16, AMX)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx512f", "avx512_bf16", "amx", "avx2")))
    except OSError:
        pass
    return []


def machine(device) -> dict:
    info = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "threads": torch.get_num_threads(),
            "cores_visible": os.cpu_count(), "torch": torch.__version__, "device": str(device)}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    import transformers

    info["transformers"] = transformers.__version__
    info["load_average_at_start"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return info


def busy_warning(info: dict) -> str | None:
    """A warning when other processes already use the CPU: a torch thread waiting for a busy core stalls every
    parallel op (on 2 shared cores, ~10 ms per op was seen), so figures then mean little."""
    load, cores = info.get("load_average_at_start"), info.get("cores_visible") or 1
    if load is not None and info.get("device") == "cpu" and load > 0.5 and load + info["threads"] > cores + 0.5:
        return (f"warning: 1-minute load average {load:.1f} on {cores} cores before this run started: other "
                f"processes compete with torch's {info['threads']} threads and the figures will be noisy; run on "
                "an idle machine, or pass --threads to leave cores free")
    return None


@dataclasses.dataclass
class Check:
    """One of the issue's targets: the measured value beside the target, PASS or MISS (None: not measured)."""

    section: str
    measure: str
    value: float | None
    target: str
    passed: bool | None

    def row(self) -> list:
        verdict = "n/a" if self.passed is None else ("PASS" if self.passed else "MISS")
        return [self.section, self.measure, fmt(self.value), self.target, verdict]


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) < 1:
        return f"{value:.{digits}g}"
    if abs(value) < 1e5:
        return f"{value:,.{max(digits - 1, 1)}f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


class Report:
    """Prints each table as it is made and keeps every figure, table and check for `results.json`."""

    def __init__(self):
        self.sections: dict[str, dict] = {}
        self.checks: list[Check] = []

    def section(self, name: str) -> dict:
        return self.sections.setdefault(name, {"tables": [], "data": {}, "notes": []})

    def note(self, section: str, text: str) -> None:
        self.section(section)["notes"].append(text)
        print(f"  note: {text}", flush=True)

    def table(self, section: str, title: str, header: list[str], rows: list[list]) -> None:
        rows = [[fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
        self.section(section)["tables"].append({"title": title, "header": header, "rows": rows})
        print(f"\n{title}")
        print(render(header, rows), flush=True)

    def check(self, section: str, measure: str, value, target: str, passed: bool | None) -> None:
        self.checks.append(Check(section, measure, value, target, passed))

    def print_checks(self) -> None:
        if self.checks:
            print("\nTargets of issue 6 (ratios: other / ours, > 1 means ours is faster)")
            print(render(["section", "measure", "value", "target", "verdict"], [c.row() for c in self.checks]))

    def write_json(self, path: str, meta: dict) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        payload = {**meta, "sections": self.sections, "checks": [dataclasses.asdict(c) for c in self.checks]}
        with open(path, "w") as f:
            json.dump(payload, f, indent=1, default=str)


def render(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def ratio(other: float | None, ours: float | None) -> float | None:
    """other / ours (> 1: ours faster); None when either is missing."""
    if other is None or ours is None or ours <= 0:
        return None
    return other / ours


def at_least(value, target: float) -> bool | None:
    return None if value is None else value >= target


def at_most(value, target: float) -> bool | None:
    return None if value is None else value <= target


def sizes(text: str) -> list[int]:
    """'1k,2048,32k' -> [1024, 2048, 32768]."""
    out = []
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        scale = {"k": 1024, "m": 1024 * 1024}.get(item[-1].lower(), 1)
        out.append(int(float(item[:-1] if scale > 1 else item) * scale))
    return out


def size(text) -> int:
    """'32k' -> 32768, '16M' -> 16777216, '512' -> 512."""
    return sizes(text)[0]


def plot_path(img_dir: str, name: str) -> str:
    os.makedirs(img_dir, exist_ok=True)
    return os.path.join(img_dir, name)


def new_figure(cols: int = 1, width: float = 6.0, height: float = 4.0):
    """A matplotlib figure with `cols` axes side by side (non-interactive backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, cols, figsize=(width * cols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path: str, title: str) -> str:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"  plot: {path}", flush=True)
    return path

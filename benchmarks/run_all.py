"""Every measurement of issue 6 in one process, on one set of weights: machine peaks, RG-LRU scan backends,
prefill, decode, batch throughput, training. Prints tables with ratios (other / ours: > 1 means ours is faster)
and the issue's targets with PASS/MISS, writes PNG plots and a JSON file of every figure.

    python -m benchmarks suite                       # everything at the issue's sizes (long: tens of minutes)
    python -m benchmarks suite --quick               # tiny sizes, a smoke test (well under a minute)
    python -m benchmarks suite --only scan,prefill --prefill-lens 2k,8k --repeats 5

Sections: peaks, scan, prefill, decode, throughput, training (see each file in benchmarks/sections/ for exactly
what it measures). Sizes accept k suffixes (2k = 2048). Each figure is the median of `--repeats` runs after a
warm-up; a measurement whose warm-up shows it would take longer than `--max-seconds` makes fewer runs (scan: is
estimated from shorter runs instead, marked "est.").
"""

import argparse
import dataclasses
import datetime
import os
import sys
import time

import torch

from benchmarks.common import Report, busy_warning, machine, size, sizes
from benchmarks.models import Trio, build_trio, small_config
from benchmarks.sections import decode, peaks, prefill, scan, throughput, training

SECTIONS = {"peaks": peaks, "scan": scan, "prefill": prefill, "decode": decode, "throughput": throughput,
            "training": training}
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# name: (default, quick, type, help)
OPTIONS = {
    "repeats": (3, 1, int, "timed runs per figure (median reported), after one warm-up run"),
    "max_seconds": (300.0, 20.0, float, "time budget of one measurement (see above)"),
    "width": (512, 64, size, "small model: width D (heads of 64)"),
    "layers": (6, 3, size, "small model: layers, pattern recurrent, recurrent, attention"),
    "window": (2048, 32, size, "small model: attention window W"),
    "vocab": (4096, 256, size, "small model: vocabulary V"),
    "dtypes": ("fp32,bf16", "fp32,bf16", str, "prefill dtypes"),
    "matmul_size": (4096, 256, size, "peaks: N of the N×N×N GEMM"),
    "gemv_rows": (8192, 1024, size, "peaks: R of the R×R GEMV"),
    "reduce_numel": (1 << 26, 1 << 20, size, "peaks: elements of the fp32 tensor summed"),
    "scan_len": ("4096", "256", size, "scan: T of the main table"),
    "scan_width": (2560, 64, size, "scan: L"),
    "scan_batches": ("1,8", "1,2", sizes, "scan: batch sizes of the main table"),
    "scan_sweep": ("256,512,1k,2k,4k", "64,128,256", sizes, "scan: T values of the sweep (batch 1)"),
    "scan_grad_len": (512, 128, size, "scan: T at which gradient errors are compared"),
    "prefill_lens": ("2k,8k,32k", "64,128", sizes, "prefill: prompt lengths"),
    "others_max_len": (8192, 128, size, "longest T for the built-in and the reference (they build T×T masks)"),
    "decode_contexts": ("1k,32k", "16,48", sizes, "decode: context lengths of the small model"),
    "decode_tokens": (32, 4, size, "decode: new tokens per generate() call"),
    "compile_backend": ("inductor", "none", str, "decode: torch.compile backend, static-cache variant ('none' skips)"),
    "big_preset": ("recurrentgemma-2b", "recurrentgemma-2b", str, "decode: large model shape ('none' skips it)"),
    "big_prompt": (32, 8, size, "decode: prompt length of the large model"),
    "big_tokens": (8, 4, size, "decode: new tokens per call of the large model"),
    "tp_batches": ("1,4,16,64", "1,2", sizes, "throughput: batch sizes"),
    "tp_lens": ("256,1k,4k", "8,16", sizes, "throughput: generated lengths"),
    "tp_prompt": (16, 8, size, "throughput: prompt length"),
    "memory_budget_gb": (16.0, 16.0, float, "throughput: memory budget for the largest batch"),
    "train_lens": ("1k,2k,4k,8k", "64,128", sizes, "training: sequence lengths"),
    "train_builtin_max_len": (2048, 128, size, "training: longest T for the built-in (very slow beyond 2k)"),
}
# --quick shrinks the large decode model to a toy of the same layout (the preset's pattern and ratios).
QUICK_BIG = dict(hidden_size=128, intermediate_size=384, num_attention_heads=2, lru_width=128, vocab_size=512,
                 block_types=["recurrent", "recurrent", "attention"])


@dataclasses.dataclass
class Context:
    """What sections share: arguments, device, the report, the peaks of section 1, and one small model."""

    args: argparse.Namespace
    device: torch.device
    report: Report
    machine: dict
    big_overrides: dict
    peaks: dict = dataclasses.field(default_factory=dict)
    _trios: dict = dataclasses.field(default_factory=dict)

    @property
    def config(self):
        a = self.args
        return small_config(a.width, a.layers, a.window, a.vocab)

    @property
    def machine_line(self) -> str:
        gpu = self.machine.get("gpu")
        return gpu or f"{self.machine['cpu']}, {self.machine['threads']} threads"

    @property
    def params_line(self) -> str:
        n = sum(p.numel() for p in self.trio(torch.float32).ours.parameters())
        return f"{n / 1e6:.1f}M-param Griffin (D={self.args.width}, {self.args.layers} layers, W={self.args.window})"

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[name]

    def trio(self, dtype: torch.dtype) -> Trio:
        """The small model in three implementations, built once (fp32) and cast once per dtype."""
        if torch.float32 not in self._trios:
            self._trios[torch.float32] = build_trio(self.config).to(torch.float32, self.device)
        if dtype not in self._trios:
            self._trios[dtype] = self._trios[torch.float32].to(dtype, self.device)
        return self._trios[dtype]


def auto_scan_backends(device) -> dict[str, str]:
    """What the model's `auto` scan backend resolves to here, per dtype (where the package can tell)."""
    from hf_recurrentgemma.griffin import ops_griffin

    resolve = getattr(ops_griffin, "resolve_scan_backend", None)
    if resolve is None:
        return {}
    out = {}
    for name in ("fp32", "bf16"):
        try:
            out[name] = resolve("auto", device, DTYPES[name])
        except Exception as error:  # report, do not stop the benchmark
            out[name] = f"error: {error}"
    return out


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {list(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes everywhere (smoke test)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="results file (default benchmarks/results/run_all-<time>.json)")
    parser.add_argument("--img-dir", default=None,
                        help="where the PNG plots go (default docs/img; with --quick benchmarks/results/img-quick)")
    parser.add_argument("--no-plots", action="store_true")
    for name, (default, _, kind, text) in OPTIONS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=None, type=str, help=f"{text} (default {default})")
    args = parser.parse_args(argv)
    for name, (default, quick, kind, _) in OPTIONS.items():
        value = getattr(args, name)
        value = value if value is not None else (quick if args.quick else default)
        setattr(args, name, kind(value) if kind is not str or not isinstance(value, str) else value)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SECTIONS] + [d for d in args.dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown section or dtype: {unknown}; sections are {list(SECTIONS)}, dtypes {list(DTYPES)}")
    if args.img_dir is None:
        args.img_dir = os.path.join(HERE, "results", "img-quick") if args.quick else os.path.join(ROOT, "docs", "img")
    if args.json is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.json = os.path.join(HERE, "results", f"run_all-{'quick-' if args.quick else ''}{stamp}.json")
    return args


def main(argv=None) -> dict:
    """Runs the selected sections; returns the paths written ({"json": ..., "plots": [...]})."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = Report()
    info = machine(device)
    ctx = Context(args, device, report, info, QUICK_BIG if args.quick else {})
    print(f"{info['cpu']} ({', '.join(info['cpu_flags']) or 'no AVX flags read'}), {info['threads']} torch threads of "
          f"{info['cores_visible']} visible cores; torch {info['torch']}, transformers {info['transformers']}; "
          f"device {device}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}", flush=True)
    warning = busy_warning(info)
    if warning:
        print(warning, flush=True)
    from hf_recurrentgemma.griffin import ops_griffin

    info["scan_auto"] = auto_scan_backends(device)
    runnable = [n for n in ops_griffin.SCAN_BACKENDS if ops_griffin.scan_backend_available(n, torch.device(device)) is None]
    print(f"scan backends that run on {device}: {runnable}; 'auto' picks {info['scan_auto']}", flush=True)
    wall = {}
    order = [name for name in SECTIONS if name in args.only]
    if any(name in ("prefill", "decode") for name in order) and "peaks" not in order:
        print("note: without the peaks section, shares of peak are left out", flush=True)
    for name in order:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        SECTIONS[name].run(ctx)
        wall[name] = time.perf_counter() - start
        print(f"({name}: {wall[name]:.1f} s)", flush=True)
    report.print_checks()
    plots = []
    if not args.no_plots:
        for name in order:
            plot = getattr(SECTIONS[name], "plot", None)
            path = plot(ctx) if plot else None
            if path:
                plots.append(path)
    info["load_average_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta = {"machine": info, "args": {k: v for k, v in vars(args).items()}, "section_wall_s": wall,
            "scan_backends": list(ops_griffin.SCAN_BACKENDS), "peaks": ctx.peaks, "plots": plots,
            "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])])}
    report.write_json(args.json, meta)
    print(f"\nresults: {args.json}", flush=True)
    return {"json": args.json, "plots": plots}


if __name__ == "__main__":
    main()

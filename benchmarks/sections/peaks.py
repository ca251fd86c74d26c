"""Section 1: this machine's peaks, measured in the same run as everything else.

- matmul: GFLOP/s of an N × N × N GEMM (2·N³ FLOPs) in fp32 and bf16 — the ceiling of prefill and training.
- weight-reading rate: GB/s of a GEMV `y = W x` (W of R × R, read once per product) in fp32 and bf16, and of a
  plain reduction (`t.sum()` over a large fp32 tensor) — the ceiling of batch-1 decoding of a large model.
"""

import torch
import torch.nn.functional as F

from benchmarks.common import time_it

NAME = "peaks"


def run(ctx) -> None:
    args, device = ctx.args, ctx.device
    n, r, numel = args.matmul_size, args.gemv_rows, args.reduce_numel
    gen = torch.Generator(device=device).manual_seed(0)
    rows, data = [], {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(n, n, device=device, generator=gen).to(dtype)
        b = torch.randn(n, n, device=device, generator=gen).to(dtype)
        t = time_it(lambda: torch.mm(a, b), args.repeats, device).median
        name = f"matmul_{_short(dtype)}_gflops"
        data[name] = 2 * n**3 / t / 1e9
        rows.append([f"matmul {n}³ {_short(dtype)}", t * 1e3, data[name], "GFLOP/s"])
        del a, b
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(r, r, device=device, generator=gen).to(dtype)
        x = torch.randn(1, r, device=device, generator=gen).to(dtype)
        t = time_it(lambda: F.linear(x, w), args.repeats * 3, device).median  # the op a decode step runs
        name = f"gemv_{_short(dtype)}_gbs"
        data[name] = w.nbytes / t / 1e9
        rows.append([f"GEMV {r}² {_short(dtype)} (F.linear)", t * 1e3, data[name], "GB/s"])
        del w, x
    big = torch.randn(numel, device=device, generator=gen)
    t = time_it(lambda: big.sum(), args.repeats * 3, device).median
    data["reduce_fp32_gbs"] = big.nbytes / t / 1e9
    rows.append([f"sum of {numel / 2**20:.0f}M fp32", t * 1e3, data["reduce_fp32_gbs"], "GB/s"])
    del big
    data["best_read_gbs"] = max(data["gemv_fp32_gbs"], data["reduce_fp32_gbs"])
    ctx.peaks.update(data)
    ctx.report.section(NAME)["data"].update(data)
    ctx.report.table(NAME, f"Machine peaks ({ctx.machine['cpu']}, {ctx.machine['threads']} threads)",
                     ["measure", "ms", "rate", "unit"], rows)
    ctx.report.note(NAME, f"best weight-reading rate (max of fp32 GEMV and reduction): "
                          f"{data['best_read_gbs']:.1f} GB/s")


def _short(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]

"""What verifying a speculative draft costs on CPU: a forward over k+1 tokens against one token, k = 0..16, for the
linear layers of one recurrentgemma-2b residual block pair (the recurrent block's three 2560x2560 projections and
the MLP's 2560->7680 gate and up and 7680->2560 down), random weights, bfloat16 and weight-only int8 (torchao's
per-row layout), against the weight-read floor measured in the same run.

Decoding reads every weight once per call, so a (k+1)-token call should cost what a one-token call costs while the
weights dominate. The weights are held in enough copies to total about 1 GiB (--total-mb), so each call reads them from memory
as a 2B model's 5 GB do, not from the last-level cache. Floor: the bytes of one pass over the weights divided by
the read bandwidth of a float32 sum over a buffer of the same size, measured in the same run.

    python -m benchmarks verify                          # the variant this CPU picks
    HF_RECURRENTGEMMA_CPU_ISA=fp32-fma-256 python -m benchmarks verify   # what an AVX2 CPU runs

Prints one table per dtype: for each row count, the median time of a pass (ours: `linear_cpu`; torch:
`F.linear`, or `torch._weight_int8pack_mm` for int8), each relative to ours for one token, and ours against the
floor measured beside it. Medians of --repeats runs (each a pass over all copies), ours, torch's and the floor's
runs interleaved so that other load on the machine slows all three alike.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from hf_recurrentgemma.griffin.cpu_matvec_griffin import _matmul_rows_int8_op, linear_cpu, matvec_variant  # noqa: E402

SHAPES = [(2560, 2560)] * 3 + [(7680, 2560), (7680, 2560), (2560, 7680)]  # (out, in) of one block pair


def interleaved_medians(fns: list, repeats: int) -> list[float]:
    """Median seconds of each function, run in turn within each repeat, so a busy machine slows all alike."""
    for fn in fns:
        fn()
    runs = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return [statistics.median(times) for times in runs]


def make_weights(dtype: str, gen: torch.Generator):
    """One block pair's weights, as (weight, int8 scale or None) per linear."""
    layers = []
    for n, k in SHAPES:
        w = torch.randn(n, k, generator=gen) * 0.02
        if dtype == "int8":
            scale = w.abs().amax(1, keepdim=True) / 127
            layers.append(((w / scale).round().clamp(-127, 127).to(torch.int8), scale))
        else:
            layers.append((w.bfloat16(), None))
    return layers


def nbytes(layers) -> int:
    return sum(w.nbytes + (0 if s is None else s.nbytes) for w, s in layers)


def passes(copies, rows: int, ours: bool):
    """A function running every linear of every copy on `rows` tokens."""
    xs = {k: torch.randn(rows, k).bfloat16() for k in {k for _, k in SHAPES}}

    def run():
        for layers in copies:
            for w, scale in layers:
                x = xs[w.shape[1]]
                if scale is None:
                    linear_cpu(x, w) if ours else torch.nn.functional.linear(x, w)
                elif ours:
                    _matmul_rows_int8_op(x, w, scale, None, None, matvec_variant("int8") or "scalar")
                else:
                    torch._weight_int8pack_mm(x, w, scale.reshape(-1).bfloat16())
    return run




def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-k", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", default="bf16,int8")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--total-mb", type=int, default=1024, help="weights held, in copies of the block pair")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"threads {torch.get_num_threads()}; variants: bf16 {matvec_variant('bf16')}, "
          f"int8 {matvec_variant('int8')}")
    with torch.inference_mode():
        for dtype in args.dtypes.split(","):
            block = make_weights(dtype, gen)
            count = max(1, math.ceil(args.total_mb * 2**20 / nbytes(block)))
            copies = [block] + [[(w.clone(), s) for w, s in block] for _ in range(count - 1)]
            total = nbytes(block) * count
            buffer = torch.randn(total // 4)  # the floor: a float32 sum reading as many bytes
            print(f"\n{dtype}: {count} copies of one block pair's linears, {total / 1e9:.2f} GB a pass")
            print(f"{'k':>3} {'tokens':>6} {'ours ms':>8} {'x 1 tok':>8} {'x floor':>8} {'torch ms':>9} "
                  f"{'x ours 1':>9} {'floor ms':>9}")
            one, rows = None, []
            for k in range(args.max_k + 1):
                ours, theirs, read = interleaved_medians(
                    [passes(copies, k + 1, True), passes(copies, k + 1, False), lambda: buffer.sum()], args.repeats)
                floor = read * total / buffer.nbytes
                one = one or ours
                print(f"{k:>3} {k + 1:>6} {ours * 1e3:>8.1f} {ours / one:>8.2f} {ours / floor:>8.2f} "
                      f"{theirs * 1e3:>9.1f} {theirs / one:>9.2f} {floor * 1e3:>9.1f}", flush=True)
            del copies, block, buffer


if __name__ == "__main__":
    main()

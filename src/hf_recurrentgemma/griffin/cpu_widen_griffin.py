"""bfloat16 matrix products at float32 speed on CPUs without native bfloat16 arithmetic (AVX2, or AVX-512 without
BF16, or any CPU with HF_RECURRENTGEMMA_CPU_ISA capped below `bf16-dot`): for a product of more rows than the
few-row kernels take (a prompt), the bfloat16 weight is widened to float32 one tile of rows at a time and each tile
goes through torch's float32 GEMM, accumulating in float32; the result is rounded once to bfloat16. That is the
numerical contract of torch's own bfloat16 GEMM (float32 accumulation, one rounding), at the speed of its float32
one: without native bfloat16, torch's bfloat16 GEMM ran about 4x slower than float32 on an AVX2 CPU (issue 14).

A tile of TILE_BYTES of float32 weights stays in the caches while the GEMM reads it, and no full-size float32 copy
of the weight exists. Measured at 2048 x 2560 -> 7680, one thread: 4 MiB tiles ran at float32's speed (1.27 s
against 1.44 s for float32 F.linear, torch's bfloat16 GEMM without AMX being ~4x slower), 1 MiB tiles at 0.65-0.75x
(more, smaller GEMM calls), 16 MiB no faster than 4. Switched off with the `widen` name
of HF_RECURRENTGEMMA_CPU_KERNELS (see kernel_build_griffin.py).
"""

import torch

from .kernel_build_griffin import MAX_ROWS, kernel_enabled

TILE_BYTES = 4 << 20  # a float32 weight tile (see above for the measurement)
MIN_ROWS = MAX_ROWS + 1  # fewer rows go to the few-row kernels


def widen_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the widened path fits this call: bfloat16 inference on CPU with more than the few-row kernels'
    rows and plain contiguous bfloat16 weights (`linear_cpu` also asks that the CPU, or the cap, lacks native
    bfloat16 dot products)."""
    return (
        x.device.type == "cpu" and x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16
        and type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.is_contiguous()
        and x.numel() >= MIN_ROWS * x.shape[-1] > 0
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and kernel_enabled("widen")
    )


def linear_widened(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for bfloat16 x (..., K) and weight (N, K): float32 products and sums, one
    rounding to bfloat16. y^T (N, M) is computed tile by tile (each tile a contiguous run of y^T's rows)."""
    rows = x.reshape(-1, x.shape[-1]).float()  # (M, K): widened once
    n, k = weight.shape
    tile = max(1, TILE_BYTES // (4 * k))
    out_t = torch.empty(n, rows.shape[0], dtype=torch.float32)  # (N, M)
    for n0 in range(0, n, tile):
        torch.mm(weight[n0 : n0 + tile].float(), rows.T, out=out_t[n0 : n0 + tile])
    if bias is not None:
        out_t += bias.float()[:, None]
    return out_t.T.to(torch.bfloat16).reshape(*x.shape[:-1], n)

"""The RG-LRU scan as a compiled CPU kernel: `h_t = a_t * h_{t-1} + x_t`, forward and backward, OpenMP over
(batch, channel blocks), sequential over time, accumulated in float32.

Why a plain C kernel: the recurrence is memory-bound (three loads/stores per multiply-add), so what matters is one
pass over memory without per-step Python. A C file with no Torch headers compiles in well under a second and is
cached on disk (`kernel_build_griffin.py` builds it, picks the variant and reads the switches; kernel name
`scan`). The kernel is called through `ctypes` on raw data pointers and registered with `torch.library`
(namespace: this module's name) with its backward, so autograd and `torch.compile` see one opaque op.

Variants: `scalar` (portable C), `fp32-fma-256` and `fp32-fma-512` (the same loops compiled for AVX2 and AVX-512F,
the latter with non-temporal stores for large outputs). Floating-point contraction is off in all of them, so
`a * h + x` is rounded twice, exactly like the sequential reference in `ops_griffin.py`: every variant's outputs
are bit-identical to it in float32 and bfloat16.
"""

from string import Template

import torch

from .kernel_build_griffin import (CompiledKernel, kernel_argtypes, kernel_enabled, op_namespace, symbol_suffix,
                                   target_attribute)
from .scan_autograd_griffin import register_reverse_scan_autograd, scan_with_backend

SCAN_VARIANTS = ("scalar", "fp32-fma-256", "fp32-fma-512")

_COMMON = r"""
#ifdef __linux__
#include <sys/mman.h>
#endif

/* A large output that nobody has touched yet is backed by huge pages where the system allows it (transparent
   huge pages in "madvise" mode): first-touch page faults otherwise cost more than the scan itself. */
static void advise_huge_pages(void *p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t start = ((uintptr_t)p + huge - 1) & ~(huge - 1), end = ((uintptr_t)p + (uintptr_t)bytes) & ~(huge - 1);
    if (end > start) madvise((void *)start, end - start, MADV_HUGEPAGE);
#endif
}

/* Work split of the scans: tasks are (batch row, channel block). A block is as wide as possible (whole rows when
   the batch alone feeds every thread), so each time step reads and writes long contiguous runs, which the
   hardware prefetchers stream at full bandwidth; the block's running state lives in a task-local buffer. */
static int64_t block_width(int64_t B, int64_t L, int threads) {
    int64_t per_row = B >= threads ? 1 : (threads + B - 1) / B;
    int64_t width = (L + per_row - 1) / per_row;
    return (width + 15) / 16 * 16;
}

#define SCAN_TASKS(...)                                                                           \
    int64_t width = block_width(B, L, threads), nblocks = (L + width - 1) / width;                 \
    _Pragma("omp parallel num_threads(threads)")                                                   \
    {                                                                                              \
        float *state = (float *)malloc(sizeof(float) * 2 * width);                                 \
        _Pragma("omp for schedule(static)")                                                        \
        for (int64_t task = 0; task < B * nblocks; task++) {                                       \
            int64_t b = task / nblocks, c0 = (task % nblocks) * width;                             \
            int64_t n = L - c0 < width ? L - c0 : width;                                           \
            __VA_ARGS__                                                                            \
        }                                                                                          \
        free(state);                                                                               \
    }

/* An output larger than the caches is written with non-temporal stores, which skip reading each line before
   overwriting it (25% faster at B = 8, T = 4096, L = 2560); a smaller one stays in cache for the next op. */
#define STREAM_MIN_BYTES ((int64_t)32 << 20)
"""

# One copy per variant: $v is the variant's symbol suffix, $attr its target attribute, $stream the streaming-store
# loop in front of the generic one (AVX-512 only; empty elsewhere).
_SCANS = Template(r"""
/* Forward. x, a, y: (B, T, L) float32; h0, h_last: (B, L) float32. */
$attr void scan_fwd_f32_$v(const float *x, const float *a, const float *h0, float *y, float *h_last,
                           int64_t B, int64_t T, int64_t L, int threads) {
    advise_huge_pages(y, B * T * L * 4);
    int stream = B * T * L * 4 >= STREAM_MIN_BYTES && L % 16 == 0 && (uintptr_t)y % 64 == 0;
    (void)stream;
    SCAN_TASKS(
        float *h = state;
        for (int64_t c = 0; c < n; c++) h[c] = h0[b * L + c0 + c];
        $stream
        for (int64_t t = 0; t < T; t++) {
            int64_t o = (b * T + t) * L + c0;
            for (int64_t c = 0; c < n; c++) { h[c] = a[o + c] * h[c] + x[o + c]; y[o + c] = h[c]; }
        }
        for (int64_t c = 0; c < n; c++) h_last[b * L + c0 + c] = h[c];
    )
}

/* Forward on bfloat16 inputs and outputs (inference); the state stays float32. */
$attr void scan_fwd_bf16_$v(const uint16_t *x, const uint16_t *a, const float *h0, uint16_t *y, float *h_last,
                            int64_t B, int64_t T, int64_t L, int threads) {
    advise_huge_pages(y, B * T * L * 2);
    SCAN_TASKS(
        float *h = state;
        for (int64_t c = 0; c < n; c++) h[c] = h0[b * L + c0 + c];
        for (int64_t t = 0; t < T; t++) {
            int64_t o = (b * T + t) * L + c0;
            for (int64_t c = 0; c < n; c++) {
                h[c] = bf16_to_f32(a[o + c]) * h[c] + bf16_to_f32(x[o + c]);
                y[o + c] = f32_to_bf16(h[c]);
            }
        }
        for (int64_t c = 0; c < n; c++) h_last[b * L + c0 + c] = h[c];
    )
}

/* Backward, all float32. g_t = dy_t + a_{t+1} g_{t+1} (+ dh_last at t = T-1); dx_t = g_t;
   da_t = g_t h_{t-1} with h_{-1} = h0; dh0 = a_0 g_0. h holds the forward states (B, T, L). */
$attr void scan_bwd_f32_$v(const float *a, const float *h, const float *h0, const float *dy, const float *dh_last,
                           float *dx, float *da, float *dh0, int64_t B, int64_t T, int64_t L, int threads) {
    advise_huge_pages(dx, B * T * L * 4);
    advise_huge_pages(da, B * T * L * 4);
    SCAN_TASKS(
        float *g = state, *a_next = state + width;
        for (int64_t c = 0; c < n; c++) { g[c] = 0.0f; a_next[c] = 0.0f; }
        for (int64_t t = T - 1; t >= 0; t--) {
            int64_t o = (b * T + t) * L + c0;
            const float *h_prev = t > 0 ? h + o - L : h0 + b * L + c0;
            for (int64_t c = 0; c < n; c++) {
                float carried = t == T - 1 ? dh_last[b * L + c0 + c] : a_next[c] * g[c];
                g[c] = dy[o + c] + carried;
                dx[o + c] = g[c];
                da[o + c] = g[c] * h_prev[c];
                a_next[c] = a[o + c];
            }
        }
        for (int64_t c = 0; c < n; c++) dh0[b * L + c0 + c] = a_next[c] * g[c];
    )
}
""")

# Streaming stores: the same multiply, then add (no fused rounding), written around the cache.
_STREAM_512 = r"""
        if (stream && n % 16 == 0) {
            for (int64_t t = 0; t < T; t++) {
                int64_t o = (b * T + t) * L + c0;
                for (int64_t c = 0; c < n; c += 16) {
                    __m512 hv = _mm512_mul_ps(_mm512_loadu_ps(a + o + c), _mm512_loadu_ps(h + c));
                    hv = _mm512_add_ps(hv, _mm512_loadu_ps(x + o + c));
                    _mm512_storeu_ps(h + c, hv);
                    _mm512_stream_ps(y + o + c, hv);
                }
            }
            _mm_sfence();
        } else
"""


def _source() -> str:
    parts = [_COMMON, _SCANS.substitute(v="scalar", attr="", stream="")]
    parts.append("#if defined(HF_RG_X86)")
    for capability, stream in (("fp32-fma-256", ""), ("fp32-fma-512", _STREAM_512)):
        parts.append(_SCANS.substitute(v=symbol_suffix(capability), attr=target_attribute(capability),
                                       stream=stream))
    parts.append("#endif")
    return "\n".join(parts)


SCAN_KERNEL = CompiledKernel("scan", _source(), {
    "scan_fwd_f32": (SCAN_VARIANTS, kernel_argtypes(5)),
    "scan_fwd_bf16": (SCAN_VARIANTS, kernel_argtypes(5)),
    "scan_bwd_f32": (SCAN_VARIANTS, kernel_argtypes(8)),
})


def scan_kernel_error() -> str | None:
    """Why the scan kernel cannot run now (switched off, or it cannot be built here), or None."""
    if not kernel_enabled("scan"):
        return "switched off by HF_RECURRENTGEMMA_CPU_KERNELS"
    return SCAN_KERNEL.error()


def scan_variant() -> str | None:
    """The capability name of the scan variant a call would run now, or None where the kernel cannot run."""
    if scan_kernel_error() is not None:
        return None
    return SCAN_KERNEL.best_variant(SCAN_VARIANTS)


def _kernel(function: str):
    reason = scan_kernel_error()
    if reason is not None:
        raise RuntimeError(f"the CPU scan kernel is unavailable: {reason}")
    return SCAN_KERNEL.function(function, SCAN_KERNEL.best_variant(SCAN_VARIANTS))


_NS = op_namespace(__name__)


@torch.library.custom_op(f"{_NS}::rnn_scan", mutates_args=(), device_types="cpu")
def _rnn_scan_op(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, seq_len, width = x.shape
    native_bf16 = x.dtype == torch.bfloat16
    kernel = _kernel("scan_fwd_bf16" if native_bf16 else "scan_fwd_f32")
    xk, ak = (x, a) if native_bf16 else (x.float(), a.float())
    xk, ak, h0 = xk.contiguous(), ak.contiguous(), h0.float().contiguous()
    y = torch.empty_like(xk)
    h_last = torch.empty(batch, width, dtype=torch.float32)
    kernel(xk.data_ptr(), ak.data_ptr(), h0.data_ptr(), y.data_ptr(), h_last.data_ptr(), batch, seq_len, width,
           torch.get_num_threads())
    return y.to(x.dtype), h_last


@_rnn_scan_op.register_fake
def _(x, a, h0):
    return torch.empty_like(x), x.new_empty(x.shape[0], x.shape[2], dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::rnn_scan_backward", mutates_args=(), device_types="cpu")
def _rnn_scan_backward_op(
    a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor, dy: torch.Tensor, dh_last: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kernel = _kernel("scan_bwd_f32")
    batch, seq_len, width = h.shape
    a, h, h0 = a.float().contiguous(), h.contiguous(), h0.float().contiguous()
    dy, dh_last = dy.float().contiguous(), dh_last.float().contiguous()
    dx, da, dh0 = torch.empty_like(h), torch.empty_like(h), torch.empty_like(h0)
    kernel(a.data_ptr(), h.data_ptr(), h0.data_ptr(), dy.data_ptr(), dh_last.data_ptr(), dx.data_ptr(),
           da.data_ptr(), dh0.data_ptr(), batch, seq_len, width, torch.get_num_threads())
    return dx, da, dh0


@_rnn_scan_backward_op.register_fake
def _(a, h, h0, dy, dh_last):
    return torch.empty_like(h), torch.empty_like(h), torch.empty_like(h0)


@torch.library.custom_op(f"{_NS}::rnn_scan_states", mutates_args=(), device_types="cpu")
def _rnn_scan_states_op(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward for training: every state in float32 (B, T, L), which the backward needs for `da`, and the last."""
    return _rnn_scan_op(x.float(), a.float(), h0)


@_rnn_scan_states_op.register_fake
def _(x, a, h0):
    return x.new_empty(x.shape, dtype=torch.float32), x.new_empty(x.shape[0], x.shape[2], dtype=torch.float32)


register_reverse_scan_autograd(_rnn_scan_states_op, _rnn_scan_backward_op)


def rnn_scan_cpu(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `ops_griffin.rnn_scan_sequential`, on CPU tensors; differentiable in x, a and h0."""
    return scan_with_backend(_rnn_scan_op, _rnn_scan_states_op, x, a, h0)

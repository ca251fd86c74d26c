"""The RG-LRU scan as a compiled CPU kernel: `h_t = a_t * h_{t-1} + x_t`, forward and backward, OpenMP over
(batch, channel blocks), sequential over time, accumulated in float32.

Why a plain C kernel: the recurrence is memory-bound (three loads/stores per multiply-add), so what matters is one
pass over memory without per-step Python. A C file with no Torch headers compiles in well under a second with the
system C compiler and is cached on disk (`~/.cache/hf_recurrentgemma/kernels`, or `$HF_RECURRENTGEMMA_KERNEL_DIR`);
a `torch.utils.cpp_extension` build includes the Torch headers and takes a minute on a 2-core machine (measured,
docs/performance.md). The kernel is called through `ctypes` on raw data pointers and registered with
`torch.library` (namespace: this module's name) with its backward, so autograd and `torch.compile` see one opaque op.

Floating-point contraction is off (`-ffp-contract=off`): `a * h + x` is rounded twice, exactly like the
sequential reference in `ops_griffin.py`, so outputs are bit-identical to it in float32.
"""

import ctypes
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

import torch

from .scan_autograd_griffin import register_reverse_scan_autograd, scan_with_backend

logger = logging.getLogger(__name__)

_C_SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
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

/* bfloat16 <-> float32, round to nearest even (as torch). */
static inline float bf16_to_f32(uint16_t v) {
    uint32_t u = ((uint32_t)v) << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
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

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* An output larger than the caches is written with non-temporal stores, which skip reading each line before
   overwriting it (25% faster at B = 8, T = 4096, L = 2560); a smaller one stays in cache for the next op. */
#define STREAM_MIN_BYTES ((int64_t)32 << 20)

/* Forward. x, a, y: (B, T, L) float32; h0, h_last: (B, L) float32. */
void scan_fwd_f32(const float *x, const float *a, const float *h0, float *y, float *h_last,
                  int64_t B, int64_t T, int64_t L, int threads) {
    advise_huge_pages(y, B * T * L * 4);
    int stream = B * T * L * 4 >= STREAM_MIN_BYTES && L % 16 == 0 && (uintptr_t)y % 64 == 0;
    SCAN_TASKS(
        float *h = state;
        for (int64_t c = 0; c < n; c++) h[c] = h0[b * L + c0 + c];
#if defined(__AVX512F__)
        if (stream && n % 16 == 0) {
            for (int64_t t = 0; t < T; t++) {
                int64_t o = (b * T + t) * L + c0;
                for (int64_t c = 0; c < n; c += 16) {  /* the same multiply, then add: no fused rounding */
                    __m512 hv = _mm512_mul_ps(_mm512_loadu_ps(a + o + c), _mm512_loadu_ps(h + c));
                    hv = _mm512_add_ps(hv, _mm512_loadu_ps(x + o + c));
                    _mm512_storeu_ps(h + c, hv);
                    _mm512_stream_ps(y + o + c, hv);
                }
            }
            _mm_sfence();
        } else
#endif
        for (int64_t t = 0; t < T; t++) {
            int64_t o = (b * T + t) * L + c0;
            for (int64_t c = 0; c < n; c++) { h[c] = a[o + c] * h[c] + x[o + c]; y[o + c] = h[c]; }
        }
        for (int64_t c = 0; c < n; c++) h_last[b * L + c0 + c] = h[c];
    )
}

/* Forward on bfloat16 inputs and outputs (inference); the state stays float32. */
void scan_fwd_bf16(const uint16_t *x, const uint16_t *a, const float *h0, uint16_t *y, float *h_last,
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
void scan_bwd_f32(const float *a, const float *h, const float *h0, const float *dy, const float *dh_last,
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

/* Matrix-vector product for decoding one sequence in bfloat16: y (N) = W (N, K) x (K) + bias, with AVX-512 BF16
   (32 products per instruction, each exact in float32, accumulated in float32) over four weight rows at a time,
   so four memory streams keep loads in flight. Torch's own bfloat16 GEMV reads weights several times slower
   than memory allows on such CPUs (docs/performance.md); on CPUs without AVX-512 BF16 torch's is used. */
#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
int gemv_bf16_available(void) { return 1; }

static inline float tail_dot(const uint16_t *w, const uint16_t *x, int64_t k, int64_t K) {
    float total = 0.0f;
    for (; k < K; k++) total += bf16_to_f32(w[k]) * bf16_to_f32(x[k]);
    return total;
}

static void gemv4_bf16(const uint16_t *w, const uint16_t *x, float *out, int64_t rows, int64_t K) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(x + k));
        for (int r = 0; r < rows; r++)
            acc[r] = _mm512_dpbf16_ps(acc[r], xv, (__m512bh)_mm512_loadu_si512((const void *)(w + r * K + k)));
    }
    for (int r = 0; r < rows; r++) out[r] = _mm512_reduce_add_ps(acc[r]) + tail_dot(w + r * K, x, k, K);
}

/* w (N, K), x (K) bfloat16; bias (N) float32 or NULL; y (N) float32. */
void gemv_bf16(const uint16_t *w, const uint16_t *x, const float *bias, float *y, int64_t N, int64_t K,
               int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n += 4) {
        int64_t rows = N - n < 4 ? N - n : 4;
        gemv4_bf16(w + n * K, x, y + n, rows, K);
        if (bias) for (int64_t r = 0; r < rows; r++) y[n + r] += bias[n + r];
    }
}
#else
int gemv_bf16_available(void) { return 0; }
void gemv_bf16(const uint16_t *w, const uint16_t *x, const float *bias, float *y, int64_t N, int64_t K,
               int threads) {}
#endif
/* The same for float32 weights, and for int8 weights with a float32 scale (and int8 zero point, or none) per
   output row (the layout of torchao's weight-only int8): y_n = scale_n (sum_k q_nk x_k - zero_n sum_k x_k) + bias_n.
   AVX-512F (fused multiply-add; a GEMV's summation order is not the reference's anyway). */
#if defined(__AVX512F__)
int gemv_avx512_available(void) { return 1; }

static void gemv4_f32(const float *w, const float *x, float *out, int64_t rows, int64_t K) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 xv = _mm512_loadu_ps(x + k);
        for (int r = 0; r < rows; r++) acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(w + r * K + k), xv, acc[r]);
    }
    for (int r = 0; r < rows; r++) {
        float total = _mm512_reduce_add_ps(acc[r]);
        for (int64_t j = k; j < K; j++) total += w[r * K + j] * x[j];
        out[r] = total;
    }
}

static void gemv4_i8(const int8_t *q, const float *x, float *out, int64_t rows, int64_t K) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 xv = _mm512_loadu_ps(x + k);
        for (int r = 0; r < rows; r++) {
            __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + r * K + k))));
            acc[r] = _mm512_fmadd_ps(wv, xv, acc[r]);
        }
    }
    for (int r = 0; r < rows; r++) {
        float total = _mm512_reduce_add_ps(acc[r]);
        for (int64_t j = k; j < K; j++) total += (float)q[r * K + j] * x[j];
        out[r] = total;
    }
}

/* w (N, K), x (K), bias (N) or NULL, y (N): float32. */
void gemv_f32(const float *w, const float *x, const float *bias, float *y, int64_t N, int64_t K, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n += 4) {
        int64_t rows = N - n < 4 ? N - n : 4;
        gemv4_f32(w + n * K, x, y + n, rows, K);
        if (bias) for (int64_t r = 0; r < rows; r++) y[n + r] += bias[n + r];
    }
}

/* q (N, K) int8, scale (N) float32, zero (N) int8 or NULL, x (K) float32, bias (N) float32 or NULL, y (N). */
void gemv_i8(const int8_t *q, const float *scale, const int8_t *zero, const float *x, const float *bias, float *y,
             int64_t N, int64_t K, int threads) {
    float x_sum = 0.0f;
    if (zero) for (int64_t k = 0; k < K; k++) x_sum += x[k];
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n = 0; n < N; n += 4) {
        int64_t rows = N - n < 4 ? N - n : 4;
        gemv4_i8(q + n * K, x, y + n, rows, K);
        for (int64_t r = 0; r < rows; r++) {
            float dot = y[n + r] - (zero ? (float)zero[n + r] * x_sum : 0.0f);
            y[n + r] = scale[n + r] * dot + (bias ? bias[n + r] : 0.0f);
        }
    }
}
#else
int gemv_avx512_available(void) { return 0; }
void gemv_f32(const float *w, const float *x, const float *bias, float *y, int64_t N, int64_t K, int threads) {}
void gemv_i8(const int8_t *q, const float *scale, const int8_t *zero, const float *x, const float *bias, float *y,
             int64_t N, int64_t K, int threads) {}
#endif

"""

# The op namespace is this module's name, so the package and a copy shipped as Hub remote code (another module
# name) can both register their ops in one process.
_NS = re.sub(r"\W", "_", __name__)
_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared", "-fopenmp"]


def _cpu_fingerprint() -> str:
    """What `-march=native` compiles for: a kernel cache shared between different CPUs must not mix them."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_load_error: str | None = None


def _kernel_dir() -> Path:
    root = os.environ.get("HF_RECURRENTGEMMA_KERNEL_DIR")
    if root:
        return Path(root)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "hf_recurrentgemma" / "kernels"


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if candidate:
            path = shutil.which(candidate.split()[0])
            if path:
                return path
    return None


def _build() -> ctypes.CDLL:
    """Compiles the kernel once per source/flags/compiler/platform and loads it; raises RuntimeError on failure."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    key = hashlib.sha256("\0".join([_C_SOURCE, *_FLAGS, compiler, sys.platform, _cpu_fingerprint()]).encode())
    target = _kernel_dir() / f"griffin_scan_{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            source = Path(tmp) / "griffin_scan.c"
            source.write_text(_C_SOURCE)
            built = Path(tmp) / target.name
            result = subprocess.run([compiler, *_FLAGS, str(source), "-o", str(built)], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{compiler} failed to build the scan kernel:\n{result.stderr.strip()[:2000]}")
            os.replace(built, target)  # atomic: concurrent builders never see a partial file
    library = ctypes.CDLL(str(target))
    pointer, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for name in ("scan_fwd_f32", "scan_fwd_bf16"):
        getattr(library, name).argtypes = [pointer] * 5 + [i64, i64, i64, c_int]
    library.scan_bwd_f32.argtypes = [pointer] * 8 + [i64, i64, i64, c_int]
    library.gemv_bf16.argtypes = [pointer] * 4 + [i64, i64, c_int]
    library.gemv_f32.argtypes = [pointer] * 4 + [i64, i64, c_int]
    library.gemv_i8.argtypes = [pointer] * 6 + [i64, i64, c_int]
    library.gemv_bf16_available.restype = c_int
    library.gemv_avx512_available.restype = c_int
    return library


def load_kernel() -> ctypes.CDLL | None:
    """The compiled library, building it on first use; None (with the reason in `kernel_error()`) if it cannot be
    built here."""
    global _library, _load_error
    with _lock:
        if _library is None and _load_error is None:
            try:
                _library = _build()
            except (RuntimeError, OSError, AttributeError) as error:  # AttributeError: a symbol is missing
                _load_error = str(error)
        return _library


def kernel_error() -> str | None:
    """Why the kernel is unavailable, or None."""
    load_kernel()
    return _load_error


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


@torch.library.custom_op(f"{_NS}::rnn_scan", mutates_args=(), device_types="cpu")
def _rnn_scan_op(x: torch.Tensor, a: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    library = load_kernel()
    if library is None:
        raise RuntimeError(f"the CPU scan kernel is unavailable: {_load_error}")
    batch, seq_len, width = x.shape
    native_bf16 = x.dtype == torch.bfloat16
    xk, ak = (x, a) if native_bf16 else (x.float(), a.float())
    xk, ak, h0 = xk.contiguous(), ak.contiguous(), h0.float().contiguous()
    y = torch.empty_like(xk)
    h_last = torch.empty(batch, width, dtype=torch.float32)
    kernel = library.scan_fwd_bf16 if native_bf16 else library.scan_fwd_f32
    kernel(_ptr(xk), _ptr(ak), _ptr(h0), _ptr(y), _ptr(h_last), batch, seq_len, width, torch.get_num_threads())
    return y.to(x.dtype), h_last


@_rnn_scan_op.register_fake
def _(x, a, h0):
    return torch.empty_like(x), x.new_empty(x.shape[0], x.shape[2], dtype=torch.float32)


@torch.library.custom_op(f"{_NS}::rnn_scan_backward", mutates_args=(), device_types="cpu")
def _rnn_scan_backward_op(
    a: torch.Tensor, h: torch.Tensor, h0: torch.Tensor, dy: torch.Tensor, dh_last: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    library = load_kernel()
    batch, seq_len, width = h.shape
    a, h, h0 = a.float().contiguous(), h.contiguous(), h0.float().contiguous()
    dy, dh_last = dy.float().contiguous(), dh_last.float().contiguous()
    dx, da, dh0 = torch.empty_like(h), torch.empty_like(h), torch.empty_like(h0)
    library.scan_bwd_f32(_ptr(a), _ptr(h), _ptr(h0), _ptr(dy), _ptr(dh_last), _ptr(dx), _ptr(da), _ptr(dh0),
                         batch, seq_len, width, torch.get_num_threads())
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


# --- matrix-vector product for decoding ---------------------------------------------------------------------------


@torch.library.custom_op(f"{_NS}::gemv", mutates_args=(), device_types="cpu")
def _gemv_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One row of x (..., K) times a bfloat16 or float32 weight (N, K); bias in any float dtype."""
    library = load_kernel()
    kernel = library.gemv_bf16 if weight.dtype == torch.bfloat16 else library.gemv_f32
    row = x.reshape(-1).contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    y = torch.empty(weight.shape[0], dtype=torch.float32)
    kernel(_ptr(weight), _ptr(row), None if bias32 is None else _ptr(bias32), _ptr(y),
           weight.shape[0], weight.shape[1], torch.get_num_threads())
    return y.to(x.dtype).view(*x.shape[:-1], weight.shape[0])


@_gemv_op.register_fake
def _(x, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op(f"{_NS}::gemv_int8", mutates_args=(), device_types="cpu")
def _gemv_int8_op(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                  bias: torch.Tensor | None) -> torch.Tensor:
    library = load_kernel()
    row = x.reshape(-1).float().contiguous()
    scale32 = scale.reshape(-1).float().contiguous()
    zero = None if zero_point is None else zero_point.reshape(-1).contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    y = torch.empty(qdata.shape[0], dtype=torch.float32)
    library.gemv_i8(_ptr(qdata), _ptr(scale32), None if zero is None else _ptr(zero), _ptr(row),
                    None if bias32 is None else _ptr(bias32), _ptr(y), qdata.shape[0], qdata.shape[1],
                    torch.get_num_threads())
    return y.to(x.dtype).view(*x.shape[:-1], qdata.shape[0])


@_gemv_int8_op.register_fake
def _(x, qdata, scale, zero_point, bias):
    return x.new_empty(*x.shape[:-1], qdata.shape[0])


@torch.compiler.assume_constant_result
def gemv_bf16_available() -> bool:
    """Whether this CPU runs the bfloat16 matrix-vector kernel (it needs AVX-512 BF16)."""
    library = load_kernel()
    return library is not None and bool(library.gemv_bf16_available())


@torch.compiler.assume_constant_result
def gemv_avx512_available() -> bool:
    """Whether this CPU runs the float32 and int8 matrix-vector kernels (they need AVX-512F)."""
    library = load_kernel()
    return library is not None and bool(library.gemv_avx512_available())


def _int8_rows(weight) -> bool:
    """Whether `weight` is torchao's weight-only int8 tensor with one scale (and zero point) per output row:
    `qdata` (N, K) int8, `scale` (N, 1), blocks of one whole row, no activation quantization."""
    qdata = getattr(weight, "qdata", None)
    return (
        type(weight).__name__ == "Int8Tensor"
        and isinstance(qdata, torch.Tensor) and qdata.dtype == torch.int8 and qdata.ndim == 2
        and qdata.is_contiguous()
        and tuple(getattr(weight, "block_size", ())) == (1, qdata.shape[1])
        and getattr(weight, "scale", None) is not None and weight.scale.numel() == qdata.shape[0]
        and getattr(weight, "act_quant_kwargs", None) is None
        and getattr(weight, "act_pre_scale", None) is None
    )


def gemv_kind(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Which matrix-vector kernel `linear_cpu` uses for this call ("bf16", "f32", "int8"), or None for `F.linear`:
    inference on CPU, one row (decoding one sequence; from two rows on, torch's GEMM was as fast or faster),
    x in the weight's dtype and plain weights (a sharded or otherwise wrapped one goes to F.linear), or torchao's
    per-row weight-only int8."""
    if x.device.type != "cpu" or x.numel() != x.shape[-1] or not x.is_floating_point():
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None
    if type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.is_contiguous() and x.dtype == weight.dtype:
        if weight.dtype == torch.bfloat16 and gemv_bf16_available():
            return "bf16"
        if weight.dtype == torch.float32 and gemv_avx512_available():
            return "f32"
        return None
    if _int8_rows(weight) and gemv_avx512_available():
        return "int8"
    return None


def gemv_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return gemv_kind(x, weight) is not None


def linear_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through a matrix-vector kernel where `gemv_kind` says one applies (decoding one
    sequence): torch's GEMV reads small float32 and all bfloat16 matrices well below memory speed, and torchao's
    int8 path on CPU dequantizes first (docs/performance.md). Equal to F.linear within float32 accumulation
    order, rounded once to x's dtype."""
    kind = gemv_kind(x, weight)
    if kind in ("bf16", "f32"):
        return _gemv_op(x, weight, bias)
    if kind == "int8":
        return _gemv_int8_op(x, weight.qdata, weight.scale, getattr(weight, "zero_point", None), bias)
    return torch.nn.functional.linear(x, weight, bias)

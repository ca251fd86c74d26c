"""Matrix products for a few rows on CPU, reading each weight once: `y (M, N) = x (M, K) W (N, K)^T + bias` for
M = 1..16 (decoding one sequence, and verifying a speculative draft of up to 15 tokens), with bfloat16 or float32
weights. (Quantized weights, torchao's int8 and int4 layouts, have their own kernels: `cpu_quant_griffin.py`.)

Why: decoding reads every weight once per token, so it runs at memory speed only if the product does. Torch's
one-row bfloat16 product reads weights well below memory speed on AVX-512 CPUs, its one-row float32 product
reaches about half the bandwidth on AVX2 ones, and without AMX
torch's GEMM for 2..16 rows costs nearly one one-row product per row (docs/performance.md). Here the weights are
walked in groups of rows; each group is multiplied against every input row while it is in cache, so memory sees
it once.

Variants (`kernel_build_griffin.py` builds them, picks one at run time, and reads the switches; kernel name
`gemv`): `bf16-tile` (AMX tile products, bfloat16 weights only: 16 weight rows against all input rows per
instruction, so 16 rows cost what one does), `bf16-dot` (AVX-512 BF16 pair products, bfloat16 weights only),
`fp32-fma-512` (AVX-512F) and `fp32-fma-256` (AVX2 + FMA): weights widened to float32 (bfloat16 by a 16-bit
shift), multiplied and accumulated in float32; `scalar`, portable C, tested everywhere but
used by `linear_cpu` only when asked for, since torch's own product is faster than scalar C. Every variant
accumulates in float32 and rounds once to x's dtype: equal to F.linear within float32 accumulation order.

Row invariance: each output is accumulated in an order fixed by K alone (vector lanes along K, their reduction,
then the K tail; AMX tiles multiply 32 k at a time in one fixed order), never by how many input rows share a
weight tile, so a call of M <= MAX_ROWS rows gives each row bit for bit what that row alone gives, in every
variant. Every variant takes up to MAX_ROWS rows (bf16-dot too, although torch's oneDNN GEMM is faster from 5
rows where AMX exists): a speculative verification must stay in this kernel to equal the decoding steps it
replaces (docs/speculative.md; tests/ops/test_cpu_kernels.py, tests/model/test_batch_invariance.py).
"""

from string import Template

import torch

from .cpu_widen_griffin import linear_widened, widen_applies
from .kernel_build_griffin import (CAPABILITIES, MAX_ROWS, CompiledKernel, kernel_argtypes, kernel_enabled,
                                   kernel_settings, op_namespace, target_attribute)
FLOAT_VARIANTS = ("scalar", "fp32-fma-256", "fp32-fma-512")  # float32 weights
BF16_VARIANTS = (*FLOAT_VARIANTS, "bf16-dot", "bf16-tile")
VARIANTS = {"bf16": BF16_VARIANTS, "f32": FLOAT_VARIANTS}

# Per variant: the vector type and operations the one generic tile below is written in, its target attribute and
# how many input rows a tile holds in registers (4 weight rows x that many accumulators, plus the loads).
_ISAS = {
    "scalar": dict(attr="", mb=4, macros=r"""
#define LANES 1
#define VEC float
#define VZERO 0.0f
#define VLOAD_F32(p) (*(p))
#define VLOAD_BF16(p) bf16_to_f32(*(p))
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VREDUCE(v) (v)
"""),
    "fp32_fma_256": dict(attr=target_attribute("fp32-fma-256"), mb=2, macros=r"""
#define LANES 8
#define VEC __m256
#define VZERO _mm256_setzero_ps()
#define VLOAD_F32(p) _mm256_loadu_ps(p)
#define VLOAD_BF16(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VREDUCE(v) reduce_fp32_fma_256(v)
__attribute__((target("avx2,fma"))) static inline float reduce_fp32_fma_256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
"""),
    "fp32_fma_512": dict(attr=target_attribute("fp32-fma-512"), mb=4, macros=r"""
#define LANES 16
#define VEC __m512
#define VZERO _mm512_setzero_ps()
#define VLOAD_F32(p) _mm512_loadu_ps(p)
#define VLOAD_BF16(p) _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VREDUCE(v) _mm512_reduce_add_ps(v)
"""),
}
_UNDEF = "\n".join(f"#undef {m}" for m in
                   ("LANES", "VEC", "VZERO", "VLOAD_F32", "VLOAD_BF16", "VFMA", "VREDUCE"))

# One tile: weight rows n0..n0+3 (the last row repeated past N, its results dropped) against $mb input rows of x
# (float32, (M, K) with row stride K), into y (M, N) float32. $w names the weight type, $load its vector load.
_TILE = Template(r"""
$attr static void tile_${w}_${v}_$mb(const $wtype *w, int64_t n0, int64_t N, int64_t K, const float *x, float *y) {
    const $wtype *wr[4];
    for (int r = 0; r < 4; r++) wr[r] = w + (n0 + r < N ? n0 + r : N - 1) * K;
    VEC acc[$mb][4];
    for (int m = 0; m < $mb; m++) for (int r = 0; r < 4; r++) acc[m][r] = VZERO;
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES) {
        VEC wv[4];
        for (int r = 0; r < 4; r++) wv[r] = $load(wr[r] + k);
        for (int m = 0; m < $mb; m++) {
            VEC xv = VLOAD_F32(x + m * K + k);
            for (int r = 0; r < 4; r++) acc[m][r] = VFMA(wv[r], xv, acc[m][r]);
        }
    }
    for (int m = 0; m < $mb; m++)
        for (int r = 0; r < 4 && n0 + r < N; r++) {
            float total = VREDUCE(acc[m][r]);
            for (int64_t j = k; j < K; j++) total += $scalar(wr[r][j]) * x[m * K + j];
            y[m * N + n0 + r] = total;
        }
}
""")

# The products over all rows: groups of four weight rows in parallel; each group meets every input row while it
# is in cache. x is float32 here (bfloat16 inputs are widened once by the caller of this part).
_DRIVER = Template(r"""
$attr static void rows_${w}_${v}(const $wtype *w, const float *x, float *y, int64_t M, int64_t N, int64_t K,
                                 int threads, const float *bias) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
        for (int64_t m0 = 0; m0 < M; m0 += $mb) {
            switch (M - m0 < $mb ? M - m0 : $mb) {
                $cases
            }
        }
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = n0; n < n0 + 4 && n < N; n++) y[m * N + n] += bias ? bias[n] : 0.0f;
    }
}
""")

# Entry points, one per weight type and variant: x (M, K) in the weight's dtype, bias (N) float32 or NULL,
# y (M, N) float32.
_ENTRIES = Template(r"""
$attr void matmul_bf16_$v(const uint16_t *w, const uint16_t *x, const float *bias, float *y, int64_t M, int64_t N,
                          int64_t K, int threads) {
    float *x32 = (float *)malloc(sizeof(float) * M * K);
    for (int64_t i = 0; i < M * K; i++) x32[i] = bf16_to_f32(x[i]);
    rows_bf16_$v(w, x32, y, M, N, K, threads, bias);
    free(x32);
}
$attr void matmul_f32_$v(const float *w, const float *x, const float *bias, float *y, int64_t M, int64_t N,
                         int64_t K, int threads) {
    rows_f32_$v(w, x, y, M, N, K, threads, bias);
}
""")

# bfloat16 weights with AVX-512 BF16: `vdpbf16ps` multiplies 32 bfloat16 pairs (each product exact in float32)
# and accumulates them in float32; x stays bfloat16.
_BF16_DOT = Template(r"""
__attribute__((target("avx512f,avx512bf16"))) static void tile_bf16dot_$mb(
        const uint16_t *w, int64_t n0, int64_t N, int64_t K, const uint16_t *x, float *y) {
    const uint16_t *wr[4];
    for (int r = 0; r < 4; r++) wr[r] = w + (n0 + r < N ? n0 + r : N - 1) * K;
    __m512 acc[$mb][4];
    for (int m = 0; m < $mb; m++) for (int r = 0; r < 4; r++) acc[m][r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        __m512bh wv[4];
        for (int r = 0; r < 4; r++) wv[r] = (__m512bh)_mm512_loadu_si512((const void *)(wr[r] + k));
        for (int m = 0; m < $mb; m++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512((const void *)(x + m * K + k));
            for (int r = 0; r < 4; r++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
        }
    }
    for (int m = 0; m < $mb; m++)
        for (int r = 0; r < 4 && n0 + r < N; r++) {
            float total = _mm512_reduce_add_ps(acc[m][r]);
            for (int64_t j = k; j < K; j++) total += bf16_to_f32(wr[r][j]) * bf16_to_f32(x[m * K + j]);
            y[m * N + n0 + r] = total;
        }
}
""")

_BF16_DOT_ENTRY = Template(r"""
__attribute__((target("avx512f,avx512bf16"))) void matmul_bf16_bf16_dot(
        const uint16_t *w, const uint16_t *x, const float *bias, float *y, int64_t M, int64_t N, int64_t K,
        int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 4) {
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            switch (M - m0 < 4 ? M - m0 : 4) {
                $cases
            }
        }
        if (bias)
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = n0; n < n0 + 4 && n < N; n++) y[m * N + n] += bias[n];
    }
}
""")


# bfloat16 weights with AMX tiles: y^T (N, M) = W (N, K) x^T, 16 weight rows at a time. A tile holds 16 weight
# rows x 32 k (read straight from W), B the inputs packed as (K/2, M, 2) pairs, C 16 x M float32 sums. Rows past
# the last multiple of 16 go through the bf16-dot tiles; a K tail (K % 32) is added in scalar code.
_BF16_TILE = r"""
__attribute__((target("avx512f,avx512bf16,amx-tile,amx-bf16"))) void matmul_bf16_bf16_tile(
        const uint16_t *w, const uint16_t *x, const float *bias, float *y, int64_t M, int64_t N, int64_t K,
        int threads) {
    int64_t K32 = K / 32 * 32, N16 = N / 16 * 16;
    uint16_t *packed = amx_pack_pairs(x, M, K, K32);
    #pragma omp parallel num_threads(threads)
    {
        amx_bf16_config(M);  /* C 16 x M sums, A 16 weight rows x 32, B 16 k pairs x M x 2 */
        float sums[16 * 16];
        #pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N16; n0 += 16) {
            _tile_zero(0);
            for (int64_t k = 0; k < K32; k += 32) {
                _tile_loadd(1, w + n0 * K + k, K * 2);
                _tile_loadd(2, packed + k * M, M * 4);
                _tile_dpbf16ps(0, 1, 2);
            }
            _tile_stored(0, sums, M * 4);
            for (int64_t r = 0; r < 16; r++)
                for (int64_t m = 0; m < M; m++) {
                    float total = sums[r * M + m];
                    for (int64_t j = K32; j < K; j++) total += bf16_to_f32(w[(n0 + r) * K + j]) * bf16_to_f32(x[m * K + j]);
                    y[m * N + n0 + r] = total + (bias ? bias[n0 + r] : 0.0f);
                }
        }
        _tile_release();
    }
    free(packed);
    if (N16 < N) {  /* the last rows: bfloat16 pair products */
        for (int64_t n0 = N16; n0 < N; n0 += 4)
            for (int64_t m0 = 0; m0 < M; m0 += 4) {
                switch (M - m0 < 4 ? M - m0 : 4) {
                    case 1: tile_bf16dot_1(w, n0, N, K, x + m0 * K, y + m0 * N); break;
                    case 2: tile_bf16dot_2(w, n0, N, K, x + m0 * K, y + m0 * N); break;
                    case 3: tile_bf16dot_3(w, n0, N, K, x + m0 * K, y + m0 * N); break;
                    case 4: tile_bf16dot_4(w, n0, N, K, x + m0 * K, y + m0 * N); break;
                }
            }
        if (bias)
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = N16; n < N; n++) y[m * N + n] += bias[n];
    }
}
"""


def _cases(tile: str, mb: int, x_expr: str) -> str:
    return "\n".join(f"case {i}: {tile}_{i}(w, n0, N, K, {x_expr}, y + m0 * N); break;" for i in range(1, mb + 1))


def _variant_source(v: str) -> str:
    isa = _ISAS[v]
    parts = [isa["macros"]]
    for w, wtype, load, scalar in (("bf16", "uint16_t", "VLOAD_BF16", "bf16_to_f32"),
                                   ("f32", "float", "VLOAD_F32", "")):
        for mb in range(1, isa["mb"] + 1):
            parts.append(_TILE.substitute(attr=isa["attr"], w=w, v=v, mb=mb, wtype=wtype, load=load, scalar=scalar))
        cases = _cases(f"tile_{w}_{v}", isa["mb"], "x + m0 * K")
        parts.append(_DRIVER.substitute(attr=isa["attr"], w=w, v=v, mb=isa["mb"], wtype=wtype, cases=cases))
    parts.append(_ENTRIES.substitute(attr=isa["attr"], v=v))
    parts.append(_UNDEF)
    return "\n".join(parts)


def _source() -> str:
    parts = [_variant_source("scalar"), "#if defined(HF_RG_X86)"]
    parts += [_variant_source("fp32_fma_256"), _variant_source("fp32_fma_512")]
    parts += [_BF16_DOT.substitute(mb=mb) for mb in range(1, 5)]
    parts.append(_BF16_DOT_ENTRY.substitute(cases=_cases("tile_bf16dot", 4, "x + m0 * K")))
    parts += ["#if defined(__linux__)", _BF16_TILE, "#endif"]
    parts.append("#endif")
    return "\n".join(parts)


MATVEC_KERNEL = CompiledKernel("gemv", _source(), {
    "matmul_bf16": (BF16_VARIANTS, kernel_argtypes(4)),
    "matmul_f32": (FLOAT_VARIANTS, kernel_argtypes(4)),
})


def supported_variants(kind: str) -> list[str]:
    """The variants of kernel `kind` ("bf16", "f32") this CPU and build can run, weakest first (whatever
    the switches say: tests force each in turn)."""
    return [v for v in MATVEC_KERNEL.supported() if v in VARIANTS[kind]]


_decided: dict[tuple, str | None] = {}


def _allowed_variant(kind: str) -> str | None:
    """The best variant for `kind` the switches allow; decided once per setting of the switches (this runs for
    every linear call)."""
    key = (kernel_settings(), kind)
    if key not in _decided:
        _decided[key] = MATVEC_KERNEL.best_variant(VARIANTS[kind]) if kernel_enabled("gemv") else None
    return _decided[key]


@torch.compiler.assume_constant_result  # decided in Python; a compiled graph only sees the answer
def matvec_variant(kind: str) -> str | None:
    """The variant `linear_cpu` uses now for weights of `kind` ("bf16", "f32"), or None for `F.linear`:
    the best one the CPU, the build and HF_RECURRENTGEMMA_CPU_ISA allow, if it is a vector one (torch's product
    beats scalar C), and None where HF_RECURRENTGEMMA_CPU_KERNELS turns `gemv` off or nothing builds."""
    variant = _allowed_variant(kind)
    return variant if variant is not None and variant != "scalar" else None


# The op namespace is this module's name, so the package and a copy shipped as Hub remote code (another module
# name) can both register their ops in one process.
_NS = op_namespace(__name__)


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1]


def row_invariant_call(x: torch.Tensor) -> bool:
    """Whether a call over x (..., K) is one of 2..MAX_ROWS rows on CPU (verifying a speculative draft, decoding a
    small batch): the sizes at which a forward equals that many one-row forwards bit for bit. The few-row kernels
    accumulate each row in the same order whatever the row count; the layers route their other row-coupled ops
    (the RG-LRU gates' bmm, attention) through their one-row form for such calls (docs/speculative.md). Never
    while exporting: another runtime runs the program, and its token count stays symbolic (docs/export.md)."""
    return not torch.compiler.is_exporting() and x.device.type == "cpu" and 1 < _rows(x) <= MAX_ROWS


@torch.library.custom_op(f"{_NS}::bmm_rows", mutates_args=(), device_types="cpu")
def bmm_rows(blocks: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """blocks (H, N, i) times weight (H, i, j) -> (H, N, j), one row at a time: torch's bmm picks another kernel,
    with another summation order, for 2..16 rows than for one, so each row goes through the one-row product a
    decoding step runs. An opaque op, so that torch.compile neither unrolls the row loop nor makes a graph per row
    count (vLLM's compiled decode step sees every batch size from 1 to its largest)."""
    return torch.cat([torch.bmm(blocks[:, n : n + 1], weight) for n in range(blocks.shape[1])], dim=1)


@bmm_rows.register_fake
def _(blocks, weight):
    return blocks.new_empty(blocks.shape[0], blocks.shape[1], weight.shape[2])


def _bmm_rows_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _bmm_rows_backward(ctx, grad):
    # A few-row call can carry gradients (a tiny training batch): the plain bmm's gradients.
    blocks, weight = ctx.saved_tensors
    return torch.bmm(grad, weight.transpose(1, 2)), torch.bmm(blocks.transpose(1, 2), grad)


bmm_rows.register_autograd(_bmm_rows_backward, setup_context=_bmm_rows_setup)


@torch.library.custom_op(f"{_NS}::matmul_rows", mutates_args=(), device_types="cpu")
def _matmul_rows_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: str) -> torch.Tensor:
    """x (..., K) with at most MAX_ROWS rows, in the weight's dtype (bfloat16 or float32), times weight (N, K);
    bias in any float dtype. Returns (..., N) in x's dtype."""
    kind = "bf16" if weight.dtype == torch.bfloat16 else "f32"
    kernel = MATVEC_KERNEL.function(f"matmul_{kind}", variant)
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    y = torch.empty(rows.shape[0], weight.shape[0], dtype=torch.float32)
    kernel(weight.data_ptr(), rows.data_ptr(), None if bias32 is None else bias32.data_ptr(), y.data_ptr(),
           rows.shape[0], weight.shape[0], weight.shape[1], torch.get_num_threads())
    return y.to(x.dtype).view(*x.shape[:-1], weight.shape[0])


@_matmul_rows_op.register_fake
def _(x, weight, bias, variant):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def weight_kind(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """Which kernel family fits this call ("bf16", "f32"), whatever the CPU, or None for `F.linear`: inference on
    CPU, 1..MAX_ROWS rows (decoding one sequence, verifying a short draft), x in the weight's dtype and plain
    weights (a sharded, quantized or otherwise wrapped one goes elsewhere)."""
    if x.device.type != "cpu" or not x.is_floating_point() or x.shape[-1] == 0 or _rows(x) > MAX_ROWS:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None
    if type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.is_contiguous() and x.dtype == weight.dtype:
        return {torch.bfloat16: "bf16", torch.float32: "f32"}.get(weight.dtype)
    return None


@torch.compiler.assume_constant_result  # decided in Python; a compiled graph only sees the answer
def native_bf16() -> bool:
    """Whether the CPU (capped by HF_RECURRENTGEMMA_CPU_ISA) has bfloat16 dot products; True where nothing is
    known (no kernel builds and no cap), so torch's own bfloat16 GEMM runs."""
    rank = MATVEC_KERNEL.capability()
    rank = kernel_settings().isa_cap if rank is None else rank
    return rank >= CAPABILITIES.index("bf16-dot")


def gemv_kind(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """The kernel family `linear_cpu` runs for this call on this machine now, or None for `F.linear`."""
    kind = weight_kind(x, weight)
    variant = None if kind is None else matvec_variant(kind)
    return kind if variant is not None else None


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, variant: str) -> torch.Tensor:
    """`F.linear(x, weight, bias)` through variant `variant` of the kernel (for a call `weight_kind` accepts)."""
    return _matmul_rows_op(x, weight, bias, variant)


def linear_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through the few-row kernel where `gemv_kind` says one applies, or for a
    bfloat16 prompt on a CPU without native bfloat16 through float32 tiles (`cpu_widen_griffin.py`). Equal to
    F.linear within float32 accumulation order, rounded once to x's dtype. An exported program (torch.export) is run
    by another runtime, which has none of these kernels: it gets `F.linear`."""
    if torch.compiler.is_exporting():
        return torch.nn.functional.linear(x, weight, bias)
    kind = weight_kind(x, weight)
    variant = None if kind is None else matvec_variant(kind)
    if variant is None:
        if widen_applies(x, weight) and not native_bf16():  # a bfloat16 prompt on a CPU without native bfloat16
            return linear_widened(x, weight, bias)
        return torch.nn.functional.linear(x, weight, bias)
    return _matmul_rows_op(x, weight, bias, variant)


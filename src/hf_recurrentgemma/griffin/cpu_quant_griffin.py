"""Weight-only int8 and int4 matrix products for a few rows on CPU, on torchao's layouts, reading each weight once:
`y (M, N) = x (M, K) dequant(W) (N, K)^T + bias` for M = 1..16 (decoding one sequence, verifying a draft of up to
15 tokens).

Layouts (the tensors users already have from `quantize_()` or `TorchAoConfig`, nothing repacked):

    int8   torchao `Int8WeightOnlyConfig` (`Int8Tensor`): qdata (N, K) int8 row-major, scale (N, 1) float32, zero
           point (N, 1) int8 (zero for the symmetric config): w[n, k] = scale[n] (q[n, k] - zero[n]).
    int4   torchao 0.18 `PrototypeInt4WeightOnlyConfig` (`Int4OpaqueTensor`, torch's CPU int4 pack): qdata
           (N, K/2) uint8 in blocks of 64 output rows, [N/64][K][32 bytes], byte j holding row j (low nibble) and
           row j + 32 (high nibble) at one k; a last block of R < 64 rows (R a multiple of 16) holds rows 2j, 2j+1
           in byte j. scale_and_zero (K/G, N, 2) bfloat16 per group of G = 32, 64 or 128 k:
           w[n, k] = (q[n, k] - 8) scale[g, n] + zero[g, n].

Why dequantization in registers with float32 FMA, not integer dot products over activations quantized to int8
(AVX-512 VNNI, AVX2 `maddubs`): decoding is bound by the weight reads, and unpacking plus one FMA per weight and row
keeps up with memory at one row (docs/performance.md), while quantizing activations would change the numerics
(every product here is of the exact dequantized weight and the input). From a few rows on the float32 variants are
bound by their multiply-adds; on AMX CPUs int8 with bfloat16 inputs takes the tiles instead (`bf16-tile`), whose
cost hardly grows with the row count, so a verification costs about what one token costs. int4 with bfloat16 inputs
on AVX-512 BF16 CPUs without AMX takes `bf16-dot` (one `vdpbf16ps` per 32 weights and row, half the instructions of
float32 FMA); on the AMX Xeon that instruction takes about four FMAs' time, so there int4 stays on `fp32-fma-512`.
On AMX-INT8 CPUs both formats take `int8-tile` for every input dtype instead (cpu_quant_digits_griffin.py): the
inputs as fixed-point integer digits (23 bits per block), multiplied by the codes in int8 tiles and summed
exactly, which is faster than widening the codes at one row and about as flat as `bf16-tile` over the row count;
its arithmetic is in that module's docstring.

Arithmetic of the other variants, each row on its own (so k rows give k one-row results bit for bit):
    int8   acc[m, n] = sum_k x[m, k] q[n, k] in LANES float32 partial sums (k mod LANES), reduced in a fixed
           order (`bf16-tile`: AMX tile products over 32 k at a time, the exact products of bfloat16 x and q
           accumulated in float32), then y = scale (acc - zero sum_k x) + bias.
    int4   per group g: acc = sum_{k in g} x[m, k] q[n, k] in float32 (k in order), then
           y += scale acc + (zero - 8 scale) xsum[m, g], with xsum[m, g] = sum_{k in g} x[m, k] (k in order);
           groups in order; then + bias (`bf16-dot`: acc = sum over k pairs of x (q - 8), exact products, by
           `vdpbf16ps`; then y += scale acc + zero xsum[m, g]). Algebraically the product of the dequantized
           weights.
Every variant accumulates in float32 and rounds once to x's dtype.

Variants (built by `kernel_build_griffin.py`, which picks one at run time and reads the switches; the switch name
is `gemv`, shared with the plain few-row kernels): `int8-tile` (AMX-INT8; both formats, every input dtype),
`bf16-tile` (AMX; int8 with bfloat16 inputs only, where the CPU has no AMX-INT8 or it is capped), `bf16-dot`
(AVX-512 BF16; int4 with bfloat16 inputs only, where the CPU has no AMX: `dot_allowed`), `fp32-fma-512`
(AVX-512F), `fp32-fma-256` (AVX2 + FMA), and `scalar` (portable C: tested everywhere, used only when forced, since
torch's and torchao's own paths come first where no vector variant runs). The variant depends on the format, the
input dtype and the CPU, never on the row count.
"""

import ctypes
from string import Template

import torch

from .cpu_quant_digits_griffin import digits_source
from .kernel_build_griffin import (CAPABILITIES, MAX_ROWS, CompiledKernel, kernel_argtypes, kernel_enabled,
                                   kernel_settings, op_namespace, target_attribute)

VARIANTS = ("scalar", "fp32-fma-256", "fp32-fma-512")
# int8 also has `bf16-tile` (AMX), for bfloat16 inputs only: the products of bfloat16 x and the codes are exact, so
# only the accumulation differs from the float32 variants. An int4 one (codes turned into bfloat16 pairs for the B
# tile by a `vpermw` table) was measured and left out: 5.2 ms for one row of a 2560 -> 15360 linear against 2.5 ms
# for `fp32-fma-512`, and still slower at 5 rows (5.5 against 4.8 ms).
INT8_VARIANTS = (*VARIANTS, "bf16-tile", "int8-tile")
# int4 also has `bf16-dot` (AVX-512 BF16, no AMX needed), for bfloat16 inputs only: codes looked up as bfloat16
# q - 8, pair products summed by `vdpbf16ps` (docs/performance.md has its figures).
INT4_VARIANTS = (*VARIANTS, "bf16-dot", "int8-tile")
# Both formats also have `int8-tile` (AMX-INT8; float32 or bfloat16 inputs): the codes in int8 tiles against the
# inputs as fixed-point digits, summed exactly (cpu_quant_digits_griffin.py); where the CPU has it, it is the
# variant for every input dtype.
BF16_INPUT = ("bf16-tile", "bf16-dot")  # the variants that read x as bfloat16
INT4_BLOCK = 64  # output rows per block of torch's CPU int4 pack
INT4_GROUPS = (32, 64, 128)  # the group sizes torchao's CPU int4 offers

# Per variant: the vector type and operations the generic code below is written in, and how many float32
# accumulator vectors a tile keeps in registers (`I8_REGS`, `I4_REGS`: AVX2 has 16 vector registers, AVX-512 32).
_ISAS = {
    "scalar": dict(attr="", macros=r"""
#define LANES 1
#define VEC float
#define VZERO 0.0f
#define VSET1(v) (v)
#define VLOAD_F32(p) (*(p))
#define VSTORE_F32(p, v) (*(p) = (v))
#define VLOAD_I8(p) ((float)*(p))
#define VFMA(a, b, c) ((a) * (b) + (c))
#define VMUL(a, b) ((a) * (b))
#define VSUB(a, b) ((a) - (b))
#define VREDUCE(v) (v)
/* LANES rows of one k from the bytes at p: nibble h (0 low, 1 high) of each. */
#define I4_UNPACK(p, h) ((float)((*(p) >> (4 * (h))) & 15))
/* scale and zero of LANES rows from (scale, zero) bfloat16 pairs. */
#define I4_SZ(p, s, z) do { (s) = bf16_to_f32((p)[0]); (z) = bf16_to_f32((p)[1]); } while (0)
#define I8_REGS 16
#define I4_REGS 16
"""),
    "fp32_fma_256": dict(attr=target_attribute("fp32-fma-256"), macros=r"""
#define LANES 8
#define VEC __m256
#define VZERO _mm256_setzero_ps()
#define VSET1(v) _mm256_set1_ps(v)
#define VLOAD_F32(p) _mm256_loadu_ps(p)
#define VSTORE_F32(p, v) _mm256_storeu_ps(p, v)
#define VLOAD_I8(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p))))
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VMUL(a, b) _mm256_mul_ps(a, b)
#define VSUB(a, b) _mm256_sub_ps(a, b)
#define VREDUCE(v) reduce_fp32_fma_256(v)
#define I4_UNPACK(p, h) i4_unpack_fp32_fma_256(p, h)
#define I4_SZ(p, s, z) do { \
    __m256i v = _mm256_loadu_si256((const __m256i *)(p)); \
    (s) = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); \
    (z) = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u))); } while (0)
#define I8_REGS 8
#define I4_REGS 8
__attribute__((target("avx2,fma"))) static inline __m256 i4_unpack_fp32_fma_256(const uint8_t *p, int h) {
    __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    return _mm256_cvtepi32_ps(h ? _mm256_srli_epi32(b, 4) : _mm256_and_si256(b, _mm256_set1_epi32(15)));
}
__attribute__((target("avx2,fma"))) static inline float reduce_fp32_fma_256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
"""),
    "fp32_fma_512": dict(attr=target_attribute("fp32-fma-512"), macros=r"""
#define LANES 16
#define VEC __m512
#define VZERO _mm512_setzero_ps()
#define VSET1(v) _mm512_set1_ps(v)
#define VLOAD_F32(p) _mm512_loadu_ps(p)
#define VSTORE_F32(p, v) _mm512_storeu_ps(p, v)
#define VLOAD_I8(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p))))
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VMUL(a, b) _mm512_mul_ps(a, b)
#define VSUB(a, b) _mm512_sub_ps(a, b)
#define VREDUCE(v) _mm512_reduce_add_ps(v)
#define I4_UNPACK(p, h) i4_unpack_fp32_fma_512(p, h)
#define I4_SZ(p, s, z) do { \
    __m512i v = _mm512_loadu_si512((const void *)(p)); \
    (s) = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); \
    (z) = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u))); } while (0)
#define I8_REGS 16
#define I4_REGS 16
/* the nibble's float value looked up by `vpermps` (which reads 4 index bits, so no mask for the low nibble): the
   same values as converting, one instruction fewer per vector; measured 1-5% faster at 1-16 rows */
__attribute__((target("avx512f"))) static inline __m512 i4_unpack_fp32_fma_512(const uint8_t *p, int h) {
    __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm512_permutexvar_ps(h ? _mm512_srli_epi32(b, 4) : b,
                                 _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
"""),
}
_UNDEF = "\n".join(f"#undef {m}" for m in (
    "LANES", "VEC", "VZERO", "VSET1", "VLOAD_F32", "VSTORE_F32", "VLOAD_I8", "VFMA", "VMUL", "VSUB", "VREDUCE",
    "I4_UNPACK", "I4_SZ", "I8_REGS", "I4_REGS"))

# Tiles hold `I8_REGS` / `I4_REGS` float32 accumulator vectors in registers; the shapes below were chosen by
# measurement (docs/performance.md) and nothing in a row's arithmetic depends on them. The next weights are
# prefetched by hand: a tile reads several short row streams, which the hardware prefetchers alone served at
# 55-65% of the read rate at one row.

# int8: weight rows n0..n0+R-1 (the last row repeated past N, its results dropped) against `mb` input rows (float32,
# (M, K) row stride K). Each (row, weight row) pair has LANES partial sums over k mod LANES, reduced in a fixed
# order; the K tail is added in order after the reduction. Nothing depends on R, mb or on which rows share the tile.
_I8_TILE = Template(r"""
$attr __attribute__((always_inline)) static inline void i8_tile_$v(
        const int8_t *q, int64_t n0, int64_t N, int64_t K, const float *x, const int R, const int mb,
        float *acc_out /* (mb, R) */) {
    const int8_t *wr[4];
    for (int r = 0; r < R; r++) wr[r] = q + (n0 + r < N ? n0 + r : N - 1) * K;
    VEC acc[I8_REGS];  /* (mb, R), flat: with R and mb constant every index is, and the array stays in registers */
    for (int i = 0; i < mb * R; i++) acc[i] = VZERO;
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES) {  /* ORDER: k ascending, one partial sum per lane */
        VEC wv[4];
        /* once per 64-byte line: the same k of the next tile's rows, R K bytes ahead */
        if ((k & 63) == 0) for (int r = 0; r < R; r++) __builtin_prefetch(wr[r] + k + R * K, 0, 3);
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) wv[r] = VLOAD_I8(wr[r] + k);
        _Pragma("GCC unroll 16") for (int m = 0; m < mb; m++) {
            VEC xv = VLOAD_F32(x + m * K + k);
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) acc[m * R + r] = VFMA(wv[r], xv, acc[m * R + r]);
        }
    }
    for (int m = 0; m < mb; m++)
        for (int r = 0; r < R; r++) {
            float total = VREDUCE(acc[m * R + r]);
            for (int64_t j = k; j < K; j++) total += (float)wr[r][j] * x[m * K + j];
            acc_out[m * R + r] = total;
        }
}

$attr void matmul_int8_$v(const int8_t *q, const float *scale, const int8_t *zero, const float *x,
                          const float *bias, float *y, int64_t M, int64_t N, int64_t K, int threads) {
    float x_sum[$max_rows];
    for (int64_t m = 0; m < M; m++) {
        x_sum[m] = 0.0f;
        if (zero) for (int64_t k = 0; k < K; k++) x_sum[m] += x[m * K + k];
    }
    /* four weight rows per tile whatever M: fewer rows with more input rows per tile measured slower (each
       multiply-add then needs its own input load, and 16 input rows overflow L1), so above I8_REGS / 4 input rows
       a weight tile is unpacked once per block of input rows */
    const int R = 4, MB = I8_REGS / R;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += R) {
        float acc[I8_REGS * 4];
        for (int64_t m0 = 0; m0 < M; m0 += MB) {
            int mb = (int)(M - m0 < MB ? M - m0 : MB);
            /* constant tile shapes, so the inlined tile keeps its accumulators in registers */
            switch (R * 32 + mb) {
$i8_cases
            }
            for (int m = 0; m < mb; m++)
                for (int64_t n = n0; n < n0 + R && n < N; n++) {
                    float v = acc[m * R + (n - n0)];
                    if (zero) v -= (float)zero[n] * x_sum[m0 + m];
                    y[(m0 + m) * N + n] = scale[n] * v + (bias ? bias[n] : 0.0f);
                }
        }
    }
}
""")

# int4, the rows r0..r0+NV*LANES-1 of one full 64-row block (NV vectors of LANES rows; byte j of a k holds row j in
# its low nibble and row j + 32 in its high one) against `mb` input rows, per group: float32 sums of x q over the
# group's k in order (one accumulator per row and output row), then tot += scale * acc + (zero - 8 scale) * xsum[m,
# g], groups in order. Rows are independent: nothing depends on NV, r0 or mb.
_I4_BLOCK = Template(r"""
$attr __attribute__((always_inline)) static inline void i4_tile_$v(
        const uint8_t *base, const uint16_t *sz, int64_t n_blk, int64_t N, int64_t K, int64_t G, const float *x,
        const float *xsum, const float *bias, float *y, const int r0, const int NV, const int64_t m0, const int mb) {
    const int64_t groups = K / G;
    float tot[I4_REGS * LANES];  /* (mb, NV, LANES): touched once per group, so kept out of the registers */
    for (int i = 0; i < mb * NV * LANES; i++) tot[i] = 0.0f;
    for (int64_t g = 0; g < groups; g++) {
        VEC acc[I4_REGS];  /* (mb, NV), flat: constant indices keep it in registers */
        for (int i = 0; i < mb * NV; i++) acc[i] = VZERO;
        for (int64_t k = g * G; k < (g + 1) * G; k++) {  /* ORDER: k ascending within the group */
            const uint8_t *p = base + k * 32;
            if ((k & 1) == 0) __builtin_prefetch(p + 2048, 0, 3);  /* 64 k ahead, once per 64-byte line */
            VEC w[4];
            _Pragma("GCC unroll 4") for (int i = 0; i < NV; i++)
                w[i] = I4_UNPACK(p + (r0 + i * LANES) % 32, (r0 + i * LANES) / 32);
            _Pragma("GCC unroll 16") for (int m = 0; m < mb; m++) {
                VEC xv = VSET1(x[(m0 + m) * K + k]);
                _Pragma("GCC unroll 4") for (int i = 0; i < NV; i++) acc[m * NV + i] = VFMA(w[i], xv, acc[m * NV + i]);
            }
        }
        for (int i = 0; i < NV; i++) {
            int64_t n = n_blk + r0 + i * LANES;
            VEC s, z;
            I4_SZ(sz + (g * N + n) * 2, s, z);
            VEC zs = VSUB(z, VMUL(VSET1(8.0f), s));
            for (int m = 0; m < mb; m++) {
                float *t = tot + (m * NV + i) * LANES;
                VEC v = VFMA(s, acc[m * NV + i], VLOAD_F32(t));
                VSTORE_F32(t, VFMA(zs, VSET1(xsum[(m0 + m) * groups + g]), v));
            }
        }
    }
    for (int m = 0; m < mb; m++)
        for (int i = 0; i < NV; i++) {
            int64_t n = n_blk + r0 + i * LANES;
            for (int l = 0; l < LANES; l++)
                y[(m0 + m) * N + n + l] = tot[(m * NV + i) * LANES + l] + (bias ? bias[n + l] : 0.0f);
        }
}

$attr static void i4_block_$v(const uint8_t *q, const uint16_t *sz, int64_t blk, int64_t N, int64_t K,
                              int64_t G, const float *x, const float *xsum, const float *bias, float *y, int64_t M) {
    const uint8_t *base = q + blk * 64 * (K / 2);
    /* as many block rows per pass as the registers allow with every input row in one tile, up to I4_REGS / 2 rows
       (then the weights are unpacked once per call); above that, blocks of I4_REGS / 4 input rows measured faster
       than one pass per 16 block rows */
    const int NV = M <= I4_REGS / 4 || M > I4_REGS / 2 ? 4 : 2, MB = I4_REGS / NV;
    for (int r0 = 0; r0 < 64; r0 += NV * LANES)
        for (int64_t m0 = 0; m0 < M; m0 += MB) {
            int mb = (int)(M - m0 < MB ? M - m0 : MB);
            /* constant tile shapes, so the inlined tile keeps its accumulators in registers */
            switch (NV * 32 + mb) {
$i4_cases
            }
        }
}

$attr void matmul_int4_$v(const uint8_t *q, const uint16_t *sz, const float *x, const float *bias, float *y,
                          int64_t M, int64_t N, int64_t K, int64_t G, int threads) {
    const int64_t groups = K / G, full = N / 64;
    float *xsum = (float *)malloc(sizeof(float) * (M * groups + 1));
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int64_t k = g * G; k < (g + 1) * G; k++) s += x[m * K + k];
            xsum[m * groups + g] = s;
        }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t blk = 0; blk < full; blk++) i4_block_$v(q, sz, blk, N, K, G, x, xsum, bias, y, M);
    if (full * 64 < N) i4_tail(q, sz, full * 64, x, xsum, bias, y, M, N, K, G);
    free(xsum);
}
""")


def _tile_cases(call: str, regs: str, shapes: tuple[int, ...]) -> str:
    """The switch cases of a tile call for `shapes` weight rows or vectors by 1..16/shape input rows: constant
    arguments, each clamped to what the variant's register budget `regs` allows (cases past it never run)."""
    lines = []
    for shape in shapes:
        for mb in range(1, 16 // shape + 1):
            lines.append(f"                case {shape * 32 + mb}: {call.format(shape=shape, mb=f'({mb} <= {regs} / {shape} ? {mb} : {regs} / {shape})')}; break;")
    return "\n".join(lines)


# The last block of R < 64 rows (R a multiple of 16; rows 2j and 2j + 1 in byte j): the same arithmetic per row,
# in scalar C (at most 48 rows of a matrix, e.g. a vocabulary not a multiple of 64).
_I4_TAIL = r"""
static void i4_tail(const uint8_t *q, const uint16_t *sz, int64_t n_start, const float *x, const float *xsum,
                    const float *bias, float *y, int64_t M, int64_t N, int64_t K, int64_t G) {
    const int64_t R = N - n_start, groups = K / G;
    const uint8_t *base = q + n_start * (K / 2);
    for (int64_t m = 0; m < M; m++)
        for (int64_t r = 0; r < R; r++) {
            float tot = 0.0f;
            for (int64_t g = 0; g < groups; g++) {
                float acc = 0.0f;
                for (int64_t k = g * G; k < (g + 1) * G; k++) {
                    uint8_t b = base[k * (R / 2) + r / 2];
                    acc += (float)((b >> (4 * (r & 1))) & 15) * x[m * K + k];
                }
                const uint16_t *p = sz + (g * N + n_start + r) * 2;
                float s = bf16_to_f32(p[0]), z = bf16_to_f32(p[1]);
                tot += s * acc;
                tot += (z - 8.0f * s) * xsum[m * groups + g];
            }
            y[m * N + n_start + r] = tot + (bias ? bias[n_start + r] : 0.0f);
        }
}
"""


# int8 weights against bfloat16 inputs with AMX tiles (the `bf16-tile` variant, taken only for bfloat16 x):
# y^T (N, M) = W (N, K) x^T, 16 weight rows at a time, as cpu_matvec_griffin's bfloat16 tiles. Each 16 x 32 block of
# codes is widened once to bfloat16 (exact: |q| <= 128) into an L1 buffer for the A tile, so the unpacking is paid
# once per weight whatever the row count and the tiles do every row's products: a 16-row call costs about what one
# row costs. B holds the inputs as (K/2, M, 2) pairs, C the 16 x M float32 sums of x q. Then, as the other
# variants, y = scale (acc - zero sum_k x) + bias. Rows past the last multiple of 16 and a K tail (K % 32) are
# summed in scalar code in k order; every row's arithmetic is the same whatever M.
_I8_AMX = r"""
__attribute__((target("avx512f,avx512bf16,amx-tile,amx-bf16"))) void matmul_int8_bf16_tile(
        const int8_t *q, const float *scale, const int8_t *zero, const uint16_t *x, const float *bias, float *y,
        int64_t M, int64_t N, int64_t K, int threads) {
    const int64_t K32 = K / 32 * 32, N16 = N / 16 * 16;
    uint16_t *packed = amx_pack_pairs(x, M, K, K32);
    float x_sum[$max_rows];
    for (int64_t m = 0; m < M; m++) {
        x_sum[m] = 0.0f;
        if (zero) for (int64_t k = 0; k < K; k++) x_sum[m] += bf16_to_f32(x[m * K + k]);
    }
    #pragma omp parallel num_threads(threads)
    {
        amx_bf16_config(M);  /* C 16 x M sums, A 16 weight rows x 32, B 16 k pairs x M x 2 */
        uint16_t wide[16 * 32] __attribute__((aligned(64)));
        float sums[16 * 16];
        #pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N16; n0 += 16) {
            _tile_zero(0);
            for (int64_t k = 0; k < K32; k += 32) {  /* ORDER: k ascending, 32 at a time */
                for (int r = 0; r < 16; r++) {
                    const int8_t *src = q + (n0 + r) * K + k;
                    /* the same k of the next 16 rows, once per 64-byte line */
                    if ((k & 63) == 0) __builtin_prefetch(src + 16 * K, 0, 3);
                    __m128i lo = _mm_loadu_si128((const __m128i *)src), hi = _mm_loadu_si128((const __m128i *)(src + 16));
                    __m512bh b = _mm512_cvtne2ps_pbh(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)),
                                                     _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)));
                    _mm512_store_si512((void *)(wide + r * 32), (__m512i)b);
                }
                _tile_loadd(1, wide, 64);
                _tile_loadd(2, packed + k * M, M * 4);
                _tile_dpbf16ps(0, 1, 2);
            }
            _tile_stored(0, sums, M * 4);
            for (int64_t r = 0; r < 16; r++)
                for (int64_t m = 0; m < M; m++) {
                    const int64_t n = n0 + r;
                    float v = sums[r * M + m];
                    for (int64_t j = K32; j < K; j++) v += (float)q[n * K + j] * bf16_to_f32(x[m * K + j]);
                    if (zero) v -= (float)zero[n] * x_sum[m];
                    y[m * N + n] = scale[n] * v + (bias ? bias[n] : 0.0f);
                }
        }
        _tile_release();
    }
    free(packed);
    for (int64_t n = N16; n < N; n++)  /* the last rows: k in order */
        for (int64_t m = 0; m < M; m++) {
            float v = 0.0f;
            for (int64_t k = 0; k < K; k++) v += (float)q[n * K + k] * bf16_to_f32(x[m * K + k]);
            if (zero) v -= (float)zero[n] * x_sum[m];
            y[m * N + n] = scale[n] * v + (bias ? bias[n] : 0.0f);
        }
}
"""


# int4 weights against bfloat16 inputs with AVX-512 BF16 (the `bf16-dot` variant, taken only for bfloat16 x; no
# AMX needed): a 64-byte line of torch's pack holds one 64-row block at k and k + 1. Its bytes are interleaved
# (k, k + 1) and widened to 16-bit words, and one `vpermw` (AVX-512BW, which every AVX-512 BF16 CPU has) per 32
# words looks each nibble up in a table of the bfloat16 values of q - 8 (exact), so each 32-bit lane holds one
# weight row's pair; `vdpbf16ps` then adds both products of a row's pair with the input's (x_k, x_k+1) pair
# (products of bfloat16 x and q - 8 are exact in float32) to the row's float32 sum: half the instructions of the
# float32 FMA per weight and row (on the AMX Xeon each takes about four FMAs' time, so `dot_allowed` keeps AMX CPUs
# off it). The interleave works within 128-bit lanes, so vector v holds rows I4DOT_ROW(v, lane). Per row and
# group g:
#     acc = sum over the group's k pairs, in order, of (x_k (q_k - 8) + x_k+1 (q_k+1 - 8)) (vdpbf16ps rounding)
#     tot = fma(scale, acc, tot); tot = fma(zero, xsum[g], tot); groups in order; then + bias.
# The last block of R < 64 rows takes `i4_tail` on x widened to float32 (exact). Every row's arithmetic is the
# same whatever M and whichever rows share a tile.
_I4_DOT = Template(r"""
#define I4DOT_ROW(v, l) ((int[]){0, 32, 8, 40}[v] + ((l) & 7) + ((l) >> 3) * 16)
#define I4DOT_MB $mb_rows  /* input rows per tile: 4 weight vectors x I4DOT_MB accumulators in registers */
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) static inline void i4dot_tile(
        const uint8_t *base, const uint16_t *sz, int64_t n_blk, int64_t N, int64_t K, int64_t G, int64_t g,
        const uint16_t *x, const float *xsum, float *tot /* (mb, 4, 16) */, const int mb) {
    /* word i: bfloat16 of (i mod 16) - 8; vpermw reads 5 index bits, so bit 4 (the other nibble's) is ignored */
    const __m512i table = _mm512_set_epi16(
        0x40e0, 0x40c0, 0x40a0, 0x4080, 0x4040, 0x4000, 0x3f80, 0x0000, -0x4080, -0x4000, -0x3fc0, -0x3f80,
        -0x3f60, -0x3f40, -0x3f20, -0x3f00,  /* 7 ... 0, then -1 ... -8 (0xbf80 ... 0xc100 as signed shorts) */
        0x40e0, 0x40c0, 0x40a0, 0x4080, 0x4040, 0x4000, 0x3f80, 0x0000, -0x4080, -0x4000, -0x3fc0, -0x3f80,
        -0x3f60, -0x3f40, -0x3f20, -0x3f00);
    const int64_t groups = K / G;
    __m512 acc[4 * I4DOT_MB];  /* (mb, 4), flat: constant indices keep it in registers */
    for (int i = 0; i < 4 * mb; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t k = g * G; k < (g + 1) * G; k += 2) {  /* ORDER: k pairs ascending within the group */
        const uint8_t *p = base + k * 32;
        __builtin_prefetch(p + $ahead, 0, 3);
        const __m256i a = _mm256_loadu_si256((const __m256i *)p), b = _mm256_loadu_si256((const __m256i *)(p + 32));
        const __m512i lo = _mm512_cvtepu8_epi16(_mm256_unpacklo_epi8(a, b));
        const __m512i hi = _mm512_cvtepu8_epi16(_mm256_unpackhi_epi8(a, b));
        __m512bh w[4];
        w[0] = (__m512bh)_mm512_permutexvar_epi16(lo, table);
        w[1] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(lo, 4), table);
        w[2] = (__m512bh)_mm512_permutexvar_epi16(hi, table);
        w[3] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(hi, 4), table);
        _Pragma("GCC unroll 16") for (int m = 0; m < mb; m++) {
            int32_t pair;
            memcpy(&pair, x + m * K + k, 4);
            const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
            _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++)
                acc[m * 4 + v] = _mm512_dpbf16_ps(acc[m * 4 + v], w[v], xv);
        }
    }
    _Pragma("GCC unroll 4") for (int v = 0; v < 4; v++) {
        const uint16_t *p = sz + (g * N + n_blk + I4DOT_ROW(v, 0)) * 2;
        const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p)),
                                                _mm256_loadu_si256((const __m256i *)(p + 32)), 1);
        const __m512 s = _mm512_castsi512_ps(_mm512_slli_epi32(both, 16));
        const __m512 z = _mm512_castsi512_ps(_mm512_and_si512(both, _mm512_set1_epi32((int)0xffff0000u)));
        for (int m = 0; m < mb; m++) {
            float *t = tot + (m * 4 + v) * 16;
            const __m512 u = _mm512_fmadd_ps(s, acc[m * 4 + v], _mm512_loadu_ps(t));
            _mm512_storeu_ps(t, _mm512_fmadd_ps(z, _mm512_set1_ps(xsum[m * groups + g]), u));
        }
    }
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) void matmul_int4_bf16_dot(
        const uint8_t *q, const uint16_t *sz, const uint16_t *x, const float *bias, float *y, int64_t M, int64_t N,
        int64_t K, int64_t G, int threads) {
    const int64_t groups = K / G, full = N / 64;
    float *xsum = (float *)malloc(sizeof(float) * (M * groups + 1));
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < groups; g++) {
            float s = 0.0f;
            for (int64_t k = g * G; k < (g + 1) * G; k++) s += bf16_to_f32(x[m * K + k]);
            xsum[m * groups + g] = s;
        }
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t blk = 0; blk < full; blk++) {
        const uint8_t *base = q + blk * 64 * (K / 2);
        float tot[$max_rows * 64];  /* (M, 4, 16) in lane order */
        for (int64_t i = 0; i < M * 64; i++) tot[i] = 0.0f;
        for (int64_t g = 0; g < groups; g++)
            for (int64_t m0 = 0; m0 < M; m0 += I4DOT_MB) {
                const uint16_t *xm = x + m0 * K;
                const float *xs = xsum + m0 * groups;
                float *t = tot + m0 * 64;
                /* constant tile shapes, so the inlined tile keeps its accumulators in registers */
                switch (M - m0 < I4DOT_MB ? M - m0 : I4DOT_MB) {
$cases
                }
            }
        for (int64_t m = 0; m < M; m++)
            for (int v = 0; v < 4; v++)
                for (int l = 0; l < 16; l++) {
                    const int64_t n = blk * 64 + I4DOT_ROW(v, l);
                    y[m * N + n] = tot[(m * 4 + v) * 16 + l] + (bias ? bias[n] : 0.0f);
                }
    }
    if (full * 64 < N) {
        float *x32 = (float *)malloc(sizeof(float) * M * K);
        for (int64_t i = 0; i < M * K; i++) x32[i] = bf16_to_f32(x[i]);
        i4_tail(q, sz, full * 64, x32, xsum, bias, y, M, N, K, G);
        free(x32);
    }
    free(xsum);
}
#undef I4DOT_MB
#undef I4DOT_ROW
""")


def _i4_dot_source(mb_rows: int = 5, ahead: int = 2048) -> str:
    call = "i4dot_tile(base, sz, blk * 64, N, K, G, g, xm, xs, t, {mb})"
    cases = "\n".join(f"                    case {mb}: {call.format(mb=mb)}; break;" for mb in range(1, mb_rows + 1))
    return _I4_DOT.substitute(mb_rows=mb_rows, ahead=ahead, max_rows=MAX_ROWS, cases=cases)


# Prompts (more rows than the few-row kernels take): rows n0..n1 of the dequantized weights, rounded to bfloat16
# (nearest even), into a buffer that stays in L2, for torch's bfloat16 matrix product: int8 scale (q - zero) as
# (n1 - n0, K); int4 (q - 8) scale + zero as (K, n1 - n0), the order its pack is read in (n0, n1 whole 64-row
# blocks of torch's int4 pack).
_DEQUANT = Template(r"""
static inline uint16_t round_bf16_$v(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

$attr void widen_int8_$v(const int8_t *q, const float *scale, const int8_t *zero, uint16_t *out, int64_t n0,
                         int64_t n1, int64_t K) {
    for (int64_t n = n0; n < n1; n++) {
        const float s = scale[n], z = zero ? (float)zero[n] : 0.0f;
        for (int64_t k = 0; k < K; k++) out[(n - n0) * K + k] = round_bf16_$v(s * ((float)q[n * K + k] - z));
    }
}

$attr void widen_int4_$v(const uint8_t *q, const uint16_t *sz, uint16_t *out, int64_t n0, int64_t n1, int64_t N,
                         int64_t K, int64_t G) {
    /* out is k-major, (K, n1 - n0): a block's 32 bytes of one k give 64 adjacent outputs */
    const int64_t T = n1 - n0;
    for (int64_t blk = n0 / 64; blk < n1 / 64; blk++) {
        const uint8_t *base = q + blk * 64 * (K / 2);
        uint16_t *col = out + (blk * 64 - n0);
        for (int64_t g = 0; g < K / G; g++) {
            float s[64], z[64];
            for (int r = 0; r < 64; r++) {
                s[r] = bf16_to_f32(sz[(g * N + blk * 64 + r) * 2]);
                z[r] = bf16_to_f32(sz[(g * N + blk * 64 + r) * 2 + 1]);
            }
            for (int64_t k = g * G; k < (g + 1) * G; k++) {
                const uint8_t *p = base + k * 32;
                uint16_t *o = col + k * T;
                for (int j = 0; j < 32; j++) {
                    o[j] = round_bf16_$v((float)((p[j] & 15) - 8) * s[j] + z[j]);
                    o[j + 32] = round_bf16_$v((float)((p[j] >> 4) - 8) * s[j + 32] + z[j + 32]);
                }
            }
        }
    }
}
""")


def _variant_source(v: str) -> str:
    isa = _ISAS[v]
    i8_cases = _tile_cases(f"i8_tile_{v}(q, n0, N, K, x + m0 * K, {{shape}}, {{mb}}, acc)", "I8_REGS", (4,))
    i4_cases = _tile_cases(f"i4_tile_{v}(base, sz, blk * 64, N, K, G, x, xsum, bias, y, r0, {{shape}}, m0, {{mb}})",
                           "I4_REGS", (4, 2))
    return "\n".join([isa["macros"], _I8_TILE.substitute(attr=isa["attr"], v=v, max_rows=MAX_ROWS, i8_cases=i8_cases),
                      _I4_BLOCK.substitute(attr=isa["attr"], v=v, i4_cases=i4_cases),
                      _DEQUANT.substitute(attr=isa["attr"], v=v), _UNDEF])


def _source() -> str:
    parts = [_I4_TAIL, _variant_source("scalar"), "#if defined(HF_RG_X86)"]
    parts += [_variant_source("fp32_fma_256"), _variant_source("fp32_fma_512"),
              Template(_I8_AMX).substitute(max_rows=MAX_ROWS), _i4_dot_source(),
              digits_source(MAX_ROWS, target_attribute("int8-tile")), "#endif"]
    return "\n".join(parts)


def make_kernel(source: str | None = None) -> CompiledKernel:
    """The compiled kernel for `source` (default: this module's); tests build altered copies to show that the
    row-invariance check catches a changed accumulation order."""
    return CompiledKernel("quant", _source() if source is None else source, {
        "matmul_int8": (INT8_VARIANTS, kernel_argtypes(6)),
        # q, scale_and_zero, x, bias, y; M, N, K, the group size; threads
        "matmul_int4": (INT4_VARIANTS, [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 4 + [ctypes.c_int]),
        "widen_int8": (VARIANTS, [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3),  # q, scale, zero, out; n0, n1, K
        "widen_int4": (VARIANTS, [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 5),  # q, sz, out; n0, n1, N, K, G
    })


QUANT_KERNEL = make_kernel()


def supported_variants(fmt: str = "int4") -> list[str]:
    """The variants of `fmt`'s kernel this CPU and build can run, weakest first (whatever the switches say: tests
    force each); int8's `bf16-tile` takes bfloat16 inputs only."""
    return [v for v in QUANT_KERNEL.supported() if v in (INT8_VARIANTS if fmt == "int8" else INT4_VARIANTS)]


_decided: dict[tuple, str | None] = {}


@torch.compiler.assume_constant_result  # decided in Python; a compiled graph only sees the answer
def quant_variant() -> str | None:
    """The variant `linear_quantized` uses now, or None for torch's / torchao's own path: the best one the CPU, the
    build and HF_RECURRENTGEMMA_CPU_ISA allow if it is a vector one, and None where HF_RECURRENTGEMMA_CPU_KERNELS
    turns `gemv` off or nothing builds."""
    key = kernel_settings()
    if key not in _decided:
        variant = QUANT_KERNEL.best_variant(VARIANTS) if kernel_enabled("gemv") else None
        _decided[key] = variant if variant != "scalar" else None
    return _decided[key]


@torch.compiler.assume_constant_result
def best_int8_variant() -> str | None:
    """The best of int8's variants allowed now (None with `gemv` off): "int8-tile" where the CPU has AMX-INT8 and
    AVX-512 VBMI, "bf16-tile" where it has AMX-BF16 only or HF_RECURRENTGEMMA_CPU_ISA caps it there (and the kernel
    has its tile permission), else a float32 one. `variant_for` reads both AMX answers from it."""
    key = (kernel_settings(), "int8")
    if key not in _decided:
        _decided[key] = QUANT_KERNEL.best_variant(INT8_VARIANTS) if kernel_enabled("gemv") else None
    return _decided[key]


@torch.compiler.assume_constant_result
def dot_allowed() -> bool:
    """Whether int4 weights against bfloat16 inputs run the AVX-512 BF16 `bf16-dot` variant now: the best
    capability allowed is exactly `bf16-dot`, i.e. AVX-512 BF16 without AMX (an AMD EPYC; or
    HF_RECURRENTGEMMA_CPU_ISA=bf16-dot elsewhere). On the AMX Xeon `vdpbf16ps` retires about one per 4 float32
    FMAs' time (half their multiply-adds per second), and `bf16-dot` measured no faster than `fp32-fma-512` at one
    row and slower from two (docs/performance.md), so AMX CPUs keep `fp32-fma-512` for int4."""
    key = (kernel_settings(), "bf16-dot")
    if key not in _decided:
        rank = QUANT_KERNEL.capability() if kernel_enabled("gemv") else None
        _decided[key] = rank == CAPABILITIES.index("bf16-dot")
    return _decided[key]


def _int8_layout(weight) -> bool:
    """torchao's weight-only int8 tensor with one scale (and zero point) per output row: qdata (N, K) int8
    contiguous, block (1, K), no activation quantization."""
    qdata = getattr(weight, "qdata", None)
    return (type(weight).__name__ == "Int8Tensor"
            and isinstance(qdata, torch.Tensor) and qdata.dtype == torch.int8 and qdata.ndim == 2
            and qdata.is_contiguous() and tuple(getattr(weight, "block_size", ())) == (1, qdata.shape[1])
            and getattr(weight, "scale", None) is not None and weight.scale.numel() == qdata.shape[0]
            and getattr(weight, "act_quant_kwargs", None) is None and getattr(weight, "act_pre_scale", None) is None)


def _int4_layout(weight) -> bool:
    """torchao's CPU int4 weight-only tensor (torch's int4 pack, group scales and zeros, no activation quantization
    or pre-scale) with a group size of INT4_GROUPS."""
    qdata, sz = getattr(weight, "qdata", None), getattr(weight, "scale_and_zero", None)
    if type(weight).__name__ != "Int4OpaqueTensor" or not isinstance(qdata, torch.Tensor) or sz is None:
        return False
    n, k = weight.shape
    block = tuple(getattr(weight, "block_size", ()))
    return (qdata.dtype == torch.uint8 and qdata.shape == (n, k // 2) and qdata.is_contiguous()
            and len(block) == 2 and block[0] == 1 and block[1] in INT4_GROUPS and k % block[1] == 0
            and sz.dtype == torch.bfloat16 and sz.shape == (k // block[1], n, 2) and sz.is_contiguous()
            and getattr(weight, "act_pre_scale", None) is None and getattr(weight, "act_mapping_type", None) is None)


def quant_format(weight) -> str | None:
    """"int8" or "int4" for a torchao weight this module multiplies, else None."""
    if _int8_layout(weight):
        return "int8"
    if _int4_layout(weight):
        return "int4"
    return None


def is_quantized(weight) -> bool:
    """Whether `weight` is a quantized tensor subclass, whatever its layout: such a weight goes through
    `linear_quantized`, which falls back to the subclass's own product where this module has no kernel for it.
    Duck-typed on the integer codes torchao's weight tensors carry (`qdata`), so a DTensor or another wrapper stays
    on `cpu_matvec_griffin.linear_cpu`; plain tensors and parameters are told apart by their type first, which a
    compiled graph decides without tracing an attribute lookup."""
    return type(weight) not in (torch.Tensor, torch.nn.Parameter) and hasattr(weight, "qdata")


# The op namespace is this module's name, so the package and a copy shipped as Hub remote code (another module
# name) can both register their ops in one process.
_NS = op_namespace(__name__)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1]).float().contiguous()


def _input_rows(x: torch.Tensor, bf16_input: bool) -> torch.Tensor:
    """x (..., K) as the (M, K) rows a kernel reads: float32, or bfloat16 as it is for the BF16_INPUT variants."""
    if not bf16_input:
        return _as_rows(x)
    if x.dtype != torch.bfloat16:
        raise ValueError(f"the {'/'.join(BF16_INPUT)} quantized kernels take bfloat16 inputs, got {x.dtype}")
    return x.reshape(-1, x.shape[-1]).contiguous()


def run_int8(function, x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
             bias: torch.Tensor | None, bf16_input: bool = False) -> torch.Tensor:
    """Calls a compiled `matmul_int8` variant: x (M, K) float, M <= MAX_ROWS, handed over in float32 or, for
    `bf16_input` (the `bf16-tile` variant), as bfloat16 (x must be bfloat16 then); returns y (M, N) float32."""
    rows = _input_rows(x, bf16_input)
    scale32 = scale.reshape(-1).float().contiguous()
    zero = None if zero_point is None else zero_point.reshape(-1).to(torch.int8).contiguous()
    bias32 = None if bias is None else bias.float().contiguous()
    y = torch.empty(rows.shape[0], qdata.shape[0], dtype=torch.float32)
    function(qdata.data_ptr(), scale32.data_ptr(), None if zero is None else zero.data_ptr(), rows.data_ptr(),
             None if bias32 is None else bias32.data_ptr(), y.data_ptr(), rows.shape[0], qdata.shape[0],
             qdata.shape[1], torch.get_num_threads())
    return y


def run_int4(function, x: torch.Tensor, qdata: torch.Tensor, scale_and_zero: torch.Tensor, group_size: int,
             bias: torch.Tensor | None, bf16_input: bool = False) -> torch.Tensor:
    """Calls a compiled `matmul_int4` variant: x (M, K) float, M <= MAX_ROWS, as `run_int8` hands it over;
    returns y (M, N) float32."""
    rows = _input_rows(x, bf16_input)
    bias32 = None if bias is None else bias.float().contiguous()
    y = torch.empty(rows.shape[0], qdata.shape[0], dtype=torch.float32)
    function(qdata.data_ptr(), scale_and_zero.data_ptr(), rows.data_ptr(), None if bias32 is None else bias32.data_ptr(),
             y.data_ptr(), rows.shape[0], qdata.shape[0], rows.shape[1], group_size, torch.get_num_threads())
    return y


@torch.library.custom_op(f"{_NS}::matmul_int8", mutates_args=(), device_types="cpu")
def _matmul_int8_op(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                    bias: torch.Tensor | None, variant: str) -> torch.Tensor:
    """x (..., K) float, at most MAX_ROWS rows; qdata (N, K) int8, scale (N) or (N, 1), zero_point the same in
    int8 or None: y = x (scale (q - zero))^T + bias, (..., N) in x's dtype."""
    y = run_int8(QUANT_KERNEL.function("matmul_int8", variant), x, qdata, scale, zero_point, bias,
                 bf16_input=variant in BF16_INPUT)
    return y.to(x.dtype).view(*x.shape[:-1], qdata.shape[0])


@_matmul_int8_op.register_fake
def _(x, qdata, scale, zero_point, bias, variant):
    return x.new_empty(*x.shape[:-1], qdata.shape[0])


@torch.library.custom_op(f"{_NS}::matmul_int4", mutates_args=(), device_types="cpu")
def _matmul_int4_op(x: torch.Tensor, qdata: torch.Tensor, scale_and_zero: torch.Tensor, group_size: int,
                    bias: torch.Tensor | None, variant: str) -> torch.Tensor:
    """x (..., K) float, at most MAX_ROWS rows; qdata (N, K/2) uint8 in torch's CPU int4 pack, scale_and_zero
    (K/G, N, 2) bfloat16: y = x ((q - 8) scale + zero)^T + bias, (..., N) in x's dtype."""
    y = run_int4(QUANT_KERNEL.function("matmul_int4", variant), x, qdata, scale_and_zero, group_size, bias,
                 bf16_input=variant in BF16_INPUT)
    return y.to(x.dtype).view(*x.shape[:-1], qdata.shape[0])


@_matmul_int4_op.register_fake
def _(x, qdata, scale_and_zero, group_size, bias, variant):
    return x.new_empty(*x.shape[:-1], qdata.shape[0])


def linear_rows(x: torch.Tensor, weight, bias: torch.Tensor | None, variant: str) -> torch.Tensor:
    """`F.linear(x, weight, bias)` through variant `variant` for a weight `quant_format` accepts and x of at most
    MAX_ROWS rows (tests call this to force each variant)."""
    fmt = quant_format(weight)
    if fmt == "int8":
        return _matmul_int8_op(x, weight.qdata, weight.scale, getattr(weight, "zero_point", None), bias, variant)
    if fmt == "int4":
        return _matmul_int4_op(x, weight.qdata, weight.scale_and_zero, weight.block_size[1], bias, variant)
    raise ValueError(f"no quantized kernel for a weight of type {type(weight).__name__}")


def kernel_applies(x: torch.Tensor, weight) -> bool:
    """Whether `linear_quantized` runs this module's kernel for this call now: inference on CPU, 1..MAX_ROWS rows
    of floating-point x, a layout `quant_format` accepts, and a vector variant allowed."""
    if x.device.type != "cpu" or not x.is_floating_point() or x.shape[-1] == 0:
        return False
    if x.numel() // x.shape[-1] > MAX_ROWS or (torch.is_grad_enabled() and x.requires_grad):
        return False
    return quant_format(weight) is not None and x.shape[-1] == weight.shape[1] and quant_variant() is not None


INT_TILE_MAX_K = 2**17 - 1  # int8-tile's int32 tile sums hold K products of at most 128 x 128 without overflow


def variant_for(x: torch.Tensor, weight) -> str | None:
    """The variant `linear_quantized` runs for this input and weight: on AMX-INT8 CPUs `int8-tile` for both
    formats and every input dtype; else, with bfloat16 inputs, int8 on AMX takes `bf16-tile` and int4 with AVX-512
    BF16 `bf16-dot`; everything else `quant_variant()`. Fixed per format, input dtype and CPU, never per row count,
    so a verification of k rows runs what k one-row steps run."""
    amx = best_int8_variant()
    if amx == "int8-tile" and weight.shape[1] <= INT_TILE_MAX_K:  # both formats: int4 has it wherever int8 does
        return "int8-tile"
    if x.dtype == torch.bfloat16:
        fmt = quant_format(weight)
        if fmt == "int8" and amx == "bf16-tile":
            return "bf16-tile"
        if fmt == "int4" and dot_allowed():
            return "bf16-dot"
    return quant_variant()


PROMPT_TILE_ROWS = 256  # weight rows widened at a time for a prompt: 256 x 2,560 bfloat16 is 1.3 MB, in L2


def prompt_applies(x: torch.Tensor, weight) -> bool:
    """Whether `linear_quantized` runs `linear_prompt` for this call: inference on CPU, more than MAX_ROWS rows of
    bfloat16 x, a layout `quant_format` accepts (int4: whole 64-row blocks, as every published width), kernels on."""
    if x.device.type != "cpu" or x.dtype != torch.bfloat16 or x.numel() // max(x.shape[-1], 1) <= MAX_ROWS:
        return False
    if torch.is_grad_enabled() and x.requires_grad:
        return False
    fmt = quant_format(weight)
    return (fmt is not None and x.shape[-1] == weight.shape[1] and quant_variant() is not None
            and (fmt == "int8" or weight.shape[0] % INT4_BLOCK == 0))


def linear_prompt(x: torch.Tensor, weight, bias: torch.Tensor | None, variant: str) -> torch.Tensor:
    """`F.linear` for many rows of bfloat16 x: PROMPT_TILE_ROWS rows of the dequantized weights at a time, rounded
    to bfloat16 in an L2-sized buffer, multiplied by torch's bfloat16 product. Each weight is unpacked once per
    call and the products run at bfloat16 matrix speed: torchao's own CPU paths took 2x (int8) and 10x (int4)
    bfloat16's time for a 512-token prompt (docs/performance.md). x (..., K) bfloat16; returns (..., N) bfloat16."""
    fmt, rows = quant_format(weight), x.reshape(-1, x.shape[-1])
    n, k = weight.shape
    y = torch.empty(rows.shape[0], n, dtype=x.dtype)
    buffer = torch.empty(PROMPT_TILE_ROWS * k, dtype=torch.bfloat16)
    qdata, widen = weight.qdata, QUANT_KERNEL.function(f"widen_{fmt}", variant)
    if fmt == "int8":
        scale = weight.scale.reshape(-1).float().contiguous()
        zero = getattr(weight, "zero_point", None)
        zero = None if zero is None else zero.reshape(-1).to(torch.int8).contiguous()
    for n0 in range(0, n, PROMPT_TILE_ROWS):
        n1 = min(n, n0 + PROMPT_TILE_ROWS)
        if fmt == "int8":
            tile = buffer[: (n1 - n0) * k].view(n1 - n0, k)
            widen(qdata.data_ptr(), scale.data_ptr(), None if zero is None else zero.data_ptr(), tile.data_ptr(),
                  n0, n1, k)
            tile = tile.T
        else:
            tile = buffer[: (n1 - n0) * k].view(k, n1 - n0)
            widen(qdata.data_ptr(), weight.scale_and_zero.data_ptr(), tile.data_ptr(), n0, n1, n, k,
                  weight.block_size[1])
        y[:, n0:n1] = rows @ tile
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], n)


def linear_quantized(x: torch.Tensor, weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for a torchao weight: this module's kernel where `kernel_applies` (1..MAX_ROWS
    rows: the product of the dequantized weights within float32 accumulation order, rounded once to x's dtype);
    for longer bfloat16 prompts `linear_prompt` (the dequantized weights rounded to bfloat16, as torchao's own
    paths multiply them); else torchao's own product (float32 prompts, another layout, kernels off)."""
    if kernel_applies(x, weight):
        return linear_rows(x, weight, bias, variant_for(x, weight))
    if prompt_applies(x, weight):
        return linear_prompt(x, weight, bias, quant_variant())
    return torch.nn.functional.linear(x, weight, bias)


def unpack_int4(qdata: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """torch's CPU int4 pack (N, K/2) uint8 back to the (N, K) codes 0..15 as int64 (the layout in the module
    docstring): the tests' float64 reference and `dequantize`."""
    codes = torch.empty(n, k, dtype=torch.int64)
    full = n // INT4_BLOCK * INT4_BLOCK
    if full:
        blocks = qdata[:full].reshape(-1).view(n // INT4_BLOCK, k, 32).long()  # [block][k][byte]
        both = torch.cat([blocks & 15, blocks >> 4], dim=2)  # [block][k][row in block]
        codes[:full] = both.permute(0, 2, 1).reshape(full, k)
    if full < n:
        rows = n - full
        tail = qdata[full:].reshape(-1).view(k, rows // 2).long()  # [k][byte]: rows 2j (low), 2j + 1 (high)
        codes[full:] = torch.stack([tail & 15, tail >> 4], dim=2).reshape(k, rows).T
    return codes


def dequantize(weight, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The (N, K) weights a torchao int8 or int4 tensor (`quant_format`) stands for, in `dtype`, computed in
    float64: int8 scale (q - zero); int4 (q - 8) scale + zero per group."""
    fmt = quant_format(weight)
    if fmt == "int8":
        zero = getattr(weight, "zero_point", None)
        q = weight.qdata.double() - (0 if zero is None else zero.reshape(-1, 1).double())
        return (q * weight.scale.reshape(-1, 1).double()).to(dtype)
    if fmt == "int4":
        n, k = weight.shape
        group = weight.block_size[1]
        codes = unpack_int4(weight.qdata, n, k).double().view(n, k // group, group)
        sz = weight.scale_and_zero.double()  # (K/G, N, 2)
        scale, zero = sz[..., 0].T.unsqueeze(-1), sz[..., 1].T.unsqueeze(-1)  # (N, K/G, 1)
        return ((codes - 8) * scale + zero).reshape(n, k).to(dtype)
    raise ValueError(f"no quantized layout known for a weight of type {type(weight).__name__}")

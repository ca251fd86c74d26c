"""The `int8-tile` variant of the weight-only int8 and int4 few-row kernels (`cpu_quant_griffin.py`): AMX-INT8 tile
products of the weight codes against the inputs written as fixed-point integer digits, summed exactly in int32.

Why: the float32 variants spend three or more vector instructions on every 16 weights (widen the code, convert it,
multiply-add) and so run at the speed of their instructions, not of memory (one core of the AMX Xeon: about 17
billion int8 and 21 billion int4 weights a second with the weights in L2, against the 13-15 GB/s a core reads).
With the codes as int8 tile operands nothing is widened to float: int8 codes go to the tile straight from memory,
int4 codes take eight byte operations per 256 (two `vpermt2b` gather four k of 16 rows, then nibble masks and
shifts), and one `tdpbssd`/`tdpbsud` does 16 x 64 x up to 16 multiply-adds whatever the row count, so 5 rows cost
1.07x (int8) and 1.16x (int4) one row on a 2560 -> 15360 linear (docs/performance.md).

Arithmetic (the same whatever the row count; integer sums are exact, so the order of the tile products does not
matter, and k rows give k one-row results bit for bit):

    x row m, per block b of k (int8: all of K; int4: one group of G): e = 21 - ilogb(max |x[m, k in b]|) (0 for an
    all-zero block), v[m, k] = round-to-nearest-even(x[m, k] 2^e), so |v| <= 2^22; v is written as three signed
    digits, v = d0 + 256 d1 + 65536 d2 with d0, d1 in [-128, 127] and |d2| <= 65 (balanced base 256).
    int8   S[m, n] = sum_k v[m, k] q[n, k] - zero[n] sum_k v[m, k]   (exact: int32 tile sums, combined in int64)
           y = scale[n] fl(S 2^-e) + bias[n]            (fl: one rounding to float32; then two roundings)
    int4   per group g, from the digit sums c_l = sum_{k in g} d_l q and w_l = sum_{k in g} d_l (all int32):
           t = c0 + 256 c1 - 8 (w0 + 256 w1), u = c2 - 8 w2 (exact), S = fma(u, 65536, fl(t)) (= sum v (q - 8) within
           two roundings), a2 = fl(sum_{k in g} v 2^-e);
           tot = fma(scale[g, n], S 2^-e, tot); tot = fma(zero[g, n], a2, tot); groups in order; y = tot + bias[n].

So the only approximation beyond float32's roundings is x rounded to 23 significant bits relative to its block's
largest magnitude (|x 2^e - v| <= 1/2): a bfloat16 x is kept exactly wherever it is within 2^14 of that magnitude,
and a float32 x loses at most half a unit in the 22nd bit below it. tests/ops/test_quant_kernels.py derives the
bound from this. A row holding an infinity or NaN gives NaN in every output of that row.

Tiles (AMX palette 1): int8 A = 16 weight rows x 64 codes read from the weights in place, B = the digits as
(16 k quads, 3M (digit, row) columns, 4), C = 16 x 3M int32 (up to three C tiles of 16 columns, from M = 6). int4 A = the
digits as (3M (digit, row) rows, 64 k), B = 16 weight rows' codes of one 64-row block as (16 k quads, 16, 4),
unpacked once per group into an L1 buffer, C = 3M x 16 int32. Rows past the last whole tile, a K tail (int8) and
an int4 block of fewer than 64 rows take scalar code on the same integers.
"""

from string import Template

_SOURCE = Template(r"""
#define DIGIT_ROWS_MAX (3 * $max_rows)
#define INT4_AHEAD 2048  /* bytes read ahead of the int4 codes being unpacked */

static inline double pow2(int e) {  /* 2^e for -1022 <= e <= 1023 */
    uint64_t u = (uint64_t)(e + 1023) << 52; double d; memcpy(&d, &u, 8); return d;
}

/* Fixed point of x[0..n): the exponent e with |x 2^e| < 2^22 for the largest |x| (0 if all are zero), v = x 2^e
   rounded to nearest even, the sum of v; returns 0 if some x is not finite. */
static int to_fixed(const float *x, int64_t n, int32_t *v, int64_t *sum, double *unit) {
    uint32_t top = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u; memcpy(&u, x + i, 4); u &= 0x7fffffffu;
        if (u >= 0x7f800000u) return 0;
        if (u > top) top = u;
    }
    /* ilogb of the largest: its exponent field (subnormals: -127, a scale no larger than exact needs) */
    const int e = top == 0 ? 0 : 21 - ((int)(top >> 23) - 127);
    const double up = pow2(e), magic = 6755399441055744.0;  /* 2^52 + 2^51: adding it rounds to an integer */
    int64_t s = 0;
    for (int64_t i = 0; i < n; i++) {
        v[i] = (int32_t)(((double)x[i] * up + magic) - magic);  /* exact product; IEEE adds are not folded */
        s += v[i];
    }
    *sum = s;
    *unit = pow2(-e);
    return 1;
}

/* v = d0 + 256 d1 + 65536 d2, each digit a signed byte (balanced base 256; |v| <= 2^22 keeps |d2| <= 65). */
static inline void to_digits(int32_t v, int8_t *d0, int8_t *d1, int8_t *d2) {
    const int32_t a = (int32_t)(int8_t)(uint8_t)(v & 255), r = (v - a) / 256;
    const int32_t b = (int32_t)(int8_t)(uint8_t)(r & 255);
    *d0 = (int8_t)a; *d1 = (int8_t)b; *d2 = (int8_t)((r - b) / 256);
}

/* The exact sum of three digit tiles' int32 sums: c0 + 256 c1 + 65536 c2. */
static inline int64_t digit_sum(int32_t c0, int32_t c1, int32_t c2) {
    return (int64_t)c0 + 256 * (int64_t)c1 + 65536 * (int64_t)c2;
}

/* y[m, n] of int8 from the exact S = sum_k v q: zero point, one rounding of S 2^-e, then scale and bias. */
static inline float int8_output(int64_t s, int64_t m, int64_t n, const int8_t *zero, const float *scale,
                                const float *bias, const int64_t *vsum, const double *unit, const int *finite) {
    if (!finite[m]) return __builtin_nanf("");
    if (zero) s -= (int64_t)zero[n] * vsum[m];
    const float t = scale[n] * (float)((double)s * unit[m]);
    return bias ? t + bias[n] : t;
}

/* ---- int8: A = 16 weight rows x 64 codes (in place), B = digits (k quads, 3M, 4), C = 16 x 3M ---- */
$attr void matmul_int8_int8_tile(const int8_t *q, const float *scale, const int8_t *zero, const float *x,
                                 const float *bias, float *y, int64_t M, int64_t N, int64_t K, int threads) {
    const int64_t K64 = K / 64 * 64, N16 = N / 16 * 16, C = 3 * M, tiles = (C + 15) / 16;
    int32_t *v = (int32_t *)malloc(sizeof(int32_t) * (M * K + 1));
    int8_t *digits = (int8_t *)aligned_alloc(64, (size_t)((K64 * C + 63) / 64 * 64 + 64));
    int64_t vsum[$max_rows]; double unit[$max_rows]; int finite[$max_rows];
    for (int64_t m = 0; m < M; m++) {
        finite[m] = to_fixed(x + m * K, K, v + m * K, vsum + m, unit + m);
        for (int64_t k = 0; k < K64; k++) {
            int8_t *d = digits + (k / 4) * C * 4 + m * 4 + k % 4;
            to_digits(finite[m] ? v[m * K + k] : 0, d, d + M * 4, d + 2 * M * 4);
        }
    }
    #pragma omp parallel num_threads(threads)
    {
        struct amx_tile_config config;
        amx_config_init(&config);
        for (int t = 0; t < tiles; t++) {
            const int cols = (int)(C - 16 * t < 16 ? C - 16 * t : 16);
            config.rows[t] = 16; config.colsb[t] = (uint16_t)(cols * 4);          /* C: 16 weight rows x cols */
            config.rows[4 + t] = 16; config.colsb[4 + t] = (uint16_t)(cols * 4);  /* B: 16 k quads x cols x 4 */
        }
        config.rows[3] = 16; config.colsb[3] = 64;  /* A: 16 weight rows x 64 codes */
        if (tiles == 1) {  /* a second A (7) and B (5) */
            config.rows[7] = 16; config.colsb[7] = 64;
            config.rows[5] = 16; config.colsb[5] = (uint16_t)(C * 4);
        }
        _tile_loadconfig(&config);
        int32_t sums[16 * DIGIT_ROWS_MAX];
        #pragma omp for schedule(static)
        for (int64_t n0 = 0; n0 < N16; n0 += 16) {
            _tile_zero(0); if (tiles > 1) _tile_zero(1); if (tiles > 2) _tile_zero(2);
            int64_t k = 0;
            if (tiles == 1)  /* M <= 5: two A and two B tiles in turn, so the next codes load while the tiles
                                multiply (tile registers are not renamed: one A tile makes every load wait) */
                for (; k + 128 <= K64; k += 128) {
                    const int8_t *b = digits + (k / 4) * C * 4;
                    _tile_loadd(3, q + n0 * K + k, K); _tile_loadd(4, b, C * 4); _tile_dpbssd(0, 3, 4);
                    _tile_loadd(7, q + n0 * K + k + 64, K); _tile_loadd(5, b + 16 * C * 4, C * 4); _tile_dpbssd(0, 7, 5);
                }
            for (; k < K64; k += 64) {
                _tile_loadd(3, q + n0 * K + k, K);
                const int8_t *b = digits + (k / 4) * C * 4;
                _tile_loadd(4, b, C * 4); _tile_dpbssd(0, 3, 4);
                if (tiles > 1) { _tile_loadd(5, b + 64, C * 4); _tile_dpbssd(1, 3, 5); }
                if (tiles > 2) { _tile_loadd(6, b + 128, C * 4); _tile_dpbssd(2, 3, 6); }
            }
            _tile_stored(0, sums, C * 4);
            if (tiles > 1) _tile_stored(1, sums + 16, C * 4);
            if (tiles > 2) _tile_stored(2, sums + 32, C * 4);
            for (int64_t r = 0; r < 16; r++) {
                const int64_t n = n0 + r;
                for (int64_t m = 0; m < M; m++) {
                    const int32_t *c = sums + r * C + m;
                    int64_t s = digit_sum(c[0], c[M], c[2 * M]);
                    for (int64_t k = K64; k < K; k++) s += (int64_t)v[m * K + k] * q[n * K + k];
                    y[m * N + n] = int8_output(s, m, n, zero, scale, bias, vsum, unit, finite);
                }
            }
        }
        _tile_release();
    }
    for (int64_t n = N16; n < N; n++)  /* the last rows: the same integers in scalar code */
        for (int64_t m = 0; m < M; m++) {
            int64_t s = 0;
            for (int64_t k = 0; k < K; k++) s += (int64_t)v[m * K + k] * q[n * K + k];
            y[m * N + n] = int8_output(s, m, n, zero, scale, bias, vsum, unit, finite);
        }
    free(digits);
    free(v);
}

/* ---- int4: A = digits (3M, 64 k), B = one 16-row slice of a 64-row block (k quads, 16, 4), C = 3M x 16 ---- */
/* Per input row and int4 group: what turns the tile sums c_l = sum_k d_l q into the group's two terms.
   lo = 8 (w0 + 256 w1), hi = 8 w2 with w_l = sum_k d_l (so 8 sum v = lo + 65536 hi, all int32 without overflow);
   unit = 2^-e; a2 = fl(sum v 2^-e). */
struct group_terms { int32_t lo, hi; float unit, a2; };

/* 16 rows of one group: t = c0 + 256 c1 - lo and u = c2 - hi (exact int32), S = fma(u, 65536, fl(t)) = fl(sum v
   (q - 8)), a1 = S 2^-e; tot = fma(scale, a1, tot); tot = fma(zero, a2, tot). */
$attr static inline void int4_group_out(const int32_t *c, const int64_t M, const int64_t m,
                                        const struct group_terms *gt, const __m512 s, const __m512 z, float *tot) {
    const __m512i c0 = _mm512_loadu_si512(c + m * 16), c1 = _mm512_loadu_si512(c + (M + m) * 16);
    const __m512i c2 = _mm512_loadu_si512(c + (2 * M + m) * 16);
    const __m512i t = _mm512_sub_epi32(_mm512_add_epi32(c0, _mm512_slli_epi32(c1, 8)), _mm512_set1_epi32(gt->lo));
    const __m512i u = _mm512_sub_epi32(c2, _mm512_set1_epi32(gt->hi));
    const __m512 sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(u), _mm512_set1_ps(65536.0f), _mm512_cvtepi32_ps(t));
    const __m512 a1 = _mm512_mul_ps(sum, _mm512_set1_ps(gt->unit));
    _mm512_storeu_ps(tot, _mm512_fmadd_ps(z, _mm512_set1_ps(gt->a2), _mm512_fmadd_ps(s, a1, _mm512_loadu_ps(tot))));
}

/* scale and zero of 16 rows from their (scale, zero) bfloat16 pairs */
$attr static inline void int4_scales(const uint16_t *sz, __m512 *s, __m512 *z) {
    const __m512i both = _mm512_loadu_si512(sz);
    *s = _mm512_castsi512_ps(_mm512_slli_epi32(both, 16));
    *z = _mm512_castsi512_ps(_mm512_and_si512(both, _mm512_set1_epi32((int)0xffff0000u)));
}

/* One group's codes of a 64-row block (G k x 32 bytes) into B tiles: buf[slice][k quad][16 rows x 4 k]; slices
   0, 1 are the low nibbles of bytes 0-15, 16-31 (rows 0-31), 2, 3 their high nibbles (rows 32-63). Byte 4 n + i of a
   slice's quad is byte n (or 16 + n) of k + i: `vpermt2b` gathers it from the quad's 128 bytes. */
$attr static inline void int4_unpack(const uint8_t *group, int64_t G, uint8_t *buf) {
    static const uint8_t il[64] = {$lo_index}, ih[64] = {$hi_index};
    const __m512i lo_index = _mm512_loadu_si512(il), hi_index = _mm512_loadu_si512(ih), low4 = _mm512_set1_epi8(15);
    for (int64_t j = 0; j < G / 4; j++) {
        const uint8_t *p = group + j * 128;
        __builtin_prefetch(p + INT4_AHEAD, 0, 3);
        __builtin_prefetch(p + INT4_AHEAD + 64, 0, 3);
        const __m512i a = _mm512_loadu_si512(p), b = _mm512_loadu_si512(p + 64);
        const __m512i lo = _mm512_permutex2var_epi8(a, lo_index, b), hi = _mm512_permutex2var_epi8(a, hi_index, b);
        _mm512_store_si512(buf + (0 * G / 4 + j) * 64, _mm512_and_si512(lo, low4));
        _mm512_store_si512(buf + (1 * G / 4 + j) * 64, _mm512_and_si512(hi, low4));
        _mm512_store_si512(buf + (2 * G / 4 + j) * 64, _mm512_and_si512(_mm512_srli_epi16(lo, 4), low4));
        _mm512_store_si512(buf + (3 * G / 4 + j) * 64, _mm512_and_si512(_mm512_srli_epi16(hi, 4), low4));
    }
}

$attr void matmul_int4_int8_tile(const uint8_t *q, const uint16_t *sz, const float *x, const float *bias, float *y,
                                 int64_t M, int64_t N, int64_t K, int64_t G, int threads) {
    const int64_t groups = K / G, full = N / 64, R = 3 * M, tiles = (R + 15) / 16, chunk = G < 64 ? G : 64;
    int32_t *v = (int32_t *)malloc(sizeof(int32_t) * (M * K + 1));
    int8_t *digits = (int8_t *)aligned_alloc(64, (size_t)(R * K + 64) / 64 * 64 + 64);  /* (3M, K) */
    struct group_terms *terms = (struct group_terms *)malloc(sizeof(struct group_terms) * (M * groups + 1));
    int finite[$max_rows];
    for (int64_t m = 0; m < M; m++) {
        finite[m] = 1;
        for (int64_t g = 0; g < groups; g++) {
            int64_t vs; double unit;
            finite[m] &= to_fixed(x + m * K + g * G, G, v + m * K + g * G, &vs, &unit);
            struct group_terms *gt = terms + m * groups + g;
            gt->unit = (float)unit;  /* 2^-e, at least 2^-148: exact in float32 */
            gt->a2 = (float)((double)vs * unit);
        }
        for (int64_t k = 0; k < K; k++)
            to_digits(finite[m] ? v[m * K + k] : 0, digits + m * K + k, digits + (M + m) * K + k,
                      digits + (2 * M + m) * K + k);
        for (int64_t g = 0; g < groups; g++) {
            int32_t w[3] = {0, 0, 0};
            for (int64_t k = g * G; k < (g + 1) * G; k++)
                for (int l = 0; l < 3; l++) w[l] += digits[(l * M + m) * K + k];
            terms[m * groups + g].lo = 8 * (w[0] + 256 * w[1]);
            terms[m * groups + g].hi = 8 * w[2];
        }
    }
    #pragma omp parallel num_threads(threads)
    {
        struct amx_tile_config config;
        amx_config_init(&config);
        for (int t = 0; t < tiles; t++) {
            const int rows = (int)(R - 16 * t < 16 ? R - 16 * t : 16);
            config.rows[t] = (uint8_t)rows; config.colsb[t] = 64;                      /* C: rows x 16 int32 */
            config.rows[3 + t] = (uint8_t)rows; config.colsb[3 + t] = (uint16_t)chunk;  /* A: rows x chunk k */
        }
        config.rows[6] = (uint8_t)(chunk / 4); config.colsb[6] = 64;  /* B: chunk/4 k quads x 16 rows x 4 */
        _tile_loadconfig(&config);
        uint8_t *buf = (uint8_t *)aligned_alloc(64, (size_t)(4 * G * 16));  /* one group's B tiles */
        int32_t c[DIGIT_ROWS_MAX * 16];
        float *tot = (float *)aligned_alloc(64, sizeof(float) * $max_rows * 64);
        #pragma omp for schedule(static)
        for (int64_t blk = 0; blk < full; blk++) {
            const uint8_t *base = q + blk * 64 * (K / 2);
            for (int64_t i = 0; i < M * 64; i++) tot[i] = 0.0f;
            for (int64_t g = 0; g < groups; g++) {
                int4_unpack(base + g * G * 32, G, buf);
                for (int slice = 0; slice < 4; slice++) {
                    _tile_zero(0); if (tiles > 1) _tile_zero(1); if (tiles > 2) _tile_zero(2);
                    for (int64_t k0 = 0; k0 < G; k0 += chunk) {
                        _tile_loadd(6, buf + (slice * G / 4 + k0 / 4) * 64, 64);
                        const int8_t *a = digits + g * G + k0;
                        _tile_loadd(3, a, K); _tile_dpbsud(0, 3, 6);
                        if (tiles > 1) { _tile_loadd(4, a + 16 * K, K); _tile_dpbsud(1, 4, 6); }
                        if (tiles > 2) { _tile_loadd(5, a + 32 * K, K); _tile_dpbsud(2, 5, 6); }
                    }
                    _tile_stored(0, c, 64);
                    if (tiles > 1) _tile_stored(1, c + 16 * 16, 64);
                    if (tiles > 2) _tile_stored(2, c + 32 * 16, 64);
                    __m512 scale, zero;
                    int4_scales(sz + (g * N + blk * 64 + slice * 16) * 2, &scale, &zero);
                    for (int64_t m = 0; m < M; m++)
                        int4_group_out(c, M, m, terms + m * groups + g, scale, zero, tot + m * 64 + slice * 16);
                }
            }
            for (int64_t m = 0; m < M; m++)
                for (int64_t r = 0; r < 64; r++) {
                    const int64_t n = blk * 64 + r;
                    y[m * N + n] = finite[m] ? tot[m * 64 + r] + (bias ? bias[n] : 0.0f) : __builtin_nanf("");
                }
        }
        free(tot);
        free(buf);
        _tile_release();
    }
    if (full * 64 < N) {  /* the last block of R < 64 rows (rows 2j, 2j + 1 in byte j): the same integers */
        const int64_t n_start = full * 64, rows = N - n_start;
        const uint8_t *base = q + n_start * (K / 2);
        for (int64_t m = 0; m < M; m++)
            for (int64_t r = 0; r < rows; r++) {
                float tot = 0.0f;
                for (int64_t g = 0; g < groups; g++) {
                    int32_t cl[3] = {0, 0, 0};  /* the tile sums c_l, in scalar code */
                    for (int64_t k = g * G; k < (g + 1) * G; k++) {
                        const int32_t code = (base[k * (rows / 2) + r / 2] >> (4 * (r & 1))) & 15;
                        for (int l = 0; l < 3; l++) cl[l] += digits[(l * M + m) * K + k] * code;
                    }
                    const struct group_terms *gt = terms + m * groups + g;
                    const float sum = __builtin_fmaf((float)(cl[2] - gt->hi), 65536.0f,
                                                     (float)(cl[0] + 256 * cl[1] - gt->lo));
                    const uint16_t *p = sz + (g * N + n_start + r) * 2;
                    tot = __builtin_fmaf(bf16_to_f32(p[0]), sum * gt->unit, tot);
                    tot = __builtin_fmaf(bf16_to_f32(p[1]), gt->a2, tot);
                }
                const int64_t n = n_start + r;
                y[m * N + n] = finite[m] ? tot + (bias ? bias[n] : 0.0f) : __builtin_nanf("");
            }
    }
    free(terms);
    free(digits);
    free(v);
}
""")


def digits_source(max_rows: int, attr: str) -> str:
    """The C source of both formats' `int8-tile` functions, compiled with the function attribute `attr`."""
    # byte 4 n + i of an unpacked int4 slice: byte n (16 + n for the second slice) of k + i, in a quad's 128 bytes
    lo = [32 * i + n for n in range(16) for i in range(4)]
    return _SOURCE.substitute(max_rows=max_rows, attr=attr, lo_index=", ".join(map(str, lo)),
                              hi_index=", ".join(str(b + 16) for b in lo))

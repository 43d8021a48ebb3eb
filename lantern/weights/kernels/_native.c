/* lantern's native CPU kernels: the GGUF types torch has no kernel for.
 *
 * Plain C (no torch at build time). Called through ctypes (which releases the GIL) by
 * lantern/weights/kernels/native.py; the Python module init below only exists so that setuptools
 * builds and installs this file as an ordinary extension module.
 *
 * The AVX-512 paths are compiled with function-level target attributes and chosen at run time
 * (lantern_cpu_features), so the library builds with any x86-64 gcc/clang and never executes an
 * instruction the CPU lacks. Other machines get the portable C loops.
 *
 * Q6_K block (ggml-common.h): ql[128], qh[64], scales int8[16], d f16 (210 bytes, 256 weights).
 * Weight 128h + 32t + l (h: half, t: 0..3, l: 0..31) =
 *   d * sc[8h + 2t + l/16] * (((ql[64h + 32(t&1) + l] >> 4(t>>1)) & 15 | ((qh[32h + l] >> 2t) & 3) << 4) - 32)
 * (llama.cpp's dequantize_row_q6_K). d * sc is formed first in float32, as llama.cpp does.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define QK_K 256
#define Q6K_BYTES 210

#if defined(__x86_64__) || defined(_M_X64)
#define LANTERN_X86 1
#include <immintrin.h>
#endif

static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t f32_to_bf16(float f) { /* round to nearest even (finite values) */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7f800000) == 0x7f800000) return (uint16_t)((bits >> 16) | ((bits & 0xffff) ? 0x40 : 0));
    bits += 0x7fff + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

/* ----- Q6_K: one block -> 256 float32 weights ------------------------------------------------ */

static void q6k_block_scalar(const uint8_t *b, float *out) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    uint16_t dh;
    memcpy(&dh, b + 208, 2);
    const float d = f16_to_f32(dh);
    for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 32; l++) {
            int is = 8 * h + l / 16;
            int q1 = ((ql[64 * h + l] & 0xF) | (((qh[32 * h + l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[64 * h + l + 32] & 0xF) | (((qh[32 * h + l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[64 * h + l] >> 4) | (((qh[32 * h + l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[64 * h + l + 32] >> 4) | (((qh[32 * h + l] >> 6) & 3) << 4)) - 32;
            out[128 * h + l + 0] = (d * sc[is + 0]) * q1;
            out[128 * h + l + 32] = (d * sc[is + 2]) * q2;
            out[128 * h + l + 64] = (d * sc[is + 4]) * q3;
            out[128 * h + l + 96] = (d * sc[is + 6]) * q4;
        }
    }
}

#ifdef LANTERN_X86
__attribute__((target("avx512f,avx512bw")))
static void q6k_block_avx512(const uint8_t *b, float *out) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    uint16_t dh;
    memcpy(&dh, b + 208, 2);
    const float d = f16_to_f32(dh);
    const __m512i m4 = _mm512_set1_epi32(15), m2 = _mm512_set1_epi32(3), k32 = _mm512_set1_epi32(32);
    for (int h = 0; h < 2; h++) {
        for (int c = 0; c < 2; c++) { /* l = 16c .. 16c + 15 */
            const int o = 16 * c;
            __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ql + 64 * h + o)));
            __m512i a2 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ql + 64 * h + 32 + o)));
            __m512i hb = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qh + 32 * h + o)));
            __m512i q1 = _mm512_or_si512(_mm512_and_si512(a, m4), _mm512_slli_epi32(_mm512_and_si512(hb, m2), 4));
            __m512i q2 = _mm512_or_si512(_mm512_and_si512(a2, m4),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 2), m2), 4));
            __m512i q3 = _mm512_or_si512(_mm512_srli_epi32(a, 4),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 4), m2), 4));
            __m512i q4 = _mm512_or_si512(_mm512_srli_epi32(a2, 4), _mm512_slli_epi32(_mm512_srli_epi32(hb, 6), 4));
            const int is = 8 * h + c;
            float *y = out + 128 * h + o;
            _mm512_storeu_ps(y + 0, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 0]), _mm512_cvtepi32_ps(_mm512_sub_epi32(q1, k32))));
            _mm512_storeu_ps(y + 32, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 2]), _mm512_cvtepi32_ps(_mm512_sub_epi32(q2, k32))));
            _mm512_storeu_ps(y + 64, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 4]), _mm512_cvtepi32_ps(_mm512_sub_epi32(q3, k32))));
            _mm512_storeu_ps(y + 96, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 6]), _mm512_cvtepi32_ps(_mm512_sub_epi32(q4, k32))));
        }
    }
}

/* acc[m] += w[0:256] . x[m][0:256] for m < M (x rows `ldx` floats apart). */
__attribute__((target("avx512f")))
static void dot256_avx512(const float *w, const float *x, int64_t ldx, int64_t M, float *acc) {
    __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16);
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * ldx;
        __m512 s0 = _mm512_mul_ps(w0, _mm512_loadu_ps(xm));
        __m512 s1 = _mm512_mul_ps(w1, _mm512_loadu_ps(xm + 16));
        __m512 s2 = _mm512_mul_ps(_mm512_loadu_ps(w + 32), _mm512_loadu_ps(xm + 32));
        __m512 s3 = _mm512_mul_ps(_mm512_loadu_ps(w + 48), _mm512_loadu_ps(xm + 48));
        for (int j = 64; j < 256; j += 64) {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j), _mm512_loadu_ps(xm + j), s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 16), _mm512_loadu_ps(xm + j + 16), s1);
            s2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 32), _mm512_loadu_ps(xm + j + 32), s2);
            s3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 48), _mm512_loadu_ps(xm + j + 48), s3);
        }
        acc[m] += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    }
}

/* y[m] = sum over the row's blocks of W . x[m], for m < M <= 8: the 16-float sub-blocks are
 * decoded in registers and accumulated in vector form; one horizontal sum per row and m. */
__attribute__((target("avx512f,avx512bw")))
static void q6k_row_avx512(const uint8_t *row, int64_t nb, const float *x, int64_t ldx, int64_t M, float *y) {
    __m512 acc[8][2];
    for (int64_t m = 0; m < M; m++) { acc[m][0] = _mm512_setzero_ps(); acc[m][1] = _mm512_setzero_ps(); }
    const __m512i m4 = _mm512_set1_epi32(15), m2 = _mm512_set1_epi32(3), k32 = _mm512_set1_epi32(32);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * Q6K_BYTES;
        const uint8_t *ql = blk, *qh = blk + 128;
        const int8_t *sc = (const int8_t *)(blk + 192);
        uint16_t dh;
        memcpy(&dh, blk + 208, 2);
        const float d = f16_to_f32(dh);
        for (int h = 0; h < 2; h++) {
            for (int c = 0; c < 2; c++) {
                const int o = 16 * c;
                __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ql + 64 * h + o)));
                __m512i a2 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ql + 64 * h + 32 + o)));
                __m512i hb = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qh + 32 * h + o)));
                __m512i q[4];
                q[0] = _mm512_or_si512(_mm512_and_si512(a, m4), _mm512_slli_epi32(_mm512_and_si512(hb, m2), 4));
                q[1] = _mm512_or_si512(_mm512_and_si512(a2, m4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 2), m2), 4));
                q[2] = _mm512_or_si512(_mm512_srli_epi32(a, 4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 4), m2), 4));
                q[3] = _mm512_or_si512(_mm512_srli_epi32(a2, 4), _mm512_slli_epi32(_mm512_srli_epi32(hb, 6), 4));
                const int is = 8 * h + c;
                __m512 w[4];
                for (int t = 0; t < 4; t++)
                    w[t] = _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 2 * t]), _mm512_cvtepi32_ps(_mm512_sub_epi32(q[t], k32)));
                const int64_t off = b * QK_K + 128 * h + o;
                for (int64_t m = 0; m < M; m++) {
                    const float *xm = x + m * ldx + off;
                    acc[m][0] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(xm), acc[m][0]);
                    acc[m][1] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(xm + 32), acc[m][1]);
                    acc[m][0] = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(xm + 64), acc[m][0]);
                    acc[m][1] = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(xm + 96), acc[m][1]);
                }
            }
        }
    }
    for (int64_t m = 0; m < M; m++) y[m] = _mm512_reduce_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]));
}

__attribute__((target("avx512f,avx512bw")))
static void to_bf16_avx512(const float *src, uint16_t *dst, int64_t n) {
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_castps_si512(_mm512_loadu_ps(src + i));
        __m512i r = _mm512_add_epi32(v, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(v, 16), one)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
    for (; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}
#endif

static int g_avx512 = -1;

int lantern_cpu_features(void) { /* bit 0: AVX-512 F+BW used */
    if (g_avx512 < 0) {
#ifdef LANTERN_X86
        __builtin_cpu_init();
        g_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
#else
        g_avx512 = 0;
#endif
    }
    return g_avx512;
}

int lantern_set_features(int avx512) { /* tests: force the portable path (0) or restore (-1) */
    g_avx512 = -1;
    int have = lantern_cpu_features();
    g_avx512 = avx512 < 0 ? have : (avx512 && have);
    return g_avx512;
}

static void q6k_block(const uint8_t *b, float *out) {
#ifdef LANTERN_X86
    if (g_avx512) { q6k_block_avx512(b, out); return; }
#endif
    q6k_block_scalar(b, out);
}

static void dot256(const float *w, const float *x, int64_t ldx, int64_t M, float *acc) {
#ifdef LANTERN_X86
    if (g_avx512) { dot256_avx512(w, x, ldx, M, acc); return; }
#endif
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * ldx;
        float s = 0.f;
        for (int j = 0; j < 256; j++) s += w[j] * xm[j];
        acc[m] += s;
    }
}

static void to_bf16(const float *src, uint16_t *dst, int64_t n) {
#ifdef LANTERN_X86
    if (g_avx512) { to_bf16_avx512(src, dst, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

/* ----- threading: split rows [0, N) over up to 16 threads ------------------------------------ */

typedef struct {
    void (*fn)(void *args, int64_t r0, int64_t r1);
    void *args;
    int64_t r0, r1;
} job_t;

static void *run_job(void *p) {
    job_t *j = (job_t *)p;
    j->fn(j->args, j->r0, j->r1);
    return NULL;
}

static void parallel_rows(void (*fn)(void *, int64_t, int64_t), void *args, int64_t N, int nthreads, int64_t align) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 16) nthreads = 16;
    int64_t per = (N + nthreads - 1) / nthreads;
    per = (per + align - 1) / align * align;
    job_t jobs[16];
    pthread_t tids[16];
    int started[16] = {0};
    int n = 0;
    for (int64_t r = 0; r < N && n < 16; r += per, n++) {
        jobs[n].fn = fn; jobs[n].args = args; jobs[n].r0 = r; jobs[n].r1 = r + per < N ? r + per : N;
    }
    for (int i = 1; i < n; i++) started[i] = pthread_create(&tids[i], NULL, run_job, &jobs[i]) == 0;
    if (n > 0) run_job(&jobs[0]);
    for (int i = 1; i < n; i++) {
        if (started[i]) pthread_join(tids[i], NULL);
        else run_job(&jobs[i]);
    }
}

/* ----- Q6_K matmul: y[M, N] = x[M, K] @ W[N, K].T -------------------------------------------- */

typedef struct {
    const uint8_t *w;
    const float *x;
    float *y;
    int64_t N, K, M;
} mm_args;

static void q6k_mm_rows(void *p, int64_t r0, int64_t r1) {
    mm_args *a = (mm_args *)p;
    const int64_t nb = a->K / QK_K;
    float buf[QK_K] __attribute__((aligned(64)));
    float acc[64];
#ifdef LANTERN_X86
    if (g_avx512) {
        for (int64_t m0 = 0; m0 < a->M; m0 += 8) {
            int64_t mc = a->M - m0 < 8 ? a->M - m0 : 8;
            for (int64_t r = r0; r < r1; r++) {
                q6k_row_avx512(a->w + r * nb * Q6K_BYTES, nb, a->x + m0 * a->K, a->K, mc, acc);
                for (int64_t m = 0; m < mc; m++) a->y[(m0 + m) * a->N + r] = acc[m];
            }
        }
        return;
    }
#endif
    for (int64_t m0 = 0; m0 < a->M; m0 += 64) {
        int64_t mc = a->M - m0 < 64 ? a->M - m0 : 64;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *row = a->w + r * nb * Q6K_BYTES;
            for (int64_t m = 0; m < mc; m++) acc[m] = 0.f;
            for (int64_t b = 0; b < nb; b++) {
                q6k_block(row + b * Q6K_BYTES, buf);
                dot256(buf, a->x + m0 * a->K + b * QK_K, a->K, mc, acc);
            }
            for (int64_t m = 0; m < mc; m++) a->y[(m0 + m) * a->N + r] = acc[m];
        }
    }
}

void lantern_q6k_matmul(const uint8_t *w, const float *x, float *y, int64_t N, int64_t K, int64_t M, int nthreads) {
    lantern_cpu_features();
    mm_args a = {w, x, y, N, K, M};
    parallel_rows(q6k_mm_rows, &a, N, nthreads, 4);
}

/* ----- Q6_K rows -> bfloat16 (prompt chunks: then a dense bf16 GEMM) ------------------------- */

typedef struct {
    const uint8_t *w;
    uint16_t *out;
    int64_t K;
} dq_args;

static void q6k_bf16_rows(void *p, int64_t r0, int64_t r1) {
    dq_args *a = (dq_args *)p;
    const int64_t nb = a->K / QK_K;
    float buf[QK_K] __attribute__((aligned(64)));
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t b = 0; b < nb; b++) {
            q6k_block(a->w + (r * nb + b) * Q6K_BYTES, buf);
            to_bf16(buf, a->out + r * a->K + b * QK_K, QK_K);
        }
    }
}

void lantern_q6k_to_bf16(const uint8_t *w, uint16_t *out, int64_t N, int64_t K, int nthreads) {
    lantern_cpu_features();
    dq_args a = {w, out, K};
    parallel_rows(q6k_bf16_rows, &a, N, nthreads, 1);
}

/* ----- torch's CPU int4 layout -> bfloat16 rows ---------------------------------------------
 * packed: [N/64, K, 32] bytes, byte (k, j) = q[64b + j, k] | q[64b + 32 + j, k] << 4;
 * sz: [K/32, N, 2] bf16 (scale, zero); w = (q - 8) * scale + zero. `pieces` such weights
 * (same N, K) are summed. Rows r0..r1 must be multiples of 64. */

typedef struct {
    const uint8_t *const *packed;
    const uint16_t *const *sz;
    int pieces;
    uint16_t *out;
    int64_t N, K;
} i4_args;

static float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void int4_bf16_rows(void *p, int64_t r0, int64_t r1) {
    i4_args *a = (i4_args *)p;
    const int64_t K = a->K, N = a->N;
    float buf[32][64]; /* [k][row]: inner loops run over 32 contiguous rows */
    float scale[64], zero[64], col[32];
    for (int64_t blk = r0 / 64; blk < r1 / 64; blk++) {
        for (int64_t k0 = 0; k0 < K; k0 += 32) { /* one group: 64 rows x 32 k */
            for (int pc = 0; pc < a->pieces; pc++) {
                const uint8_t *src = a->packed[pc] + (blk * K + k0) * 32;
                const uint16_t *s = a->sz[pc] + ((k0 / 32) * N + blk * 64) * 2;
                for (int j = 0; j < 64; j++) {
                    scale[j] = bf16_to_f32(s[2 * j]);
                    zero[j] = bf16_to_f32(s[2 * j + 1]) - 8.f * scale[j];
                }
                for (int k = 0; k < 32; k++) {
                    const uint8_t *bytes = src + k * 32;
                    float *lo = buf[k], *hi = buf[k] + 32;
                    if (pc == 0) {
                        for (int j = 0; j < 32; j++) lo[j] = (float)(bytes[j] & 15) * scale[j] + zero[j];
                        for (int j = 0; j < 32; j++) hi[j] = (float)(bytes[j] >> 4) * scale[32 + j] + zero[32 + j];
                    } else {
                        for (int j = 0; j < 32; j++) lo[j] += (float)(bytes[j] & 15) * scale[j] + zero[j];
                        for (int j = 0; j < 32; j++) hi[j] += (float)(bytes[j] >> 4) * scale[32 + j] + zero[32 + j];
                    }
                }
            }
            for (int j = 0; j < 64; j++) {
                for (int k = 0; k < 32; k++) col[k] = buf[k][j];
                to_bf16(col, a->out + (blk * 64 + j) * K + k0, 32);
            }
        }
    }
}

void lantern_int4_to_bf16(const uint8_t *const *packed, const uint16_t *const *sz, int pieces, uint16_t *out,
                          int64_t N, int64_t K, int64_t r0, int64_t r1, int nthreads) {
    lantern_cpu_features();
    i4_args a = {packed, sz, pieces, out - r0 * K, N, K};
    /* rows are relative to the whole weight; `out` holds rows r0..r1 */
    int64_t span = r1 - r0;
    if (nthreads < 1) nthreads = 1;
    int64_t per = ((span / 64 + nthreads - 1) / nthreads) * 64;
    if (per <= 0) per = 64;
    job_t jobs[16];
    pthread_t tids[16];
    int started[16] = {0}, n = 0;
    for (int64_t r = r0; r < r1 && n < 16; r += per, n++) {
        jobs[n].fn = int4_bf16_rows; jobs[n].args = &a; jobs[n].r0 = r; jobs[n].r1 = r + per < r1 ? r + per : r1;
    }
    for (int i = 1; i < n; i++) started[i] = pthread_create(&tids[i], NULL, run_job, &jobs[i]) == 0;
    if (n > 0) run_job(&jobs[0]);
    for (int i = 1; i < n; i++) {
        if (started[i]) pthread_join(tids[i], NULL);
        else run_job(&jobs[i]);
    }
}

/* ----- Python module: only so that setuptools builds and installs this file ------------------ */

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_native",
                                       "lantern native kernels (called through ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&moduledef); }

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
#include <stdlib.h>
#include <string.h>

#ifndef LANTERN_PACK_CH
#define LANTERN_PACK_CH 1024
#endif

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

/* ----- GGUF blocks -> torch's CPU int4 layout (load-time conversion) --------------------------
 * The exact bytes `int4.py` writes in PyTorch (`decode_pieces` + `_pack_codes_manual`), for rows
 * [r0, r1) (multiples of 64) of a weight with `rows` real rows padded to N (multiple of 64):
 *   packed[pc]: [N/64, K, 32] bytes, byte (b, k, j) = code[64b + j, k] | code[64b + 32 + j, k] << 4
 *   sz[pc]:     [K/32, N, 2] bf16 (scale, zero), rounded to nearest even from float32
 * Padding rows get code 8, scale 0, zero 0. Scales and zeros are formed in float32 in the same
 * order as the PyTorch code (no FMA contraction: this file is built without -mfma and with
 * -std=c11, i.e. -ffp-contract=off), so the output is bit-identical. Pieces per type:
 *   Q4_0 (lo, d, 0)            Q4_1 (lo, d, m + 8d)
 *   Q5_0 (lo, d, 8d) + (hb + 7, 16d, 0)          Q5_1 (lo, d, m + 8d) + (hb + 8, 16d, 0)
 *   Q8_0 (q & 15, d, 8d) + ((q >> 4 & 15) ^ 8, 16d, 0)
 *   Q4_K (lo, S, 8S - M)       Q5_K (lo, S, 8S - M) + (hb + 8, 16S, 0), S = d*sc, M = dmin*m. */

enum { LT_Q4_0 = 2, LT_Q4_1 = 3, LT_Q5_0 = 6, LT_Q5_1 = 7, LT_Q8_0 = 8, LT_Q4_K = 12, LT_Q5_K = 13 };

static uint16_t f32_to_bf16_rne(float f) { /* torch's scalar rounding (NaN -> 0x7fc0) */
    if (f != f) return 0x7fc0;
    uint32_t bits;
    memcpy(&bits, &f, 4);
    bits += 0x7fff + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

static float rd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return f16_to_f32(h);
}

typedef struct {
    const uint8_t *raw; /* rows x (K / elems) blocks of `nbytes` */
    uint8_t *const *packed;
    uint16_t *const *sz;
    int qtype, pieces;
    int64_t rows, N, K, elems, nbytes;
    int failed; /* set by a thread that could not allocate its buffers */
} pack_args;

/* One GGUF block of row `r` (elements k0 .. k0 + elems) -> codes c0/c1 (the two pieces) and
 * the scale/zero pairs of its groups. */
static void decode_block(const pack_args *a, const uint8_t *b, uint8_t *c0, uint8_t *c1, int64_t r, int64_t g0) {
    float sc[8][2], sc1[8];
    int ng = 1;
    switch (a->qtype) {
    case LT_Q4_0: case LT_Q4_1: case LT_Q5_0: case LT_Q5_1: {
        const float d = rd_f16(b);
        const uint8_t *qs;
        uint32_t qh = 0;
        if (a->qtype == LT_Q4_0) { qs = b + 2; sc[0][0] = d; sc[0][1] = 0.f; }
        else if (a->qtype == LT_Q4_1) { qs = b + 4; sc[0][0] = d; sc[0][1] = rd_f16(b + 2) + 8 * d; }
        else if (a->qtype == LT_Q5_0) { qs = b + 6; memcpy(&qh, b + 2, 4); sc[0][0] = d; sc[0][1] = 8 * d; }
        else { qs = b + 8; memcpy(&qh, b + 4, 4); sc[0][0] = d; sc[0][1] = rd_f16(b + 2) + 8 * d; }
        for (int l = 0; l < 16; l++) { c0[l] = qs[l] & 15; c0[l + 16] = qs[l] >> 4; }
        if (a->pieces == 2) {
            const uint8_t add = a->qtype == LT_Q5_0 ? 7 : 8;
            for (int l = 0; l < 32; l++) c1[l] = (uint8_t)(((qh >> l) & 1) + add);
            sc1[0] = 16 * d;
        }
        break;
    }
    case LT_Q8_0: {
        const float d = rd_f16(b);
        const uint8_t *qs = b + 2;
        for (int l = 0; l < 32; l++) { c0[l] = qs[l] & 15; c1[l] = (uint8_t)((qs[l] >> 4) ^ 8); }
        sc[0][0] = d; sc[0][1] = 8 * d; sc1[0] = 16 * d;
        break;
    }
    default: { /* Q4_K, Q5_K */
        const float d = rd_f16(b), dmin = rd_f16(b + 2);
        const uint8_t *q = b + 4;
        for (int j = 0; j < 8; j++) {
            int s, m;
            if (j < 4) { s = q[j] & 63; m = q[j + 4] & 63; }
            else { s = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
            const float S = d * (float)s, M = dmin * (float)m;
            sc[j][0] = S;
            sc[j][1] = 8 * S - M;
            sc1[j] = 16 * S;
        }
        const uint8_t *qs = a->qtype == LT_Q4_K ? b + 16 : b + 48;
        for (int i = 0; i < 4; i++) {
            for (int l = 0; l < 32; l++) { c0[64 * i + l] = qs[32 * i + l] & 15; c0[64 * i + 32 + l] = qs[32 * i + l] >> 4; }
        }
        if (a->qtype == LT_Q5_K) {
            const uint8_t *qh = b + 16;
            for (int s = 0; s < 8; s++)
                for (int l = 0; l < 32; l++) c1[32 * s + l] = (uint8_t)(((qh[l] >> s) & 1) | 8);
        }
        ng = 8;
        break;
    }
    }
    for (int j = 0; j < ng; j++) {
        uint16_t *o = a->sz[0] + ((g0 + j) * a->N + r) * 2;
        o[0] = f32_to_bf16_rne(sc[j][0]);
        o[1] = f32_to_bf16_rne(sc[j][1]);
        if (a->pieces == 2) {
            uint16_t *o1 = a->sz[1] + ((g0 + j) * a->N + r) * 2;
            o1[0] = f32_to_bf16_rne(sc1[j]);
            o1[1] = 0;
        }
    }
}

/* dst[k * 32 + j] = c[j][k] | c[j + 32][k] << 4 for j < 32, k < E <= 256 (c rows `ld` apart). */
static void pack_tile(const uint8_t *c, int64_t ld, int64_t E, uint8_t *dst) {
    uint8_t p[32][256] __attribute__((aligned(16)));
    for (int j = 0; j < 32; j++)
        for (int64_t k = 0; k < E; k++) p[j][k] = (uint8_t)(c[j * ld + k] | (c[(j + 32) * ld + k] << 4));
#ifdef LANTERN_X86
    for (int j0 = 0; j0 < 32; j0 += 16) {
        for (int64_t k0 = 0; k0 < E; k0 += 16) {
            /* 16x16 byte transpose: four rounds of unpack(v[i], v[i + 8]) rotate the 8-bit index
             * (row, column) by 4 bits. */
            __m128i v[16], t[16];
            for (int i = 0; i < 16; i++) v[i] = _mm_load_si128((const __m128i *)&p[j0 + i][k0]);
            for (int round = 0; round < 4; round++) {
                for (int i = 0; i < 8; i++) {
                    t[2 * i] = _mm_unpacklo_epi8(v[i], v[i + 8]);
                    t[2 * i + 1] = _mm_unpackhi_epi8(v[i], v[i + 8]);
                }
                for (int i = 0; i < 16; i++) v[i] = t[i];
            }
            for (int i = 0; i < 16; i++) _mm_storeu_si128((__m128i *)(dst + (k0 + i) * 32 + j0), v[i]);
        }
    }
#else
    for (int64_t k = 0; k < E; k++)
        for (int j = 0; j < 32; j++) dst[k * 32 + j] = p[j][k];
#endif
}

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

/* Map [p, p + n) into the page tables in one call (MADV_POPULATE_READ, Linux 5.14+; a no-op
 * elsewhere or on error). Software prefetches to pages not yet mapped are dropped by the CPU, and
 * a file map is otherwise mapped 16 pages per fault while the converter reads 64 rows at once. */
static void populate_read(const void *p, int64_t n) {
#if defined(__linux__) && defined(MADV_POPULATE_READ)
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)p / page * page, hi = (uintptr_t)p + (uintptr_t)n;
    if (n > 0) madvise((void *)lo, hi - lo, MADV_POPULATE_READ);
#else
    (void)p; (void)n;
#endif
}

static void int4_pack_rows(void *p, int64_t r0, int64_t r1) {
    const pack_args *a = (const pack_args *)p;
    const int64_t E = a->elems, K = a->K, nb = K / E, G = K / 32;
    const int64_t last = r1 < a->rows ? r1 : a->rows;
    if (last > r0) populate_read(a->raw + r0 * nb * a->nbytes, (last - r0) * nb * a->nbytes);
    /* codes of 64 rows x CH columns per piece: each row's blocks are read CH at a time (a few
     * hundred bytes in sequence) rather than 64 rows one block each */
    enum { CH = LANTERN_PACK_CH };
    uint8_t (*c)[64 * CH] = malloc(sizeof(uint8_t[2][64 * CH]));
    if (!c) { __atomic_store_n(&((pack_args *)p)->failed, 1, __ATOMIC_RELAXED); return; }
    const int64_t per_chunk = CH / E;
    for (int64_t blk = r0 / 64; blk < r1 / 64; blk++) {
        const int64_t base = blk * 64;
        const int real = base + 64 <= a->rows ? 64 : (int)(a->rows > base ? a->rows - base : 0);
        for (int j = real; j < 64; j++) { /* padding rows: weight 0 */
            for (int pc = 0; pc < a->pieces; pc++) {
                memset(c[pc] + j * CH, 8, CH);
                for (int64_t g = 0; g < G; g++) {
                    uint16_t *o = a->sz[pc] + (g * a->N + base + j) * 2;
                    o[0] = 0; o[1] = 0;
                }
            }
        }
        for (int64_t ib0 = 0; ib0 < nb; ib0 += per_chunk) { /* 64 rows x up to CH columns */
            const int64_t ib1 = ib0 + per_chunk < nb ? ib0 + per_chunk : nb;
            for (int j = 0; j < real; j++) {
                const uint8_t *row = a->raw + (base + j) * nb * a->nbytes;
                /* the next row's chunk (64 interleaved streams are too many for the hardware
                 * prefetcher; prefetching is harmless past the end: it never faults) */
                for (int64_t o = 0; o < (ib1 - ib0) * a->nbytes; o += 64)
                    __builtin_prefetch(row + nb * a->nbytes + ib0 * a->nbytes + o);
                for (int64_t ib = ib0; ib < ib1; ib++)
                    decode_block(a, row + ib * a->nbytes, c[0] + j * CH + (ib - ib0) * E,
                                 c[1] + j * CH + (ib - ib0) * E, base + j, ib * E / 32);
            }
            for (int pc = 0; pc < a->pieces; pc++)
                for (int64_t ib = ib0; ib < ib1; ib++)
                    pack_tile(c[pc] + (ib - ib0) * E, CH, E, a->packed[pc] + (blk * K + ib * E) * 32);
        }
    }
    free(c);
}

/* Returns 0, or -1 for a type without an int4 form, bad shapes, or no memory for the buffers. */
int lantern_int4_pack(const uint8_t *raw, int qtype, uint8_t *const *packed, uint16_t *const *sz, int64_t rows,
                      int64_t N, int64_t K, int64_t r0, int64_t r1, int nthreads) {
    pack_args a = {raw, packed, sz, qtype, 1, rows, N, K, 32, 0, 0};
    switch (qtype) {
    case LT_Q4_0: a.nbytes = 18; break;
    case LT_Q4_1: a.nbytes = 20; break;
    case LT_Q5_0: a.nbytes = 22; a.pieces = 2; break;
    case LT_Q5_1: a.nbytes = 24; a.pieces = 2; break;
    case LT_Q8_0: a.nbytes = 34; a.pieces = 2; break;
    case LT_Q4_K: a.nbytes = 144; a.elems = 256; break;
    case LT_Q5_K: a.nbytes = 176; a.elems = 256; a.pieces = 2; break;
    default: return -1;
    }
    if (K % a.elems || N % 64 || r0 % 64 || r1 % 64 || r1 > N) return -1;
    /* threads split the 64-row blocks of [r0, r1) */
    const int64_t nblk = (r1 - r0) / 64;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > 16) nthreads = 16;
    if (nthreads > nblk) nthreads = (int)(nblk > 0 ? nblk : 1);
    const int64_t per = (nblk + nthreads - 1) / nthreads * 64;
    job_t jobs[16];
    pthread_t tids[16];
    int started[16] = {0}, n = 0;
    for (int64_t r = r0; r < r1 && n < 16; r += per, n++) {
        jobs[n].fn = int4_pack_rows; jobs[n].args = &a; jobs[n].r0 = r; jobs[n].r1 = r + per < r1 ? r + per : r1;
    }
    for (int i = 1; i < n; i++) started[i] = pthread_create(&tids[i], NULL, run_job, &jobs[i]) == 0;
    if (n > 0) run_job(&jobs[0]);
    for (int i = 1; i < n; i++) {
        if (started[i]) pthread_join(tids[i], NULL);
        else run_job(&jobs[i]);
    }
    return a.failed ? -1 : 0;
}

/* ----- Q2_K / Q3_K rows -> bfloat16 (their dense fast path) ---------------------------------
 * The bytes `dense.py` gets from lantern's float32 dequantize (quants.py) rounded to bf16:
 *   Q2_K (84 bytes: scales[16], qs[64], d, dmin): element 128h + 32j + l, q = (qs[32h + l] >> 2j) & 3,
 *        sc = scales[e / 16]; y = (d * (sc & 15)) * q - dmin * (sc >> 4)
 *   Q3_K (110 bytes: hmask[32], qs[64], scales[12], d): q = ((qs[32h + l] >> 2j) & 3) - 4 unless
 *        bit 4h + j of hmask[l] is set; y = (d * (scale6[e / 16] - 32)) * q
 * float32 operations in the same order, unfused (see the int4 converter above). */

typedef struct {
    const uint8_t *w;
    uint16_t *out;
    int64_t K;
    int qtype;
} kq_args;

static void q2k_block_f32(const uint8_t *b, float *y) {
    const float d = rd_f16(b + 80), dmin = rd_f16(b + 82);
    const uint8_t *qs = b + 16;
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int half = 0; half < 2; half++) {
                const int e0 = 128 * h + 32 * j + 16 * half;
                const uint8_t sc = b[e0 / 16];
                const float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
                for (int l = 16 * half; l < 16 * half + 16; l++) {
                    float v = dl * (float)((qs[32 * h + l] >> (2 * j)) & 3);
                    y[128 * h + 32 * j + l] = v - ml;
                }
            }
}

static void q3k_block_f32(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *qs = b + 32, *s = b + 96;
    const float d = rd_f16(b + 108);
    float dl[16];
    for (int i = 0; i < 16; i++) {
        const int k = i & 3, sh = 2 * (i >> 2); /* high 2 bits: bits sh, sh+1 of s[8 + k] */
        const int lo = i < 4 ? s[k] & 15 : i < 8 ? s[4 + k] & 15 : i < 12 ? s[k] >> 4 : s[4 + k] >> 4;
        const int v = lo | (((s[8 + k] >> sh) & 3) << 4);
        dl[i] = d * (float)(int8_t)(uint8_t)(v - 32);
    }
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                const int e = 128 * h + 32 * j + l;
                int q = (qs[32 * h + l] >> (2 * j)) & 3;
                if (!((hm[l] >> (4 * h + j)) & 1)) q -= 4;
                y[e] = dl[e / 16] * (float)q;
            }
}

static void kq_bf16_rows(void *p, int64_t r0, int64_t r1) {
    const kq_args *a = (const kq_args *)p;
    const int64_t nb = a->K / QK_K, bytes = a->qtype == 10 ? 84 : 110;
    float buf[QK_K];
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t ib = 0; ib < nb; ib++) {
            const uint8_t *b = a->w + (r * nb + ib) * bytes;
            if (a->qtype == 10) q2k_block_f32(b, buf);
            else q3k_block_f32(b, buf);
            uint16_t *o = a->out + r * a->K + ib * QK_K;
            for (int i = 0; i < QK_K; i++) o[i] = f32_to_bf16_rne(buf[i]);
        }
    }
}

/* qtype: 10 (Q2_K) or 11 (Q3_K). Returns 0, or -1 for another type or K not a multiple of 256. */
int lantern_kquant_to_bf16(const uint8_t *w, int qtype, uint16_t *out, int64_t N, int64_t K, int nthreads) {
    if ((qtype != 10 && qtype != 11) || K % QK_K) return -1;
    kq_args a = {w, out, K, qtype};
    parallel_rows(kq_bf16_rows, &a, N, nthreads, 1);
    return 0;
}

/* ----- Python module: only so that setuptools builds and installs this file ------------------ */

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_native",
                                       "lantern native kernels (called through ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&moduledef); }

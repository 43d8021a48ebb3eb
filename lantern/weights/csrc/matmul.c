/* GGUF blocks multiplied in place: y[M, N] = x[M, K] @ W[N, K].T (ISA-free driver).
 *
 * For decode (M = 1) and small batches (speculative verify passes): W's blocks are read straight
 * from the file's memory map. Every block is w = scale[s] * q + minv[s] over sub-blocks s (32
 * weights; 16 for Q6_K), q small integers, scale/minv float32 formed as llama.cpp forms them:
 *   y[m, n] = sum_s scale[s] * (sum_i q_i * x'[m, i]) + minv[s] * (sum_i x'[m, i])
 * with x' the activations in the level's form (lantern.h: bf16 or 15-bit integers per 32),
 * prepared once per call. The level's row kernels (lt_kernels.row) do one weight row against 1,
 * 2, 3, 4 or 8 rows of x; this file splits the rows of W into tasks for the pool.
 * Prompt chunks instead expand rows of W to bf16 or float32 for a dense GEMM (torch's). */

#define _POSIX_C_SOURCE 200809L /* posix_memalign */

#include "blocks.h"
#include "lantern.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <malloc.h>
#endif

int lt_block_geometry(int qtype, int64_t *elems, int64_t *bytes) {
    const int64_t b = lt_block_bytes(qtype);
    if (!b) return -1;
    *elems = lt_block_elems(qtype);
    *bytes = b;
    return 0;
}

static LT_THREAD_LOCAL void *g_scratch[LT_SCRATCH_SLOTS];
static LT_THREAD_LOCAL size_t g_scratch_cap[LT_SCRATCH_SLOTS];

static void aligned_free(void *p) {
#ifdef _WIN32
    _aligned_free(p);
#else
    free(p);
#endif
}

void *lt_scratch(int slot, size_t n) {
    if (n > g_scratch_cap[slot]) {
        aligned_free(g_scratch[slot]);
        g_scratch_cap[slot] = 0;
        g_scratch[slot] = NULL;
#ifdef _WIN32
        g_scratch[slot] = _aligned_malloc(n + 4096, 64);
        if (!g_scratch[slot]) return NULL;
#else
        if (posix_memalign(&g_scratch[slot], 64, n + 4096) != 0) return NULL;
#endif
        g_scratch_cap[slot] = n + 4096;
    }
    return g_scratch[slot];
}

typedef struct {
    const uint8_t *w;
    const lt_row_fn *row; /* the type's kernels by row count */
    lt_rows8_fn rows8;    /* x rows 0-7 of a decode pass, where x->p8 is set */
    const lt_x *x;
    int64_t N, M, rowbytes, rpt;
    float *y;
    int64_t ldy;    /* floats between rows of y */
    int64_t mb, nrb; /* rows of x per task; tasks along the rows of W */
    int64_t ahead;   /* decode passes: bytes ahead of its rows that a task fetches W (0: none) */
    int rows_fetch;  /* the row kernels and the 8-row tile fetch W ahead themselves: the task does not */
} gmm_args;

#ifndef LT_PROMPT_WBYTES
#define LT_PROMPT_WBYTES 32768 /* bytes of W's blocks per prompt task */
#endif
#ifndef LT_PROMPT_MB
#define LT_PROMPT_MB 64 /* rows of x per prompt task */
#endif

/* How far ahead a decode task fetches its weights where rows are short (K of a few hundred), in
 * bytes: the hardware prefetcher ramps up to such short streams late (SmolLM2-135M's shapes, Q4_1 /
 * Q8_0: 3-20% faster than without). Long rows: the level's lt_kernels.fetch_long. */
#define WAHEAD_SHORT 1024

/* y[m * ldy] = w . x row m for m in [m0, m1), through the row kernels, the largest count first */
static void row_kernels(const lt_row_fn *row, const uint8_t *w, const lt_x *x, int64_t m0, int64_t m1, float *y,
                        int64_t ldy) {
    float out[8];
    while (m0 < m1) {
        const int64_t rem = m1 - m0;
        const int i = rem >= 8 ? 4 : rem >= 4 ? 3 : rem == 3 ? 2 : rem >= 2 ? 1 : 0;
        row[i](w, x, m0, out);
        for (int m = 0; m < LT_ROW_M[i]; m++) y[(m0 + m) * ldy] = out[m];
        m0 += LT_ROW_M[i];
    }
}

static void gmm_task(void *p, int64_t t) {
    const gmm_args *a = (const gmm_args *)p;
    const int64_t rb = t % a->nrb, mlo = t / a->nrb * a->mb;
    const int64_t r0 = rb * a->rpt, r1 = r0 + a->rpt < a->N ? r0 + a->rpt : a->N;
    const int64_t M = mlo + a->mb < a->M ? mlo + a->mb : a->M;
    float out[8];
    if (a->M > LT_ROWS_MAX_M) { /* a block of a prompt chunk: x rows outer, W rows inner */
        for (int64_t m0 = mlo; m0 < M;) {
            const int64_t rem = M - m0;
            const int i = rem >= 8 ? 4 : rem >= 4 ? 3 : rem == 3 ? 2 : rem >= 2 ? 1 : 0;
            for (int64_t r = r0; r < r1; r++) {
                a->row[i](a->w + r * a->rowbytes, a->x, m0, out);
                for (int m = 0; m < LT_ROW_M[i]; m++) a->y[(m0 + m) * a->ldy + r] = out[m];
            }
            m0 += LT_ROW_M[i];
        }
        return;
    }
    const int64_t ahead = a->ahead;
    const int fetch = ahead > 0 && !a->rows_fetch; /* before each row or tile; else they fetch as they go */
    const uint8_t *end = a->w + r1 * a->rowbytes;
    for (const uint8_t *q = a->w + r0 * a->rowbytes; q < end && q < a->w + r0 * a->rowbytes + ahead; q += 64)
        LT_PREFETCH(q);
    const int tile = a->x->p8 != NULL;
    for (int64_t r = r0; r < r1;) {
        const uint8_t *row = a->w + r * a->rowbytes;
        if (tile && r + LT_ROWS8_NW <= r1) { /* x rows 0-7 of LT_ROWS8_NW weight rows, the rest below */
            if (fetch)
                for (int64_t o = 0; o < LT_ROWS8_NW * a->rowbytes; o += 64) LT_PREFETCH(row + ahead + o);
            a->rows8(row, a->rowbytes, a->x, 0, 1, a->y + r, a->ldy, M);
            for (int i = 0; i < LT_ROWS8_NW; i++) row_kernels(a->row, row + i * a->rowbytes, a->x, 8, M, a->y + r + i, a->ldy);
            r += LT_ROWS8_NW;
            continue;
        }
        if (fetch)
            for (int64_t o = 0; o < a->rowbytes; o += 64) LT_PREFETCH(row + ahead + o);
        row_kernels(a->row, row, a->x, 0, M, a->y + r, a->ldy);
        r++;
    }
}

/* The prepared x in nblk blocks of 8 rows (zero rows past M) with the rows in the lanes, for the
 * rows8 tile (lantern.h lt_x.p8), at p8 and after it. */
static void pack_rows8(lt_x *xp, int64_t M, int64_t nblk, int16_t *p8) {
    const int64_t K = xp->K, G = xp->G;
    float *qd8 = (float *)(p8 + nblk * 8 * K), *qs8 = qd8 + nblk * 8 * G;
    for (int64_t b = 0; b < nblk; b++)
        for (int j = 0; j < 8; j++) {
            const int64_t m = 8 * b + j;
            int16_t *dst = p8 + b * 8 * K + 2 * j;
            float *qd = qd8 + b * G * 8 + j, *qs = qs8 + b * G * 8 + j;
            if (m < M) {
                for (int64_t i = 0; i < K / 2; i++) memcpy(dst + 16 * i, xp->q + m * K + 2 * i, 4);
                for (int64_t g = 0; g < G; g++) {
                    qd[8 * g] = xp->qd[m * G + g];
                    qs[8 * g] = xp->qs[m * G + g];
                }
            } else {
                for (int64_t i = 0; i < K / 2; i++) memset(dst + 16 * i, 0, 4);
                for (int64_t g = 0; g < G; g++) qd[8 * g] = qs[8 * g] = 0.f;
            }
        }
    xp->p8 = p8;
    xp->qd8 = qd8;
    xp->qs8 = qs8;
}

void lt_x_even_odd(const lt_x *xp, int64_t M, int16_t *qeo, int32_t *s16) {
    for (int64_t g = 0; g < M * xp->G; g++) {
        int32_t sum[2] = {0, 0};
        for (int j = 0; j < 16; j++) {
            qeo[32 * g + j] = xp->q[32 * g + 2 * j];
            qeo[32 * g + 16 + j] = xp->q[32 * g + 2 * j + 1];
            sum[0] += xp->q[32 * g + j];
            sum[1] += xp->q[32 * g + 16 + j];
        }
        /* group g holds sub-blocks 2u, 2u + 1 (u = g % 4) of its 128: at u and 4 + u */
        for (int i = 0; i < 2; i++) s16[g / 4 * 8 + 4 * i + g % 4] = 32 * sum[i];
    }
}

/* x [M, K] -> the form the type's row kernels read, in this thread's scratch, and (15-bit x) its
 * first nblk blocks of 8 rows for the rows8 tile (and x's even-odd order where the type's row
 * kernels read it). NULL without memory. */
static const lt_x *prepare_x(const lt_kernels *k, int qtype, const float *x, int64_t M, int64_t K, int64_t nblk,
                             lt_x *xp) {
    const int64_t G = K / 32, Gp = (G + 15) / 16 * 16, ld = 2 * Gp;
    xp->K = K;
    xp->G = G;
    xp->ld = ld;
    xp->f = x;
    const int format = lt_x_format_of(k, qtype);
    int16_t *p8 = NULL, *qeo = NULL; /* where the rows8 blocks and the even-odd x go (15-bit x only) */
    if (format == LT_X_BF16) {
        /* bf16 x [M, K], then per row of x the sums per 32 [M, ld] (+ padding for masked loads) */
        uint8_t *s = (uint8_t *)lt_scratch(LT_SCRATCH_X, (size_t)(M * K * 2 + (M * ld + 64) * 4));
        if (!s) return NULL;
        xp->bf = (const uint16_t *)s;
        xp->bs = (const float *)(s + M * K * 2);
    } else {
        const int eo = k->even_odd_types >> qtype & 1u;
        const size_t head = (size_t)(M * K * 2 + 2 * (M * G + 16) * 4), at8 = (head + 63) / 64 * 64;
        const size_t ateo = at8 + (size_t)(nblk * 8 * (K * 2 + 2 * G * 4));
        uint8_t *s = (uint8_t *)lt_scratch(LT_SCRATCH_X, ateo + (eo ? (size_t)(M * K * 2 + M * K / 16 * 4) : 0));
        if (!s) return NULL;
        xp->q = (const int16_t *)s;
        xp->qd = (const float *)(s + M * K * 2);
        xp->qs = xp->qd + M * G + 16;
        p8 = nblk ? (int16_t *)(s + at8) : NULL; /* 64-byte aligned: the tile's aligned loads */
        qeo = eo ? (int16_t *)(s + ateo) : NULL;
    }
    (format == k->x_format ? k->x_prepare : k->x_prepare_q15)(x, M, xp);
    if (p8) pack_rows8(xp, M, nblk, p8);
    if (qeo) {
        int32_t *s16 = (int32_t *)(qeo + M * K);
        lt_x_even_odd(xp, M, qeo, s16);
        xp->qeo = qeo;
        xp->s16 = s16;
    }
    return xp;
}

/* ----- prompt chunks through the level's float32 micro-kernel (lt_kernels.gemm_f32) ------------
 * x is packed once per call as [M / LT_GEMM_MB][K][LT_GEMM_MB] (zero rows past M). A task takes
 * GEMM_ROWS rows of W by GEMM_MBT blocks of LT_GEMM_MB rows of x (256: a 256-token chunk is one
 * task's); per GEMM_KC columns and LT_GEMM_NW rows of W it expands them (6 KB of floats, in L1)
 * and runs them against each block of x, accumulating into tiles of c in this thread's scratch.
 * Phi-3-mini Q4_K at avx2 on Zen 4, 2 threads, blocks of x per task: 4 -> 148, 8 -> 165, 16 ->
 * 167-180 GFLOP/s; the tiles' order (x's chunk in L1 while the rows pass, or the rows while x's
 * blocks pass) and 24-96 rows per task made no difference beyond the machine's noise. */
#ifndef GEMM_KC
#define GEMM_KC 256 /* columns expanded at a time: a multiple of every block's elements */
#endif
#ifndef GEMM_ROWS
#define GEMM_ROWS (8 * LT_GEMM_NW)
#endif
#ifndef GEMM_MBT
#define GEMM_MBT 16
#endif

typedef struct {
    const uint8_t *w;
    int qtype;
    lt_expand_f32_fn expand;
    lt_gemm_f32_fn gemm;
    const float *x; /* [M, K] */
    float *xp;      /* packed */
    int64_t N, M, K, E, B, rowbytes, nmb, nrb;
    float *y;
    int64_t ldy;
    int failed;
} gemm_args;

static void gemm_pack(void *p, int64_t mb0, int64_t mb1) {
    const gemm_args *a = (const gemm_args *)p;
    for (int64_t mb = mb0; mb < mb1; mb++) {
        float *dst = a->xp + mb * a->K * LT_GEMM_MB;
        for (int m = 0; m < LT_GEMM_MB; m++) {
            const int64_t row = mb * LT_GEMM_MB + m;
            if (row < a->M) {
                const float *src = a->x + row * a->K;
                for (int64_t k = 0; k < a->K; k++) dst[k * LT_GEMM_MB + m] = src[k];
            } else {
                for (int64_t k = 0; k < a->K; k++) dst[k * LT_GEMM_MB + m] = 0.f;
            }
        }
    }
}

static void gemm_task(void *p, int64_t t) {
    gemm_args *a = (gemm_args *)p;
    const int64_t r0 = t % a->nrb * GEMM_ROWS, r1 = r0 + GEMM_ROWS < a->N ? r0 + GEMM_ROWS : a->N;
    const int64_t mb0 = t / a->nrb * GEMM_MBT, mb1 = mb0 + GEMM_MBT < a->nmb ? mb0 + GEMM_MBT : a->nmb;
    const int64_t tile = LT_GEMM_NW * LT_GEMM_MB, ntiles = (r1 - r0 + LT_GEMM_NW - 1) / LT_GEMM_NW * (mb1 - mb0);
    float *wbuf = (float *)lt_scratch(LT_SCRATCH_GEMM, (size_t)(LT_GEMM_NW * GEMM_KC + ntiles * tile) * 4);
    if (!wbuf) {
        a->failed = 1;
        return;
    }
    float *c = wbuf + LT_GEMM_NW * GEMM_KC; /* [group of rows][block of x][tile] */
    for (int64_t i = 0; i < ntiles * tile; i++) c[i] = 0.f;
    /* columns outermost: this chunk of every block of x (16 KB each, 256 KB in all) stays in L2 for all the rows */
    for (int64_t k0 = 0; k0 < a->K; k0 += GEMM_KC) {
        const int64_t kc = a->K - k0 < GEMM_KC ? a->K - k0 : GEMM_KC;
        float *ct = c;
        for (int64_t r = r0; r < r1; r += LT_GEMM_NW) {
            const int nw = r1 - r < LT_GEMM_NW ? (int)(r1 - r) : LT_GEMM_NW;
            for (int i = 0; i < nw; i++)
                a->expand(a->qtype, a->w + (r + i) * a->rowbytes + k0 / a->E * a->B, kc, wbuf + i * GEMM_KC);
            for (int64_t mb = mb0; mb < mb1; mb++, ct += tile)
                a->gemm(wbuf, GEMM_KC, nw, a->xp + (mb * a->K + k0) * LT_GEMM_MB, kc, ct);
        }
    }
    /* out row by row of y: a task's outputs along N are contiguous there, while its tiles' order
     * would store each output a whole row of y after the last (a cache miss per float once y
     * outgrows L2: Phi-3-mini's 16384 x 3072 Q4_K at M = 256, one thread, spent 8% less time
     * outside the tiles this way, 43 against 47-52 ms) */
    for (int64_t mb = mb0; mb < mb1; mb++)
        for (int m = 0; m < LT_GEMM_MB && mb * LT_GEMM_MB + m < a->M; m++) {
            float *dst = a->y + (mb * LT_GEMM_MB + m) * a->ldy;
            const float *ct = c + (mb - mb0) * tile + m;
            for (int64_t r = r0; r < r1; r += LT_GEMM_NW, ct += (mb1 - mb0) * tile) {
                const int nw = r1 - r < LT_GEMM_NW ? (int)(r1 - r) : LT_GEMM_NW;
                for (int i = 0; i < nw; i++) dst[r + i] = ct[i * LT_GEMM_MB];
            }
        }
}

static int gemm_matmul(const lt_kernels *k, const uint8_t *w, int qtype, const float *x, float *y, int64_t ldy,
                       int64_t N, int64_t K, int64_t M, int64_t E, int64_t B, int nthreads) {
    const int64_t nmb = (M + LT_GEMM_MB - 1) / LT_GEMM_MB;
    float *xp = (float *)lt_scratch(LT_SCRATCH_X, (size_t)(nmb * K * LT_GEMM_MB) * 4);
    if (!xp) return -1;
    gemm_args a = {w, qtype, k->expand_f32[qtype], k->gemm_f32, x, xp, N, M, K, E, B, K / E * B, nmb,
                   (N + GEMM_ROWS - 1) / GEMM_ROWS, y, ldy, 0};
    lt_parallel_rows(gemm_pack, &a, nmb, nthreads, 1);
    lt_pool_run(gemm_task, &a, a.nrb * ((nmb + GEMM_MBT - 1) / GEMM_MBT), nthreads);
    return a.failed ? -1 : 0;
}

/* ----- rows on 8-bit x (lt_kernels.gemm_q8; lantern.h): prompts, batched decode rows ---------------
 * x is rounded once per call into records of LT_Q8_XROWS rows by a super-block. A task takes up to
 * Q8_ROWS rows of W by Q8_XB records of x; per super-block it expands its rows' blocks (512 bytes
 * each), then runs each LT_Q8_NX records of x (16 KB) against every pair of them, accumulating into
 * this thread's scratch. */
#ifndef Q8_ROWS
/* weight rows per task at most: each chunk of x (LT_Q8_NX records, 16 KB, in L1) passes this many
 * rows. Phi-3's Q4_K 3072 x 3072 at M = 256, one thread, vnni tile (bench/native/prompt_q8_matmul.c,
 * int8 / 15-bit speed): 24 rows 1.33-1.36, 48 1.39, 64 1.49, 96 1.47-1.54, 192 1.47; the plain
 * tile the same at 24 and 96. Fewer where N gives too few tasks for the threads (q8_matmul). */
#define Q8_ROWS 96
#endif
#ifndef Q8_XB
#define Q8_XB 32 /* 256 rows of x */
#endif

void lt_pack_q8_rows(const float *x, int64_t M, int64_t K, int qtype, int64_t xb0, int64_t xb1, uint8_t *out) {
    const int R = LT_Q8_XROWS, six = qtype == LT_Q6_K;
    const int64_t nsb = K / 256;
    for (int64_t xb = xb0; xb < xb1; xb++)
        for (int64_t kb = 0; kb < nsb; kb++) {
            uint8_t *rec = out + (xb * nsb + kb) * LT_Q8_XREC;
            int8_t *xq = (int8_t *)rec;
            float *xd = (float *)(rec + LT_Q8_X_D), *xs32 = (float *)(rec + LT_Q8_X_S32);
            int32_t *o32 = (int32_t *)(rec + LT_Q8_X_O32);
            int16_t *o16 = (int16_t *)(rec + LT_Q8_X_O16);
            for (int j = 0; j < R; j++) {
                const int64_t m = xb * R + j;
                for (int g = 0; g < 8; g++) {
                    int8_t q[32];
                    float d = 0.f, amax = 0.f, probe = 0.f;
                    const float *p = m < M ? x + m * K + kb * 256 + 32 * g : NULL;
                    for (int i = 0; p && i < 32; i++) {
                        amax = fabsf(p[i]) > amax ? fabsf(p[i]) : amax;
                        probe += p[i] * 0.f; /* NaN when any x is NaN or infinite */
                    }
                    if (p && probe == 0.f) {
                        const float id = amax > 0.f ? 127.f / amax : 0.f;
                        /* round to nearest even as nearbyintf, without its call: |p * id| <= 127,
                         * and adding 1.5 * 2^23 leaves no fraction bits in a float32 */
                        for (int i = 0; i < 32; i++) q[i] = (int8_t)(int)((p[i] * id + 12582912.f) - 12582912.f);
                        d = amax / 127.f;
                    } else { /* a row past M; or NaN in x: the products NaN, never silently 0 */
                        memset(q, 0, 32);
                        d = p ? NAN : 0.f;
                    }
                    for (int i = 0; i < 32; i += 4) memcpy(xq + ((8 * g + i / 4) * R + j) * 4, q + i, 4);
                    xd[g * R + j] = d;
                    int32_t sum[2] = {0, 0};
                    for (int i = 0; i < 32; i++) sum[i / 16] += q[i];
                    xs32[g * R + j] = d * (float)(sum[0] + sum[1]);
                    if (!six) continue;
                    o32[(2 * g) * R + j] = -32 * sum[0];
                    o32[(2 * g + 1) * R + j] = -32 * sum[1];
                    for (int p = 0; p < 4; p++) /* pairs of quads 4g + 2p, 4g + 2p + 1: elements 8p .. 8p + 7 */
                        for (int k = 0; k < 2; k++)
                            o16[((4 * g + p) * R + j) * 2 + k] =
                                (int16_t)(-32 * (q[8 * p + 2 * k] + q[8 * p + 2 * k + 1] + q[8 * p + 4 + 2 * k] + q[8 * p + 5 + 2 * k]));
                }
            }
        }
}

typedef struct {
    const uint8_t *w;
    int qtype;
    const lt_kernels *k;
    const float *x;    /* [M, K] */
    uint8_t *xp;       /* x's records */
    int64_t N, M, K, nsb, nxb, B, rows, nrb; /* B: bytes per block (a super-block); rows: of W per task */
    float *y;
    int64_t ldy;
    int failed;
    int64_t ahead; /* decode-sized x: bytes ahead that a task fetches W */
} q8_args;

static void q8_pack(void *p, int64_t xb0, int64_t xb1) {
    const q8_args *a = (const q8_args *)p;
    lt_pack_q8_rows(a->x, a->M, a->K, a->qtype, xb0, xb1, a->xp);
}

static void q8_task(void *p, int64_t t) {
    q8_args *a = (q8_args *)p;
    const int64_t r0 = t % a->nrb * a->rows, r1 = r0 + a->rows < a->N ? r0 + a->rows : a->N;
    const int64_t xb0 = t / a->nrb * Q8_XB, xb1 = xb0 + Q8_XB < a->nxb ? xb0 + Q8_XB : a->nxb;
    const int64_t nr = r1 - r0, ldc = a->rows * LT_Q8_XROWS; /* c: [record of x][weight row][row of x] */
    uint8_t *wrec = (uint8_t *)lt_scratch(LT_SCRATCH_GEMM, (size_t)(a->rows * LT_Q8_WREC + (xb1 - xb0) * ldc * 4));
    if (!wrec) {
        a->failed = 1;
        return;
    }
    float *c = (float *)(wrec + a->rows * LT_Q8_WREC);
    for (int64_t i = 0; i < (xb1 - xb0) * ldc; i++) c[i] = 0.f;
    const int64_t xstride = a->nsb * LT_Q8_XREC;
    for (int64_t kb = 0; kb < a->nsb; kb++) {
        for (int64_t r = r0; r < r1; r++)
            a->k->expand_q8[a->qtype](a->qtype, a->w + (r * a->nsb + kb) * a->B, wrec + (r - r0) * LT_Q8_WREC);
        for (int64_t xb = xb0; xb < xb1; xb += LT_Q8_NX) {
            const int nx = xb1 - xb < LT_Q8_NX ? (int)(xb1 - xb) : LT_Q8_NX;
            const uint8_t *xr = a->xp + (xb * a->nsb + kb) * LT_Q8_XREC;
            for (int64_t i = 0; i < nr; i += LT_Q8_NW) {
                const int nw = nr - i < LT_Q8_NW ? (int)(nr - i) : LT_Q8_NW;
                a->k->gemm_q8(wrec + i * LT_Q8_WREC, nw, xr, xstride, nx, a->qtype, c + (xb - xb0) * ldc + i * LT_Q8_XROWS, ldc);
            }
        }
    }
    for (int64_t xb = xb0; xb < xb1; xb++)
        for (int j = 0; j < LT_Q8_XROWS && xb * LT_Q8_XROWS + j < a->M; j++) {
            float *dst = a->y + (xb * LT_Q8_XROWS + j) * a->ldy;
            const float *ct = c + (xb - xb0) * ldc + j;
            for (int64_t r = r0; r < r1; r++) dst[r] = ct[(r - r0) * LT_Q8_XROWS];
        }
}

/* Rows of W per task in a decode pass (either route): about 1M weights (0.5-0.8 MB of blocks: long
 * sequential streams for the hardware prefetcher; Phi-3-mini shapes 1-5% faster than 256K), at
 * least 2 tasks per thread, one task for a tiny matrix, whole tiles of `tile` rows. */
static int64_t decode_task_rows(int64_t N, int64_t K, int nthreads, int64_t tile) {
    int64_t rows = (1 << 20) / K;
    if (rows < 1) rows = 1;
    const int64_t spread = (N + 2 * nthreads - 1) / (2 * nthreads);
    if (rows > spread) rows = spread;
    if (N * K < (1 << 15)) rows = N;
    return (rows + tile - 1) / tile * tile;
}

/* Up to 8 rows (one record of x per super-block): each LT_Q8_NW1 weight rows stream along their
 * length, a super-block at a time expanded and multiplied at once (in L1), fetched ahead as the
 * row kernels' tasks fetch them. */
static void q8_rows_task(void *p, int64_t t) {
    q8_args *a = (q8_args *)p;
    const int64_t r0 = t * a->rows, r1 = r0 + a->rows < a->N ? r0 + a->rows : a->N, ahead = a->ahead;
    LT_ALIGN(64) uint8_t wrec[LT_Q8_NW1 * LT_Q8_WREC];
    LT_ALIGN(64) float c[LT_Q8_NW1 * LT_Q8_XROWS];
    for (int64_t r = r0; r < r1; r += LT_Q8_NW1) {
        const int nw = r1 - r < LT_Q8_NW1 ? (int)(r1 - r) : LT_Q8_NW1;
        for (int i = 0; i < nw * LT_Q8_XROWS; i++) c[i] = 0.f;
        for (int64_t kb = 0; kb < a->nsb; kb++) {
            for (int i = 0; i < nw; i++) {
                const uint8_t *blk = a->w + ((r + i) * a->nsb + kb) * a->B;
                for (int64_t o = 0; o < a->B; o += 64) LT_PREFETCH(blk + ahead + o);
                a->k->expand_q8[a->qtype](a->qtype, blk, wrec + i * LT_Q8_WREC);
            }
            a->k->gemm_q8(wrec, nw, a->xp + kb * LT_Q8_XREC, LT_Q8_XREC, 1, a->qtype, c, LT_Q8_XROWS);
        }
        for (int j = 0; j < LT_Q8_XROWS && j < a->M; j++)
            for (int i = 0; i < nw; i++) a->y[j * a->ldy + r + i] = c[8 * i + j];
    }
}

static int q8_matmul(const lt_kernels *k, const uint8_t *w, int qtype, const float *x, float *y, int64_t ldy,
                     int64_t N, int64_t K, int64_t M, int64_t B, int nthreads) {
    const int64_t nxb = (M + LT_Q8_XROWS - 1) / LT_Q8_XROWS, nsb = K / 256;
    uint8_t *xp = (uint8_t *)lt_scratch(LT_SCRATCH_X, (size_t)(nxb * nsb * LT_Q8_XREC));
    if (!xp) return -1;
    if (nxb == 1) { /* decode-sized: tasks as the row kernels' */
        const int64_t rows = decode_task_rows(N, K, nthreads, LT_Q8_NW1);
        q8_args a = {w, qtype, k, x, xp, N, M, K, nsb, 1, B, rows, (N + rows - 1) / rows, y, ldy, 0, k->fetch_long};
        lt_pack_q8_rows(x, M, K, qtype, 0, 1, xp);
        lt_pool_run(q8_rows_task, &a, a.nrb, nthreads);
        return 0;
    }
    int64_t rows = (N + 2 * nthreads - 1) / (2 * nthreads); /* at least 2 tasks per thread along N */
    rows = rows > Q8_ROWS ? Q8_ROWS : rows < LT_Q8_NW ? LT_Q8_NW : (rows + LT_Q8_NW - 1) / LT_Q8_NW * LT_Q8_NW;
    q8_args a = {w, qtype, k, x, xp, N, M, K, nsb, nxb, B, rows, (N + rows - 1) / rows, y, ldy, 0, 0};
    lt_parallel_rows(q8_pack, &a, nxb, nthreads, 1);
    lt_pool_run(q8_task, &a, a.nrb * ((nxb + Q8_XB - 1) / Q8_XB), nthreads);
    return a.failed ? -1 : 0;
}

static int exact_matmul(const lt_kernels *k, const uint8_t *w, int qtype, const float *x, float *y, int64_t ldy,
                        int64_t N, int64_t K, int64_t M, int64_t E, int64_t B, int nthreads);

/* ----- more than LT_ROWS_MAX_M rows on the rows8 tile (lantern.h lt_rows8_fn) --------------------
 * x is prepared once (15 bits, then blocks of 8 rows). A task takes R8_ROWS rows of W by LT_ROWS8_XB
 * blocks of x (64 rows: up to 400 KB of x at K = 3072, in L2); each tile of LT_ROWS8_NW weight
 * rows decodes its blocks once per 256 weights and runs them against all the task's blocks. */
#ifndef R8_ROWS
#define R8_ROWS 32
#endif

typedef struct {
    const uint8_t *w;
    lt_rows8_fn rows8;
    const lt_row_fn *row;
    const lt_x *x;
    int64_t N, M, rowbytes, nxb, nrb;
    float *y;
    int64_t ldy;
} r8_args;

static void r8_task(void *p, int64_t t) {
    const r8_args *a = (const r8_args *)p;
    const int64_t r0 = t % a->nrb * R8_ROWS, r1 = r0 + R8_ROWS < a->N ? r0 + R8_ROWS : a->N;
    const int64_t b0 = t / a->nrb * LT_ROWS8_XB, b1 = b0 + LT_ROWS8_XB < a->nxb ? b0 + LT_ROWS8_XB : a->nxb;
    const int64_t m1 = 8 * b1 < a->M ? 8 * b1 : a->M;
    for (int64_t r = r0; r < r1;) {
        const uint8_t *row = a->w + r * a->rowbytes;
        if (r + LT_ROWS8_NW <= r1) {
            a->rows8(row, a->rowbytes, a->x, b0, b1 - b0, a->y + r, a->ldy, m1);
            r += LT_ROWS8_NW;
        } else { /* N % LT_ROWS8_NW rows: the row kernels */
            row_kernels(a->row, row, a->x, 8 * b0, m1, a->y + r, a->ldy);
            r++;
        }
    }
}

static int rows8_matmul(const lt_kernels *k, const uint8_t *w, int qtype, const float *x, float *y, int64_t ldy,
                        int64_t N, int64_t K, int64_t M, int64_t rowbytes, int nthreads) {
    lt_x xp = {0};
    const int64_t nxb = (M + 7) / 8;
    if (!prepare_x(k, qtype, x, M, K, nxb, &xp)) return -1;
    r8_args a = {w, k->rows8[qtype], k->row[qtype], &xp, N, M, rowbytes, nxb, (N + R8_ROWS - 1) / R8_ROWS, y, ldy};
    lt_pool_run(r8_task, &a, a.nrb * ((nxb + LT_ROWS8_XB - 1) / LT_ROWS8_XB), nthreads);
    return 0;
}

int lt_gguf_matmul(const uint8_t *w, int qtype, const float *x, float *y, int64_t ldy, int64_t N, int64_t K,
                   int64_t M, int64_t m_exact, int nthreads) {
    int64_t E = 32, B = 0;
    const lt_kernels *k = lt_kernels_get();
    if (qtype < 0 || qtype >= LT_NTYPES || !k->row[qtype][0] || lt_block_geometry(qtype, &E, &B) || K % E ||
        M <= 0 || N <= 0)
        return -1;
    if (nthreads < 1) nthreads = 1;
    if (m_exact < M && k->gemm_q8 && k->expand_q8[qtype]) { /* 8-bit rows; the rest as below */
        if (m_exact > 0 && exact_matmul(k, w, qtype, x, y, ldy, N, K, m_exact, E, B, nthreads)) return -1;
        return q8_matmul(k, w, qtype, x + m_exact * K, y + m_exact * ldy, ldy, N, K, M - m_exact, B, nthreads);
    }
    return exact_matmul(k, w, qtype, x, y, ldy, N, K, M, E, B, nthreads);
}

/* Rows of x whose products keep x to 15 bits: the row kernels, or the float32 micro-kernel. */
static int exact_matmul(const lt_kernels *k, const uint8_t *w, int qtype, const float *x, float *y, int64_t ldy,
                        int64_t N, int64_t K, int64_t M, int64_t E, int64_t B, int nthreads) {
    if (M > LT_ROWS_MAX_M && k->rows8[qtype]) return rows8_matmul(k, w, qtype, x, y, ldy, N, K, M, K / E * B, nthreads);
    if (M > LT_ROWS_MAX_M && k->gemm_f32 && k->expand_f32[qtype])
        return gemm_matmul(k, w, qtype, x, y, ldy, N, K, M, E, B, nthreads);
    lt_x xp = {0};
    if (!prepare_x(k, qtype, x, M, K, M >= LT_ROWS8_MIN && k->rows8[qtype] ? 1 : 0, &xp)) return -1; /* M <= 12 here */
    const int64_t rowbytes = K / E * B;
    gmm_args a = {w, k->row[qtype], k->rows8[qtype], &xp, N, M, rowbytes, 1, y, ldy, M, 1,
                  rowbytes <= 1024 ? WAHEAD_SHORT : k->fetch_long, k->rows_fetch};
    int64_t rpt;
    if (M <= LT_ROWS_MAX_M) { /* decode and verify passes */
        rpt = decode_task_rows(N, K, nthreads, xp.p8 ? LT_ROWS8_NW : 1);
    } else {
        /* prompt chunks: blocks of 64 rows of x by about 32 KB of W's blocks, so that each 8
         * rows of x stay in L1/L2 while the block's weight rows pass them (from L2) */
        rpt = LT_PROMPT_WBYTES / a.rowbytes;
        if (rpt < 4) rpt = 4;
        a.mb = LT_PROMPT_MB;
    }
    a.rpt = rpt;
    a.nrb = (N + rpt - 1) / rpt;
    lt_pool_run(gmm_task, &a, a.nrb * ((M + a.mb - 1) / a.mb), nthreads);
    return 0;
}

/* y[M, N] = x[M, K] @ W[N, K].T; prompt != 0: every row a prompt row. Returns 0, or -1 as
 * lt_gguf_matmul. */
LT_EXPORT int lantern_gguf_matmul(const uint8_t *w, int qtype, const float *x, float *y, int64_t N, int64_t K,
                                  int64_t M, int prompt, int nthreads) {
    return lt_gguf_matmul(w, qtype, x, y, N, N, K, M, prompt ? 0 : M, nthreads);
}

typedef struct {
    const uint8_t *w;
    void *out;
    int qtype, f32;
    int64_t K, rowbytes;
    const lt_kernels *k;
} expand_args;

static void expand_rows(void *p, int64_t r0, int64_t r1) {
    const expand_args *a = (const expand_args *)p;
    for (int64_t r = r0; r < r1; r++) {
        if (a->f32) a->k->expand_f32[a->qtype](a->qtype, a->w + r * a->rowbytes, a->K, (float *)a->out + r * a->K);
        else a->k->expand_bf16[a->qtype](a->qtype, a->w + r * a->rowbytes, a->K, (uint16_t *)a->out + r * a->K);
    }
}

/* Rows of GGUF blocks -> out [N, K]: float32 (f32 = 1: exactly lantern's dequantize) or bf16
 * (f32 = 0: those values rounded to nearest even). Returns 0, or -1 for a type it does not take
 * or K not a multiple of the block. */
LT_EXPORT int lantern_gguf_expand(const uint8_t *w, int qtype, void *out, int64_t N, int64_t K, int f32,
                                  int nthreads) {
    int64_t E = 32, B = 0;
    const lt_kernels *k = lt_kernels_get();
    if (qtype < 0 || qtype >= LT_NTYPES || lt_block_geometry(qtype, &E, &B) || K % E) return -1;
    if (f32 ? !k->expand_f32[qtype] : !k->expand_bf16[qtype]) return -1;
    expand_args a = {w, out, qtype, f32, K, K / E * B, k};
    lt_parallel_rows(expand_rows, &a, N, nthreads, 1);
    return 0;
}

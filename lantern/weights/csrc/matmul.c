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

#include <stdlib.h>

#ifdef _WIN32
#include <malloc.h>
#endif

int lt_block_geometry(int qtype, int64_t *elems, int64_t *bytes) {
    switch (qtype) {
    case LT_Q4_0: *elems = 32; *bytes = 18; return 0;
    case LT_Q4_1: *elems = 32; *bytes = 20; return 0;
    case LT_Q5_0: *elems = 32; *bytes = 22; return 0;
    case LT_Q5_1: *elems = 32; *bytes = 24; return 0;
    case LT_Q8_0: *elems = 32; *bytes = 34; return 0;
    case LT_Q2_K: *elems = 256; *bytes = 84; return 0;
    case LT_Q3_K: *elems = 256; *bytes = 110; return 0;
    case LT_Q4_K: *elems = 256; *bytes = 144; return 0;
    case LT_Q5_K: *elems = 256; *bytes = 176; return 0;
    case LT_Q6_K: *elems = 256; *bytes = 210; return 0;
    case LT_IQ4_NL: *elems = 32; *bytes = 18; return 0;
    case LT_IQ4_XS: *elems = 256; *bytes = 136; return 0;
    default: return -1;
    }
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
    const lt_x *x;
    int64_t N, M, rowbytes, rpt;
    float *y;
    int64_t ldy;    /* floats between rows of y */
    int64_t mb, nrb; /* rows of x per task; tasks along the rows of W */
} gmm_args;

#ifndef LT_PROMPT_WBYTES
#define LT_PROMPT_WBYTES 32768 /* bytes of W's blocks per prompt task */
#endif
#ifndef LT_PROMPT_MB
#define LT_PROMPT_MB 64 /* rows of x per prompt task */
#endif

#define WAHEAD 1024 /* SmolLM2-135M's shapes, Q4_1 / Q8_0: 3-20% faster than without */

static void gmm_task(void *p, int64_t t) {
    const gmm_args *a = (const gmm_args *)p;
    const int64_t rb = t % a->nrb, mlo = t / a->nrb * a->mb;
    const int64_t r0 = rb * a->rpt, r1 = r0 + a->rpt < a->N ? r0 + a->rpt : a->N;
    const int64_t M = mlo + a->mb < a->M ? mlo + a->mb : a->M;
    float out[8];
    if (a->M > 12) { /* a block of a prompt chunk: x rows outer, W rows inner */
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
    /* Short rows (K of a few hundred): each task is a short stream that the hardware prefetcher
     * only ramps up to late; fetch the weights WAHEAD bytes ahead. (Long rows: it keeps up and
     * the extra loads only cost.) */
    const int fetch = a->rowbytes <= 1024;
    const uint8_t *end = a->w + r1 * a->rowbytes;
    if (fetch)
        for (const uint8_t *q = a->w + r0 * a->rowbytes; q < end && q < a->w + r0 * a->rowbytes + WAHEAD; q += 64)
            LT_PREFETCH(q);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = a->w + r * a->rowbytes;
        if (fetch)
            for (int64_t o = 0; o < a->rowbytes; o += 64) LT_PREFETCH(row + WAHEAD + o);
        for (int64_t m0 = 0; m0 < M;) {
            const int64_t rem = M - m0;
            const int i = rem >= 8 ? 4 : rem >= 4 ? 3 : rem == 3 ? 2 : rem >= 2 ? 1 : 0;
            a->row[i](row, a->x, m0, out);
            for (int m = 0; m < LT_ROW_M[i]; m++) a->y[(m0 + m) * a->ldy + r] = out[m];
            m0 += LT_ROW_M[i];
        }
    }
}

/* x [M, K] -> the form the type's row kernels read, in this thread's scratch. NULL without memory. */
static const lt_x *prepare_x(const lt_kernels *k, int qtype, const float *x, int64_t M, int64_t K, lt_x *xp) {
    const int64_t G = K / 32, Gp = (G + 15) / 16 * 16, ld = 2 * Gp;
    xp->K = K;
    xp->G = G;
    xp->ld = ld;
    xp->f = x;
    const int format = lt_x_format_of(k, qtype);
    if (format == LT_X_BF16) {
        /* bf16 x [M, K], then per row of x the sums per 32 [M, ld] (+ padding for masked loads) */
        uint8_t *s = (uint8_t *)lt_scratch(LT_SCRATCH_X, (size_t)(M * K * 2 + (M * ld + 64) * 4));
        if (!s) return NULL;
        xp->bf = (const uint16_t *)s;
        xp->bs = (const float *)(s + M * K * 2);
    } else {
        uint8_t *s = (uint8_t *)lt_scratch(LT_SCRATCH_X, (size_t)(M * K * 2 + 2 * (M * G + 16) * 4));
        if (!s) return NULL;
        xp->q = (const int16_t *)s;
        xp->qd = (const float *)(s + M * K * 2);
        xp->qs = xp->qd + M * G + 16;
    }
    (format == k->x_format ? k->x_prepare : k->x_prepare_q15)(x, M, xp);
    return xp;
}

int lt_gguf_matmul(const uint8_t *w, int qtype, const float *x, float *y, int64_t ldy, int64_t N, int64_t K,
                   int64_t M, int nthreads) {
    int64_t E = 32, B = 0;
    const lt_kernels *k = lt_kernels_get();
    if (qtype < 0 || qtype >= LT_NTYPES || !k->row[qtype][0] || lt_block_geometry(qtype, &E, &B) || K % E ||
        M <= 0 || N <= 0)
        return -1;
    lt_x xp = {0};
    if (!prepare_x(k, qtype, x, M, K, &xp)) return -1;
    gmm_args a = {w, k->row[qtype], &xp, N, M, K / E * B, 1, y, ldy, M, 1};
    if (nthreads < 1) nthreads = 1;
    int64_t rpt;
    if (M <= 12) {
        /* decode and verify passes: tasks of about 1M weights (0.5-0.8 MB of blocks: long
         * sequential streams for the hardware prefetcher; Phi-3-mini shapes 1-5% faster than
         * 256K), at least 2 per thread */
        rpt = (1 << 20) / K;
        if (rpt < 1) rpt = 1;
        const int64_t spread = (N + 2 * nthreads - 1) / (2 * nthreads);
        if (rpt > spread) rpt = spread;
        if (N * K < (1 << 15)) rpt = N; /* tiny: one task */
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

/* y[M, N] = x[M, K] @ W[N, K].T. Returns 0, or -1 as lt_gguf_matmul. */
LT_EXPORT int lantern_gguf_matmul(const uint8_t *w, int qtype, const float *x, float *y, int64_t N, int64_t K,
                                  int64_t M, int nthreads) {
    return lt_gguf_matmul(w, qtype, x, y, N, N, K, M, nthreads);
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

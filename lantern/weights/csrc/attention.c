/* Attention of a few queries over a float16 KV cache (ISA-free driver).
 *
 * out[i, h] = softmax_t(scale * q[i, h] . k[h / group, t]) v[h / group, t] over the keys that
 * query i (at position start + i) sees: t <= start + i and, with a window, start + i - t < window.
 * K and V are float16 [kv_heads, stride, D] (the cache as stored, half the bytes of float32: a
 * decode step reads all of them); q float32 [n, heads, D] with rows `ldq` floats apart, out
 * float32 [n, heads * D]; the math is float32.
 *
 * Where the level has span kernels for D (lt_kernels.attn_span): one task per (query, KV head,
 * chunk of up to 4 of its query heads, span of up to ATTN_SPAN positions). Each key and value
 * row is converted from float16 once for all the query heads of the chunk (grouped-query
 * attention shares them) (SmolLM2-135M, 9 heads over 3 KV heads: 1.9x faster than one task per
 * head). A query's positions are split into spans by their count alone, so its result does not
 * depend on the thread count or on the other queries of the pass; spans are merged like
 * flash-decoding's partial softmaxes. A batched pass (step.c) gives every sequence's queries,
 * each over its own cache, to one dispatch (lt_attention_f16_seqs): 8 decoding sequences of
 * SmolLM2 make 24 tasks for 2 threads, where one dispatch per sequence made 3 each and left a
 * thread idle. Other head dims: one task per (query, head) in plain C, which is also the oracle
 * the span kernels are tested against (lt_attention_f16_plain). */

#include "blocks.h"
#include "lantern.h"

#include <math.h>
#include <stdlib.h>

#define ATTN_SPAN 1024 /* positions: long enough to stream (MHA at 1000 positions is memory-bound) */

typedef struct {
    const float *q;
    const uint16_t *k, *v;
    float *out;
    int64_t H, KVH, D, start, stride, window, ldq;
    float scale;
    const lt_kernels *kern;
    int64_t n; /* queries */
} attn_args;

/* The positions query i sees: [lo, lo + T) */
static void attn_range(const attn_args *a, int64_t i, int64_t *lo, int64_t *T) {
    const int64_t pos = a->start + i;
    *lo = a->window > 0 && pos - a->window + 1 > 0 ? pos - a->window + 1 : 0;
    *T = pos + 1 - *lo;
}

/* ----- one task per (query, head), plain C --------------------------------------------------- */

static void attn_task(void *p, int64_t task) {
    const attn_args *a = (const attn_args *)p;
    const int64_t i = task / a->H, h = task % a->H, kvh = h / (a->H / a->KVH), D = a->D;
    int64_t lo, T;
    attn_range(a, i, &lo, &T);
    const float *q = a->q + i * a->ldq + h * D;
    const uint16_t *k = a->k + (kvh * a->stride + lo) * D, *v = a->v + (kvh * a->stride + lo) * D;
    float *o = a->out + (i * a->H + h) * D;
    float buf[2048];
    float *s = T <= 2048 ? buf : (float *)malloc((size_t)T * sizeof(float));
    if (!s) { /* out of memory: NaN, not a silently wrong number */
        for (int64_t d = 0; d < D; d++) o[d] = NAN;
        return;
    }
    float mx = -INFINITY;
    for (int64_t t = 0; t < T; t++) {
        float dot = 0.f;
        for (int64_t d = 0; d < D; d++) dot += q[d] * lt_f16_to_f32(k[t * D + d]);
        s[t] = a->scale * dot;
        if (s[t] > mx) mx = s[t];
    }
    const float sum = a->kern->exp_sum(s, T, mx);
    for (int64_t d = 0; d < D; d++) o[d] = 0.f;
    for (int64_t t = 0; t < T; t++)
        for (int64_t d = 0; d < D; d++) o[d] += s[t] * lt_f16_to_f32(v[t * D + d]);
    const float inv = 1.f / sum;
    for (int64_t d = 0; d < D; d++) o[d] *= inv;
    if (s != buf) free(s);
}

/* ----- span kernels of the level -------------------------------------------------------------- */

typedef struct {
    const attn_args *a;        /* per sequence */
    lt_span_fn const *fn;      /* by heads - 1, for this D */
    int64_t nchunks;           /* per (query, KV head) */
    int64_t nspans[LT_ATTN_SEQS]; /* per (query, KV head, chunk): spans of the sequence's longest query */
    int64_t first[LT_ATTN_SEQS + 1]; /* the sequences' first tasks */
    float *part;               /* per task: HEADS x (max, sum, D outputs) */
} attn_job;

static lt_span_fn const *span_fns(const lt_kernels *k, int64_t D) {
    const int i = D == 64 ? 0 : D == 96 ? 1 : D == 128 ? 2 : D == 256 ? 3 : -1;
    return i < 0 || !k->attn_span[i][0] ? NULL : k->attn_span[i];
}

static void attn_span_task(void *p, int64_t task) {
    const attn_job *job = (const attn_job *)p;
    int64_t q = 0;
    while (task >= job->first[q + 1]) q++;
    const attn_args *a = &job->a[q];
    const int64_t nspans = job->nspans[q], local = task - job->first[q];
    const int64_t D = a->D, group = a->H / a->KVH;
    const int64_t sp = local % nspans, c = local / nspans % job->nchunks;
    const int64_t kvh = local / (nspans * job->nchunks) % a->KVH, i = local / (nspans * job->nchunks * a->KVH);
    int64_t lo, T;
    attn_range(a, i, &lo, &T);
    const int64_t spans = (T + ATTN_SPAN - 1) / ATTN_SPAN;
    float *part = job->part + task * LT_ATTN_HEADS * (D + 2);
    const int64_t h0 = kvh * group + c * LT_ATTN_HEADS;
    const int64_t hn = group - c * LT_ATTN_HEADS < LT_ATTN_HEADS ? group - c * LT_ATTN_HEADS : LT_ATTN_HEADS;
    if (sp >= spans) { /* this query has fewer spans than the longest: nothing to add */
        for (int64_t j = 0; j < hn; j++) { part[j * (D + 2)] = -INFINITY; part[j * (D + 2) + 1] = 0.f; }
        return;
    }
    const int64_t t0 = lo + sp * ATTN_SPAN, n = t0 + ATTN_SPAN < lo + T ? ATTN_SPAN : lo + T - t0;
    const float *qh[LT_ATTN_HEADS];
    for (int64_t j = 0; j < hn; j++) qh[j] = a->q + i * a->ldq + (h0 + j) * D;
    float s[LT_ATTN_HEADS * ATTN_SPAN];
    job->fn[hn - 1](qh, a->k + (kvh * a->stride + t0) * D, a->v + (kvh * a->stride + t0) * D, n, a->scale, s, part);
}

/* Merge the spans of every (query, head) of sequence q: out = sum_s e^(m_s - m) o_s / sum_s e^(m_s - m) l_s. */
static void attn_merge(const attn_job *job, int64_t q) {
    const attn_args *a = &job->a[q];
    const int64_t D = a->D, group = a->H / a->KVH, W = LT_ATTN_HEADS * (D + 2), nspans = job->nspans[q];
    const float *part = job->part + job->first[q] * W;
    for (int64_t i = 0; i < a->n; i++)
        for (int64_t h = 0; h < a->H; h++) {
            const int64_t kvh = h / group, c = h % group / LT_ATTN_HEADS, j = h % group % LT_ATTN_HEADS;
            const float *first = part + ((i * a->KVH + kvh) * job->nchunks + c) * nspans * W + j * (D + 2);
            float m = -INFINITY;
            for (int64_t sp = 0; sp < nspans; sp++) m = first[sp * W] > m ? first[sp * W] : m;
            float *o = a->out + (i * a->H + h) * D;
            float l = 0.f;
            for (int64_t d = 0; d < D; d++) o[d] = 0.f;
            for (int64_t sp = 0; sp < nspans; sp++) {
                const float *ps = first + sp * W;
                if (ps[1] == 0.f) continue;
                const float e = nspans == 1 ? 1.f : expf(ps[0] - m);
                l += e * ps[1];
                for (int64_t d = 0; d < D; d++) o[d] += e * ps[2 + d];
            }
            const float inv = 1.f / l;
            for (int64_t d = 0; d < D; d++) o[d] *= inv;
        }
}

/* Sequences [0, nseq) of one shape in one dispatch: 0 when done, 1 when the level
 * has no span kernels for these shapes, -1 without memory. */
static int attention_spans(const attn_args *a, int64_t nseq, int nthreads) {
    const int64_t group = a->H / a->KVH;
    lt_span_fn const *fn = span_fns(a->kern, a->D);
    if (!fn) return 1;
    attn_job job = {a, fn, (group + LT_ATTN_HEADS - 1) / LT_ATTN_HEADS, {0}, {0}, NULL};
    for (int64_t q = 0; q < nseq; q++) {
        int64_t lo, T, Tmax = 0;
        for (int64_t i = 0; i < a[q].n; i++) { attn_range(&a[q], i, &lo, &T); if (T > Tmax) Tmax = T; }
        job.nspans[q] = (Tmax + ATTN_SPAN - 1) / ATTN_SPAN;
        job.first[q + 1] = job.first[q] + a[q].n * a->KVH * job.nchunks * job.nspans[q];
    }
    const int64_t tasks = job.first[nseq];
    job.part = (float *)lt_scratch(LT_SCRATCH_ATTN, (size_t)tasks * LT_ATTN_HEADS * (a->D + 2) * sizeof(float));
    if (!job.part) return -1;
    lt_pool_run(attn_span_task, &job, tasks, nthreads);
    for (int64_t q = 0; q < nseq; q++) attn_merge(&job, q);
    return 0;
}

int lt_attention_f16_seqs(const lt_attn_seq *seqs, int64_t nseq, int64_t H, int64_t KVH, int64_t D, int64_t window,
                          float scale, int nthreads) {
    if (nseq <= 0 || nseq > LT_ATTN_SEQS || KVH <= 0 || H % KVH) return -1;
    const lt_kernels *kern = lt_kernels_get();
    attn_args a[LT_ATTN_SEQS];
    for (int64_t q = 0; q < nseq; q++) {
        const lt_attn_seq *S = &seqs[q];
        if (S->n <= 0) return -1;
        a[q] = (attn_args){S->q, S->k, S->v, S->out, H, KVH, D, S->start, S->stride, window, S->ldq, scale, kern, S->n};
    }
    const int rc = attention_spans(a, nseq, nthreads);
    if (rc <= 0) return rc;
    for (int64_t q = 0; q < nseq; q++) lt_pool_run(attn_task, &a[q], a[q].n * H, nthreads);
    return 0;
}

int lt_attention_f16(const float *q, int64_t ldq, const uint16_t *k, const uint16_t *v, float *out, int64_t n,
                     int64_t H, int64_t KVH, int64_t D, int64_t start, int64_t stride, int64_t window, float scale,
                     int nthreads) {
    const lt_attn_seq one = {q, ldq, k, v, out, n, start, stride};
    return lt_attention_f16_seqs(&one, 1, H, KVH, D, window, scale, nthreads);
}

/* The plain-C path alone, whatever the level has (the tests' oracle). */
int lt_attention_f16_plain(const float *q, int64_t ldq, const uint16_t *k, const uint16_t *v, float *out, int64_t n,
                           int64_t H, int64_t KVH, int64_t D, int64_t start, int64_t stride, int64_t window,
                           float scale, int nthreads) {
    if (n <= 0 || KVH <= 0 || H % KVH) return -1;
    attn_args a = {q, k, v, out, H, KVH, D, start, stride, window, ldq, scale, lt_kernels_get(), n};
    lt_pool_run(attn_task, &a, n * H, nthreads);
    return 0;
}

/* Returns 0, or -1 when the heads do not group evenly over the KV heads. */
LT_EXPORT int lantern_attention_f16(const float *q, const uint16_t *k, const uint16_t *v, float *out, int64_t n,
                                    int64_t H, int64_t KVH, int64_t D, int64_t start, int64_t stride, int64_t window,
                                    float scale, int nthreads) {
    return lt_attention_f16(q, H * D, k, v, out, n, H, KVH, D, start, stride, window, scale, nthreads);
}

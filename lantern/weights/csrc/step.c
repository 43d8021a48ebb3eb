/* A whole forward pass in one call: a decode step, a speculative verify pass, a batch engine's pass
 * over several sequences, and at levels whose prompt route is in place (avx2) a prompt chunk.
 *
 * The same math as lantern/models/layers.py's Transformer, block by block, on the same kernels:
 *   x = embedding rows (given)
 *   per layer: h = x + wo(attention(rotary(qkv(rmsnorm(x)))))
 *              x = h + down(silu(gate) * up), gate|up = gate_up(rmsnorm(h))
 *   logits = output(rmsnorm(x)) for the last `n_logits` tokens
 * with the weights multiplied in place from the GGUF file's blocks (lt_gguf_matmul), keys and
 * values appended to the float16 cache and attention by lt_attention_f16. Why: a decode step in
 * PyTorch is ~40 small ops per layer (SmolLM2: ~1,000 per token, about half its time; Phi-3-mini:
 * ~15 ms of 115), each a few microseconds of dispatch around a few hundred nanoseconds of work.
 * Here the work between weight calls runs on the calling thread while the pool's workers spin,
 * ready for the next weight.
 *
 * The model is described once (lt_model, built by lantern/models/native_step.py from the
 * Transformer's modules); every pointer in it stays owned by those modules. */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lantern.h"

typedef struct {
    const uint8_t *w;  /* GGUF blocks: rows x (cols / elements per block) */
    const float *bias; /* [rows] or NULL */
    int64_t rows, cols, qtype;
} lt_linear;

#define LT_MAX_PARTS 3

typedef struct { /* linear maps of one input, outputs side by side (q|k|v, gate|up) */
    lt_linear part[LT_MAX_PARTS];
    int64_t nparts;
} lt_proj;

typedef struct {
    const float *attn_norm, *ffn_norm;
    lt_proj qkv, gate_up;
    lt_linear wo, down;
    /* variants (NULL / 0 where the architecture has none): per-head RMSNorm of q and k before
     * rotary (Qwen3, Gemma 3); RMSNorm of the attention and feed-forward outputs before the
     * residual add (Gemma 2/3) */
    const float *q_norm, *k_norm, *post_attn_norm, *post_ffn_norm;
    int64_t window; /* this layer's attention window (0: full causal) */
    int64_t local;  /* 1: this layer rotates with the local rotary tables (Gemma 3's local layers) */
} lt_layer;

enum { LT_ACT_SILU = 0, LT_ACT_GELU_TANH = 1 };

typedef struct {
    int64_t dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim, rope_dims, vocab, neox, act;
    float eps, scale, softcap; /* RMSNorm epsilon; attention's score scale; logit softcap (0: none) */
    const lt_layer *layers;
    const float *out_norm;
    lt_linear output;
} lt_model;

/* y = x * (1 / sqrt(mean(x^2) + eps)) * w, as F.rms_norm (float32). */
static void rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += x[i + j] * x[i + j];
    float ss = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) ss += x[i] * x[i];
    const float r = 1.f / sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

/* Rotate the first `dims` features of one head in place: out[i] = x[i] cos[i] + x[p(i)] sin[i],
 * p(i) the partner of i (NEOX: i +- dims/2; adjacent pairs: i ^ 1); cos/sin hold one position's
 * tables in that layout, the sign of sin folded in (layers.Rotary). */
static void rotate(float *x, const float *cos, const float *sin, int64_t dims, int neox) {
    if (neox) {
        const int64_t half = dims / 2;
        for (int64_t i = 0; i < half; i++) {
            const float a = x[i], b = x[i + half];
            x[i] = a * cos[i] + b * sin[i];
            x[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    } else {
        for (int64_t i = 0; i < dims; i += 2) {
            const float a = x[i], b = x[i + 1];
            x[i] = a * cos[i] + b * sin[i];
            x[i + 1] = b * cos[i + 1] + a * sin[i + 1];
        }
    }
}

/* m_exact: rows before the first 8-bit row (lt_gguf_matmul) */
static int linear(const lt_linear *l, const float *x, float *y, int64_t ldy, int64_t M, int64_t m_exact,
                  int nthreads) {
    if (lt_gguf_matmul(l->w, (int)l->qtype, x, y, ldy, l->rows, l->cols, M, m_exact, nthreads)) return -1;
    if (l->bias)
        for (int64_t m = 0; m < M; m++)
            for (int64_t r = 0; r < l->rows; r++) y[m * ldy + r] += l->bias[r];
    return 0;
}

static int project(const lt_proj *p, const float *x, float *y, int64_t ldy, int64_t M, int64_t m_exact,
                   int nthreads) {
    int64_t off = 0;
    for (int64_t i = 0; i < p->nparts; i++) {
        if (linear(&p->part[i], x, y + off, ldy, M, m_exact, nthreads)) return -1;
        off += p->part[i].rows;
    }
    return 0;
}

/* One sequence's share of a pass: its `n_tokens` consecutive rows of x, at positions start..,
 * attending to its own float16 cache (per layer [kv_heads, capacity, head_dim]); the logits of
 * its last `n_logits` tokens are wanted. int8 != 0: the tokens' weight products may take 8-bit x
 * (lt_gguf_matmul): a prompt being read, or the decode tokens of a batched pass
 * (Model.forward_batch says when); such segments come after all others. */
typedef struct {
    int64_t n_tokens, start, capacity, n_logits, int8;
    uint16_t *const *keys, *const *values;
} lt_segment;

/* Run a pass over the tokens of `nseg` sequences at once (embedding rows x [M, dim], the segments'
 * rows one after another, overwritten: the residual stream). The weights are read once for all M
 * rows; keys and values go to each segment's own cache and each segment attends to its own.
 * cos/sin: the rotary tables of every row's position ([M, rope_dims] each): [0] the model's,
 * [1] the local layers' (Gemma 3; may be NULL where no layer is local). Writes the logits
 * wanted by the segments, in their order, to `logits` [sum of n_logits, vocab]. Returns 0, -1 on
 * a bad description (a weight type the kernels do not take, a segment that overflows its cache)
 * or no memory. */
LT_EXPORT int lantern_step_batch(const lt_model *m, float *x, int64_t M, const lt_segment *seg, int64_t nseg,
                                 const float *const *cos, const float *const *sin, float *logits, int nthreads) {
    const int64_t dim = m->dim, H = m->n_heads, KVH = m->n_kv_heads, D = m->head_dim, F = m->ffn_dim;
    const int64_t width = (H + 2 * KVH) * D; /* q|k|v of one token */
    int64_t rows = 0, n_logits = 0, m_exact = 0;
    for (int64_t s = 0; s < nseg; s++) {
        if (seg[s].n_tokens <= 0 || seg[s].n_logits < 0 || seg[s].n_logits > seg[s].n_tokens ||
            seg[s].start < 0 || seg[s].start + seg[s].n_tokens > seg[s].capacity ||
            (s > 0 && seg[s - 1].int8 && !seg[s].int8))
            return -1;
        rows += seg[s].n_tokens;
        n_logits += seg[s].n_logits;
        if (!seg[s].int8) m_exact = rows;
    }
    if (M <= 0 || rows != M) return -1;
    const lt_kernels *k = lt_kernels_get();
    float *xn = (float *)lt_scratch(LT_SCRATCH_STEP, (size_t)M * (dim + width + H * D + dim + 3 * F) * sizeof(float));
    if (!xn) return -1;
    float *qkv = xn + M * dim, *att = qkv + M * width, *sub = att + M * H * D;
    float *gu = sub + M * dim, *act = gu + M * 2 * F;

    for (int64_t l = 0; l < m->n_layers; l++) {
        const lt_layer *L = &m->layers[l];
        const float *lcos = cos[L->local ? 1 : 0], *lsin = sin[L->local ? 1 : 0];
        if (!lcos || !lsin) return -1;
        for (int64_t i = 0; i < M; i++) rmsnorm(x + i * dim, L->attn_norm, xn + i * dim, dim, m->eps);
        if (project(&L->qkv, xn, qkv, width, M, m_exact, nthreads)) return -1;
        for (int64_t s = 0, row0 = 0; s < nseg; row0 += seg[s].n_tokens, s++) {
            const lt_segment *S = &seg[s];
            for (int64_t i = row0; i < row0 + S->n_tokens; i++) {
                float *row = qkv + i * width;
                if (L->q_norm)
                    for (int64_t h = 0; h < H; h++) rmsnorm(row + h * D, L->q_norm, row + h * D, D, m->eps);
                if (L->k_norm)
                    for (int64_t h = H; h < H + KVH; h++) rmsnorm(row + h * D, L->k_norm, row + h * D, D, m->eps);
                for (int64_t h = 0; h < H + KVH; h++) /* q and k heads */
                    rotate(row + h * D, lcos + i * m->rope_dims, lsin + i * m->rope_dims, m->rope_dims, (int)m->neox);
                for (int64_t h = 0; h < KVH; h++) {
                    const int64_t at = (h * S->capacity + S->start + i - row0) * D;
                    k->to_f16(row + (H + h) * D, S->keys[l] + at, D);
                    k->to_f16(row + (H + KVH + h) * D, S->values[l] + at, D);
                }
            }
        }
        /* every segment's attention in one dispatch of the pool (8 decoding sequences of SmolLM2:
         * 3 tasks each, which left a thread idle per segment) */
        lt_attn_seq seqs[LT_ATTN_SEQS];
        for (int64_t s0 = 0, row0 = 0; s0 < nseg; s0 += LT_ATTN_SEQS) {
            const int64_t ns = nseg - s0 < LT_ATTN_SEQS ? nseg - s0 : LT_ATTN_SEQS;
            for (int64_t j = 0; j < ns; row0 += seg[s0 + j].n_tokens, j++) {
                const lt_segment *S = &seg[s0 + j];
                seqs[j] = (lt_attn_seq){qkv + row0 * width, width, S->keys[l], S->values[l], att + row0 * H * D,
                                        S->n_tokens, S->start, S->capacity};
            }
            if (lt_attention_f16_seqs(seqs, ns, H, KVH, D, L->window, m->scale, nthreads)) return -1;
        }
        if (linear(&L->wo, att, sub, dim, M, m_exact, nthreads)) return -1;
        if (L->post_attn_norm)
            for (int64_t i = 0; i < M; i++) rmsnorm(sub + i * dim, L->post_attn_norm, sub + i * dim, dim, m->eps);
        for (int64_t i = 0; i < M * dim; i++) x[i] = sub[i] + x[i];
        for (int64_t i = 0; i < M; i++) rmsnorm(x + i * dim, L->ffn_norm, xn + i * dim, dim, m->eps);
        if (project(&L->gate_up, xn, gu, 2 * F, M, m_exact, nthreads)) return -1;
        for (int64_t i = 0; i < M; i++) {
            const float *g = gu + i * 2 * F, *u = g + F;
            (m->act == LT_ACT_GELU_TANH ? k->gelu_mul : k->silu_mul)(g, u, act + i * F, F);
        }
        if (linear(&L->down, act, sub, dim, M, m_exact, nthreads)) return -1;
        if (L->post_ffn_norm)
            for (int64_t i = 0; i < M; i++) rmsnorm(sub + i * dim, L->post_ffn_norm, sub + i * dim, dim, m->eps);
        for (int64_t i = 0; i < M * dim; i++) x[i] = sub[i] + x[i];
    }
    if (n_logits == 0) return 0;
    /* The wanted rows, gathered (their residuals are no longer needed in place) */
    int64_t out = 0;
    for (int64_t s = 0, row0 = 0; s < nseg; row0 += seg[s].n_tokens, s++)
        for (int64_t i = row0 + seg[s].n_tokens - seg[s].n_logits; i < row0 + seg[s].n_tokens; i++, out++)
            rmsnorm(x + i * dim, m->out_norm, xn + out * dim, dim, m->eps);
    /* the head's rows all exact: one row per sequence, and what a client samples from */
    if (linear(&m->output, xn, logits, m->vocab, n_logits, n_logits, nthreads)) return -1;
    if (m->softcap > 0.f)
        for (int64_t i = 0; i < n_logits * m->vocab; i++) logits[i] = m->softcap * tanhf(logits[i] / m->softcap);
    return 0;
}

/* One sequence: tokens start .. start + M - 1 on its cache; the logits of its last `n_logits`
 * tokens (0, 1 or M); int8 as lt_segment's. */
LT_EXPORT int lantern_step(const lt_model *m, float *x, int64_t M, int64_t start, uint16_t *const *keys,
                 uint16_t *const *values, int64_t capacity, const float *const *cos, const float *const *sin,
                 float *logits, int64_t n_logits, int int8, int nthreads) {
    const lt_segment one = {M, start, capacity, n_logits, int8 != 0, keys, values};
    return lantern_step_batch(m, x, M, &one, 1, cos, sin, logits, nthreads);
}

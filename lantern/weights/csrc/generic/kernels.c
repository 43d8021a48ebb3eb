/* Portable C kernels: the fallback on every CPU and the oracle the ISA files are tested against
 * (ggml-cpu's *_generic). Plain loops that compilers vectorize at the baseline ISA (SSE2 on
 * x86-64, NEON on ARM64); no intrinsics. */

#include "../blocks.h"
#include "../lantern.h"

#include <math.h>
#include <string.h>

/* Inlined into each type's row kernels with qtype a constant: one loop per type, which the
 * compiler vectorises (at -O3 on Zen 4, 1 thread: Q4_0/Q4_1 ~5x, Q8_0 ~1.3x faster than through
 * the call; with the block geometry constant too, on Zen 3 at M = 1: Q8_0 1.4x, Q4_1 2x, Q4_K
 * 1.1x, the rest as fast). */
LT_INLINE void decode_block(int qtype, const uint8_t *b, int8_t *q, float *scale, float *minv) {
    switch (qtype) {
    case LT_Q4_0: case LT_Q4_1: case LT_Q5_0: case LT_Q5_1: {
        const float d = lt_rd_f16(b);
        const uint8_t *qs;
        uint32_t qh = 0;
        int off = 0;
        minv[0] = 0.f;
        if (qtype == LT_Q4_0) { qs = b + 2; off = -8; }
        else if (qtype == LT_Q4_1) { qs = b + 4; minv[0] = lt_rd_f16(b + 2); }
        else if (qtype == LT_Q5_0) { qs = b + 6; memcpy(&qh, b + 2, 4); off = -16; }
        else { qs = b + 8; memcpy(&qh, b + 4, 4); minv[0] = lt_rd_f16(b + 2); }
        for (int l = 0; l < 16; l++) {
            q[l] = (int8_t)((qs[l] & 15) + 16 * ((qh >> l) & 1) + off);
            q[l + 16] = (int8_t)((qs[l] >> 4) + 16 * ((qh >> (l + 16)) & 1) + off);
        }
        scale[0] = d;
        break;
    }
    case LT_Q8_0:
        memcpy(q, b + 2, 32);
        scale[0] = lt_rd_f16(b);
        minv[0] = 0.f;
        break;
    case LT_Q4_K: case LT_Q5_K: {
        const float d = lt_rd_f16(b), dmin = lt_rd_f16(b + 2);
        uint8_t sc[8], mn[8];
        lt_k4_scale_min(b + 4, sc, mn);
        for (int j = 0; j < 8; j++) { scale[j] = d * (float)sc[j]; minv[j] = -(dmin * (float)mn[j]); }
        const uint8_t *qs = qtype == LT_Q4_K ? b + 16 : b + 48, *qh = b + 16;
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++) {
                int lo = qs[32 * g + l] & 15, hi = qs[32 * g + l] >> 4;
                if (qtype == LT_Q5_K) { lo += 16 * ((qh[l] >> (2 * g)) & 1); hi += 16 * ((qh[l] >> (2 * g + 1)) & 1); }
                q[64 * g + l] = (int8_t)lo;
                q[64 * g + 32 + l] = (int8_t)hi;
            }
        break;
    }
    case LT_IQ4_NL: case LT_IQ4_XS: { /* codes into the table; IQ4_XS: 8 sub-blocks of 32 */
        static const int8_t kv[16] = LT_IQ4_VALUES_INIT;
        const float d = lt_rd_f16(b);
        const int nsub = qtype == LT_IQ4_NL ? 1 : 8;
        const uint8_t *qs = b + (qtype == LT_IQ4_NL ? 2 : 8);
        for (int ib = 0; ib < nsub; ib++) {
            scale[ib] = qtype == LT_IQ4_NL ? d : d * (float)lt_iq4xs_scale(b, ib);
            minv[ib] = 0.f;
            for (int l = 0; l < 16; l++) {
                q[32 * ib + l] = kv[qs[16 * ib + l] & 15];
                q[32 * ib + 16 + l] = kv[qs[16 * ib + l] >> 4];
            }
        }
        break;
    }
    default: { /* Q6_K: weight 128h + 32t + l; see llama.cpp's dequantize_row_q6_K */
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        const float d = lt_rd_f16(b + 208);
        for (int j = 0; j < 16; j++) { scale[j] = d * (float)sc[j]; minv[j] = 0.f; }
        for (int h = 0; h < 2; h++)
            for (int t = 0; t < 4; t++)
                for (int l = 0; l < 32; l++)
                    q[128 * h + 32 * t + l] = (int8_t)((((ql[64 * h + 32 * (t & 1) + l] >> (4 * (t >> 1))) & 15) |
                                                       (((qh[32 * h + l] >> (2 * t)) & 3) << 4)) - 32);
        break;
    }
    }
}

void lt_decode_block(int qtype, const uint8_t *b, int8_t *q, float *scale, float *minv) {
    decode_block(qtype, b, q, scale, minv);
}

/* ----- activations ------------------------------------------------------------------------ */

/* LT_X_Q15 for M rows: per group of 32, qd = max|x| / 16383 and q = round-to-even(x * (16383 /
 * max|x|)) in float32 (the ISA versions compute the same products, so the same q). */
void lt_x_prepare_q15_generic(const float *x, int64_t M, lt_x *xp) {
    int16_t *q = (int16_t *)xp->q;
    float *qd = (float *)xp->qd, *qs = (float *)xp->qs;
    for (int64_t g = 0; g < M * xp->G; g++) {
        const float *p = x + 32 * g;
        float amax = 0.f, probe = 0.f;
        for (int i = 0; i < 32; i++) {
            amax = fabsf(p[i]) > amax ? fabsf(p[i]) : amax;
            probe += p[i] * 0.f; /* NaN when any x is NaN or infinite */
        }
        const float id = amax > 0.f && probe == 0.f ? 16383.f / amax : 0.f;
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) {
            const int32_t v = (int32_t)nearbyintf(p[i] * id);
            q[32 * g + i] = (int16_t)v;
            sum += v;
        }
        /* a NaN or infinite x makes the group's products NaN, never silently 0 */
        qd[g] = probe == 0.f ? amax / 16383.f : NAN;
        qs[g] = qd[g] * (float)sum;
    }
}

/* LT_X_BF16 for M rows (the AVX-512 path's activations; the oracle of its kernels). */
void lt_x_prepare_bf16_generic(const float *x, int64_t M, lt_x *xp) {
    const int64_t K = xp->K, G = xp->G, ld = xp->ld;
    uint16_t *xb = (uint16_t *)xp->bf;
    float *xs = (float *)xp->bs;
    for (int64_t i = 0; i < M * K; i++) xb[i] = lt_f32_to_bf16(x[i]);
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            const float *p = x + m * K + 32 * g;
            const uint16_t *b = xb + m * K + 32 * g;
            float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, b0 = 0.f, b1 = 0.f, b2 = 0.f, b3 = 0.f;
            for (int i = 0; i < 32; i += 4) {
                a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
                b0 += lt_bf16_to_f32(b[i]); b1 += lt_bf16_to_f32(b[i + 1]);
                b2 += lt_bf16_to_f32(b[i + 2]); b3 += lt_bf16_to_f32(b[i + 3]);
            }
            xs[m * ld + g] = (a0 + a1) + (a2 + a3);
            xs[m * ld + ld / 2 + g] = (b0 + b1) + (b2 + b3);
        }
}

/* ----- rows: out[m] = row . x[m0 + m] -------------------------------------------------------
 * Per sub-block s: scale[s] * qd * (sum_i w_i q_i, exact in int32) + minv[s] * qs (Q15), or
 * scale[s] * (sum_i w_i bf16(x_i)) + minv[s] * (sum of x) (BF16), accumulated in float32. */

/* One decoded block's products with the M rows of x, added to out[m]. */
LT_INLINE void block_q15(int qtype, const int8_t *q, const float *scale, const float *minv, const lt_x *x, int64_t m0,
                         int M, int64_t ib, float *out) {
    const int64_t E = lt_block_elems(qtype), K = x->K, G = x->G;
    const int SB = lt_sub_block(qtype);
    for (int m = 0; m < M; m++) {
        const int16_t *xq = x->q + (m0 + m) * K + ib * E;
        const float *qd = x->qd + (m0 + m) * G + ib * E / 32, *qs = x->qs + (m0 + m) * G + ib * E / 32;
        float acc = 0.f;
        for (int s = 0; s < E / SB; s++) {
            int32_t dot = 0;
            for (int i = 0; i < SB; i++) dot += (int32_t)q[s * SB + i] * xq[s * SB + i];
            acc += scale[s] * (qd[s * SB / 32] * (float)dot);
            if (SB == 32 && minv[s] != 0.f) acc += minv[s] * qs[s];
        }
        out[m] += acc;
    }
}

/* Instantiated per type and M (ROW_INSTANCES): qtype, M and the block geometry are constants. */
LT_INLINE void row_q15_impl(int qtype, const uint8_t *row, const lt_x *x, int64_t m0, const int M, float *out) {
    const int64_t E = lt_block_elems(qtype), B = lt_block_bytes(qtype), nb = x->K / E;
    /* IQ4 (a table) and Q5 (a bit per code) write their codes a byte at a time, and the
     * vectorised dot reads 16 at once: it waits for the stores to retire (no store forwarding).
     * So they decode block ib + 1 before block ib's products, by when the stores have retired;
     * one row of IQ4 takes each table value straight into its product instead (llama.cpp's
     * loop). At M = 1 on Zen 3: IQ4_NL 0.75 -> 1.6 G weights/s, Q5_1 0.94 -> 1.19. The others
     * decode into one buffer: ahead, Q8_0 and Q4_1 were 1.4x slower. */
    const int bytewise = qtype == LT_IQ4_NL || qtype == LT_IQ4_XS || qtype == LT_Q5_0 || qtype == LT_Q5_1;
    int8_t q[2][256];
    float scale[2][16], minv[2][16];
    for (int m = 0; m < M; m++) out[m] = 0.f;
    if (qtype == LT_Q8_0 && M == 1) { /* the codes as they are in the block (more rows: 1.3x slower than copied) */
        const float zero = 0.f;
        for (int64_t ib = 0; ib < nb; ib++) {
            const float d = lt_rd_f16(row + ib * B);
            block_q15(qtype, (const int8_t *)(row + ib * B + 2), &d, &zero, x, m0, M, ib, out);
        }
        return;
    }
    if (!bytewise) {
        for (int64_t ib = 0; ib < nb; ib++) {
            decode_block(qtype, row + ib * B, q[0], scale[0], minv[0]);
            block_q15(qtype, q[0], scale[0], minv[0], x, m0, M, ib, out);
        }
        return;
    }
    if (M == 1 && (qtype == LT_IQ4_NL || qtype == LT_IQ4_XS)) { /* block_q15's products and sums, in its order */
        static const int8_t kv[16] = LT_IQ4_VALUES_INIT;
        const int nsub = qtype == LT_IQ4_XS ? 8 : 1;
        for (int64_t ib = 0; ib < nb; ib++) {
            const uint8_t *b = row + ib * B, *qs = b + (qtype == LT_IQ4_NL ? 2 : 8);
            const float d = lt_rd_f16(b);
            float acc = 0.f;
            for (int s = 0; s < nsub; s++) {
                const int16_t *xq = x->q + m0 * x->K + ib * E + 32 * s;
                int32_t dot = 0;
                for (int l = 0; l < 16; l++)
                    dot += kv[qs[16 * s + l] & 15] * xq[l] + kv[qs[16 * s + l] >> 4] * xq[l + 16];
                const float sc = qtype == LT_IQ4_XS ? d * (float)lt_iq4xs_scale(b, s) : d;
                acc += sc * (x->qd[m0 * x->G + ib * E / 32 + s] * (float)dot);
            }
            out[0] += acc;
        }
        return;
    }
    if (nb > 0) decode_block(qtype, row, q[0], scale[0], minv[0]);
    for (int64_t ib = 0; ib < nb; ib++) {
        const int cur = (int)(ib & 1), next = cur ^ 1;
        if (ib + 1 < nb) decode_block(qtype, row + (ib + 1) * B, q[next], scale[next], minv[next]);
        block_q15(qtype, q[cur], scale[cur], minv[cur], x, m0, M, ib, out);
    }
}

/* The bf16 row (LT_X_BF16): the oracle of the AVX-512 BF16 kernels. */
void lt_row_bf16_generic(int qtype, const uint8_t *row, const lt_x *x, int64_t m0, int M, float *out) {
    int64_t E = 32, B = 0;
    lt_block_geometry(qtype, &E, &B);
    const int64_t K = x->K, ld = x->ld;
    const int SB = lt_sub_block(qtype);
    int8_t q[256];
    float scale[16], minv[16];
    for (int m = 0; m < M; m++) out[m] = 0.f;
    for (int64_t ib = 0; ib < K / E; ib++) {
        lt_decode_block(qtype, row + ib * B, q, scale, minv);
        for (int m = 0; m < M; m++) {
            const int64_t r = m0 + m;
            float acc = 0.f;
            for (int s = 0; s < E / SB; s++) {
                const int64_t e0 = ib * E + s * SB;
                float dot = 0.f;
                if (qtype == LT_Q8_0)
                    for (int i = 0; i < SB; i++) dot += (float)q[s * SB + i] * x->f[r * K + e0 + i];
                else
                    for (int i = 0; i < SB; i++) dot += (float)q[s * SB + i] * lt_bf16_to_f32(x->bf[r * K + e0 + i]);
                acc += scale[s] * dot;
                if (minv[s] != 0.f) acc += minv[s] * x->bs[r * ld + e0 / 32];
            }
            out[m] += acc;
        }
    }
}

#define ROW_INSTANCES(name, qt)                                                                               \
    static void name##_1(const uint8_t *r, const lt_x *x, int64_t m0, float *o) { row_q15_impl(qt, r, x, m0, 1, o); } \
    static void name##_2(const uint8_t *r, const lt_x *x, int64_t m0, float *o) { row_q15_impl(qt, r, x, m0, 2, o); } \
    static void name##_3(const uint8_t *r, const lt_x *x, int64_t m0, float *o) { row_q15_impl(qt, r, x, m0, 3, o); } \
    static void name##_4(const uint8_t *r, const lt_x *x, int64_t m0, float *o) { row_q15_impl(qt, r, x, m0, 4, o); } \
    static void name##_8(const uint8_t *r, const lt_x *x, int64_t m0, float *o) { row_q15_impl(qt, r, x, m0, 8, o); }
ROW_INSTANCES(q4_0, LT_Q4_0)
ROW_INSTANCES(q4_1, LT_Q4_1)
ROW_INSTANCES(q5_0, LT_Q5_0)
ROW_INSTANCES(q5_1, LT_Q5_1)
ROW_INSTANCES(q8_0, LT_Q8_0)
ROW_INSTANCES(q4_k, LT_Q4_K)
ROW_INSTANCES(q5_k, LT_Q5_K)
ROW_INSTANCES(q6_k, LT_Q6_K)
ROW_INSTANCES(iq4_nl, LT_IQ4_NL)
ROW_INSTANCES(iq4_xs, LT_IQ4_XS)

/* ----- expansion (prompt chunks) -------------------------------------------------------------
 * The float32 weights are exactly lantern.weights.quants.dequantize's (same operations, same
 * order, unfused); bf16 rounds them to nearest even. */

static void q2k_block_f32(const uint8_t *b, float *y) {
    const float d = lt_rd_f16(b + 80), dmin = lt_rd_f16(b + 82);
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
    const float d = lt_rd_f16(b + 108);
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

/* Instantiated per type (EXPAND_F32 below): qtype and the block geometry constants. */
LT_INLINE void expand_f32_impl(int qtype, const uint8_t *row, int64_t K, float *out) {
    const int64_t E = lt_block_elems(qtype), B = lt_block_bytes(qtype);
    if (qtype == LT_Q2_K || qtype == LT_Q3_K) {
        for (int64_t ib = 0; ib < K / E; ib++)
            (qtype == LT_Q2_K ? q2k_block_f32 : q3k_block_f32)(row + ib * B, out + ib * E);
        return;
    }
    const int SB = lt_sub_block(qtype);
    /* the min is added even where it is zero: -0 + -0 and -0 + +0 keep quants.py's sign of zero */
    const int has_min = qtype == LT_Q4_1 || qtype == LT_Q5_1 || qtype == LT_Q4_K || qtype == LT_Q5_K;
    int8_t q[256];
    float scale[16], minv[16];
    for (int64_t ib = 0; ib < K / E; ib++) {
        decode_block(qtype, row + ib * B, q, scale, minv);
        for (int i = 0; i < E; i++) {
            float w = scale[i / SB] * (float)q[i];
            if (has_min) w = w + minv[i / SB];
            out[ib * E + i] = w;
        }
    }
}

#define EXPAND_F32(suffix, QT)                                                                  \
    static void expand_f32_##suffix(int qtype, const uint8_t *row, int64_t K, float *out) {     \
        (void)qtype;                                                                            \
        expand_f32_impl(QT, row, K, out);                                                       \
    }
LT_EXPANDABLE(EXPAND_F32)
#undef EXPAND_F32

static void expand_bf16_generic(int qtype, const uint8_t *row, int64_t K, uint16_t *out) {
    float buf[256];
    int64_t E = 32, B = 0;
    lt_block_geometry(qtype, &E, &B);
    for (int64_t ib = 0; ib < K / E; ib++) {
        expand_f32_impl(qtype, row + ib * B, E, buf);
        for (int i = 0; i < E; i++) out[ib * E + i] = lt_f32_to_bf16(buf[i]);
    }
}

/* ----- vector helpers ----------------------------------------------------------------------- */

static float exp_sum_generic(float *s, int64_t T, float mx) {
    float sum = 0.f;
    for (int64_t t = 0; t < T; t++) sum += (s[t] = expf(s[t] - mx));
    return sum;
}

static void silu_mul_generic(const float *g, const float *u, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = g[i] / (1.f + expf(-g[i])) * u[i];
}

/* float16 -> float32 without branches, so that a row's loop vectorises (Maratyszcza's FP16
 * method, as ggml's): bit-identical to lt_f16_to_f32 on all 65,536 values but signalling NaNs,
 * which come out quiet. */
LT_INLINE float f16_value(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, two_w = w + w;
    const uint32_t nb = (two_w >> 4) + (0xE0u << 23), db = (two_w >> 17) | (126u << 23);
    float norm, den;
    memcpy(&norm, &nb, 4);
    memcpy(&den, &db, 4);
    norm *= 0x1.0p-112f; /* normal, inf, NaN: the exponent rebased */
    den -= 0.5f;         /* subnormal: exact by a magic bias */
    const float pick = two_w < (1u << 27) ? den : norm;
    uint32_t r;
    memcpy(&r, &pick, 4);
    r |= sign;
    float f;
    memcpy(&f, &r, 4);
    return f;
}

/* Attention spans in plain C (lt_span_fn): each key and value row converted from float16 once
 * for the HN query heads that share it (per head, as the plain path does, Gemma's 4 heads over
 * 1 KV head convert every row 4 times). */
LT_INLINE void attn_span_plain(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T, float scale,
                               float *s, float *part, const int D, const int HN) {
    float qs[LT_ATTN_HEADS][256], row[256];
    for (int j = 0; j < HN; j++)
        for (int d = 0; d < D; d++) qs[j][d] = q[j][d] * scale;
    for (int64_t t = 0; t < T; t++) {
        for (int d = 0; d < D; d++) row[d] = f16_value(k[t * D + d]);
        for (int j = 0; j < HN; j++) {
            float acc = 0.f;
            for (int d = 0; d < D; d++) acc += qs[j][d] * row[d];
            s[j * T + t] = acc;
        }
    }
    for (int j = 0; j < HN; j++) {
        float mx = -INFINITY;
        for (int64_t t = 0; t < T; t++) mx = s[j * T + t] > mx ? s[j * T + t] : mx;
        part[j * (D + 2)] = mx;
        part[j * (D + 2) + 1] = exp_sum_generic(s + j * T, T, mx);
        for (int d = 0; d < D; d++) part[j * (D + 2) + 2 + d] = 0.f;
    }
    for (int64_t t = 0; t < T; t++) {
        for (int d = 0; d < D; d++) row[d] = f16_value(v[t * D + d]);
        for (int j = 0; j < HN; j++) {
            const float w = s[j * T + t];
            float *o = part + j * (D + 2) + 2;
            for (int d = 0; d < D; d++) o[d] += w * row[d];
        }
    }
}

#define SPAN(D, HN)                                                                                             \
    static void attn_span_##D##_##HN(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T,    \
                                     float scale, float *s, float *part) {                                      \
        attn_span_plain(q, k, v, T, scale, s, part, D, HN);                                                     \
    }
SPAN(64, 1) SPAN(64, 2) SPAN(64, 3) SPAN(64, 4)
SPAN(96, 1) SPAN(96, 2) SPAN(96, 3) SPAN(96, 4)
SPAN(128, 1) SPAN(128, 2) SPAN(128, 3) SPAN(128, 4)
SPAN(256, 1) SPAN(256, 2) SPAN(256, 3) SPAN(256, 4)
#undef SPAN

static void gelu_mul_generic(const float *g, const float *u, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = lt_gelu_tanh(g[i]) * u[i];
}

static void to_f16_generic(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = lt_f32_to_f16(src[i]);
}

/* x * y + z rounded once, in plain C on any C library (MinGW's fmaf rounds twice): the product
 * is exact in double, so the double sum can only mislead float's rounding in a halfway case,
 * which its low bits show; the exact error then picks the side (musl's fmaf, round to nearest). */
static float fma_f32(float x, float y, float z) {
    const double xy = (double)x * y, r = xy + z;
    uint64_t u;
    memcpy(&u, &r, 8);
    if ((u & 0x1fffffff) != 0x10000000 || (u >> 52 & 0x7ff) == 0x7ff || (r - xy == z && r - z == xy))
        return (float)r;
    const int neg = (int)(u >> 63);
    const double err = neg == (z > xy) ? xy - r + z : z - r + xy;
    u = neg == (err < 0) ? u + 1 : u - 1;
    double v;
    memcpy(&v, &u, 8);
    return (float)v;
}

/* The prompt micro-kernel (lantern.h), one fused multiply-add at a time, rounded once as the
 * levels' vector FMAs round, so their results equal these bit for bit. Not in the portable
 * table: without FMA hardware this is slow; prompt chunks there expand weights for torch's GEMM
 * (native.py PROMPT_ROUTES). */
void lt_gemm_f32_generic(const float *w, int64_t ldw, int nw, const float *xp, int64_t KC, float *c) {
    for (int i = 0; i < nw; i++)
        for (int m = 0; m < LT_GEMM_MB; m++) {
            float acc = c[i * LT_GEMM_MB + m];
            for (int64_t k = 0; k < KC; k++) acc = fma_f32(w[i * ldw + k], xp[k * LT_GEMM_MB + m], acc);
            c[i * LT_GEMM_MB + m] = acc;
        }
}

/* ----- prompt rows on 8-bit x (lantern.h LT_Q8_WREC / LT_Q8_XREC) ---------------------------- */

/* One K-quant super-block -> its record: u = codes made unsigned (Q6_K + 32: its offset is x's
 * side, lantern.h o_s), the integer sub-scales (per 32; Q6_K per 16) as int16 pairs and as floats,
 * the mins per 32 (Q4_K, Q5_K: -(dmin * m)), d. */
void lt_expand_q8_generic(int qtype, const uint8_t *blk, uint8_t *rec) {
    int8_t q[256];
    float scale[16], minv[16];
    lt_decode_block(qtype, blk, q, scale, minv);
    int32_t *S = (int32_t *)(rec + LT_Q8_W_S);
    float *Sf = (float *)(rec + LT_Q8_W_SF), *mins = (float *)(rec + LT_Q8_W_MINS), d;
    memset(rec + LT_Q8_W_S, 0, LT_Q8_WREC - LT_Q8_W_S);
    if (qtype == LT_Q6_K) {
        d = lt_rd_f16(blk + 208);
        for (int i = 0; i < 256; i++) rec[i] = (uint8_t)(q[i] + 32);
        for (int h = 0; h < 16; h++) {
            const int16_t sc = (int8_t)blk[192 + h];
            S[h] = (int32_t)((uint32_t)(uint16_t)sc | (uint32_t)(uint16_t)sc << 16);
            Sf[h] = (float)sc;
        }
    } else { /* Q4_K, Q5_K */
        uint8_t sc[8], mn[8];
        lt_k4_scale_min(blk + 4, sc, mn);
        d = lt_rd_f16(blk);
        for (int i = 0; i < 256; i++) rec[i] = (uint8_t)q[i];
        for (int g = 0; g < 8; g++) {
            S[g] = (int32_t)((uint32_t)sc[g] | (uint32_t)sc[g] << 16);
            Sf[g] = (float)sc[g];
            mins[g] = minv[g];
        }
    }
    memcpy(rec + LT_Q8_W_D, &d, 4);
}

/* The tile in plain C: the order of lantern.h's lt_gemm_q8_fn, which every level's tile keeps. */
void lt_gemm_q8_generic(const uint8_t *w, int nw, const uint8_t *x, int64_t xstride, int nx, int qtype, float *c,
                        int64_t ldc) {
    const int six = qtype == LT_Q6_K, sub = six ? 16 : 32;
    for (int b = 0; b < nx; b++) {
        const uint8_t *xr = x + b * xstride;
        const int8_t *xq = (const int8_t *)xr;
        const float *xd = (const float *)(xr + LT_Q8_X_D), *xs = (const float *)(xr + LT_Q8_X_S32);
        const int32_t *o32 = (const int32_t *)(xr + LT_Q8_X_O32);
        for (int r = 0; r < nw; r++) {
            const uint8_t *u = w + r * LT_Q8_WREC;
            const float *Sf = (const float *)(u + LT_Q8_W_SF), *mins = (const float *)(u + LT_Q8_W_MINS);
            float d;
            memcpy(&d, u + LT_Q8_W_D, 4);
            for (int l = 0; l < LT_Q8_XROWS; l++) {
                float f = 0.f;
                for (int g = 0; g < 8; g++) {
                    int32_t t = 0;
                    for (int s = 32 * g / sub; s < 32 * (g + 1) / sub; s++) {
                        int32_t isum = six ? o32[8 * s + l] : 0;
                        for (int e = sub * s; e < sub * (s + 1); e++) isum += u[e] * xq[(e / 4 * 8 + l) * 4 + e % 4];
                        t += (int32_t)Sf[s] * isum;
                    }
                    f = fma_f32((float)t, xd[8 * g + l], f);
                }
                float *cl = c + b * ldc + 8 * r + l;
                float v = fma_f32(f, d, *cl);
                for (int g = 0; !six && g < 8; g++) v = fma_f32(mins[g], xs[8 * g + l], v);
                *cl = v;
            }
        }
    }
}

void lt_fill_generic(lt_kernels *k) {
    memset(k, 0, sizeof(*k));
    k->isa = "portable";
    k->x_format = LT_X_Q15;
    k->x_prepare = lt_x_prepare_q15_generic;
#define SET_ROWS(qt, name)                                                                     \
    k->row[qt][0] = name##_1; k->row[qt][1] = name##_2; k->row[qt][2] = name##_3;              \
    k->row[qt][3] = name##_4; k->row[qt][4] = name##_8; k->row_name[qt] = #name "_generic";
    SET_ROWS(LT_Q4_0, q4_0) SET_ROWS(LT_Q4_1, q4_1) SET_ROWS(LT_Q5_0, q5_0) SET_ROWS(LT_Q5_1, q5_1)
    SET_ROWS(LT_Q8_0, q8_0) SET_ROWS(LT_Q4_K, q4_k) SET_ROWS(LT_Q5_K, q5_k) SET_ROWS(LT_Q6_K, q6_k)
    SET_ROWS(LT_IQ4_NL, iq4_nl) SET_ROWS(LT_IQ4_XS, iq4_xs)
#undef SET_ROWS
#define SET_EXPAND(suffix, QT)                                                                  \
    k->expand_f32[QT] = expand_f32_##suffix; k->expand_f32_name[QT] = "expand_f32_generic";      \
    k->expand_bf16[QT] = expand_bf16_generic; k->expand_bf16_name[QT] = "expand_bf16_generic";
    LT_EXPANDABLE(SET_EXPAND)
#undef SET_EXPAND
    static const lt_span_fn spans[LT_ATTN_DIMS][LT_ATTN_HEADS] = {
        {attn_span_64_1, attn_span_64_2, attn_span_64_3, attn_span_64_4},
        {attn_span_96_1, attn_span_96_2, attn_span_96_3, attn_span_96_4},
        {attn_span_128_1, attn_span_128_2, attn_span_128_3, attn_span_128_4},
        {attn_span_256_1, attn_span_256_2, attn_span_256_3, attn_span_256_4}};
    memcpy(k->attn_span, spans, sizeof(spans));
    k->attn_name = "attention_generic";
    k->exp_sum = exp_sum_generic;
    k->silu_mul = silu_mul_generic;
    k->gelu_mul = gelu_mul_generic;
    k->to_f16 = to_f16_generic;
    k->vec_name = "vec_generic";
}

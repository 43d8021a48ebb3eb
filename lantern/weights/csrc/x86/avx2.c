/* AVX2 + FMA + F16C kernels (Haswell, Zen 1-3 and later x86-64): x as 15-bit integers per 32
 * (LT_X_Q15) and exact int32 dot products with the weights' codes (vpmaddwd).
 *
 * The file is compiled with the same flags as every other file; the ISA is switched on for its
 * functions by the pragmas below, and dispatch.c runs them only where it finds AVX2, FMA, F16C.
 *
 * Row kernels: the codes of a block are widened to int16 once for all M rows of x (nibbles and
 * high bits split with shifts and masks on words), then per row of x: vpmaddwd with x's int16
 * codes (exact int32: |code| <= 128, |x| <= 16383), the int32 sums per sub-block converted to
 * float32 and added by one FMA with scale[s] * qd (a broadcast from a small table on the stack);
 * the mins as minv * qs, 8 sub-blocks (or blocks) per FMA. The K-quants read x in even-odd order
 * (lt_x.qeo), so that their codes split into int16 in lane, without vpmovzxbw / vpmovsxbw (about
 * 1.25 cycles each here), and gather a block's 8 sub-block sums into one vector with shuffles
 * (ports the dot products do not use) before one conversion and FMA: in cache, Q6_K 1.45x and
 * Q4_K 1.06x on one row of x. Why vpmaddwd and not vpmaddubsw on the two
 * signed bytes of x: a 15-bit x is two byte products (hi and lo) that each need widening by
 * another vpmaddwd, 5 instructions per 32 weights and row of x against 3 here; the bytes only
 * save part of the codes' widening, which is shared by the M rows. */

#ifndef LT_AVX2_VARIANT /* the file but its end: the row kernels' and tiles' template, included once per variant */
#include "../blocks.h"
#include "../lantern.h"

#ifdef LT_X86
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#if defined(__GNUC__) || defined(__clang__)
/* Make the compiler read values stored to `p` back from memory (a broadcast from memory is a
 * load; from a register, a shuffle on the ports the dot products need), through one pointer it
 * cannot see through: else it hoists each element's address out of the loop into its own
 * register, and spills them (M = 8: 64 addresses, two loads per broadcast). */
LT_INLINE const float *read_back(const float *p) {
    __asm__ volatile("" : "+r"(p) : : "memory");
    return p;
}
/* Keep v as computed: no fusing of the product before it into an FMA (bit-exact expansion). */
#define OPAQUE(v) __asm__("" : "+x"(v))
#else
LT_INLINE const float *read_back(const float *p) { return p; }
#define OPAQUE(v) ((void)0)
#endif

/* 4 bytes at p (any alignment): a broadcast from memory where the caller makes one */
LT_INLINE int32_t rd_i32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Loops with compile-time bounds in the row kernels, unrolled so that the accumulator arrays
 * stay in registers (indexed by constants). */
#if defined(__clang__)
#define UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define UNROLL _Pragma("GCC unroll 16")
#else
#define UNROLL
#endif

LT_INLINE float f16_to_f32(const uint8_t *p) { /* F16C: exact, subnormals included */
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

LT_INLINE __m256i zext16(const uint8_t *p) { return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)); }

/* the int32 pair sums of 16 int16 codes times 16 int16 x */
LT_INLINE __m256i mwd(__m256i c, const int16_t *x) { return _mm256_madd_epi16(c, _mm256_loadu_si256((const __m256i *)x)); }

LT_INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

LT_INLINE int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* ----- activations: LT_X_Q15 ---------------------------------------------------------------- */

/* As lt_x_prepare_q15_generic, 32 elements at a time: the same float32 products x * (16383 /
 * max|x|) rounded to nearest even (cvtps2dq under the default MXCSR = nearbyintf), the low 16
 * bits kept (as the generic's cast), the same qd and qs. */
void lt_x_prepare_q15_avx2(const float *x, int64_t M, lt_x *xp) {
    int16_t *q = (int16_t *)xp->q;
    float *qd = (float *)xp->qd, *qs = (float *)xp->qs;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i lo16 = _mm256_set1_epi32(0xffff);
    for (int64_t g = 0; g < M * xp->G; g++) {
        const float *p = x + 32 * g;
        const __m256 x0 = _mm256_loadu_ps(p), x1 = _mm256_loadu_ps(p + 8), x2 = _mm256_loadu_ps(p + 16),
                     x3 = _mm256_loadu_ps(p + 24);
        /* max(|x|, acc): a NaN |x| leaves acc (maxps returns its second operand), as the generic's > */
        __m256 a = _mm256_setzero_ps();
        a = _mm256_max_ps(_mm256_and_ps(x0, absmask), a);
        a = _mm256_max_ps(_mm256_and_ps(x1, absmask), a);
        a = _mm256_max_ps(_mm256_and_ps(x2, absmask), a);
        a = _mm256_max_ps(_mm256_and_ps(x3, absmask), a);
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amax = _mm_cvtss_f32(m);
        /* NaN when any x is NaN or infinite (x * 0) */
        const __m256 zero = _mm256_setzero_ps();
        const __m256 probe = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(x0, zero), _mm256_mul_ps(x1, zero)),
                                           _mm256_add_ps(_mm256_mul_ps(x2, zero), _mm256_mul_ps(x3, zero)));
        const int finite = _mm256_movemask_ps(_mm256_cmp_ps(probe, zero, _CMP_NEQ_UQ)) == 0;
        const float id = amax > 0.f && finite ? 16383.f / amax : 0.f;
        const __m256 vid = _mm256_set1_ps(id);
        const __m256i v0 = _mm256_cvtps_epi32(_mm256_mul_ps(x0, vid)), v1 = _mm256_cvtps_epi32(_mm256_mul_ps(x1, vid));
        const __m256i v2 = _mm256_cvtps_epi32(_mm256_mul_ps(x2, vid)), v3 = _mm256_cvtps_epi32(_mm256_mul_ps(x3, vid));
        const int32_t sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(v0, v1), _mm256_add_epi32(v2, v3)));
        const __m256i w01 = _mm256_packus_epi32(_mm256_and_si256(v0, lo16), _mm256_and_si256(v1, lo16));
        const __m256i w23 = _mm256_packus_epi32(_mm256_and_si256(v2, lo16), _mm256_and_si256(v3, lo16));
        _mm256_storeu_si256((__m256i *)(q + 32 * g), _mm256_permute4x64_epi64(w01, 0xD8));
        _mm256_storeu_si256((__m256i *)(q + 32 * g + 16), _mm256_permute4x64_epi64(w23, 0xD8));
        qd[g] = finite ? amax / 16383.f : NAN; /* a NaN or infinite x: NaN products, never silently 0 */
        qs[g] = qd[g] * (float)sum;
    }
}

/* The row kernels (and the 8-row tile in decode passes) fetch their weights this many bytes
 * ahead, a block's lines at a time, as they go (lt_kernels.rows_fetch). A task that fetched a
 * whole row ahead before each row (27-72 lines at once on Phi-3's shapes) stalled on the full fill
 * buffers, then left the memory idle while the row's products ran. Phi-3-mini Q4_K_M on Ice Lake
 * (bench/native_ab.py): decode 1.22-1.29x at 2, 4 and 8 KB ahead (1 KB 1.11x), at the machine's
 * streaming bandwidth; 4 sequences 1.13-1.19x; 8 on the 8-row tile (--exact) 1.14-1.18x. */
#define ROW_AHEAD 4096

/* the lines that start in [p + ROW_AHEAD, p + ROW_AHEAD + n) */
LT_INLINE void row_fetch(const uint8_t *p, int64_t n) {
    const uint8_t *q = (const uint8_t *)(((uintptr_t)(p + ROW_AHEAD) + 63) & ~(uintptr_t)63);
    for (; q < p + ROW_AHEAD + n; q += 64) LT_PREFETCH(q);
}

/* ----- rows: out[m] = row . x[m] for m < M (a compile-time constant after inlining) ----------
 * xq: int16 x, rows K apart; xd, xs: qd and qs, rows G apart. Per row of x, NA float32
 * accumulators (M = 1: 4, M = 2: 2) so that the FMAs' latency does not bound one row. */
#define ROW_ARGS                                                                                   \
    const uint8_t *row, int64_t K, const int16_t *xq, const float *xd, const float *xs, const int32_t *s16, int64_t G, \
        float *out
#define NACC(M) ((M) == 1 ? 4 : (M) == 2 ? 2 : 1)

/* Q4_K / Q5_K: a block's 6-bit scales and mins unpacked in one vector (llama.cpp's get_scale_min_k4 on 32-bit words):
 * words (u0, u1, u2) of bytes 4-15 -> (u0 & 0x3f.., (u2 & 0x0f..) | (u0 >> 6 & 3..) << 4,
 * u1 & 0x3f.., (u2 >> 4 & 0x0f..) | (u1 >> 6 & 3..) << 4): scales in bytes 0-7, mins 8-15. */
LT_INLINE __m128i k4_scale_bytes(const uint8_t *blk) {
    const __m128i v = _mm_loadu_si128((const __m128i *)(blk + 4)); /* bytes 16-19: codes, unused */
    const __m128i a = _mm_srlv_epi32(_mm_shuffle_epi32(v, 0x98), _mm_setr_epi32(0, 0, 0, 4)); /* u0 u2 u1 u2>>4 */
    const __m128i b = _mm_shuffle_epi32(v, 0x50);                                              /* u0 u0 u1 u1 */
    const __m128i lo = _mm_and_si128(a, _mm_set1_epi8(0x3f));
    const __m128i hi = _mm_or_si128(_mm_and_si128(a, _mm_set1_epi8(0x0f)), _mm_and_si128(_mm_srli_epi32(b, 2), _mm_set1_epi8(0x30)));
    return _mm_blend_epi32(lo, hi, 0xA);
}

/* Q4_K / Q5_K: d * sc[j] and -(dmin * m[j]) (as lt_decode_block forms them) for one block */
LT_INLINE void k4_scales(const uint8_t *blk, __m256 *sc, __m256 *mn) {
    const __m128i r = k4_scale_bytes(blk);
    int32_t dm;
    memcpy(&dm, blk, 4);
    const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128(dm));
    const __m256 s = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(r));
    const __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(r, 8)));
    *sc = _mm256_mul_ps(_mm256_broadcastss_ps(dd), s);
    *mn = _mm256_xor_ps(_mm256_set1_ps(-0.f), _mm256_mul_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(dd)), m));
}

/* words << s (s >= 0) or >> -s, s a constant after inlining */
LT_INLINE __m256i shift16(__m256i v, int s) {
    return s >= 0 ? _mm256_slli_epi16(v, s) : _mm256_srli_epi16(v, -s);
}

/* Q5_K's high bits, widened once per block for k4_codes (zero for Q4_K) */
LT_INLINE void k4_high(const uint8_t *blk, const int five, __m256i *h0, __m256i *h1) {
    *h0 = five ? zext16(blk + 16) : _mm256_setzero_si256();
    *h1 = five ? zext16(blk + 32) : _mm256_setzero_si256();
}

/* Q4_K / Q5_K: the codes of sub-blocks 2g (a0: weights 0-15, a1: 16-31) and 2g + 1 (c0, c1) of one
 * block as int16 (g a constant after inlining; h0, h1 from k4_high) */
LT_INLINE void k4_codes(const uint8_t *blk, const int g, const int five, __m256i h0, __m256i h1, __m256i *a0,
                        __m256i *a1, __m256i *c0, __m256i *c1) {
    const __m256i m4 = _mm256_set1_epi16(0x000F), b4 = _mm256_set1_epi16(0x0010);
    const uint8_t *qs = blk + (five ? 48 : 16);
    const __m256i v0 = zext16(qs + 32 * g), v1 = zext16(qs + 32 * g + 16);
    *a0 = _mm256_and_si256(v0, m4);
    *a1 = _mm256_and_si256(v1, m4);
    *c0 = _mm256_srli_epi16(v0, 4);
    *c1 = _mm256_srli_epi16(v1, 4);
    if (five) { /* bit 4: bit 2g (2g + 1) of qh */
        *a0 = _mm256_or_si256(*a0, _mm256_and_si256(shift16(h0, 4 - 2 * g), b4));
        *a1 = _mm256_or_si256(*a1, _mm256_and_si256(shift16(h1, 4 - 2 * g), b4));
        *c0 = _mm256_or_si256(*c0, _mm256_and_si256(shift16(h0, 3 - 2 * g), b4));
        *c1 = _mm256_or_si256(*c1, _mm256_and_si256(shift16(h1, 3 - 2 * g), b4));
    }
}

/* The int32 sums of a block's 8 sub-blocks gathered into the 8 lanes of one vector before the
 * conversion, so that the conversion and the FMA are paid once per block and row of x rather than
 * once per sub-block (they share the two ports of the dot products; the shuffles and adds here do
 * not). sums2: a, b (8 partial sums each) -> [a a b b | a a b b]; sums4: [a a b b], [c c d d] ->
 * [a b c d | a b c d]; sums8: [a b c d | a b c d], [e f g h | e f g h] -> [a b c d e f g h]. */
LT_INLINE __m256i sums2(__m256i a, __m256i b) {
    return _mm256_add_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
}
LT_INLINE __m256i sums4(__m256i p, __m256i q) {
    const __m256 pf = _mm256_castsi256_ps(p), qf = _mm256_castsi256_ps(q);
    return _mm256_add_epi32(_mm256_castps_si256(_mm256_shuffle_ps(pf, qf, 0x88)),
                            _mm256_castps_si256(_mm256_shuffle_ps(pf, qf, 0xDD)));
}
LT_INLINE __m256 sums8(__m256i r, __m256i s) {
    return _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_permute2x128_si256(r, s, 0x20), _mm256_permute2x128_si256(r, s, 0x31)));
}

/* Q6_K: the codes (6 bits, unsigned: 32 too many) of half a block (h = 0, 1: 128 weights) as 4
 * vectors of 32 bytes (t = 0..3: weights 128h + 32t + l), made with byte masks on 16-bit shifts. */
LT_INLINE void q6k_half_codes(const uint8_t *blk, int h, __m256i c[4]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    const __m256i l0 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h));
    const __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32));
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
    c[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
    c[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
    c[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
    c[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
}

/* the same, signed: the codes - 32 */
LT_INLINE void q6k_half_bytes(const uint8_t *blk, int h, __m256i c[4]) {
    q6k_half_codes(blk, h, c);
    UNROLL
    for (int t = 0; t < 4; t++) c[t] = _mm256_sub_epi8(c[t], _mm256_set1_epi8(32));
}

/* 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL */

/* IQ4: the table's values of 16 code bytes' low nibbles (*lo: elements 0-15) and high nibbles
 * (*hi: 16-31) as int16 words: vpshufb on the nibbles with the 16-byte table. */
LT_INLINE __m128i iq4_table(void) {
    static const int8_t kv[16] = LT_IQ4_VALUES_INIT;
    return _mm_loadu_si128((const __m128i *)kv);
}

LT_INLINE void iq4_codes16(const uint8_t *qs, __m128i tab, __m256i *lo, __m256i *hi) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs), m4 = _mm_set1_epi8(0x0F);
    *lo = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(tab, _mm_and_si128(v, m4)));
    *hi = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(tab, _mm_and_si128(_mm_srli_epi16(v, 4), m4)));
}

/* The codes of one block as two vectors of 16 words (elements 0-15, 16-31). */
LT_INLINE void q32_codes(const uint8_t *blk, const int qtype, __m256i *lo, __m256i *hi) {
    if (qtype == LT_Q8_0) {
        *lo = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 2)));
        *hi = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(blk + 18)));
        return;
    }
    if (qtype == LT_IQ4_NL) {
        iq4_codes16(blk + 2, iq4_table(), lo, hi);
        return;
    }
    const int qs_off = qtype == LT_Q4_0 ? 2 : qtype == LT_Q4_1 ? 4 : qtype == LT_Q5_0 ? 6 : 8;
    const __m256i v = zext16(blk + qs_off), m4 = _mm256_set1_epi16(0x000F);
    __m256i a = _mm256_and_si256(v, m4), c = _mm256_srli_epi16(v, 4);
    if (qtype == LT_Q4_0) {
        a = _mm256_sub_epi16(a, _mm256_set1_epi16(8));
        c = _mm256_sub_epi16(c, _mm256_set1_epi16(8));
    } else if (qtype == LT_Q5_0 || qtype == LT_Q5_1) {
        int32_t qh;
        memcpy(&qh, blk + (qtype == LT_Q5_0 ? 2 : 4), 4);
        /* word l of the low (high) half: byte l / 8 (2 + l / 8) of qh, tested for bit l % 8 */
        const __m256i bv = _mm256_set1_epi32(qh);
        const __m256i sel = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
        const __m256i bl = _mm256_shuffle_epi8(bv, _mm256_setr_epi64x(0, 0, 0x0101010101010101, 0x0101010101010101));
        const __m256i bh = _mm256_shuffle_epi8(bv, _mm256_setr_epi64x(0x0202020202020202, 0x0202020202020202, 0x0303030303030303, 0x0303030303030303));
        const __m256i hl = _mm256_cmpeq_epi16(_mm256_and_si256(bl, sel), sel), hh = _mm256_cmpeq_epi16(_mm256_and_si256(bh, sel), sel);
        if (qtype == LT_Q5_1) { /* + 16 where the bit is set */
            a = _mm256_or_si256(a, _mm256_and_si256(hl, _mm256_set1_epi16(16)));
            c = _mm256_or_si256(c, _mm256_and_si256(hh, _mm256_set1_epi16(16)));
        } else { /* - 16 where it is clear */
            a = _mm256_add_epi16(a, _mm256_andnot_si256(hl, _mm256_set1_epi16(-16)));
            c = _mm256_add_epi16(c, _mm256_andnot_si256(hh, _mm256_set1_epi16(-16)));
        }
    }
    *lo = a;
    *hi = c;
}

/* The float16 d (low 128 bits) and m (high 128 bits; Q4_1, Q5_1) of 8 consecutive blocks of
 * `bytes` bytes: their first 4 bytes in one gather, the halves sorted */
LT_INLINE __m256i q32_dm8(const uint8_t *base, int64_t bytes) {
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)bytes));
    const __m256i halves = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15,
                                            0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    return _mm256_permute4x64_epi64(_mm256_shuffle_epi8(_mm256_i32gather_epi32((const int *)base, idx, 1), halves), 0xD8);
}

/* IQ4_XS: the 8 scales d * (ls - 32) of one block (ls: 4 bits of scales_l, 2 of scales_h) */
LT_INLINE __m256 iq4xs_scales(const uint8_t *blk) {
    uint32_t sl;
    uint16_t sh;
    memcpy(&sl, blk + 4, 4);
    memcpy(&sh, blk + 2, 2);
    const __m256i lo = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)sl), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                        _mm256_set1_epi32(15));
    const __m256i hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(sh), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                        _mm256_set1_epi32(3));
    const __m256i ls = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
    return _mm256_mul_ps(_mm256_set1_ps(f16_to_f32(blk)), _mm256_cvtepi32_ps(ls));
}

/* x in even-odd order (lt_x.qeo) for these types' row kernels */
#define EVEN_ODD_TYPES (1u << LT_Q4_K | 1u << LT_Q5_K | 1u << LT_Q6_K)

/* ----- decode rows, 8 rows of x in the lanes (lantern.h lt_rows8_fn) ----------------------------
 * Per chunk of 256 weights (8 groups of 32) the LT_ROWS8_NW weight rows are decoded to int16
 * codes per group with one float scale and min (Q6_K: its 16-weight sub-scales multiplied into
 * the codes, |code * scale| <= 4096, so a group of 32 sums to under 2^31 with |x| <= 16383), then
 * per pair of weights: one x vector (the pair for 8 rows) against a broadcast of each weight
 * row's pair. Decoding a chunk before the products keeps the broadcasts' loads clear of the
 * stores that made them (decoding block by block was 0.91x as fast in a first version). */
#define R8W LT_ROWS8_NW
typedef struct {
    LT_ALIGN(32) int16_t codes[8][R8W][32];
    LT_ALIGN(32) float scale[R8W][8];
    LT_ALIGN(32) float minv[R8W][8];
} rows8_chunk;

LT_INLINE void r8_store(rows8_chunk *c, int g, int r, __m256i lo, __m256i hi) {
    _mm256_store_si256((__m256i *)c->codes[g][r], lo);
    _mm256_store_si256((__m256i *)(c->codes[g][r] + 16), hi);
}

/* Weight row r's groups g0 .. g0 + ng - 1 (ng <= 8; 8 from a super-block's start) into c. */
LT_INLINE void r8_decode(const uint8_t *row, int64_t g0, int ng, const int qtype, int r, rows8_chunk *c) {
    const int64_t bytes = lt_block_bytes(qtype);
    if (lt_block_elems(qtype) == 32) {
        const int has_min = qtype == LT_Q4_1 || qtype == LT_Q5_1;
        const uint8_t *base = row + g0 * bytes;
        if (ng == 8) {
            const __m256i hv = q32_dm8(base, bytes);
            _mm256_store_ps(c->scale[r], _mm256_cvtph_ps(_mm256_castsi256_si128(hv)));
            if (has_min) _mm256_store_ps(c->minv[r], _mm256_cvtph_ps(_mm256_extracti128_si256(hv, 1)));
        } else {
            for (int j = 0; j < ng; j++) {
                c->scale[r][j] = f16_to_f32(base + j * bytes);
                if (has_min) c->minv[r][j] = f16_to_f32(base + j * bytes + 2);
            }
        }
        for (int j = 0; j < ng; j++) {
            __m256i lo, hi;
            q32_codes(base + j * bytes, qtype, &lo, &hi);
            r8_store(c, j, r, lo, hi);
        }
        return;
    }
    const uint8_t *blk = row + g0 / 8 * bytes;
    if (qtype == LT_Q4_K || qtype == LT_Q5_K) {
        const int five = qtype == LT_Q5_K;
        __m256 sc, mn;
        k4_scales(blk, &sc, &mn);
        _mm256_store_ps(c->scale[r], sc);
        _mm256_store_ps(c->minv[r], mn);
        __m256i h0, h1;
        k4_high(blk, five, &h0, &h1);
        UNROLL
        for (int g = 0; g < 4; g++) {
            __m256i a0, a1, c0, c1;
            k4_codes(blk, g, five, h0, h1, &a0, &a1, &c0, &c1);
            r8_store(c, 2 * g, r, a0, a1);
            r8_store(c, 2 * g + 1, r, c0, c1);
        }
    } else if (qtype == LT_Q6_K) {
        _mm256_store_ps(c->scale[r], _mm256_set1_ps(f16_to_f32(blk + 208)));
        const int8_t *sc = (const int8_t *)(blk + 192);
        UNROLL
        for (int h = 0; h < 2; h++) {
            __m256i q[4];
            q6k_half_bytes(blk, h, q);
            UNROLL
            for (int t = 0; t < 4; t++) {
                const int s = 8 * h + 2 * t;
                const __m256i lo = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_castsi256_si128(q[t])), _mm256_set1_epi16(sc[s]));
                const __m256i hi = _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm256_extracti128_si256(q[t], 1)), _mm256_set1_epi16(sc[s + 1]));
                r8_store(c, 4 * h + t, r, lo, hi);
            }
        }
    } else { /* IQ4_XS */
        _mm256_store_ps(c->scale[r], iq4xs_scales(blk));
        const __m128i tab = iq4_table();
        for (int g = 0; g < 8; g++) {
            __m256i lo, hi;
            iq4_codes16(blk + 8 + 16 * g, tab, &lo, &hi);
            r8_store(c, g, r, lo, hi);
        }
    }
}

/* The row kernels and the tiles (this 8-row one, and the 8-bit prompt tile): written once (the end
 * of this file, after "#else: LT_AVX2_VARIANT") and compiled once per variant, this file including
 * itself with VAR_VNNI, VAR_ATTR (the variant's target) and VAR_NAME (its names). The vnni variant,
 * where the CPU has AVX-512 VNNI with VL (Ice Lake, Tiger Lake, Zen 4; lt_cpu_avx512_vnni), is
 * vpdpwssd for each vpmaddwd and vpaddd pair (row kernels, 8-row tile) and vpdpbusd for vpmaddubsw
 * (8-bit tile); the same int32 sums, so the same results. LANTERN_AVX2_VNNI=0 keeps the plain ones
 * (tests, comparisons). */
#define LT_AVX2_VARIANT 1
#define VAR_VNNI 0
#define VAR_ATTR
#define VAR_NAME(name) name
#include "avx2.c"
#undef VAR_VNNI
#undef VAR_ATTR
#undef VAR_NAME
#define VAR_VNNI 1
#define VAR_ATTR LT_TARGET("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")
#define VAR_NAME(name) name##_vnni
#include "avx2.c"
#undef VAR_VNNI
#undef VAR_ATTR
#undef VAR_NAME
/* AVX-VNNI: the same instructions VEX-encoded (Alder Lake and later Intel client cores, which have
 * no AVX-512), from compilers that know them (gcc 11, clang 12; MSVC keeps the plain tiles). No CPU
 * of the test machines has it: built with LT_AVXVNNI_ON_AVX512, this variant's code runs on AVX-512
 * VNNI's instructions, so that tests/test_native_isa.py checks it bit for bit on such a CPU, and
 * that test checks the real build's avxvnni functions hold VEX instructions only. */
#if defined(__has_include)
#if __has_include(<avxvnniintrin.h>)
#define LT_HAVE_AVXVNNI 1
#endif
#endif
#ifdef LT_HAVE_AVXVNNI
#define VAR_VNNI 2
#ifdef LT_AVXVNNI_ON_AVX512
#define VAR_ATTR LT_TARGET("avx2,fma,f16c,avx512f,avx512vl,avx512vnni")
#else
#define VAR_ATTR LT_TARGET("avx2,fma,f16c,avxvnni")
#endif
#define VAR_NAME(name) name##_avxvnni
#include "avx2.c"
#undef VAR_VNNI
#undef VAR_ATTR
#undef VAR_NAME
#endif

/* ----- expansion (prompt chunks) --------------------------------------------------------------
 * Bit-identical to the generic: w = scale * (float)q, then w + minv for the types with mins,
 * zero or not (two roundings: OPAQUE keeps the compiler from fusing them). */

/* 8 weights from 8 int32 codes */
LT_INLINE void emit8(float *dst, __m256i q, __m256 s, __m256 mv, int add_min) {
    __m256 w = _mm256_mul_ps(s, _mm256_cvtepi32_ps(q));
    if (add_min) {
        OPAQUE(w);
        w = _mm256_add_ps(w, mv);
    }
    _mm256_storeu_ps(dst, w);
}

/* 16 weights from 16 int16 codes, one scale (and min) */
LT_INLINE void emit16(float *dst, __m256i q, float s, float mv, const int add_min) {
    const __m256 sv = _mm256_set1_ps(s), mvv = _mm256_set1_ps(mv);
    emit8(dst, _mm256_cvtepi16_epi32(_mm256_castsi256_si128(q)), sv, mvv, add_min);
    emit8(dst + 8, _mm256_cvtepi16_epi32(_mm256_extracti128_si256(q, 1)), sv, mvv, add_min);
}

/* One block of any type lantern expands -> E floats. */
LT_INLINE void expand_block(int qtype, const uint8_t *blk, float *y) {
    switch (qtype) {
    case LT_Q4_0: case LT_Q4_1: case LT_Q5_0: case LT_Q5_1: case LT_Q8_0: case LT_IQ4_NL: {
        __m256i lo, hi;
        const int has_min = qtype == LT_Q4_1 || qtype == LT_Q5_1;
        const float d = f16_to_f32(blk), mv = has_min ? f16_to_f32(blk + 2) : 0.f;
        if (qtype == LT_Q4_0) q32_codes(blk, LT_Q4_0, &lo, &hi);
        else if (qtype == LT_IQ4_NL) q32_codes(blk, LT_IQ4_NL, &lo, &hi);
        else if (qtype == LT_Q4_1) q32_codes(blk, LT_Q4_1, &lo, &hi);
        else if (qtype == LT_Q5_0) q32_codes(blk, LT_Q5_0, &lo, &hi);
        else if (qtype == LT_Q5_1) q32_codes(blk, LT_Q5_1, &lo, &hi);
        else q32_codes(blk, LT_Q8_0, &lo, &hi);
        emit16(y, lo, d, mv, has_min);
        emit16(y + 16, hi, d, mv, has_min);
        break;
    }
    case LT_Q4_K: case LT_Q5_K: {
        const int five = qtype == LT_Q5_K;
        LT_ALIGN(32) float sc[8];
        LT_ALIGN(32) float mn[8];
        __m256 s, m;
        k4_scales(blk, &s, &m);
        _mm256_store_ps(sc, s);
        _mm256_store_ps(mn, m);
        const uint8_t *qs = blk + (five ? 48 : 16);
        const __m256i m4 = _mm256_set1_epi16(0x000F), b4 = _mm256_set1_epi16(0x0010);
        __m256i h0 = _mm256_setzero_si256(), h1 = _mm256_setzero_si256();
        if (five) { h0 = zext16(blk + 16); h1 = zext16(blk + 32); }
        for (int g = 0; g < 4; g++) {
            const __m256i v0 = zext16(qs + 32 * g), v1 = zext16(qs + 32 * g + 16);
            __m256i a0 = _mm256_and_si256(v0, m4), a1 = _mm256_and_si256(v1, m4);
            __m256i c0 = _mm256_srli_epi16(v0, 4), c1 = _mm256_srli_epi16(v1, 4);
            if (five) {
                const int sa = 4 - 2 * g, sb = 3 - 2 * g;
                const __m128i ca = _mm_cvtsi32_si128(sa >= 0 ? sa : -sa), cb = _mm_cvtsi32_si128(sb >= 0 ? sb : -sb);
                a0 = _mm256_or_si256(a0, _mm256_and_si256(sa >= 0 ? _mm256_sll_epi16(h0, ca) : _mm256_srl_epi16(h0, ca), b4));
                a1 = _mm256_or_si256(a1, _mm256_and_si256(sa >= 0 ? _mm256_sll_epi16(h1, ca) : _mm256_srl_epi16(h1, ca), b4));
                c0 = _mm256_or_si256(c0, _mm256_and_si256(sb >= 0 ? _mm256_sll_epi16(h0, cb) : _mm256_srl_epi16(h0, cb), b4));
                c1 = _mm256_or_si256(c1, _mm256_and_si256(sb >= 0 ? _mm256_sll_epi16(h1, cb) : _mm256_srl_epi16(h1, cb), b4));
            }
            emit16(y + 64 * g, a0, sc[2 * g], mn[2 * g], 1);
            emit16(y + 64 * g + 16, a1, sc[2 * g], mn[2 * g], 1);
            emit16(y + 64 * g + 32, c0, sc[2 * g + 1], mn[2 * g + 1], 1);
            emit16(y + 64 * g + 48, c1, sc[2 * g + 1], mn[2 * g + 1], 1);
        }
        break;
    }
    case LT_Q6_K: {
        const float d = f16_to_f32(blk + 208);
        float S[16];
        for (int j = 0; j < 16; j++) S[j] = d * (float)(int8_t)blk[192 + j];
        const __m256i m4 = _mm256_set1_epi16(0x000F), m30 = _mm256_set1_epi16(0x0030), k32 = _mm256_set1_epi16(32);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
            for (int half = 0; half < 2; half++) {
                const __m256i A = zext16(ql + 16 * half), B = zext16(ql + 32 + 16 * half), H = zext16(qh + 16 * half);
                __m256i c[4];
                c[0] = _mm256_or_si256(_mm256_and_si256(A, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30));
                c[1] = _mm256_or_si256(_mm256_and_si256(B, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30));
                c[2] = _mm256_or_si256(_mm256_srli_epi16(A, 4), _mm256_and_si256(H, m30));
                c[3] = _mm256_or_si256(_mm256_srli_epi16(B, 4), _mm256_and_si256(_mm256_srli_epi16(H, 2), m30));
                for (int t = 0; t < 4; t++)
                    emit16(y + 128 * h + 32 * t + 16 * half, _mm256_sub_epi16(c[t], k32), S[8 * h + 2 * t + half], 0.f, 0);
            }
        }
        break;
    }
    case LT_IQ4_XS: {
        LT_ALIGN(32) float sc[8];
        _mm256_store_ps(sc, iq4xs_scales(blk));
        const __m128i tab = iq4_table();
        for (int ib = 0; ib < 8; ib++) {
            __m256i lo, hi;
            iq4_codes16(blk + 8 + 16 * ib, tab, &lo, &hi);
            emit16(y + 32 * ib, lo, sc[ib], 0.f, 0);
            emit16(y + 32 * ib + 16, hi, sc[ib], 0.f, 0);
        }
        break;
    }
    case LT_Q2_K: { /* per 16: dl * q - ml, q 2 bits of qs[32h + l] at 2j */
        const float d = f16_to_f32(blk + 80), dmin = f16_to_f32(blk + 82);
        const uint8_t *qs = blk + 16;
        const __m256i m3 = _mm256_set1_epi32(3);
        for (int h = 0; h < 2; h++)
            for (int l0 = 0; l0 < 32; l0 += 8) {
                const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 32 * h + l0)));
                for (int j = 0; j < 4; j++) {
                    const int e0 = 128 * h + 32 * j + l0;
                    const uint8_t sc = blk[e0 / 16];
                    const __m256 dl = _mm256_set1_ps(d * (float)(sc & 15)), ml = _mm256_set1_ps(dmin * (float)(sc >> 4));
                    __m256 w = _mm256_mul_ps(dl, _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, 2 * j), m3)));
                    OPAQUE(w);
                    _mm256_storeu_ps(y + e0, _mm256_sub_ps(w, ml));
                }
            }
        break;
    }
    default: { /* Q3_K: per 16: dl * q, q 2 bits of qs minus 4 where the hmask bit is clear */
        const uint8_t *hm = blk, *qs = blk + 32, *s = blk + 96;
        const float d = f16_to_f32(blk + 108);
        float dl[16];
        for (int i = 0; i < 16; i++) {
            const int k = i & 3, sh = 2 * (i >> 2);
            const int lo = i < 4 ? s[k] & 15 : i < 8 ? s[4 + k] & 15 : i < 12 ? s[k] >> 4 : s[4 + k] >> 4;
            const int v = lo | (((s[8 + k] >> sh) & 3) << 4);
            dl[i] = d * (float)(int8_t)(uint8_t)(v - 32);
        }
        const __m256i m3 = _mm256_set1_epi32(3), one = _mm256_set1_epi32(1), four = _mm256_set1_epi32(4);
        for (int h = 0; h < 2; h++)
            for (int l0 = 0; l0 < 32; l0 += 8) {
                const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 32 * h + l0)));
                const __m256i hv = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(hm + l0)));
                for (int j = 0; j < 4; j++) {
                    const int e0 = 128 * h + 32 * j + l0;
                    __m256i q = _mm256_and_si256(_mm256_srli_epi32(v, 2 * j), m3);
                    const __m256i hb = _mm256_and_si256(_mm256_srli_epi32(hv, 4 * h + j), one);
                    q = _mm256_sub_epi32(q, _mm256_andnot_si256(_mm256_slli_epi32(hb, 2), four)); /* - 4 where clear */
                    _mm256_storeu_ps(y + e0, _mm256_mul_ps(_mm256_set1_ps(dl[e0 / 16]), _mm256_cvtepi32_ps(q)));
                }
            }
        break;
    }
    }
}

/* One function per type (qtype and the block geometry constants: no switch per block). SmolLM2's
 * 64-token prompt at avx2 spent 13% of its time expanding Q4_1 blocks through the switch. */
#define EXPAND_F32(suffix, QT)                                                                  \
    static void expand_f32_##suffix(int qtype, const uint8_t *row, int64_t K, float *out) {     \
        (void)qtype;                                                                            \
        for (int64_t ib = 0; ib < K / lt_block_elems(QT); ib++)                                 \
            expand_block(QT, row + ib * lt_block_bytes(QT), out + ib * lt_block_elems(QT));    \
    }
LT_EXPANDABLE(EXPAND_F32)
#undef EXPAND_F32

/* 8 floats -> bf16 as lt_f32_to_bf16: round to nearest even, NaN -> 0x7fc0 (in the low words) */
LT_INLINE __m256i bf16_rne(__m256 v) {
    const __m256i b = _mm256_castps_si256(v);
    const __m256i r = _mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1))));
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_blendv_epi8(_mm256_srli_epi32(r, 16), _mm256_set1_epi32(0x7fc0), nan);
}

static void expand_bf16_avx2(int qtype, const uint8_t *row, int64_t K, uint16_t *out) {
    int64_t E = 32, B = 0;
    lt_block_geometry(qtype, &E, &B);
    LT_ALIGN(32) float buf[256];
    for (int64_t ib = 0; ib < K / E; ib++) {
        expand_block(qtype, row + ib * B, buf);
        for (int i = 0; i < E; i += 16) {
            const __m256i p = _mm256_packus_epi32(bf16_rne(_mm256_load_ps(buf + i)), bf16_rne(_mm256_load_ps(buf + i + 8)));
            _mm256_storeu_si256((__m256i *)(out + ib * E + i), _mm256_permute4x64_epi64(p, 0xD8));
        }
    }
}

/* ----- prompt micro-kernel (lantern.h lt_gemm_f32_fn) --------------------------------------------
 * NW weight rows against 16 rows of x: 2 x NW accumulators of 8 rows of x, each weight broadcast
 * once per k; the loop is bound by the two FMA pipes (12 FMAs per k at NW = 6). */
LT_INLINE void gemm_tile(const float *w, int64_t ldw, const int NW, const float *xp, int64_t KC, float *c) {
    __m256 acc[LT_GEMM_NW][2];
    UNROLL
    for (int i = 0; i < NW; i++) {
        acc[i][0] = _mm256_loadu_ps(c + i * LT_GEMM_MB);
        acc[i][1] = _mm256_loadu_ps(c + i * LT_GEMM_MB + 8);
    }
    for (int64_t k = 0; k < KC; k++) {
        const __m256 x0 = _mm256_loadu_ps(xp + k * LT_GEMM_MB), x1 = _mm256_loadu_ps(xp + k * LT_GEMM_MB + 8);
        UNROLL
        for (int i = 0; i < NW; i++) {
            const __m256 b = _mm256_broadcast_ss(w + i * ldw + k);
            acc[i][0] = _mm256_fmadd_ps(b, x0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(b, x1, acc[i][1]);
        }
    }
    UNROLL
    for (int i = 0; i < NW; i++) {
        _mm256_storeu_ps(c + i * LT_GEMM_MB, acc[i][0]);
        _mm256_storeu_ps(c + i * LT_GEMM_MB + 8, acc[i][1]);
    }
}

static void gemm_f32_avx2(const float *w, int64_t ldw, int nw, const float *xp, int64_t KC, float *c) {
    switch (nw) {
    case 6: gemm_tile(w, ldw, 6, xp, KC, c); break;
    case 5: gemm_tile(w, ldw, 5, xp, KC, c); break;
    case 4: gemm_tile(w, ldw, 4, xp, KC, c); break;
    case 3: gemm_tile(w, ldw, 3, xp, KC, c); break;
    case 2: gemm_tile(w, ldw, 2, xp, KC, c); break;
    default: gemm_tile(w, ldw, 1, xp, KC, c); break;
    }
}

/* lt_expand_q8_generic's records, with vectors: the codes as whole bytes, the sub-scales, the
 * mins of Q4_K and Q5_K (bit for bit: the same float32 products). */
static void expand_q8_avx2(int qtype, const uint8_t *blk, uint8_t *rec) {
    int32_t *S = (int32_t *)(rec + LT_Q8_W_S);
    float *Sf = (float *)(rec + LT_Q8_W_SF), *mins = (float *)(rec + LT_Q8_W_MINS), d;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    if (qtype == LT_Q6_K) {
        __m256i c[4];
        for (int h = 0; h < 2; h++) { /* the codes as stored: already unsigned (code - 32 + 32) */
            q6k_half_codes(blk, h, c);
            UNROLL
            for (int t = 0; t < 4; t++) _mm256_storeu_si256((__m256i *)(rec + 128 * h + 32 * t), c[t]);
        }
        d = f16_to_f32(blk + 208);
        for (int h = 0; h < 16; h += 8) { /* S: the int8 sub-scale in both int16 halves */
            const __m256i sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 192 + h)));
            _mm256_storeu_si256((__m256i *)(S + h), _mm256_or_si256(_mm256_and_si256(sc, _mm256_set1_epi32(0xFFFF)),
                                                                   _mm256_slli_epi32(sc, 16)));
            _mm256_storeu_ps(Sf + h, _mm256_cvtepi32_ps(sc));
        }
    } else { /* Q4_K, Q5_K */
        const int five = qtype == LT_Q5_K;
        const uint8_t *qs = blk + (five ? 48 : 16);
        const __m256i hb = five ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        const __m256i b4 = _mm256_set1_epi8(0x10);
        for (int g = 0; g < 4; g++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            if (five) { /* bit 2g of qh[l] -> bit 4 of weight 64g + l; bit 2g + 1 -> of 64g + 32 + l */
                lo = _mm256_or_si256(lo, _mm256_and_si256(shift16(hb, 4 - 2 * g), b4));
                hi = _mm256_or_si256(hi, _mm256_and_si256(shift16(hb, 3 - 2 * g), b4));
            }
            _mm256_storeu_si256((__m256i *)(rec + 64 * g), lo);
            _mm256_storeu_si256((__m256i *)(rec + 64 * g + 32), hi);
        }
        const __m256i sc = _mm256_cvtepu8_epi32(k4_scale_bytes(blk));
        __m256 dsc, mn; /* mn: the mins as the row kernels form them; the record keeps S and d apart */
        k4_scales(blk, &dsc, &mn);
        (void)dsc;
        d = f16_to_f32(blk);
        _mm256_storeu_si256((__m256i *)S, _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16)));
        _mm256_storeu_ps(Sf, _mm256_cvtepi32_ps(sc));
        _mm256_storeu_ps(mins, mn);
    }
    memcpy(rec + LT_Q8_W_D, &d, 4);
}

/* ----- vector helpers ----------------------------------------------------------------------------
 * Cephes' expf: x = n ln2 + r (|r| <= ln2 / 2, ln2 in two parts), exp(r) by a degree-7
 * polynomial, times 2^n built in two halves (so that n down to -150 gives expf's subnormals);
 * relative error about 1 ulp. Inputs below -103.9 give 0. */
LT_INLINE __m256 exp_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-103.9720840454f)), _mm256_set1_ps(88.7228317261f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    /* 2^n = 2^n1 * 2^n2, n1 = n >> 1, both in float's normal range for n in [-150, 128] */
    const __m256i ni = _mm256_cvtps_epi32(n), n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, _mm256_set1_epi32(127)), 23));
    const __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, p1), p2);
}

/* s[t] = exp(s[t] - mx) for t < T; returns the sum. */
static float exp_sum_avx2(float *s, int64_t T, float mx) {
    const __m256 m = _mm256_set1_ps(mx);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t t = 0;
    for (; t + 16 <= T; t += 16) {
        const __m256 e0 = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + t), m));
        const __m256 e1 = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + t + 8), m));
        _mm256_storeu_ps(s + t, e0);
        _mm256_storeu_ps(s + t + 8, e1);
        a0 = _mm256_add_ps(a0, e0);
        a1 = _mm256_add_ps(a1, e1);
    }
    for (; t + 8 <= T; t += 8) {
        const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + t), m));
        _mm256_storeu_ps(s + t, e);
        a0 = _mm256_add_ps(a0, e);
    }
    if (t < T) {
        LT_ALIGN(32) float tmp[8] = {0};
        const int n = (int)(T - t);
        for (int i = 0; i < n; i++) tmp[i] = s[t + i];
        const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_load_ps(tmp), m));
        _mm256_store_ps(tmp, e);
        for (int i = 0; i < n; i++) s[t + i] = tmp[i];
        for (int i = n; i < 8; i++) tmp[i] = 0.f;
        a1 = _mm256_add_ps(a1, _mm256_load_ps(tmp));
    }
    return hsum(_mm256_add_ps(a0, a1));
}

/* out[i] = g[i] / (1 + exp(-g[i])) * u[i] for i < n: SiLU(gate) times up */
static void silu_mul_avx2(const float *g, const float *u, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.f), e)), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.f + expf(-g[i])) * u[i];
}

static void gelu_mul_avx2(const float *g, const float *u, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 z = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f),
                                       _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), x), _mm256_mul_ps(x, x), x));
        const __m256 e = exp_avx2(_mm256_mul_ps(_mm256_set1_ps(-2.f), z));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.f), e)), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = lt_gelu_tanh(g[i]) * u[i];
}

static void to_f16_avx2(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = lt_f32_to_f16(src[i]);
}

/* ----- attention spans (attention.c) ------------------------------------------------------------- */

LT_INLINE __m256 ldh(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* lanes summed: (sum v0, sum v1, sum v2, sum v3) */
LT_INLINE __m128 hsum4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
    const __m256 a = _mm256_hadd_ps(v0, v1), b = _mm256_hadd_ps(v2, v3);
    const __m256 c = _mm256_hadd_ps(a, b); /* per 128: v0 v1 v2 v3 */
    return _mm_add_ps(_mm256_castps256_ps128(c), _mm256_extractf128_ps(c, 1));
}

/* Scores, softmax and weighted values of HN query heads over T positions of one KV head; writes
 * (max, sum of exp, unnormalised outputs) per head to part. DV = D / 8 vectors per row.
 * Scores: U positions at a time (HN * U accumulators), q read from a scaled copy in L1. Values:
 * the outputs in chunks of CV vectors per head kept in registers over all T positions (one to
 * eight passes over the span's values). */
LT_INLINE void attn_span(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T, float scale,
                         float *s, float *part, const int DV, const int HN) {
    const int64_t D = 8 * DV;
    LT_ALIGN(32) float qv[LT_ATTN_HEADS][256];
    UNROLL
    for (int j = 0; j < HN; j++)
        UNROLL
        for (int d = 0; d < DV; d++) _mm256_store_ps(qv[j] + 8 * d, _mm256_mul_ps(_mm256_loadu_ps(q[j] + 8 * d), _mm256_set1_ps(scale)));
    const int U = HN == 1 ? 8 : HN == 2 ? 4 : 2;
    int64_t t = 0;
    for (; t + U <= T; t += U) {
        __m256 acc[LT_ATTN_HEADS][8];
        UNROLL
        for (int u = 0; u < U; u++) {
            const uint16_t *kr = k + (t + u) * D;
            const __m256 k0 = ldh(kr);
            UNROLL
            for (int j = 0; j < HN; j++) acc[j][u] = _mm256_mul_ps(_mm256_load_ps(qv[j]), k0);
        }
        UNROLL
        for (int d = 1; d < DV; d++)
            UNROLL
            for (int u = 0; u < U; u++) {
                const __m256 kd = ldh(k + (t + u) * D + 8 * d);
                UNROLL
                for (int j = 0; j < HN; j++) acc[j][u] = _mm256_fmadd_ps(_mm256_load_ps(qv[j] + 8 * d), kd, acc[j][u]);
            }
        UNROLL
        for (int j = 0; j < HN; j++) {
            if (U >= 4)
                UNROLL
                for (int u = 0; u < U; u += 4) _mm_storeu_ps(s + j * T + t + u, hsum4(acc[j][u], acc[j][u + 1], acc[j][u + 2], acc[j][u + 3]));
            else { s[j * T + t] = hsum(acc[j][0]); s[j * T + t + 1] = hsum(acc[j][1]); }
        }
    }
    for (; t < T; t++) {
        const uint16_t *kr = k + t * D;
        UNROLL
        for (int j = 0; j < HN; j++) {
            __m256 a = _mm256_mul_ps(_mm256_load_ps(qv[j]), ldh(kr));
            UNROLL
            for (int d = 1; d < DV; d++) a = _mm256_fmadd_ps(_mm256_load_ps(qv[j] + 8 * d), ldh(kr + 8 * d), a);
            s[j * T + t] = hsum(a);
        }
    }
    UNROLL
    for (int j = 0; j < HN; j++) {
        __m256 mv = _mm256_set1_ps(-INFINITY);
        int64_t u = 0;
        for (; u + 8 <= T; u += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(s + j * T + u));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float mx = _mm_cvtss_f32(m4);
        for (; u < T; u++) mx = s[j * T + u] > mx ? s[j * T + u] : mx;
        part[j * (D + 2)] = mx;
        part[j * (D + 2) + 1] = exp_sum_avx2(s + j * T, T, mx);
    }
    /* outputs per pass over the values: 8-12 accumulators (CV vectors per head), CV dividing DV */
    const int CV = HN == 1 ? (DV <= 12 ? DV : 8) : HN == 2 ? (DV == 12 ? 6 : 4) : HN == 3 ? 4 : 2;
    UNROLL
    for (int c = 0; c < DV; c += CV) {
        __m256 o[LT_ATTN_HEADS][12];
        UNROLL
        for (int j = 0; j < HN; j++)
            UNROLL
            for (int d = 0; d < CV; d++) o[j][d] = _mm256_setzero_ps();
        for (t = 0; t < T; t++) {
            __m256 w[LT_ATTN_HEADS];
            UNROLL
            for (int j = 0; j < HN; j++) w[j] = _mm256_broadcast_ss(s + j * T + t);
            UNROLL
            for (int d = 0; d < CV; d++) {
                const __m256 vd = ldh(v + t * D + 8 * (c + d));
                UNROLL
                for (int j = 0; j < HN; j++) o[j][d] = _mm256_fmadd_ps(w[j], vd, o[j][d]);
            }
        }
        UNROLL
        for (int j = 0; j < HN; j++)
            UNROLL
            for (int d = 0; d < CV; d++) _mm256_storeu_ps(part + j * (D + 2) + 2 + 8 * (c + d), o[j][d]);
    }
}

#define SPAN(DV, HN)                                                                                     \
    static void attn_span_##DV##_##HN(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T, \
                                      float scale, float *s, float *part) {                               \
        attn_span(q, k, v, T, scale, s, part, DV, HN);                                                    \
    }
SPAN(8, 1) SPAN(8, 2) SPAN(8, 3) SPAN(8, 4)
SPAN(12, 1) SPAN(12, 2) SPAN(12, 3) SPAN(12, 4)
SPAN(16, 1) SPAN(16, 2) SPAN(16, 3) SPAN(16, 4)
SPAN(32, 1) SPAN(32, 2) SPAN(32, 3) SPAN(32, 4)

void lt_fill_avx2(lt_kernels *k) {
    k->x_format = LT_X_Q15;
    k->x_prepare = lt_x_prepare_q15_avx2;
    k->even_odd_types = EVEN_ODD_TYPES;
    /* the 8-bit tile's decode tasks (each of 4 weight rows fetched a block at a time): Phi-3-mini
     * Q4_K_M's 8-sequence pass on Ice Lake (bench/native_ab.py) 1.05-1.07x at 8 KB against 4 KB
     * (plain and vnni), 16 KB as 8. (On Zen 3, when a task fetched each tile's rows whole before
     * it, 4 KB was the best of 2-16 KB.) The row kernels and the 8-row tile fetch as they go
     * (ROW_AHEAD). */
    k->fetch_long = 8192;
    k->rows_fetch = 1;
    /* the row kernels and the tiles (8-row and 8-bit): their vnni variant where the CPU has
     * AVX-512 VNNI, else their avxvnni one where it has AVX-VNNI, unless LANTERN_AVX2_VNNI=0 */
    const char *vnni_env = getenv("LANTERN_AVX2_VNNI");
    const int off = vnni_env && vnni_env[0] == '0';
    enum { PLAIN, VNNI, AVXVNNI } variant = off ? PLAIN : lt_cpu_avx512_vnni() ? VNNI : PLAIN;
#ifdef LT_HAVE_AVXVNNI
    if (!off && variant == PLAIN && lt_cpu_avx_vnni()) variant = AVXVNNI;
#ifdef LT_AVXVNNI_ON_AVX512
    if (variant == VNNI) variant = AVXVNNI; /* tests: the avxvnni variant's code in the vnni one's place */
#endif
#endif
#define SET_ROWS(qt, fn, label, sfx, name)                                                                     \
    k->row[qt][0] = fn##_1##sfx; k->row[qt][1] = fn##_2##sfx; k->row[qt][2] = fn##_3##sfx;                     \
    k->row[qt][3] = fn##_4##sfx; k->row[qt][4] = fn##_8##sfx; k->row_name[qt] = label "_avx2" name;
#define SET_TILES(sfx, name)                                                                                   \
    SET_ROWS(LT_Q4_0, rq40, "q4_0", sfx, name) SET_ROWS(LT_Q4_1, rq41, "q4_1", sfx, name)                      \
    SET_ROWS(LT_Q5_0, rq50, "q5_0", sfx, name) SET_ROWS(LT_Q5_1, rq51, "q5_1", sfx, name)                      \
    SET_ROWS(LT_Q8_0, rq80, "q8_0", sfx, name) SET_ROWS(LT_Q4_K, rq4k, "q4_k", sfx, name)                      \
    SET_ROWS(LT_Q5_K, rq5k, "q5_k", sfx, name) SET_ROWS(LT_Q6_K, rq6k, "q6_k", sfx, name)                      \
    SET_ROWS(LT_IQ4_NL, riq4nl, "iq4_nl", sfx, name) SET_ROWS(LT_IQ4_XS, riq4xs, "iq4_xs", sfx, name)          \
    k->rows8[LT_Q4_0] = rows8_q4_0##sfx; k->rows8[LT_Q4_1] = rows8_q4_1##sfx; k->rows8[LT_Q5_0] = rows8_q5_0##sfx; \
    k->rows8[LT_Q5_1] = rows8_q5_1##sfx; k->rows8[LT_Q8_0] = rows8_q8_0##sfx; k->rows8[LT_Q4_K] = rows8_q4_k##sfx; \
    k->rows8[LT_Q5_K] = rows8_q5_k##sfx; k->rows8[LT_Q6_K] = rows8_q6_k##sfx;                                  \
    k->rows8[LT_IQ4_NL] = rows8_iq4_nl##sfx; k->rows8[LT_IQ4_XS] = rows8_iq4_xs##sfx;                          \
    k->rows8_name = "rows8_avx2" name;                                                                         \
    k->gemm_q8 = gemm_q8##sfx;                                                                                 \
    k->gemm_q8_name = "gemm_q8_avx2" name;
    switch (variant) {
    case VNNI: SET_TILES(_vnni, "_vnni") break;
#ifdef LT_HAVE_AVXVNNI
    case AVXVNNI: SET_TILES(_avxvnni, "_avxvnni") break;
#endif
    default: SET_TILES(, "") break;
    }
#undef SET_TILES
#undef SET_ROWS
#define SET_EXPAND(suffix, QT)                                                                  \
    k->expand_f32[QT] = expand_f32_##suffix; k->expand_f32_name[QT] = "expand_f32_avx2";         \
    k->expand_bf16[QT] = expand_bf16_avx2; k->expand_bf16_name[QT] = "expand_bf16_avx2";
    LT_EXPANDABLE(SET_EXPAND)
#undef SET_EXPAND
    k->gemm_f32 = gemm_f32_avx2;
    k->gemm_name = "gemm_f32_avx2";
    k->expand_q8[LT_Q4_K] = k->expand_q8[LT_Q5_K] = k->expand_q8[LT_Q6_K] = expand_q8_avx2;
    static const lt_span_fn spans[LT_ATTN_DIMS][LT_ATTN_HEADS] = {
        {attn_span_8_1, attn_span_8_2, attn_span_8_3, attn_span_8_4},
        {attn_span_12_1, attn_span_12_2, attn_span_12_3, attn_span_12_4},
        {attn_span_16_1, attn_span_16_2, attn_span_16_3, attn_span_16_4},
        {attn_span_32_1, attn_span_32_2, attn_span_32_3, attn_span_32_4}};
    memcpy(k->attn_span, spans, sizeof(spans));
    k->attn_name = "attention_avx2";
    k->exp_sum = exp_sum_avx2;
    k->silu_mul = silu_mul_avx2;
    k->gelu_mul = gelu_mul_avx2;
    k->to_f16 = to_f16_avx2;
    k->vec_name = "vec_avx2";
}

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif /* LT_X86 */

#else /* LT_AVX2_VARIANT: the row kernels and the tiles, included above once per variant */

/* One product of a pair of weights (w, a broadcast) with the pair for 8 rows of x (xv), added to
 * the chain of its weight row. Plain: vpmaddwd and vpaddd onto one chain (kept one chain: else
 * the compiler regroups the 64 products into a tree that spills them all to the stack, 0.7x).
 * vnni: vpdpwssd, whose latency on one chain bounds the loop (0.94-0.96x the plain on Ice
 * Lake), so odd pairs go to a second chain t, added at the group's end: in cache on Ice Lake
 * 1.11-1.16x the plain (bench/rows_vs_ggml.py --m 8: Q4_1, Q6_K, Q4_K), Phi-3's 8-sequence pass
 * about 1.07x (bench/native_ab.py, as noisy as that). */
#if VAR_VNNI == 2 && !defined(LT_AVXVNNI_ON_AVX512)
#define VAR_DPWSSD _mm256_dpwssd_avx_epi32
#define VAR_DPBUSD _mm256_dpbusd_avx_epi32
#else
#define VAR_DPWSSD _mm256_dpwssd_epi32
#define VAR_DPBUSD _mm256_dpbusd_epi32
#endif
#if VAR_VNNI
#if defined(__GNUC__) || defined(__clang__)
#define VAR_KEEP(v) __asm__("" : "+v"(v)) /* as OPAQUE, in any vector register the variant has */
#else
#define VAR_KEEP(v) ((void)0)
#endif
#define R8_DOT(s, t, odd, xv, w)                                                                   \
    do {                                                                                           \
        if (odd) { t = VAR_DPWSSD(t, xv, _mm256_set1_epi32(w)); VAR_KEEP(t); }                         \
        else { s = VAR_DPWSSD(s, xv, _mm256_set1_epi32(w)); VAR_KEEP(s); }                             \
    } while (0)
#else
#define R8_DOT(s, t, odd, xv, w)                                                                   \
    do {                                                                                           \
        (void)(t);                                                                                 \
        s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_set1_epi32(w), xv));                      \
        OPAQUE(s);                                                                                 \
    } while (0)
#endif

/* ----- rows: out[m] = row . x[m] (lantern.h lt_row_fn), per variant --------------------------------
 * Each pair of products, vpmaddwd and vpaddd, is one vpmaddwd and one vpdpwssd in the vnni
 * variants: the same int32 sums, so the same bits. Phi-3-mini Q4_K_M decode on Ice Lake
 * (bench/native_ab.py, one sequence): 1.032-1.039x the plain kernels. */
#if VAR_VNNI
#define MWD2(p, c, x) VAR_DPWSSD(p, c, _mm256_loadu_si256((const __m256i *)(x)))
#else
#define MWD2(p, c, x) _mm256_add_epi32(p, mwd(c, x))
#endif

/* Q4_K / Q5_K on x in even-odd order (lt_x.qeo): a 32-byte load of a block's codes holds sub-blocks
 * 2g (low nibbles) and 2g + 1 (high nibbles); as 16 words, word j holds weights 2j and 2j + 1, so
 * masks and shifts give each sub-block's even and odd weights as int16, in lane. */
VAR_ATTR LT_INLINE void VAR_NAME(q4k_impl)(ROW_ARGS, const int M, const int five) {
    const int64_t bytes = five ? 176 : 144, nb = K / 256;
    (void)s16;
    const __m256i m4 = _mm256_set1_epi16(0x000F), b4 = _mm256_set1_epi16(0x0010);
    __m256 acc[8];
    UNROLL
    for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * bytes;
        row_fetch(blk, bytes);
        __m256 sc, mn;
        k4_scales(blk, &sc, &mn);
        UNROLL
        for (int m = 0; m < M; m++) acc[m] = _mm256_fmadd_ps(mn, _mm256_loadu_ps(xs + m * G + 8 * b), acc[m]);
        const __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        const uint8_t *qs = blk + (five ? 48 : 16);
        __m256i pair[8], quad[8][2];
        UNROLL
        for (int g = 0; g < 4; g++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * g));
            __m256i e0 = _mm256_and_si256(v, m4), o0 = _mm256_and_si256(_mm256_srli_epi16(v, 8), m4);
            __m256i e1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), o1 = _mm256_srli_epi16(v, 12);
            if (five) { /* bit 4: bit 2g (sub-block 2g) and 2g + 1 of each weight's qh byte */
                e0 = _mm256_or_si256(e0, _mm256_and_si256(shift16(qh, 4 - 2 * g), b4));
                o0 = _mm256_or_si256(o0, _mm256_and_si256(shift16(qh, -4 - 2 * g), b4));
                e1 = _mm256_or_si256(e1, _mm256_and_si256(shift16(qh, 3 - 2 * g), b4));
                o1 = _mm256_or_si256(o1, _mm256_and_si256(shift16(qh, -5 - 2 * g), b4));
            }
            UNROLL
            for (int m = 0; m < M; m++) {
                const int16_t *x = xq + m * K + b * 256 + 64 * g;
                const __m256i p = sums2(MWD2(mwd(e0, x), o0, x + 16), MWD2(mwd(e1, x + 32), o1, x + 48));
                if (g % 2 == 0)
                    pair[m] = p;
                else
                    quad[m][g / 2] = sums4(pair[m], p);
            }
        }
        UNROLL
        for (int m = 0; m < M; m++)
            acc[m] = _mm256_fmadd_ps(sums8(quad[m][0], quad[m][1]), _mm256_mul_ps(sc, _mm256_loadu_ps(xd + m * G + 8 * b)), acc[m]);
    }
    UNROLL
    for (int m = 0; m < M; m++) out[m] = hsum(acc[m]);
}

/* Q6_K on x in even-odd order (lt_x.qeo): sub-blocks of 16, scales d * int8. The even (odd)
 * weights of 32 are words 0-7 of sub-block 2u and 8-15 of 2u + 1, so a group's dot product has
 * sub-block 2u in its low 128 bits and 2u + 1 in its high ones; a half block's 8 sub-block sums
 * end in one vector as [0 2 4 6 | 1 3 5 7], the order its scales are shuffled to. The codes are
 * multiplied as stored (code + 32), and 32 * x's sums per 16 (lt_x.s16, in that order) taken off
 * each sub-block's int32 sum: the same sums, two subtractions per 32 weights fewer (Q6_K in cache
 * 1.10x, Phi-3-mini Q4_K_M decode 1.02x on Ice Lake). */
VAR_ATTR LT_INLINE void VAR_NAME(q6k_impl)(ROW_ARGS, const int M) {
    const int64_t nb = K / 256;
    (void)xs;
    const __m256i lo8 = _mm256_set1_epi16(0x00FF);
    const __m128i order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    __m256 acc[8];
    UNROLL
    for (int m = 0; m < M; m++) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * 210;
        row_fetch(blk, 210);
        const __m256 d = _mm256_set1_ps(f16_to_f32(blk + 208));
        const __m128i sc8 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(blk + 192)), order);
        UNROLL
        for (int h = 0; h < 2; h++) {
            __m256i c[4], pair[8], quad[8][2];
            q6k_half_codes(blk, h, c);
            UNROLL
            for (int t = 0; t < 4; t++) {
                const __m256i e = _mm256_and_si256(c[t], lo8), o = _mm256_srli_epi16(c[t], 8); /* code + 32 */
                UNROLL
                for (int m = 0; m < M; m++) {
                    const int16_t *x = xq + m * K + b * 256 + 128 * h + 32 * t;
                    const __m256i p = MWD2(mwd(e, x), o, x + 16);
                    if (t % 2 == 0)
                        pair[m] = p;
                    else
                        quad[m][t / 2] = sums2(pair[m], p);
                }
            }
            const __m256 s = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h ? _mm_srli_si128(sc8, 8) : sc8)));
            UNROLL
            for (int m = 0; m < M; m++) {
                const __m256 qd = _mm256_broadcast_ps((const __m128 *)(xd + m * G + 8 * b + 4 * h));
                const __m256i off = _mm256_loadu_si256((const __m256i *)(s16 + m * K / 16 + 16 * b + 8 * h));
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(sums4(quad[m][0], quad[m][1]), off)),
                                         _mm256_mul_ps(s, qd), acc[m]);
            }
        }
    }
    UNROLL
    for (int m = 0; m < M; m++) out[m] = hsum(acc[m]);
}

/* One block into acc for the M rows of x, with d * qd of row m at sq[m * stride]. */
VAR_ATTR LT_INLINE void VAR_NAME(q32_block)(const uint8_t *blk, const int qtype, const int16_t *x, int64_t K, const float *sq,
                         int stride, __m256 *acc, int ld, const int M) {
    __m256i lo, hi;
    q32_codes(blk, qtype, &lo, &hi);
    UNROLL
    for (int m = 0; m < M; m++) {
        const __m256i d = MWD2(mwd(lo, x + m * K), hi, x + m * K + 16);
        acc[m * ld] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_broadcast_ss(sq + m * stride), acc[m * ld]);
    }
}

/* Blocks go 8 at a time: their d (and m) converted together (q32_dm8), d * qd per row of x to a
 * table, the mins as one FMA of 8 blocks. The last nb % 8 blocks one at a time. */
VAR_ATTR LT_INLINE void VAR_NAME(q32_impl)(ROW_ARGS, const int M, const int qtype) {
    const int NA = NACC(M);
    (void)s16;
    const int64_t bytes = lt_block_bytes(qtype), nb = K / 32;
    const int has_min = qtype == LT_Q4_1 || qtype == LT_Q5_1;
    __m256 acc[8][4];
    UNROLL
    for (int m = 0; m < M; m++)
        UNROLL
        for (int a = 0; a < NA; a++) acc[m][a] = _mm256_setzero_ps();
    int64_t c0 = 0;
    for (; c0 + 8 <= nb; c0 += 8) {
        const uint8_t *base = row + c0 * bytes;
        row_fetch(base, 8 * bytes);
        const __m256i hv = q32_dm8(base, bytes);
        const __m256 dv = _mm256_cvtph_ps(_mm256_castsi256_si128(hv));
        LT_ALIGN(32) float sq[8][8];
        UNROLL
        for (int m = 0; m < M; m++) {
            _mm256_store_ps(sq[m], _mm256_mul_ps(dv, _mm256_loadu_ps(xd + m * G + c0)));
            if (has_min)
                acc[m][NA - 1] = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(hv, 1)), _mm256_loadu_ps(xs + m * G + c0), acc[m][NA - 1]);
        }
        const float *sqb = read_back(sq[0]);
        UNROLL
        for (int i = 0; i < 8; i += NA)
            UNROLL
            for (int u = 0; u < NA; u++) VAR_NAME(q32_block)(base + (i + u) * bytes, qtype, xq + (c0 + i + u) * 32, K, sqb + i + u, 8, &acc[0][u], 4, M);
    }
    float tail[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (; c0 < nb; c0++) {
        const uint8_t *blk = row + c0 * bytes;
        row_fetch(blk, bytes);
        const float d = f16_to_f32(blk), mv = has_min ? f16_to_f32(blk + 2) : 0.f;
        float sq[8];
        UNROLL
        for (int m = 0; m < M; m++) {
            sq[m] = d * xd[m * G + c0];
            if (has_min) tail[m] += mv * xs[m * G + c0];
        }
        VAR_NAME(q32_block)(blk, qtype, xq + c0 * 32, K, sq, 1, &acc[0][0], 4, M);
    }
    UNROLL
    for (int m = 0; m < M; m++) {
        __m256 s = acc[m][0];
        UNROLL
        for (int a = 1; a < NA; a++) s = _mm256_add_ps(s, acc[m][a]);
        out[m] = hsum(s) + tail[m];
    }
}

/* IQ4_XS: sub-blocks of 32 (qs[16 ib ..]: low nibbles elements 0-15, high 16-31), two at a
 * time: one vpshufb per 32 codes on the 32 bytes of sub-blocks 2g and 2g + 1. */
VAR_ATTR LT_INLINE void VAR_NAME(iq4xs_impl)(ROW_ARGS, const int M) {
    const int NA = NACC(M);
    (void)s16;
    const int64_t nb = K / 256;
    (void)xs;
    const __m256i tab = _mm256_broadcastsi128_si256(iq4_table()), m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[8][4];
    UNROLL
    for (int m = 0; m < M; m++)
        UNROLL
        for (int a = 0; a < NA; a++) acc[m][a] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * 136;
        row_fetch(blk, 136);
        const __m256 sc = iq4xs_scales(blk);
        LT_ALIGN(32) float sq[8][8]; /* per row of x: scale[s] * qd[s] */
        UNROLL
        for (int m = 0; m < M; m++) _mm256_store_ps(sq[m], _mm256_mul_ps(sc, _mm256_loadu_ps(xd + m * G + 8 * b)));
        const float *sqb = read_back(sq[0]);
        UNROLL
        for (int g = 0; g < 4; g++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 8 + 32 * g));
            /* per 128-bit lane: lo = elements 0-15, hi = 16-31 of sub-block 2g (low lane), 2g + 1 (high) */
            const __m256i lo = _mm256_shuffle_epi8(tab, _mm256_and_si256(v, m4));
            const __m256i hi = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
            const __m256i a0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(lo)), a1 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(hi));
            const __m256i c0 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(lo, 1)), c1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(hi, 1));
            UNROLL
            for (int m = 0; m < M; m++) {
                const int16_t *x = xq + m * K + b * 256 + 64 * g;
                const __m256i d0 = MWD2(mwd(a0, x), a1, x + 16);
                const __m256i d1 = MWD2(mwd(c0, x + 32), c1, x + 48);
                acc[m][(2 * g) % NA] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_broadcast_ss(sqb + 8 * m + 2 * g), acc[m][(2 * g) % NA]);
                acc[m][(2 * g + 1) % NA] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_broadcast_ss(sqb + 8 * m + 2 * g + 1), acc[m][(2 * g + 1) % NA]);
            }
        }
    }
    UNROLL
    for (int m = 0; m < M; m++) {
        __m256 s = acc[m][0];
        UNROLL
        for (int a = 1; a < NA; a++) s = _mm256_add_ps(s, acc[m][a]);
        out[m] = hsum(s);
    }
}

#define ROW_ARGS_X const uint8_t *row, const lt_x *x, int64_t m0, float *out
#define ROW_PASS(q) row, x->K, x->q + m0 * x->K, x->qd + m0 * x->G, x->qs + m0 * x->G, q##_s16(x, m0), x->G, out
#define q_s16(x, m0) NULL
#define qeo_s16(x, m0) ((x)->s16 + (m0) * ((x)->K / 16))
#define INSTANCES_OF(name, call, q)                                  \
    VAR_ATTR static void VAR_NAME(name##_1)(ROW_ARGS_X) { call(ROW_PASS(q), 1); }       \
    VAR_ATTR static void VAR_NAME(name##_2)(ROW_ARGS_X) { call(ROW_PASS(q), 2); }       \
    VAR_ATTR static void VAR_NAME(name##_3)(ROW_ARGS_X) { call(ROW_PASS(q), 3); }       \
    VAR_ATTR static void VAR_NAME(name##_4)(ROW_ARGS_X) { call(ROW_PASS(q), 4); }       \
    VAR_ATTR static void VAR_NAME(name##_8)(ROW_ARGS_X) { call(ROW_PASS(q), 8); }
#define INSTANCES(name, call) INSTANCES_OF(name, call, q)
#define INSTANCES_EO(name, call) INSTANCES_OF(name, call, qeo) /* x in even-odd order: EVEN_ODD_TYPES */
#define Q4K(args, M) VAR_NAME(q4k_impl)(args, M, 0)
#define Q5K(args, M) VAR_NAME(q4k_impl)(args, M, 1)
#define Q6K(args, M) VAR_NAME(q6k_impl)(args, M)
#define Q40(args, M) VAR_NAME(q32_impl)(args, M, LT_Q4_0)
#define Q41(args, M) VAR_NAME(q32_impl)(args, M, LT_Q4_1)
#define Q50(args, M) VAR_NAME(q32_impl)(args, M, LT_Q5_0)
#define Q51(args, M) VAR_NAME(q32_impl)(args, M, LT_Q5_1)
#define Q80(args, M) VAR_NAME(q32_impl)(args, M, LT_Q8_0)
#define IQ4NL(args, M) VAR_NAME(q32_impl)(args, M, LT_IQ4_NL)
#define IQ4XS(args, M) VAR_NAME(iq4xs_impl)(args, M)
INSTANCES_EO(rq4k, Q4K)
INSTANCES_EO(rq5k, Q5K)
INSTANCES_EO(rq6k, Q6K)
INSTANCES(rq40, Q40)
INSTANCES(rq41, Q41)
INSTANCES(rq50, Q50)
INSTANCES(rq51, Q51)
INSTANCES(rq80, Q80)
INSTANCES(riq4nl, IQ4NL)
INSTANCES(riq4xs, IQ4XS)

#undef MWD2
#undef ROW_ARGS_X
#undef ROW_PASS
#undef q_s16
#undef qeo_s16
#undef INSTANCES_OF
#undef INSTANCES
#undef INSTANCES_EO
#undef Q4K
#undef Q5K
#undef Q6K
#undef Q40
#undef Q41
#undef Q50
#undef Q51
#undef Q80
#undef IQ4NL
#undef IQ4XS

VAR_ATTR LT_INLINE void VAR_NAME(rows8_impl)(const uint8_t *w, int64_t rowbytes, const lt_x *x, int64_t xb0, int64_t nxb, float *y,
                                              int64_t ldy, int64_t m1, const int qtype) {
    const int has_min = qtype == LT_Q4_1 || qtype == LT_Q5_1 || qtype == LT_Q4_K || qtype == LT_Q5_K;
    const int64_t G = x->G, K = x->K;
    rows8_chunk ch;
    LT_ALIGN(32) float c[LT_ROWS8_XB][R8W][8]; /* the sums so far, per block and weight row */
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
        const int ng = G - g0 < 8 ? (int)(G - g0) : 8;
        UNROLL
        for (int r = 0; r < R8W; r++) {
            if (nxb == 1) /* a decode pass (prompts' tiles use each chunk for several blocks of x) */
                row_fetch(w + r * rowbytes + g0 * 32 * rowbytes / K, ng * 32 * rowbytes / K);
            r8_decode(w + r * rowbytes, g0, ng, qtype, r, &ch);
        }
        for (int64_t b = 0; b < nxb; b++) {
            const int16_t *xq = x->p8 + (xb0 + b) * 8 * K + g0 * 256;
            const float *qd = x->qd8 + ((xb0 + b) * G + g0) * 8, *qs = x->qs8 + ((xb0 + b) * G + g0) * 8;
            __m256 acc[R8W];
            UNROLL
            for (int r = 0; r < R8W; r++) acc[r] = g0 ? _mm256_load_ps(c[b][r]) : _mm256_setzero_ps();
            for (int j = 0; j < ng; j++) {
                const int32_t *wp = (const int32_t *)read_back((const float *)ch.codes[j][0]);
                __m256i s[R8W], t[R8W];
                UNROLL
                for (int r = 0; r < R8W; r++) s[r] = t[r] = _mm256_setzero_si256();
                UNROLL
                for (int p = 0; p < 16; p++) {
                    const __m256i xv = _mm256_load_si256((const __m256i *)(xq + 256 * j + 16 * p));
                    UNROLL
                    for (int r = 0; r < R8W; r++) R8_DOT(s[r], t[r], p % 2, xv, wp[r * 16 + p]);
                }
#if VAR_VNNI
                UNROLL
                for (int r = 0; r < R8W; r++) s[r] = _mm256_add_epi32(s[r], t[r]);
#endif
                const __m256 qdj = _mm256_loadu_ps(qd + 8 * j);
                UNROLL
                for (int r = 0; r < R8W; r++) {
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[r]), _mm256_mul_ps(_mm256_broadcast_ss(&ch.scale[r][j]), qdj), acc[r]);
                    if (has_min) acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&ch.minv[r][j]), _mm256_loadu_ps(qs + 8 * j), acc[r]);
                }
            }
            UNROLL
            for (int r = 0; r < R8W; r++) _mm256_store_ps(c[b][r], acc[r]);
        }
    }
    /* per block, the 4 x 8 sums transposed to 8 rows of y, 4 weight rows each (unpacks and shuffles;
     * reading c back as floats stalled on the forwarding from its vector stores: 5% of a prompt) */
    for (int64_t b = 0; b < nxb; b++) {
        const __m256 v0 = _mm256_load_ps(c[b][0]), v1 = _mm256_load_ps(c[b][1]);
        const __m256 v2 = _mm256_load_ps(c[b][2]), v3 = _mm256_load_ps(c[b][3]);
        const __m256 t0 = _mm256_unpacklo_ps(v0, v1), t1 = _mm256_unpackhi_ps(v0, v1);
        const __m256 t2 = _mm256_unpacklo_ps(v2, v3), t3 = _mm256_unpackhi_ps(v2, v3);
        const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                             _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
        for (int j = 0; j < 8; j++) {
            const int64_t m = 8 * (xb0 + b) + j;
            if (m >= m1) break;
            _mm_storeu_ps(y + m * ldy, j < 4 ? _mm256_castps256_ps128(u[j]) : _mm256_extractf128_ps(u[j - 4], 1));
        }
    }
}

#define ROWS8(suffix, QT)                                                                                  \
    VAR_ATTR static void VAR_NAME(rows8_##suffix)(const uint8_t *w, int64_t rowbytes, const lt_x *x, int64_t xb0,  \
                                                int64_t nxb, float *y, int64_t ldy, int64_t m1) {          \
        VAR_NAME(rows8_impl)(w, rowbytes, x, xb0, nxb, y, ldy, m1, QT);                                     \
    }
ROWS8(q4_0, LT_Q4_0)
ROWS8(q4_1, LT_Q4_1)
ROWS8(q5_0, LT_Q5_0)
ROWS8(q5_1, LT_Q5_1)
ROWS8(q8_0, LT_Q8_0)
ROWS8(q4_k, LT_Q4_K)
ROWS8(q5_k, LT_Q5_K)
ROWS8(q6_k, LT_Q6_K)
ROWS8(iq4_nl, LT_IQ4_NL)
ROWS8(iq4_xs, LT_IQ4_XS)
#undef ROWS8

/* ----- prompt rows on 8-bit x (lantern.h lt_gemm_q8_fn) ------------------------------------------
 * NW (1, 2) weight records against NX (1-4) records of 8 rows of x, the rows in the lanes: per 4
 * weights a broadcast of their codes, and per record of x one vpmaddubsw (unsigned codes times int8
 * x: 32 products) summed in int16 over a run of quads that cannot overflow (Q4_K 8, Q5_K 4, Q6_K 2:
 * 2 * 63 * 127 * 2 < 2^15), then one vpmaddwd by the run's sub-scale, a conversion and an FMA by
 * x's scales per group of 32: 2.4 instructions per 32 products where the first tile, 6 rows of x
 * along its lanes' groups, took 4 (bench/native/int8_tile.c). vnni: vpdpbusd for the products, which
 * sums into int32 directly, the int32 sums of a sub-block times S in float (exact, < 2^24; the two
 * halves of a Q6_K group in one FMA, rounded once as the conversion of their int32 sum is). */
#if VAR_VNNI
#define Q8_BX(qtype) 4
#else
#define Q8_BX(qtype) ((qtype) == LT_Q4_K ? 4 : 2) /* x records per pass: int16 runs and int32 sums in 16 registers */
#endif
VAR_ATTR LT_INLINE void VAR_NAME(q8_tile)(const uint8_t *w, const int NW, const uint8_t *x, int64_t xstride, const int NX,
                                      const int qtype, float *c, int64_t ldc) {
    const int six = qtype == LT_Q6_K;
    __m256 f[LT_Q8_NW1][LT_Q8_NX];
    UNROLL
    for (int r = 0; r < NW; r++)
        UNROLL
        for (int b = 0; b < NX; b++) f[r][b] = _mm256_setzero_ps();
    for (int g = 0; g < 8; g++) {
        __m256 v[LT_Q8_NW1][LT_Q8_NX];
        /* run: quads summed before their sub-scale is applied (vnni: a sub-block; plain: as many
         * as int16 holds); the sub-scale of the run ending at quad q: sub(q) */
#if VAR_VNNI
        const int run = six ? 4 : 8;
#else
        const int run = qtype == LT_Q4_K ? 8 : qtype == LT_Q5_K ? 4 : 2;
#endif
#define Q8_SUB(q) (six ? 2 * g + (q) / 4 : g)
/* Q6_K's code offset, x's side (lantern.h o_s): the start of a sub-block's int32 sum (vnni), or of
 * a pair of quads' int16 one (plain) */
#define Q8_O32(b, s) _mm256_load_si256((const __m256i *)(x + (b) * xstride + LT_Q8_X_O32) + (s))
#define Q8_O16(b, p) _mm256_load_si256((const __m256i *)(x + (b) * xstride + LT_Q8_X_O16) + (p))
        __m256i t[LT_Q8_NW1][LT_Q8_NX];
#if VAR_VNNI
        __m256i t2[LT_Q8_NW1]; /* one record of x: odd quads on a second chain (vpdpbusd's latency) */
#else
        __m256i u[LT_Q8_NW1][LT_Q8_NX];
#endif
        UNROLL
        for (int q = 0; q < 8; q++) {
            __m256i wv[LT_Q8_NW1];
            UNROLL
            for (int r = 0; r < NW; r++) wv[r] = _mm256_set1_epi32(rd_i32(w + r * LT_Q8_WREC + 32 * g + 4 * q));
            UNROLL
            for (int b = 0; b < NX; b++) {
                const __m256i xv = _mm256_load_si256((const __m256i *)(x + b * xstride + (8 * g + q) * 32));
                UNROLL
                for (int r = 0; r < NW; r++) {
#if VAR_VNNI
                    if (NX == 1 && q % 2) t2[r] = VAR_DPBUSD(q % run > 1 ? t2[r] : _mm256_setzero_si256(), wv[r], xv);
                    else t[r][b] = VAR_DPBUSD(q % run ? t[r][b] : six ? Q8_O32(b, Q8_SUB(q)) : _mm256_setzero_si256(), wv[r], xv);
#else
                    const __m256i p = _mm256_maddubs_epi16(wv[r], xv);
                    t[r][b] = q % run ? _mm256_add_epi16(t[r][b], p) : six ? _mm256_add_epi16(Q8_O16(b, 4 * g + q / 2), p) : p;
#endif
                }
            }
            if (q % run != run - 1) continue;
            UNROLL
            for (int r = 0; r < NW; r++) {
#if VAR_VNNI
                const __m256 sf = _mm256_broadcast_ss((const float *)(w + r * LT_Q8_WREC + LT_Q8_W_SF) + Q8_SUB(q));
                if (NX == 1) t[r][0] = _mm256_add_epi32(t[r][0], t2[r]);
                UNROLL
                for (int b = 0; b < NX; b++)
                    v[r][b] = q >= run ? _mm256_fmadd_ps(_mm256_cvtepi32_ps(t[r][b]), sf, v[r][b])
                                       : _mm256_mul_ps(_mm256_cvtepi32_ps(t[r][b]), sf);
#else
                const __m256i S = _mm256_set1_epi32(rd_i32(w + r * LT_Q8_WREC + LT_Q8_W_S + 4 * Q8_SUB(q)));
                UNROLL
                for (int b = 0; b < NX; b++) {
                    const __m256i m = _mm256_madd_epi16(t[r][b], S);
                    u[r][b] = q >= run ? _mm256_add_epi32(u[r][b], m) : m;
                    if (q == 7) v[r][b] = _mm256_cvtepi32_ps(u[r][b]);
                }
#endif
            }
        }
#undef Q8_SUB
#undef Q8_O32
#undef Q8_O16
        UNROLL
        for (int b = 0; b < NX; b++) {
            const __m256 xd = _mm256_load_ps((const float *)(x + b * xstride + LT_Q8_X_D) + 8 * g);
            UNROLL
            for (int r = 0; r < NW; r++) f[r][b] = _mm256_fmadd_ps(v[r][b], xd, f[r][b]);
        }
    }
    UNROLL
    for (int r = 0; r < NW; r++) {
        const uint8_t *rec = w + r * LT_Q8_WREC;
        const __m256 d = _mm256_broadcast_ss((const float *)(rec + LT_Q8_W_D));
        const float *mins = (const float *)(rec + LT_Q8_W_MINS);
        UNROLL
        for (int b = 0; b < NX; b++) {
            const float *xs = (const float *)(x + b * xstride + LT_Q8_X_S32);
            float *cl = c + b * ldc + 8 * r;
            __m256 val = _mm256_fmadd_ps(f[r][b], d, _mm256_loadu_ps(cl));
            UNROLL
            for (int h = 0; h < 8; h++)
                if (!six) val = _mm256_fmadd_ps(_mm256_broadcast_ss(mins + h), _mm256_load_ps(xs + 8 * h), val);
            _mm256_storeu_ps(cl, val);
        }
    }
}

#define Q8_TILES(QT)                                                                                         \
    do {                                                                                                     \
        for (int b = 0; b < nx; b += Q8_BX(QT)) {                                                            \
            const int n = nx - b < Q8_BX(QT) ? nx - b : Q8_BX(QT);                                           \
            const uint8_t *xb = x + b * xstride;                                                             \
            float *cb = c + b * ldc;                                                                         \
            if (nx == 1 && nw > 2) { /* a decode pass's one record (lantern.h LT_Q8_NW1) */                  \
                if (nw == 4) VAR_NAME(q8_tile)(w, 4, x, xstride, 1, QT, c, ldc);                              \
                else VAR_NAME(q8_tile)(w, 3, x, xstride, 1, QT, c, ldc);                                      \
            } else if (nw == 2) {                                                                            \
                if (n == 4) VAR_NAME(q8_tile)(w, 2, xb, xstride, 4, QT, cb, ldc);                             \
                else if (n == 3) VAR_NAME(q8_tile)(w, 2, xb, xstride, 3, QT, cb, ldc);                        \
                else if (n == 2) VAR_NAME(q8_tile)(w, 2, xb, xstride, 2, QT, cb, ldc);                        \
                else VAR_NAME(q8_tile)(w, 2, xb, xstride, 1, QT, cb, ldc);                                    \
            } else {                                                                                         \
                if (n == 4) VAR_NAME(q8_tile)(w, 1, xb, xstride, 4, QT, cb, ldc);                             \
                else if (n == 3) VAR_NAME(q8_tile)(w, 1, xb, xstride, 3, QT, cb, ldc);                        \
                else if (n == 2) VAR_NAME(q8_tile)(w, 1, xb, xstride, 2, QT, cb, ldc);                        \
                else VAR_NAME(q8_tile)(w, 1, xb, xstride, 1, QT, cb, ldc);                                    \
            }                                                                                                \
        }                                                                                                    \
    } while (0)
VAR_ATTR static void VAR_NAME(gemm_q8)(const uint8_t *w, int nw, const uint8_t *x, int64_t xstride, int nx, int qtype,
                                     float *c, int64_t ldc) {
    if (qtype == LT_Q4_K) Q8_TILES(LT_Q4_K);
    else if (qtype == LT_Q5_K) Q8_TILES(LT_Q5_K);
    else Q8_TILES(LT_Q6_K);
}
#undef Q8_TILES
#undef Q8_BX

#undef R8_DOT
#undef VAR_KEEP
#undef VAR_DPWSSD
#undef VAR_DPBUSD

#endif /* LT_AVX2_VARIANT */

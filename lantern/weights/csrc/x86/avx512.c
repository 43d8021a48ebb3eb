/* AVX-512 BF16 kernels (Zen 4, Sapphire Rapids and later): x rounded to bfloat16 and
 * vdpbf16ps on the file's blocks. Compiled with function-level target attributes, so the
 * library builds with any x86-64 compiler and runs this file only where dispatch.c finds
 * AVX-512 F/BW/VL/DQ with BF16.
 *
 * Row kernels: q becomes bf16 in registers by a table lookup (vpermw / vpermt2w on the nibble or
 * 6-bit codes; the table bakes in Q4_0's -8, Q5_0's -16, Q6_K's -32), vdpbf16ps gives 16
 * partial dot products per 32 weights, one FMA by the sub-block's scale adds them to float32
 * accumulators. Q8_0 and Q4_1 keep the avx2 level's row kernels (x as 15-bit integers,
 * LT_X_Q15, and vpmaddwd): lt_fill_avx512. */

#include "../blocks.h"
#include "../lantern.h"

#ifdef LT_X86
#include <immintrin.h>
#include <math.h>

#define rd_f16 lt_rd_f16
#define f32_to_bf16_rne lt_f32_to_bf16
#define f32_to_f16 lt_f32_to_f16

#define TGT_BF16 LT_TARGET("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,f16c,fma")
#ifdef LT_MSVC /* (MSVC: __m512bh is __m512i, __m256bh __m256i; no inline asm on x64) */
#include <intrin.h>
#define ALWAYS_INLINE __forceinline
#define AS_BH(v) (v)
#define BH_SI512(v) (v)
#define BH_SI256(v) (v)
#define READ_BACK(p) _ReadWriteBarrier()
#else
#define ALWAYS_INLINE inline __attribute__((always_inline))
#define AS_BH(v) ((__m512bh)(v))
#define BH_SI512(v) ((__m512i)(v))
#define BH_SI256(v) ((__m256i)(v))
#define READ_BACK(p) __asm__ volatile("" : : "r"(p) : "memory")
#endif
#if defined(__GNUC__) || defined(__clang__)
#define OPAQUE(v) __asm__("" : "+v"(v)) /* no fusing of the product before it into an FMA */
#else
#define OPAQUE(v) ((void)0)
#endif

/* bf16 tables indexed by code (vpermw: low 5 bits; vpermt2w: low 6 bits) */
static LT_ALIGN(64) uint16_t TAB_U4[32];    /* i & 15 */
static LT_ALIGN(64) uint16_t TAB_U4P16[32]; /* (i & 15) + 16 */
static LT_ALIGN(64) uint16_t TAB_Q40[32];   /* (i & 15) - 8 */
static LT_ALIGN(64) uint16_t TAB_Q50[32];   /* (i & 15) - 16 */
static LT_ALIGN(64) uint16_t TAB_U5[32];    /* i */
static LT_ALIGN(64) uint16_t TAB_Q6[64];    /* i - 32 */
static LT_ALIGN(64) uint16_t TAB_IQ4[32];   /* kvalues_iq4nl[i & 15] (|v| <= 127: exact in bf16) */
/* Q6_K: vpermps indices putting scale k in lanes 0-7 and k + 1 in lanes 8-15, k = 2 * (4h + t) */
static LT_ALIGN(64) int32_t Q6_SIDX[8][16];

/* Filled by lt_fill_avx512, before any kernel that reads them can be in the table (MSVC has no
 * constructor functions; the values never change). */
static void gguf_tables_init(void) {
    for (int i = 0; i < 32; i++) {
        TAB_U4[i] = f32_to_bf16_rne((float)(i & 15));
        TAB_U4P16[i] = f32_to_bf16_rne((float)((i & 15) + 16));
        TAB_Q40[i] = f32_to_bf16_rne((float)((i & 15) - 8));
        TAB_Q50[i] = f32_to_bf16_rne((float)((i & 15) - 16));
        TAB_U5[i] = f32_to_bf16_rne((float)i);
    }
    for (int i = 0; i < 64; i++) TAB_Q6[i] = f32_to_bf16_rne((float)(i - 32));
    static const int8_t kv[16] = LT_IQ4_VALUES_INIT;
    for (int i = 0; i < 32; i++) TAB_IQ4[i] = f32_to_bf16_rne((float)kv[i & 15]);
    for (int k = 0; k < 8; k++)
        for (int l = 0; l < 16; l++) Q6_SIDX[k][l] = 2 * k + (l >= 8);
}

#define SEL_LO4 0xE4 /* ternlog: c ? a : b, with c = 0x000F per word: low nibble from a, rest from b */

TGT_BF16 static ALWAYS_INLINE __m512 dpbf(__m512i w, const uint16_t *x) {
    return _mm512_dpbf16_ps(_mm512_setzero_ps(), AS_BH(w), AS_BH(_mm512_loadu_si512(x)));
}

TGT_BF16 static ALWAYS_INLINE __m512i zext32(const uint8_t *p) {
    return _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
}

/* The 6-bit codes of half a Q6_K block (128 weights, h = 0 or 1) as four vectors of 32 words. */
TGT_BF16 static ALWAYS_INLINE void q6k_half_codes(const uint8_t *blk, int h, __m512i m4, __m512i idx[4]) {
    const __m512i ql0 = zext32(blk + 64 * h), ql1 = zext32(blk + 64 * h + 32), qh = zext32(blk + 128 + 32 * h);
    idx[0] = _mm512_ternarylogic_epi32(ql0, _mm512_slli_epi16(qh, 4), m4, SEL_LO4);
    idx[1] = _mm512_ternarylogic_epi32(ql1, _mm512_slli_epi16(qh, 2), m4, SEL_LO4);
    idx[2] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql0, 4), qh, m4, SEL_LO4);
    idx[3] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(ql1, 4), _mm512_srli_epi16(qh, 2), m4, SEL_LO4);
}

/* words << s (s >= 0) or >> -s */
TGT_BF16 static ALWAYS_INLINE __m512i shift16(__m512i v, int s) {
    return s >= 0 ? _mm512_sll_epi16(v, _mm_cvtsi32_si128(s)) : _mm512_srl_epi16(v, _mm_cvtsi32_si128(-s));
}

TGT_BF16 static ALWAYS_INLINE float hsum2(__m512 a, __m512 b) { return _mm512_reduce_add_ps(_mm512_add_ps(a, b)); }

TGT_BF16 static ALWAYS_INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* x is read again for every row of W, and with K in the thousands it does not stay in L1 beside
 * the stream of weights; the hardware does not fetch it back in time. Fetching the x of the
 * block XAHEAD elements on (K = 8192, Q4_K: 40 -> 53 G weights/s with 2 threads). */
#define XAHEAD 512
#define XAHEAD_MIN 4096 /* bf16 elements of x (all rows): fewer stay in L1 without help */

TGT_BF16 static ALWAYS_INLINE void prefetch_x(const uint16_t *x, int64_t bytes) {
    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)x + 2 * XAHEAD + o, _MM_HINT_T0);
}

/* Q4_K/Q5_K: d * sc[j] (stored to `sc`) and dmin * m[j] (returned) for one block. */
TGT_BF16 static ALWAYS_INLINE __m256 k4_scales(const uint8_t *blk, float *sc) {
    uint32_t u[4];
    memcpy(u, blk + 4, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
    const uint32_t ua = u[1] & 0x3f3f3f3f;
    u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
    u[2] = ua;
    u[0] &= 0x3f3f3f3f;
    const __m128i v = _mm_loadu_si128((const __m128i *)u);
    uint16_t dh[2];
    memcpy(dh, blk, 4);
    const __m256 s = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
    const __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)));
    _mm256_storeu_ps(sc, _mm256_mul_ps(s, _mm256_set1_ps(_cvtsh_ss(dh[0]))));
    return _mm256_mul_ps(m, _mm256_set1_ps(_cvtsh_ss(dh[1])));
}

/* Row kernels: out[m] = row . x[m] for m < M (M a compile-time constant after inlining).
 * xb: bf16 x rows K apart; xf: float32 x rows K apart; xs: sums of x per 32, rows G apart. */
#define ROW_ARGS const uint8_t *row, int64_t K, const uint16_t *xb, const float *xf, const float *xs, int64_t G, float *out

TGT_BF16 static ALWAYS_INLINE void q4k_impl(ROW_ARGS, const int M, const int five) {
    const __m512i T = _mm512_load_si512(five ? TAB_U5 : TAB_U4), m4 = _mm512_set1_epi16(0x000F);
    const int64_t bytes = five ? 176 : 144, nb = K / 256;
    __m512 acc[8][2];
    __m256 macc[8];
    for (int m = 0; m < M; m++) { acc[m][0] = acc[m][1] = _mm512_setzero_ps(); macc[m] = _mm256_setzero_ps(); }
    (void)xf;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * bytes;
        LT_ALIGN(32) float sc[8];
        const __m256 mn = k4_scales(blk, sc);
        /* Make the compiler read the scales back from memory: broadcasting a float from memory
         * is a load, from a register a shuffle, and shuffles are what this loop is short of
         * (Phi-3-mini's Q4_K shapes on Zen 4: 10-17% faster). */
        READ_BACK(sc);
        const uint8_t *qs = blk + (five ? 48 : 16);
        if (M * K > XAHEAD_MIN) for (int m = 0; m < M; m++) prefetch_x(xb + m * K + b * 256, 512);
        __m512i qh = _mm512_setzero_si512();
        if (five) qh = zext32(blk + 16);
        for (int g = 0; g < 4; g++) {
            const __m512i q = zext32(qs + 32 * g);
            __m512i i0 = q, i1 = _mm512_srli_epi16(q, 4);
            if (five) { /* bit 4 of the index: bit 2g (2g + 1) of qh */
                i0 = _mm512_ternarylogic_epi32(i0, shift16(qh, 4 - 2 * g), m4, SEL_LO4);
                i1 = _mm512_ternarylogic_epi32(i1, shift16(qh, 3 - 2 * g), m4, SEL_LO4);
            }
            const __m512i w0 = _mm512_permutexvar_epi16(i0, T), w1 = _mm512_permutexvar_epi16(i1, T);
            const __m512 s0 = _mm512_set1_ps(sc[2 * g]), s1 = _mm512_set1_ps(sc[2 * g + 1]);
            for (int m = 0; m < M; m++) {
                const uint16_t *x = xb + m * K + b * 256 + 64 * g;
                acc[m][0] = _mm512_fmadd_ps(dpbf(w0, x), s0, acc[m][0]);
                acc[m][1] = _mm512_fmadd_ps(dpbf(w1, x + 32), s1, acc[m][1]);
            }
        }
        for (int m = 0; m < M; m++) macc[m] = _mm256_fmadd_ps(mn, _mm256_loadu_ps(xs + m * G + 8 * b), macc[m]);
    }
    for (int m = 0; m < M; m++) out[m] = hsum2(acc[m][0], acc[m][1]) - hsum256(macc[m]);
}

TGT_BF16 static ALWAYS_INLINE void q6k_impl(ROW_ARGS, const int M) {
    const __m512i TL = _mm512_load_si512(TAB_Q6), TH = _mm512_load_si512(TAB_Q6 + 32), m4 = _mm512_set1_epi16(0x000F);
    const int64_t nb = K / 256;
    __m512 acc[8][2];
    for (int m = 0; m < M; m++) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
    (void)xf; (void)xs; (void)G;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * 210;
        if (M * K > XAHEAD_MIN) for (int m = 0; m < M; m++) prefetch_x(xb + m * K + b * 256, 512);
        uint16_t dh;
        memcpy(&dh, blk + 208, 2);
        const __m512 S = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 192)))),
                                       _mm512_set1_ps(_cvtsh_ss(dh)));
        for (int h = 0; h < 2; h++) {
            __m512i idx[4];
            q6k_half_codes(blk, h, m4, idx);
            for (int t = 0; t < 4; t++) {
                const __m512i w = _mm512_permutex2var_epi16(TL, idx[t], TH);
                const __m512 sv = _mm512_permutexvar_ps(_mm512_load_si512(Q6_SIDX[4 * h + t]), S);
                for (int m = 0; m < M; m++)
                    acc[m][t & 1] = _mm512_fmadd_ps(dpbf(w, xb + m * K + b * 256 + 128 * h + 32 * t), sv, acc[m][t & 1]);
            }
        }
    }
    for (int m = 0; m < M; m++) out[m] = hsum2(acc[m][0], acc[m][1]);
}

TGT_BF16 static ALWAYS_INLINE float rd_f16_vec(const uint8_t *p) { /* F16C: one instruction */
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* 32-element blocks: Q4_0, Q5_0, Q5_1, IQ4_NL (bf16 dot products). */

/* One block into acc[m] for the M rows of x. */
TGT_BF16 static ALWAYS_INLINE void q32_block(const uint8_t *blk, int64_t e0, float dscale, __m512 *acc, int64_t K,
                                             const uint16_t *xb, const float *xf, const int M, const int qtype) {
    const int biased = qtype == LT_Q4_0 || qtype == LT_Q4_1;
    const int qs_off = qtype == LT_Q4_0 ? 2 : qtype == LT_Q4_1 ? 4 : qtype == LT_Q5_0 ? 6 : qtype == LT_Q5_1 ? 8 : 2;
    const __m512 d = _mm512_set1_ps(dscale);
    (void)xf;
    __m512i v = _mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(blk + qs_off))));
    v = _mm512_mask_srli_epi16(v, 0xFFFF0000u, v, 4); /* words 0-15 low nibbles, 16-31 high */
    __m512i w;
    if (biased) w = _mm512_ternarylogic_epi32(v, _mm512_set1_epi16(0x4300), _mm512_set1_epi16(0x000F), 0xEC); /* (v & 15) | 0x4300 */
    else w = _mm512_permutexvar_epi16(v, _mm512_load_si512(qtype == LT_Q5_0 ? TAB_Q50 : qtype == LT_IQ4_NL ? TAB_IQ4 : TAB_U4));
    if (qtype == LT_Q5_0 || qtype == LT_Q5_1) {
        uint32_t qh;
        memcpy(&qh, blk + (qtype == LT_Q5_0 ? 2 : 4), 4);
        w = _mm512_mask_permutexvar_epi16(w, (__mmask32)qh, v, _mm512_load_si512(qtype == LT_Q5_0 ? TAB_U4 : TAB_U4P16));
    }
    for (int m = 0; m < M; m++) acc[m] = _mm512_fmadd_ps(dpbf(w, xb + m * K + e0), d, acc[m]);
}

/* The f16 scales (and mins) of up to 64 blocks are converted together first; blocks go two at a
 * time into two accumulators per row of x (kept in registers: no loop over the pair). */
TGT_BF16 static ALWAYS_INLINE void q32_impl(ROW_ARGS, const int M, const int qtype) {
    const int64_t bytes = qtype == LT_Q4_0 || qtype == LT_IQ4_NL ? 18 : qtype == LT_Q4_1 ? 20 : qtype == LT_Q5_0 ? 22 : qtype == LT_Q5_1 ? 24 : 34;
    const int has_min = qtype == LT_Q4_1 || qtype == LT_Q5_1;
    /* Q4_0/Q4_1: q as bf16 128 + q (0x4300 | q: one ternlog, no table lookup); the 128 (Q4_0:
     * 136, with its -8) times the block's sum of bf16(x) is taken off per 16 blocks. The
     * products stay exact; the float32 sums lose ~4 bits to the offset (2^-20 of sum |x|,
     * far below the 2^-9 of x's rounding). */
    const int biased = qtype == LT_Q4_0 || qtype == LT_Q4_1;
    const float bias = qtype == LT_Q4_0 ? 136.f : 128.f;
    const float *xsb = xs + G / 2; /* sums of bf16(x): the second half of each row of xs */
    const int64_t nb = K / 32;
    __m512 acc0[8], acc1[8], macc[8];
    for (int m = 0; m < M; m++) acc0[m] = acc1[m] = macc[m] = _mm512_setzero_ps();
    for (int64_t c0 = 0; c0 < nb; c0 += 64) {
        const int n = nb - c0 < 64 ? (int)(nb - c0) : 64;
        LT_ALIGN(64) float df[64];
        LT_ALIGN(64) float mf[64];
        const uint8_t *base = row + c0 * bytes;
        if (!has_min) { /* d alone: converted one by one (the gather waits for all 16; Q8_0 8-10% faster) */
            for (int i = 0; i < n; i++) df[i] = rd_f16_vec(base + i * bytes);
            for (int i = n; i < (n + 15) / 16 * 16; i++) df[i] = 0.f; /* read by Q4_0's bias pass */
        } else { /* d and m of 16 blocks at a time: one gather of the blocks' first 4 bytes */
            const __m512i vidx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                    _mm512_set1_epi32((int)bytes));
            for (int i = 0; i < n; i += 16) {
                const __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
                const __m512i dm = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), k, vidx, base + i * bytes, 1);
                _mm512_store_ps(df + i, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dm)));
                _mm512_store_ps(mf + i, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(dm, 16))));
            }
        }
        int i = 0;
        for (; i + 2 <= n; i += 2) {
            if (M * K > XAHEAD_MIN)
                for (int m = 0; m < M; m++) prefetch_x(xb + m * K + (c0 + i) * 32, 128);
            q32_block(base + i * bytes, (c0 + i) * 32, df[i], acc0, K, xb, xf, M, qtype);
            q32_block(base + (i + 1) * bytes, (c0 + i + 1) * 32, df[i + 1], acc1, K, xb, xf, M, qtype);
        }
        if (i < n) q32_block(base + i * bytes, (c0 + i) * 32, df[i], acc0, K, xb, xf, M, qtype);
        if (has_min || biased) {
            for (int j = 0; j < n; j += 16) {
                const __mmask16 k = n - j >= 16 ? 0xFFFF : (__mmask16)((1u << (n - j)) - 1);
                const __m512 bv = _mm512_mul_ps(_mm512_load_ps(df + j), _mm512_set1_ps(-bias));
                for (int m = 0; m < M; m++) {
                    if (has_min) macc[m] = _mm512_fmadd_ps(_mm512_load_ps(mf + j), _mm512_maskz_loadu_ps(k, xs + m * G + c0 + j), macc[m]);
                    if (biased) macc[m] = _mm512_fmadd_ps(bv, _mm512_maskz_loadu_ps(k, xsb + m * G + c0 + j), macc[m]);
                }
            }
        }
    }
    for (int m = 0; m < M; m++) out[m] = hsum2(acc0[m], acc1[m]) + (has_min || biased ? _mm512_reduce_add_ps(macc[m]) : 0.f);
}


/* IQ4_XS: the 8 scales d * (ls - 32) of one block, stored to sc */
TGT_BF16 static ALWAYS_INLINE void iq4xs_scales(const uint8_t *blk, float *sc) {
    uint32_t sl;
    uint16_t sh, dh;
    memcpy(&dh, blk, 2);
    memcpy(&sh, blk + 2, 2);
    memcpy(&sl, blk + 4, 4);
    const __m256i lo = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)sl), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                        _mm256_set1_epi32(15));
    const __m256i hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(sh), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                        _mm256_set1_epi32(3));
    const __m256i ls = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
    _mm256_storeu_ps(sc, _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(dh)), _mm256_cvtepi32_ps(ls)));
}

/* IQ4: the bf16 values of one sub-block's 16 code bytes at qs (words 0-15: low nibbles, 16-31: high) */
TGT_BF16 static ALWAYS_INLINE __m512i iq4_sub_bf16(const uint8_t *qs, __m512i T) {
    __m512i v = _mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs)));
    v = _mm512_mask_srli_epi16(v, 0xFFFF0000u, v, 4);
    return _mm512_permutexvar_epi16(v, T); /* vpermw reads the low 5 bits; T repeats over bit 4 */
}

/* IQ4_XS: 8 sub-blocks of 32, each one vdpbf16ps per row of x and one FMA by its scale. */
TGT_BF16 static ALWAYS_INLINE void iq4xs_impl(ROW_ARGS, const int M) {
    const __m512i T = _mm512_load_si512(TAB_IQ4);
    const int64_t nb = K / 256;
    __m512 acc[8][2];
    for (int m = 0; m < M; m++) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
    (void)xf; (void)xs; (void)G;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * 136;
        LT_ALIGN(32) float sc[8];
        iq4xs_scales(blk, sc);
        READ_BACK(sc);
        if (M * K > XAHEAD_MIN) for (int m = 0; m < M; m++) prefetch_x(xb + m * K + b * 256, 512);
        for (int ib = 0; ib < 8; ib++) {
            const __m512i w = iq4_sub_bf16(blk + 8 + 16 * ib, T);
            const __m512 s = _mm512_set1_ps(sc[ib]);
            for (int m = 0; m < M; m++) acc[m][ib & 1] = _mm512_fmadd_ps(dpbf(w, xb + m * K + b * 256 + 32 * ib), s, acc[m][ib & 1]);
        }
    }
    for (int m = 0; m < M; m++) out[m] = hsum2(acc[m][0], acc[m][1]);
}

#define ROW_ARGS_X const uint8_t *row, const lt_x *x, int64_t m0, float *out
#define ROW_PASS(M) row, x->K, x->bf + m0 * x->K, x->f + m0 * x->K, x->bs + m0 * x->ld, x->ld, out
#define INSTANCES(name, call)                                              \
    TGT_BF16 static void name##_1(ROW_ARGS_X) { call(ROW_PASS(1), 1); }   \
    TGT_BF16 static void name##_2(ROW_ARGS_X) { call(ROW_PASS(2), 2); }   \
    TGT_BF16 static void name##_3(ROW_ARGS_X) { call(ROW_PASS(3), 3); }   \
    TGT_BF16 static void name##_4(ROW_ARGS_X) { call(ROW_PASS(4), 4); }   \
    TGT_BF16 static void name##_8(ROW_ARGS_X) { call(ROW_PASS(8), 8); }
#define Q4K(args, M) q4k_impl(args, M, 0)
#define Q5K(args, M) q4k_impl(args, M, 1)
#define Q6K(args, M) q6k_impl(args, M)
#define Q40(args, M) q32_impl(args, M, LT_Q4_0)
#define Q50(args, M) q32_impl(args, M, LT_Q5_0)
#define Q51(args, M) q32_impl(args, M, LT_Q5_1)
#define IQ4NL(args, M) q32_impl(args, M, LT_IQ4_NL)
#define IQ4XS(args, M) iq4xs_impl(args, M)
INSTANCES(rq4k, Q4K)
INSTANCES(rq5k, Q5K)
INSTANCES(rq6k, Q6K)
INSTANCES(rq40, Q40)
INSTANCES(rq50, Q50)
INSTANCES(rq51, Q51)
INSTANCES(riq4nl, IQ4NL)
INSTANCES(riq4xs, IQ4XS)

/* ---- expansion to bf16 (prompt chunks): w = scale * q + minv, rounded to nearest even ---- */

/* 32 weights from bf16 codes W (32 words): lanes 0-15 scaled by s0 (+ m0), 16-31 by s1 (+ m1). */
TGT_BF16 static ALWAYS_INLINE void emit32(uint16_t *dst, __m512i W, float s0, float s1, float m0, float m1, int has_min) {
    const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(W)), 16));
    const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(W, 1)), 16));
    /* scale * q rounded, then + minv (not one FMA): the generic expansion's two roundings, so
     * the bf16 weights are bit-identical (a sign of zero included) */
    __m512 a = _mm512_mul_ps(lo, _mm512_set1_ps(s0)), b = _mm512_mul_ps(hi, _mm512_set1_ps(s1));
    if (has_min) {
        OPAQUE(a);
        OPAQUE(b);
        a = _mm512_add_ps(a, _mm512_set1_ps(m0));
        b = _mm512_add_ps(b, _mm512_set1_ps(m1));
    }
    _mm512_storeu_si512(dst, BH_SI512(_mm512_cvtne2ps_pbh(b, a)));
}

TGT_BF16 static void gguf_bf16_row_simd(int qtype, const uint8_t *row, int64_t K, uint16_t *out) {
    if (qtype == LT_Q4_K || qtype == LT_Q5_K) {
        const int five = qtype == LT_Q5_K;
        const __m512i T = _mm512_load_si512(five ? TAB_U5 : TAB_U4), m4 = _mm512_set1_epi16(0x000F);
        for (int64_t b = 0; b < K / 256; b++) {
            const uint8_t *blk = row + b * (five ? 176 : 144);
            LT_ALIGN(32) float sc[8];
            LT_ALIGN(32) float mn[8];
            _mm256_store_ps(mn, _mm256_xor_ps(_mm256_set1_ps(-0.f), k4_scales(blk, sc))); /* -(dmin * m): -0 for 0 */
            const uint8_t *qs = blk + (five ? 48 : 16);
            const __m512i qh = five ? zext32(blk + 16) : _mm512_setzero_si512();
            for (int g = 0; g < 4; g++) {
                const __m512i q = zext32(qs + 32 * g);
                __m512i i0 = q, i1 = _mm512_srli_epi16(q, 4);
                if (five) {
                    i0 = _mm512_ternarylogic_epi32(i0, shift16(qh, 4 - 2 * g), m4, SEL_LO4);
                    i1 = _mm512_ternarylogic_epi32(i1, shift16(qh, 3 - 2 * g), m4, SEL_LO4);
                }
                const __m512i w0 = _mm512_permutexvar_epi16(i0, T), w1 = _mm512_permutexvar_epi16(i1, T);
                emit32(out + b * 256 + 64 * g, w0, sc[2 * g], sc[2 * g], mn[2 * g], mn[2 * g], 1);
                emit32(out + b * 256 + 64 * g + 32, w1, sc[2 * g + 1], sc[2 * g + 1], mn[2 * g + 1], mn[2 * g + 1], 1);
            }
        }
        return;
    }
    if (qtype == LT_Q6_K) {
        const __m512i TL = _mm512_load_si512(TAB_Q6), TH = _mm512_load_si512(TAB_Q6 + 32), m4 = _mm512_set1_epi16(0x000F);
        for (int64_t b = 0; b < K / 256; b++) {
            const uint8_t *blk = row + b * 210;
            const float d = rd_f16(blk + 208);
            float S[16];
            for (int j = 0; j < 16; j++) S[j] = d * (float)(int8_t)blk[192 + j];
            for (int h = 0; h < 2; h++) {
                __m512i idx[4];
                q6k_half_codes(blk, h, m4, idx);
                for (int t = 0; t < 4; t++) {
                    const int k = 8 * h + 2 * t;
                    emit32(out + b * 256 + 128 * h + 32 * t, _mm512_permutex2var_epi16(TL, idx[t], TH), S[k], S[k + 1], 0.f, 0.f, 0);
                }
            }
        }
        return;
    }
    if (qtype == LT_IQ4_XS) {
        const __m512i T = _mm512_load_si512(TAB_IQ4);
        for (int64_t b = 0; b < K / 256; b++) {
            const uint8_t *blk = row + b * 136;
            LT_ALIGN(32) float sc[8];
            iq4xs_scales(blk, sc);
            for (int ib = 0; ib < 8; ib++) emit32(out + b * 256 + 32 * ib, iq4_sub_bf16(blk + 8 + 16 * ib, T), sc[ib], sc[ib], 0.f, 0.f, 0);
        }
        return;
    }
    /* 32-element blocks */
    int64_t E = 32, bytes = 0;
    lt_block_geometry(qtype, &E, &bytes);
    const int qs_off = qtype == LT_Q4_0 ? 2 : qtype == LT_Q4_1 ? 4 : qtype == LT_Q5_0 ? 6 : qtype == LT_Q5_1 ? 8 : 2;
    const __m512i T0 = _mm512_load_si512(qtype == LT_Q4_0 ? TAB_Q40 : qtype == LT_Q5_0 ? TAB_Q50 : qtype == LT_IQ4_NL ? TAB_IQ4 : TAB_U4);
    const __m512i T1 = _mm512_load_si512(qtype == LT_Q5_0 ? TAB_U4 : TAB_U4P16);
    const int has_min = qtype == LT_Q4_1 || qtype == LT_Q5_1;
    for (int64_t i = 0; i < K / 32; i++) {
        const uint8_t *blk = row + i * bytes;
        const float d = rd_f16(blk), mv = has_min ? rd_f16(blk + 2) : 0.f;
        if (qtype == LT_Q8_0) {
            const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2))));
            const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18))));
            const __m512 dv = _mm512_set1_ps(d);
            _mm512_storeu_si512(out + 32 * i, BH_SI512(_mm512_cvtne2ps_pbh(_mm512_mul_ps(q1, dv), _mm512_mul_ps(q0, dv))));
            continue;
        }
        __m512i v = _mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(blk + qs_off))));
        v = _mm512_mask_srli_epi16(v, 0xFFFF0000u, v, 4);
        __m512i w = _mm512_permutexvar_epi16(v, T0);
        if (qtype == LT_Q5_0 || qtype == LT_Q5_1) {
            uint32_t qh;
            memcpy(&qh, blk + (qtype == LT_Q5_0 ? 2 : 4), 4);
            w = _mm512_mask_permutexvar_epi16(w, (__mmask32)qh, v, T1);
        }
        emit32(out + 32 * i, w, d, d, mv, mv, has_min);
    }
}

/* Per 32 elements: the sum of x (sx) and of bf16(x) (sb), for G groups. */
TGT_BF16 static void x_sums_simd(const float *x, const uint16_t *xb, int64_t G, float *sx, float *sb) {
    for (int64_t g = 0; g < G; g++) {
        const __m512 b0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(xb + 32 * g))), 16));
        const __m512 b1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(xb + 32 * g + 16))), 16));
        sx[g] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_loadu_ps(x + 32 * g), _mm512_loadu_ps(x + 32 * g + 16)));
        sb[g] = _mm512_reduce_add_ps(_mm512_add_ps(b0, b1));
    }
}

/* x -> bf16 (round to nearest even) */
TGT_BF16 static void x_to_bf16_simd(const float *x, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i *)(dst + i), BH_SI256(_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i))));
    for (; i < n; i++) dst[i] = f32_to_bf16_rne(x[i]);
}

static void x_prepare_avx512(const float *x, int64_t M, lt_x *xp) {
    const int64_t K = xp->K, G = xp->G, ld = xp->ld;
    uint16_t *xb = (uint16_t *)xp->bf;
    float *xs = (float *)xp->bs;
    x_to_bf16_simd(x, xb, M * K);
    for (int64_t m = 0; m < M; m++) x_sums_simd(x + m * K, xb + m * K, G, xs + m * ld, xs + m * ld + ld / 2);
}

/* ----- exp over float32 arrays ----------------------------------------------------------------
 * Cephes' expf: x = n ln2 + r (|r| <= ln2 / 2, ln2 in two parts), exp(r) by a degree-7
 * polynomial, times 2^n; relative error about 1 ulp (expf's own). Inputs below -103.9 give 0. */
LT_TARGET("avx512f,fma")
static inline __m512 exp_avx512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-103.9720840454f)), _mm512_set1_ps(88.7228317261f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

/* s[t] = exp(s[t] - mx) for t < T; returns the sum. */
LT_TARGET("avx512f,fma")
static float exp_sum_avx512(float *s, int64_t T, float mx) {
    const __m512 m = _mm512_set1_ps(mx);
    __m512 acc = _mm512_setzero_ps();
    int64_t t = 0;
    for (; t + 16 <= T; t += 16) {
        const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(s + t), m));
        _mm512_storeu_ps(s + t, e);
        acc = _mm512_add_ps(acc, e);
    }
    if (t < T) {
        const __mmask16 k = (__mmask16)((1u << (T - t)) - 1);
        const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + t), m));
        _mm512_mask_storeu_ps(s + t, k, e);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(k, e));
    }
    return _mm512_reduce_add_ps(acc);
}

/* out[i] = g[i] / (1 + exp(-g[i])) * u[i] for i < n: SiLU(gate) times up */
LT_TARGET("avx512f,fma")
static void silu_mul_avx512(const float *g, const float *u, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(g + i);
        const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), e)),
                                                _mm512_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.f + expf(-g[i])) * u[i];
}

LT_TARGET("avx512f,fma")
static void gelu_mul_avx512(const float *g, const float *u, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(g + i);
        const __m512 z = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                       _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), x), _mm512_mul_ps(x, x), x));
        const __m512 e = exp_avx512(_mm512_mul_ps(_mm512_set1_ps(-2.f), z));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), e)),
                                                _mm512_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = lt_gelu_tanh(g[i]) * u[i];
}

LT_TARGET("avx512f,f16c")
static void to_f16_avx512(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = f32_to_f16(src[i]);
}

/* ----- attention spans (attention.c) ----------------------------------------------------------- */
#define ATTN_HEADS LT_ATTN_HEADS
/* sum over lanes of v0..v3 -> (s0, s1, s2, s3) */
TGT_BF16 static ALWAYS_INLINE __m128 hsum4(__m512 v0, __m512 v1, __m512 v2, __m512 v3) {
    const __m512 a = _mm512_add_ps(_mm512_unpacklo_ps(v0, v1), _mm512_unpackhi_ps(v0, v1)); /* v0 v1 v0 v1 per 128 */
    const __m512 b = _mm512_add_ps(_mm512_unpacklo_ps(v2, v3), _mm512_unpackhi_ps(v2, v3));
    const __m512 c = _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xEE)); /* v0 v1 v2 v3 */
    const __m256 d = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    return _mm_add_ps(_mm256_castps256_ps128(d), _mm256_extractf128_ps(d, 1));
}

TGT_BF16 static ALWAYS_INLINE __m512 ldh(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* Scores, softmax and weighted values of HN query heads over positions [t0, t1) of one KV head;
 * writes (max, sum of exp, unnormalised outputs) per head to part. DV = D / 16. q is scaled into
 * registers where it fits (D <= 128); Gemma's D = 256 reads it from a scaled copy in L1. The
 * outputs are summed over all positions in chunks of CV vectors per head (at most 24
 * accumulators: one pass over the values for D <= 128, two to four for D = 256). */
TGT_BF16 static ALWAYS_INLINE void attn_span(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T,
                                             float scale, float *s, float *part, const int DV, const int HN) {
    const int64_t D = 16 * DV;
    LT_ALIGN(64) float qs[ATTN_HEADS][256];
    __m512 qv[ATTN_HEADS][8];
    for (int j = 0; j < HN; j++)
        for (int d = 0; d < DV; d++) {
            const __m512 scaled = _mm512_mul_ps(_mm512_loadu_ps(q[j] + 16 * d), _mm512_set1_ps(scale));
            if (DV <= 8) qv[j][d & 7] = scaled;
            else _mm512_store_ps(qs[j] + 16 * d, scaled);
        }
#define QV(j, d) (DV <= 8 ? qv[j][(d) & 7] : _mm512_load_ps(qs[j] + 16 * (d)))
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) {
        __m512 acc[ATTN_HEADS][4];
        for (int u = 0; u < 4; u++) {
            const uint16_t *kr = k + (t + u) * D;
            for (int j = 0; j < HN; j++) acc[j][u] = _mm512_mul_ps(QV(j, 0), ldh(kr));
            for (int d = 1; d < DV; d++) {
                const __m512 kd = ldh(kr + 16 * d);
                for (int j = 0; j < HN; j++) acc[j][u] = _mm512_fmadd_ps(QV(j, d), kd, acc[j][u]);
            }
        }
        for (int j = 0; j < HN; j++) _mm_storeu_ps(s + j * T + t, hsum4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]));
    }
    for (; t < T; t++) {
        const uint16_t *kr = k + t * D;
        for (int j = 0; j < HN; j++) {
            __m512 acc = _mm512_mul_ps(QV(j, 0), ldh(kr));
            for (int d = 1; d < DV; d++) acc = _mm512_fmadd_ps(QV(j, d), ldh(kr + 16 * d), acc);
            s[j * T + t] = _mm512_reduce_add_ps(acc);
        }
    }
    for (int j = 0; j < HN; j++) {
        float mx = -INFINITY;
        for (int64_t u = 0; u < T; u++) mx = s[j * T + u] > mx ? s[j * T + u] : mx;
        part[j * (D + 2)] = mx;
        part[j * (D + 2) + 1] = exp_sum_avx512(s + j * T, T, mx);
    }
    const int CV = HN * DV <= 24 ? DV : HN * DV <= 48 ? DV / 2 : DV / 4;
    for (int c = 0; c < DV; c += CV) {
        __m512 o[ATTN_HEADS][16];
        for (int j = 0; j < HN; j++)
            for (int d = 0; d < CV; d++) o[j][d] = _mm512_setzero_ps();
        for (t = 0; t < T; t++) {
            const uint16_t *vr = v + t * D + 16 * c;
            for (int d = 0; d < CV; d++) {
                const __m512 vd = ldh(vr + 16 * d);
                for (int j = 0; j < HN; j++) o[j][d] = _mm512_fmadd_ps(_mm512_set1_ps(s[j * T + t]), vd, o[j][d]);
            }
        }
        for (int j = 0; j < HN; j++)
            for (int d = 0; d < CV; d++) _mm512_storeu_ps(part + j * (D + 2) + 2 + 16 * (c + d), o[j][d]);
    }
#undef QV
}

#define SPAN(DV, HN)                                                                                                 \
    TGT_BF16 static void attn_span_##DV##_##HN(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T, \
                                               float scale, float *s, float *part) {                                  \
        attn_span(q, k, v, T, scale, s, part, DV, HN);                                                                \
    }
SPAN(4, 1) SPAN(4, 2) SPAN(4, 3) SPAN(4, 4)
SPAN(6, 1) SPAN(6, 2) SPAN(6, 3) SPAN(6, 4)
SPAN(8, 1) SPAN(8, 2) SPAN(8, 3) SPAN(8, 4)
SPAN(16, 1) SPAN(16, 2) SPAN(16, 3) SPAN(16, 4)

void lt_fill_avx512(lt_kernels *k) {
    gguf_tables_init();
    k->x_format = LT_X_BF16;
    k->x_prepare = x_prepare_avx512;
    /* Q8_0 and Q4_1 keep the avx2 level's row kernels on 15-bit x: faster than bf16 ones on
     * this level's short rows and even on long ones (bench/rows_vs_ggml.py, docs/PERFORMANCE.md) */
    k->q15_types = 1u << LT_Q8_0 | 1u << LT_Q4_1;
    k->x_prepare_q15 = lt_x_prepare_q15_avx2;
    k->even_odd_types &= k->q15_types; /* the other types' row kernels here read bf16 */
    k->fetch_long = 0; /* as before: the avx2 level's distance is unmeasured on Zen 4 */
    k->rows_fetch = 0; /* this level's row kernels do not (avx2's Q8_0 and Q4_1 do, short rows also by task) */
    /* prompts have bf16 hardware here: no 8-bit x (the avx2 level's) */
    k->gemm_q8 = NULL;
    k->gemm_q8_name = NULL;
    memset(k->expand_q8, 0, sizeof(k->expand_q8));
    /* no 8-row tile: the avx2 level's is unmeasured here, and the types it would serve read bf16 */
    memset(k->rows8, 0, sizeof(k->rows8));
    k->rows8_name = NULL;
#define SET_ROWS(qt, name, label)                                                              \
    k->row[qt][0] = name##_1; k->row[qt][1] = name##_2; k->row[qt][2] = name##_3;              \
    k->row[qt][3] = name##_4; k->row[qt][4] = name##_8; k->row_name[qt] = label "_avx512";      \
    k->expand_bf16[qt] = gguf_bf16_row_simd; k->expand_bf16_name[qt] = "expand_bf16_avx512";
    SET_ROWS(LT_Q4_0, rq40, "q4_0") SET_ROWS(LT_Q5_0, rq50, "q5_0")
    SET_ROWS(LT_Q5_1, rq51, "q5_1") SET_ROWS(LT_Q4_K, rq4k, "q4_k")
    static const int q15_rows[] = {LT_Q4_1, LT_Q8_0}; /* their prompt chunks: bf16 as the others' */
    for (int i = 0; i < 2; i++) {
        k->expand_bf16[q15_rows[i]] = gguf_bf16_row_simd;
        k->expand_bf16_name[q15_rows[i]] = "expand_bf16_avx512";
    }
    SET_ROWS(LT_Q5_K, rq5k, "q5_k") SET_ROWS(LT_Q6_K, rq6k, "q6_k")
    SET_ROWS(LT_IQ4_NL, riq4nl, "iq4_nl") SET_ROWS(LT_IQ4_XS, riq4xs, "iq4_xs")
#undef SET_ROWS
    static const lt_span_fn spans[LT_ATTN_DIMS][LT_ATTN_HEADS] = {{attn_span_4_1, attn_span_4_2, attn_span_4_3, attn_span_4_4},
                                           {attn_span_6_1, attn_span_6_2, attn_span_6_3, attn_span_6_4},
                                           {attn_span_8_1, attn_span_8_2, attn_span_8_3, attn_span_8_4},
                                           {attn_span_16_1, attn_span_16_2, attn_span_16_3, attn_span_16_4}};
    memcpy(k->attn_span, spans, sizeof(spans));
    k->attn_name = "attention_avx512";
    k->exp_sum = exp_sum_avx512;
    k->silu_mul = silu_mul_avx512;
    k->gelu_mul = gelu_mul_avx512;
    k->to_f16 = to_f16_avx512;
    k->vec_name = "vec_avx512";
}
#endif /* LT_X86 */

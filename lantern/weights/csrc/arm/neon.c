/* ARM64 NEON kernels (the "neon" level: every AArch64 CPU has Advanced SIMD).
 *
 * x form LT_X_Q15 (lantern.h), as the portable C: x_prepare rounds x * (16383 / max|x|) to
 * nearest even with vcvtnq_s32_f32, bit-identical to lt_x_prepare_q15_generic. The row kernels
 * do the portable row_q15's math: per sub-block an exact int32 dot of the weight codes with the
 * int16 x (codes widened to int16, vmull_s16 / vmlal_high_s16), then scale * qd * dot in float32
 * (four float32 lanes per row of x, summed at the end; the order of the float additions is not
 * the portable one's, the products are the same). Instanced for 1, 2, 3, 4 and 8 rows of x: the
 * codes of a block are decoded once for all of them.
 *
 * Variants inside the level, chosen at run time by lt_fill_neon:
 *   dotprod (ARMv8.2 SDOT; Linux HWCAP_ASIMDDP, macOS hw.optional.arm.FEAT_DotProd, Windows
 *   PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE): the row kernels take the 15-bit x as two signed bytes
 *   (x = 128 * hi + lo, lo in 0..127) and use sdot on the byte codes, two per 16 products
 *   instead of four vmlal. The split is made once per matmul call by the dotprod x_prepare (it
 *   writes q like the plain one, and the bytes to a buffer of its own thread, lt_x.q8).
 *   i8mm is detected but not used: SMMLA multiplies two rows of weights by two rows of x, and a
 *   row kernel here has one row of weights (USDOT could take q's raw bytes, the low one
 *   unsigned, with no split, but needs twice the dot instructions of the split form).
 *   LANTERN_NEON_DOTPROD=0 in the environment keeps the plain variant (comparisons, tests).
 *
 * Expansion (prompt chunks): bit-exact with the portable C: the same float32 operations in the
 * same order, unfused (explicit vmulq then vaddq; nothing here is left to the compiler to
 * contract). Attention spans for head dims 64, 96, 128, 256 (vcvt_f32_f16 of the float16 cache),
 * exp (Cephes, as the AVX-512 file), SiLU, float16 stores (vcvt_f16_f32: round to nearest even). */

#ifndef LT_NEON_ROWS /* the whole file; its end (#else) holds the row kernels' template */

#include "../blocks.h"
#include "../lantern.h"

#ifdef LT_ARM64
#include <arm_neon.h>
#include <math.h>
#include <stdlib.h>

#if defined(__linux__) || defined(__ANDROID__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#include <sys/types.h>
#elif defined(_WIN32)
#include <windows.h>
#endif

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define NI LT_INLINE

/* The dotprod variant, where the compiler can target it per function: no attribute when the
 * build's own target has dotprod (-march=armv8.4-a and up, -mcpu=apple-m1, ...); clang
 * "dotprod"; GCC 12 "arch=armv8.2-a+dotprod" (its "+dotprod" fails to inline vdotq_s32, and the
 * arch= form must not be below the build's: an ARMv8.3 target without dotprod (it has
 * complex-number arithmetic) goes without the variant). MSVC: without it. */
#if defined(_MSC_VER) && !defined(__clang__)
#define LT_NEON_DP 0
#elif defined(__ARM_FEATURE_DOTPROD)
#define LT_NEON_DP 1
#define TGT_DP
#elif defined(__clang__)
#define LT_NEON_DP 1
#define TGT_DP __attribute__((target("dotprod")))
#elif defined(__ARM_FEATURE_COMPLEX)
#define LT_NEON_DP 0
#else
#define LT_NEON_DP 1
#define TGT_DP __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

/* ----- CPU features ------------------------------------------------------------------------ */

enum { NEON_DOTPROD = 1, NEON_I8MM = 2 };

static int neon_features(void) {
    int f = 0;
#if defined(__linux__) || defined(__ANDROID__)
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    if (hw & (1ul << 20)) f |= NEON_DOTPROD; /* HWCAP_ASIMDDP */
    if (hw2 & (1ul << 13)) f |= NEON_I8MM;   /* HWCAP2_I8MM */
#elif defined(__APPLE__)
    int v = 0;
    size_t n = sizeof(v);
    if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &n, NULL, 0) == 0 && v) f |= NEON_DOTPROD;
    v = 0;
    n = sizeof(v);
    if (sysctlbyname("hw.optional.arm.FEAT_I8MM", &v, &n, NULL, 0) == 0 && v) f |= NEON_I8MM;
#elif defined(_WIN32)
#ifndef PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE
#define PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE 43
#endif
    if (IsProcessorFeaturePresent(PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE)) f |= NEON_DOTPROD;
#endif
    /* LANTERN_NEON_DOTPROD=0 turns the dotprod variant off (tests, comparisons) */
    const char *e = getenv("LANTERN_NEON_DOTPROD");
    if (e && e[0] == '0') f &= ~NEON_DOTPROD;
    return f;
}

/* ----- small helpers ----------------------------------------------------------------------- */

/* the float16 at p (unaligned), by the FP unit */
NI float f16s(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

/* 8 int16 codes (one int8x8 half) -> int16x8 */
NI int16x8_t w16lo(int8x16_t c) { return vmovl_s8(vget_low_s8(c)); }
NI int16x8_t w16hi(int8x16_t c) { return vmovl_high_s8(c); }

/* exact int32 dot (4 partial lanes) of 32 codes (w[0..3], int16) with 32 int16 x */
NI int32x4_t dot32(const int16x8_t *w, const int16_t *x) {
    const int16x8_t x0 = vld1q_s16(x), x1 = vld1q_s16(x + 8), x2 = vld1q_s16(x + 16), x3 = vld1q_s16(x + 24);
    int32x4_t a = vmull_s16(vget_low_s16(w[0]), vget_low_s16(x0));
    int32x4_t b = vmull_s16(vget_low_s16(w[2]), vget_low_s16(x2));
    a = vmlal_high_s16(a, w[0], x0);
    b = vmlal_high_s16(b, w[2], x2);
    a = vmlal_s16(a, vget_low_s16(w[1]), vget_low_s16(x1));
    b = vmlal_s16(b, vget_low_s16(w[3]), vget_low_s16(x3));
    a = vmlal_high_s16(a, w[1], x1);
    b = vmlal_high_s16(b, w[3], x3);
    return vaddq_s32(a, b);
}

/* the same for 16 codes (w[0..1]) */
NI int32x4_t dot16(const int16x8_t *w, const int16_t *x) {
    const int16x8_t x0 = vld1q_s16(x), x1 = vld1q_s16(x + 8);
    int32x4_t a = vmull_s16(vget_low_s16(w[0]), vget_low_s16(x0));
    int32x4_t b = vmull_s16(vget_low_s16(w[1]), vget_low_s16(x1));
    a = vmlal_high_s16(a, w[0], x0);
    b = vmlal_high_s16(b, w[1], x1);
    return vaddq_s32(a, b);
}

NI void widen32(int8x16_t c0, int8x16_t c1, int16x8_t *w) {
    w[0] = w16lo(c0);
    w[1] = w16hi(c0);
    w[2] = w16lo(c1);
    w[3] = w16hi(c1);
}

/* ----- decoding blocks to int8 codes ------------------------------------------------------- */

/* Q5_0/Q5_1: bit j of qh (j < 32) as 16 in byte j: (lo: elements 0-15, hi: 16-31) */
NI void qh_bits32(const uint8_t *p, uint8x16_t *lo, uint8x16_t *hi) {
    uint32_t qh;
    memcpy(&qh, p, 4);
    static const uint8_t IL[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    static const uint8_t IH[16] = {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    static const uint8_t BIT[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t v = vreinterpretq_u8_u32(vdupq_n_u32(qh)), bit = vld1q_u8(BIT), s16 = vdupq_n_u8(16);
    *lo = vandq_u8(vtstq_u8(vqtbl1q_u8(v, vld1q_u8(IL)), bit), s16);
    *hi = vandq_u8(vtstq_u8(vqtbl1q_u8(v, vld1q_u8(IH)), bit), s16);
}

/* IQ4: the table of the 16 values (kvalues_iq4nl) */
NI int8x16_t iq4_table(void) {
    static const int8_t KV[16] = LT_IQ4_VALUES_INIT;
    return vld1q_s8(KV);
}

/* IQ4: the values of 16 code bytes' low nibbles (c[0]: elements 0-15) and high (c[1]: 16-31) */
NI void iq4_codes(const uint8_t *qs, int8x16_t tab, int8x16_t *c) {
    const uint8x16_t v = vld1q_u8(qs);
    c[0] = vqtbl1q_s8(tab, vandq_u8(v, vdupq_n_u8(15)));
    c[1] = vqtbl1q_s8(tab, vshrq_n_u8(v, 4));
}

/* IQ4_XS: the 8 scales d * (ls - 32) (sc[0]: sub-blocks 0-3, sc[1]: 4-7) */
NI void iq4xs_scales(const uint8_t *blk, float32x4_t *sc) {
    uint32_t sl;
    uint16_t sh;
    memcpy(&sl, blk + 4, 4);
    memcpy(&sh, blk + 2, 2);
    static const int32_t SL[8] = {0, -4, -8, -12, -16, -20, -24, -28}, SH[8] = {0, -2, -4, -6, -8, -10, -12, -14};
    const float d = f16s(blk);
    for (int i = 0; i < 2; i++) {
        const uint32x4_t lo = vandq_u32(vshlq_u32(vdupq_n_u32(sl), vld1q_s32(SL + 4 * i)), vdupq_n_u32(15));
        const uint32x4_t hi = vandq_u32(vshlq_u32(vdupq_n_u32((uint32_t)sh), vld1q_s32(SH + 4 * i)), vdupq_n_u32(3));
        const int32x4_t ls = vsubq_s32(vreinterpretq_s32_u32(vorrq_u32(lo, vshlq_n_u32(hi, 4))), vdupq_n_s32(32));
        sc[i] = vmulq_n_f32(vcvtq_f32_s32(ls), d);
    }
}

/* The 32 codes of a 32-element block (elements 0-15 in c[0], 16-31 in c[1]), with d (and the
 * min m for Q4_1/Q5_1). */
NI void q32_codes(const uint8_t *blk, const int qtype, int8x16_t *c) {
    if (qtype == LT_IQ4_NL) {
        iq4_codes(blk + 2, iq4_table(), c);
        return;
    }
    if (qtype == LT_Q8_0) {
        c[0] = vld1q_s8((const int8_t *)blk + 2);
        c[1] = vld1q_s8((const int8_t *)blk + 18);
        return;
    }
    const int qs_off = qtype == LT_Q4_0 ? 2 : qtype == LT_Q4_1 ? 4 : qtype == LT_Q5_0 ? 6 : 8;
    const uint8x16_t v = vld1q_u8(blk + qs_off), m4 = vdupq_n_u8(15);
    uint8x16_t lo = vandq_u8(v, m4), hi = vshrq_n_u8(v, 4);
    if (qtype == LT_Q5_0 || qtype == LT_Q5_1) {
        uint8x16_t bl, bh;
        qh_bits32(blk + (qtype == LT_Q5_0 ? 2 : 4), &bl, &bh);
        lo = vorrq_u8(lo, bl);
        hi = vorrq_u8(hi, bh);
    }
    c[0] = vreinterpretq_s8_u8(lo);
    c[1] = vreinterpretq_s8_u8(hi);
    if (qtype == LT_Q4_0 || qtype == LT_Q5_0) {
        const int8x16_t off = vdupq_n_s8(qtype == LT_Q4_0 ? 8 : 16);
        c[0] = vsubq_s8(c[0], off);
        c[1] = vsubq_s8(c[1], off);
    }
}

/* Q4_K/Q5_K: codes of sub-blocks 2g (c[0..1]) and 2g + 1 (c[2..3]) */
NI void q4k_codes(const uint8_t *qs, uint8x16_t qh0, uint8x16_t qh1, const int g, const int five, int8x16_t *c) {
    const uint8x16_t b0 = vld1q_u8(qs + 32 * g), b1 = vld1q_u8(qs + 32 * g + 16), m4 = vdupq_n_u8(15);
    uint8x16_t l0 = vandq_u8(b0, m4), l1 = vandq_u8(b1, m4), h0 = vshrq_n_u8(b0, 4), h1 = vshrq_n_u8(b1, 4);
    if (five) {
        const uint8x16_t s16 = vdupq_n_u8(16), bl = vdupq_n_u8((uint8_t)(1u << (2 * g))),
                         bh = vdupq_n_u8((uint8_t)(2u << (2 * g)));
        l0 = vorrq_u8(l0, vandq_u8(vtstq_u8(qh0, bl), s16));
        l1 = vorrq_u8(l1, vandq_u8(vtstq_u8(qh1, bl), s16));
        h0 = vorrq_u8(h0, vandq_u8(vtstq_u8(qh0, bh), s16));
        h1 = vorrq_u8(h1, vandq_u8(vtstq_u8(qh1, bh), s16));
    }
    c[0] = vreinterpretq_s8_u8(l0);
    c[1] = vreinterpretq_s8_u8(l1);
    c[2] = vreinterpretq_s8_u8(h0);
    c[3] = vreinterpretq_s8_u8(h1);
}

/* Q4_K/Q5_K: the 6-bit sub-scales sc[0..7] then mins m[0..7], unpacked */
NI uint8x16_t k4_scale_bytes(const uint8_t *blk) {
    uint32_t u[4];
    memcpy(u, blk + 4, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
    const uint32_t ua = u[1] & 0x3f3f3f3f;
    u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
    u[2] = ua;
    u[0] &= 0x3f3f3f3f;
    return vld1q_u8((const uint8_t *)u);
}

/* Q4_K/Q5_K scales: d * sc[j] (sc[0..1]) and -(dmin * m[j]) (mn[0..1]), as lt_decode_block forms them */
NI void k4_scales(const uint8_t *blk, float32x4_t *sc, float32x4_t *mn) {
    const uint8x16_t v = k4_scale_bytes(blk);
    const uint16x8_t s16 = vmovl_u8(vget_low_u8(v)), m16 = vmovl_high_u8(v);
    const float d = f16s(blk), dmin = f16s(blk + 2);
    sc[0] = vmulq_n_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(s16))), d);
    sc[1] = vmulq_n_f32(vcvtq_f32_u32(vmovl_high_u16(s16)), d);
    mn[0] = vnegq_f32(vmulq_n_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(m16))), dmin));
    mn[1] = vnegq_f32(vmulq_n_f32(vcvtq_f32_u32(vmovl_high_u16(m16)), dmin));
}

/* Q6_K: the stored 6-bit values (code + 32) of weights 128h + 16j + (0..15) in u[j] */
NI void q6k_stored(const uint8_t *blk, const int h, uint8x16_t *u) {
    const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
    const uint8x16_t m3 = vdupq_n_u8(3);
    for (int i = 0; i < 2; i++) {
        const uint8x16_t A = vld1q_u8(ql + 16 * i), B = vld1q_u8(ql + 32 + 16 * i), H = vld1q_u8(qh + 16 * i);
        u[0 + i] = vsliq_n_u8(A, vandq_u8(H, m3), 4);
        u[2 + i] = vsliq_n_u8(B, vandq_u8(vshrq_n_u8(H, 2), m3), 4);
        u[4 + i] = vsliq_n_u8(vshrq_n_u8(A, 4), vandq_u8(vshrq_n_u8(H, 4), m3), 4);
        u[6 + i] = vsliq_n_u8(vshrq_n_u8(B, 4), vshrq_n_u8(H, 6), 4);
    }
}

/* Q6_K: the codes (q - 32) of weights 128h + 32t + (0..15) (c[2t]) and + (16..31) (c[2t + 1]) */
NI void q6k_codes(const uint8_t *blk, const int h, int8x16_t *c) {
    uint8x16_t u[8];
    q6k_stored(blk, h, u);
    for (int j = 0; j < 8; j++) c[j] = vsubq_s8(vreinterpretq_s8_u8(u[j]), vdupq_n_s8(32));
}

/* Q6_K scales d * sc[j] for the 16 sub-blocks (S[0..3]) */
NI void q6k_scales(const uint8_t *blk, float32x4_t *S) {
    const int8x16_t s8 = vld1q_s8((const int8_t *)blk + 192);
    const int16x8_t a = vmovl_s8(vget_low_s8(s8)), b = vmovl_high_s8(s8);
    const float d = f16s(blk + 208);
    S[0] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(a))), d);
    S[1] = vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(a)), d);
    S[2] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(b))), d);
    S[3] = vmulq_n_f32(vcvtq_f32_s32(vmovl_high_s16(b)), d);
}

/* ----- dotprod (SDOT) helpers -------------------------------------------------------------- */
#if LT_NEON_DP
/* acc + per lane the dot of 4 signed bytes of a with those of b */
TGT_DP NI int32x4_t sdot(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD) || !defined(__clang__)
    return vdotq_s32(acc, a, b);
#else /* clang before 16 declares vdotq_s32 only with -march=...+dotprod */
    __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
#endif
}

/* exact int32 dot (4 partial lanes) of 32 codes (c0: elements 0-15, c1: 16-31) with q8's group
 * at p (32 hi, then 32 lo): 128 * (c . hi) + c . lo */
TGT_DP NI int32x4_t dot32_dp(int8x16_t c0, int8x16_t c1, const int8_t *p) {
    int32x4_t h = sdot(sdot(vdupq_n_s32(0), c0, vld1q_s8(p)), c1, vld1q_s8(p + 16));
    h = vshlq_n_s32(h, 7);
    return sdot(sdot(h, c0, vld1q_s8(p + 32)), c1, vld1q_s8(p + 48));
}

/* the same for 16 codes at p (hi; lo at p + 32) */
TGT_DP NI int32x4_t dot16_dp(int8x16_t c, const int8_t *p) {
    const int32x4_t h = vshlq_n_s32(sdot(vdupq_n_s32(0), c, vld1q_s8(p)), 7);
    return sdot(h, c, vld1q_s8(p + 32));
}
#endif

/* ----- activations: LT_X_Q15 -------------------------------------------------------------- */

/* one group of 32: q, qd, qs as lt_x_prepare_q15_generic; the int32 q (for the byte split) too */
NI void q15_group(const float *p, int16_t *q, float *qd, float *qs, int32x4_t *qi) {
    float32x4_t v[8];
    for (int i = 0; i < 8; i++) v[i] = vld1q_f32(p + 4 * i);
    float32x4_t mx = vabsq_f32(v[0]);
    for (int i = 1; i < 8; i++) mx = vmaxnmq_f32(mx, vabsq_f32(v[i]));
    const float amax = vmaxnmvq_f32(mx);
    float32x4_t probe = vmulq_n_f32(v[0], 0.f); /* NaN when any x is NaN or infinite */
    for (int i = 1; i < 8; i++) probe = vaddq_f32(probe, vmulq_n_f32(v[i], 0.f));
    const int finite = vaddvq_f32(probe) == 0.f;
    const float id = amax > 0.f && finite ? 16383.f / amax : 0.f;
    int32x4_t sum = vdupq_n_s32(0);
    for (int i = 0; i < 8; i++) {
        qi[i] = vcvtnq_s32_f32(vmulq_n_f32(v[i], id));
        sum = vaddq_s32(sum, qi[i]);
    }
    for (int i = 0; i < 4; i++) vst1q_s16(q + 8 * i, vcombine_s16(vmovn_s32(qi[2 * i]), vmovn_s32(qi[2 * i + 1])));
    *qd = finite ? amax / 16383.f : NAN; /* a NaN or infinite x: NaN products, never silently 0 */
    *qs = *qd * (float)vaddvq_s32(sum);
}

static void x_prepare_neon(const float *x, int64_t M, lt_x *xp) {
    int16_t *q = (int16_t *)xp->q;
    float *qd = (float *)xp->qd, *qs = (float *)xp->qs;
    int32x4_t qi[8];
    for (int64_t g = 0; g < M * xp->G; g++) q15_group(x + 32 * g, q + 32 * g, qd + g, qs + g, qi);
}

#if LT_NEON_DP
/* q8 lives in a buffer of the calling thread (as lt_scratch's memory), grown as needed */
static LT_THREAD_LOCAL int8_t *g_q8;
static LT_THREAD_LOCAL size_t g_q8_cap;

/* LT_X_Q15 as x_prepare_neon, and q8: per group the hi bytes (q >> 7) then the lo (q & 127) */
static void x_prepare_neon_dp(const float *x, int64_t M, lt_x *xp) {
    const size_t need = (size_t)(M * xp->K) * 2;
    if (need > g_q8_cap) {
        free(g_q8);
        g_q8 = (int8_t *)malloc(need + 4096);
        g_q8_cap = g_q8 ? need + 4096 : 0;
    }
    int16_t *q = (int16_t *)xp->q;
    float *qd = (float *)xp->qd, *qs = (float *)xp->qs;
    int32x4_t qi[8];
    xp->q8 = g_q8;
    for (int64_t g = 0; g < M * xp->G; g++) {
        q15_group(x + 32 * g, q + 32 * g, qd + g, qs + g, qi);
        if (!g_q8) continue;
        int8_t *o = g_q8 + 64 * g;
        for (int i = 0; i < 2; i++) {
            const int16x8_t a = vcombine_s16(vmovn_s32(qi[4 * i]), vmovn_s32(qi[4 * i + 1]));
            const int16x8_t b = vcombine_s16(vmovn_s32(qi[4 * i + 2]), vmovn_s32(qi[4 * i + 3]));
            vst1q_s8(o + 16 * i, vcombine_s8(vshrn_n_s16(a, 7), vshrn_n_s16(b, 7)));
            const int16x8_t m7 = vdupq_n_s16(127);
            vst1q_s8(o + 32 + 16 * i, vcombine_s8(vmovn_s16(vandq_s16(a, m7)), vmovn_s16(vandq_s16(b, m7))));
        }
    }
}
#endif

/* ----- row kernels ---------------------------------------------------------------------------
 * Written once (the last part of this file, after "#else: LT_NEON_ROWS") and compiled once per
 * variant: this file includes itself with RDP (dotprod or not), RATTR (the variant's
 * target attribute) and RN (its names). */
#define LT_NEON_ROWS 1
#define RDP 0
#define RATTR
#define RN(name) name
#include "neon.c"
#undef RDP
#undef RATTR
#undef RN
#if LT_NEON_DP
#define RDP 1
#define RATTR TGT_DP
#define RN(name) name##_dp
#include "neon.c"
#undef RDP
#undef RATTR
#undef RN
#endif

/* ----- expansion: float32 exactly as the portable C, bf16 its round to nearest even --------- */

/* 16 int8 codes -> 4 float32x4 */
NI void codes_f32(int8x16_t c, float32x4_t *f) {
    const int16x8_t a = vmovl_s8(vget_low_s8(c)), b = vmovl_high_s8(c);
    f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(a)));
    f[1] = vcvtq_f32_s32(vmovl_high_s16(a));
    f[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(b)));
    f[3] = vcvtq_f32_s32(vmovl_high_s16(b));
}

/* bf16 of 4 floats: round to nearest even, NaN -> 0x7fc0 (lt_f32_to_bf16) */
NI uint16x4_t bf16x4(float32x4_t f) {
    const uint32x4_t b = vreinterpretq_u32_f32(f);
    const uint32x4_t r = vaddq_u32(b, vaddq_u32(vdupq_n_u32(0x7fff), vandq_u32(vshrq_n_u32(b, 16), vdupq_n_u32(1))));
    return vbsl_u16(vmovn_u32(vceqq_f32(f, f)), vshrn_n_u32(r, 16), vdup_n_u16(0x7fc0));
}

/* 16 weights scale * q, + minv for the types with a min (always, as the portable C: the sign of
 * a zero weight is quants.py's) */
NI void emit16(int8x16_t c, float scale, float minv, int has_min, float *of, uint16_t *ob) {
    float32x4_t f[4];
    codes_f32(c, f);
    for (int i = 0; i < 4; i++) {
        f[i] = vmulq_n_f32(f[i], scale);
        if (has_min) f[i] = vaddq_f32(f[i], vdupq_n_f32(minv));
    }
    if (of)
        for (int i = 0; i < 4; i++) vst1q_f32(of + 4 * i, f[i]);
    else {
        vst1q_u16(ob, vcombine_u16(bf16x4(f[0]), bf16x4(f[1])));
        vst1q_u16(ob + 8, vcombine_u16(bf16x4(f[2]), bf16x4(f[3])));
    }
}

/* y = dl * q - ml for 16 unsigned codes (Q2_K) or dl * q (Q3_K: ml unused, sub = 0) */
NI void emit16_sub(int8x16_t c, float dl, float ml, int sub, float *of, uint16_t *ob) {
    float32x4_t f[4];
    codes_f32(c, f);
    for (int i = 0; i < 4; i++) {
        f[i] = vmulq_n_f32(f[i], dl);
        if (sub) f[i] = vsubq_f32(f[i], vdupq_n_f32(ml));
    }
    if (of)
        for (int i = 0; i < 4; i++) vst1q_f32(of + 4 * i, f[i]);
    else {
        vst1q_u16(ob, vcombine_u16(bf16x4(f[0]), bf16x4(f[1])));
        vst1q_u16(ob + 8, vcombine_u16(bf16x4(f[2]), bf16x4(f[3])));
    }
}

/* one block of any expandable type to float32 (of) or bf16 (ob), E weights */
NI void expand_block(int qtype, const uint8_t *blk, float *of, uint16_t *ob) {
#define OUT_AT(e) (of ? of + (e) : NULL), (ob ? ob + (e) : NULL)
    switch (qtype) {
    case LT_Q4_0: case LT_Q4_1: case LT_Q5_0: case LT_Q5_1: case LT_Q8_0: case LT_IQ4_NL: {
        int8x16_t c[2];
        q32_codes(blk, qtype, c);
        const int has_min = qtype == LT_Q4_1 || qtype == LT_Q5_1;
        const float d = lt_rd_f16(blk), mv = has_min ? lt_rd_f16(blk + 2) : 0.f;
        emit16(c[0], d, mv, has_min, OUT_AT(0));
        emit16(c[1], d, mv, has_min, OUT_AT(16));
        break;
    }
    case LT_Q4_K: case LT_Q5_K: {
        const int five = qtype == LT_Q5_K;
        const float d = lt_rd_f16(blk), dmin = lt_rd_f16(blk + 2);
        uint8_t sc[8], mn[8];
        lt_k4_scale_min(blk + 4, sc, mn);
        const uint8_t *qs = blk + (five ? 48 : 16);
        const uint8x16_t qh0 = vld1q_u8(blk + 16), qh1 = vld1q_u8(blk + 32);
        for (int g = 0; g < 4; g++) {
            int8x16_t c[4];
            if (five) q4k_codes(qs, qh0, qh1, g, 1, c);
            else q4k_codes(qs, qh0, qh1, g, 0, c);
            const float s0 = d * (float)sc[2 * g], s1 = d * (float)sc[2 * g + 1];
            const float n0 = -(dmin * (float)mn[2 * g]), n1 = -(dmin * (float)mn[2 * g + 1]);
            emit16(c[0], s0, n0, 1, OUT_AT(64 * g));
            emit16(c[1], s0, n0, 1, OUT_AT(64 * g + 16));
            emit16(c[2], s1, n1, 1, OUT_AT(64 * g + 32));
            emit16(c[3], s1, n1, 1, OUT_AT(64 * g + 48));
        }
        break;
    }
    case LT_IQ4_XS: {
        float32x4_t scv[2];
        iq4xs_scales(blk, scv);
        float sc[8];
        vst1q_f32(sc, scv[0]);
        vst1q_f32(sc + 4, scv[1]);
        const int8x16_t tab = iq4_table();
        for (int ib = 0; ib < 8; ib++) {
            int8x16_t c[2];
            iq4_codes(blk + 8 + 16 * ib, tab, c);
            emit16(c[0], sc[ib], 0.f, 0, OUT_AT(32 * ib));
            emit16(c[1], sc[ib], 0.f, 0, OUT_AT(32 * ib + 16));
        }
        break;
    }
    case LT_Q6_K: {
        const float d = lt_rd_f16(blk + 208);
        const int8_t *sc = (const int8_t *)(blk + 192);
        for (int h = 0; h < 2; h++) {
            int8x16_t c[8];
            q6k_codes(blk, h, c);
            for (int i = 0; i < 8; i++) emit16(c[i], d * (float)sc[8 * h + i], 0.f, 0, OUT_AT(128 * h + 16 * i));
        }
        break;
    }
    case LT_Q2_K: {
        const float d = lt_rd_f16(blk + 80), dmin = lt_rd_f16(blk + 82);
        const uint8_t *qs = blk + 16;
        for (int h = 0; h < 2; h++) {
            const uint8x16_t Q[2] = {vld1q_u8(qs + 32 * h), vld1q_u8(qs + 32 * h + 16)};
            for (int j = 0; j < 4; j++)
                for (int half = 0; half < 2; half++) {
                    const uint8_t s = blk[8 * h + 2 * j + half];
                    const float dl = d * (float)(s & 15), ml = dmin * (float)(s >> 4);
                    const uint8x16_t c = vandq_u8(vshlq_u8(Q[half], vdupq_n_s8((int8_t)(-2 * j))), vdupq_n_u8(3));
                    emit16_sub(vreinterpretq_s8_u8(c), dl, ml, 1, OUT_AT(128 * h + 32 * j + 16 * half));
                }
        }
        break;
    }
    default: { /* Q3_K */
        const uint8_t *hm = blk, *qs = blk + 32, *s = blk + 96;
        const float d = lt_rd_f16(blk + 108);
        float dl[16];
        for (int i = 0; i < 16; i++) {
            const int k = i & 3, sh = 2 * (i >> 2);
            const int lo = i < 4 ? s[k] & 15 : i < 8 ? s[4 + k] & 15 : i < 12 ? s[k] >> 4 : s[4 + k] >> 4;
            const int v = lo | (((s[8 + k] >> sh) & 3) << 4);
            dl[i] = d * (float)(int8_t)(uint8_t)(v - 32);
        }
        const uint8x16_t HM[2] = {vld1q_u8(hm), vld1q_u8(hm + 16)};
        for (int h = 0; h < 2; h++) {
            const uint8x16_t Q[2] = {vld1q_u8(qs + 32 * h), vld1q_u8(qs + 32 * h + 16)};
            for (int j = 0; j < 4; j++)
                for (int half = 0; half < 2; half++) {
                    const uint8x16_t c = vandq_u8(vshlq_u8(Q[half], vdupq_n_s8((int8_t)(-2 * j))), vdupq_n_u8(3));
                    const uint8x16_t set = vtstq_u8(HM[half], vdupq_n_u8((uint8_t)(1u << (4 * h + j))));
                    const int8x16_t q = vsubq_s8(vreinterpretq_s8_u8(c), vreinterpretq_s8_u8(vbicq_u8(vdupq_n_u8(4), set)));
                    const int e = 128 * h + 32 * j + 16 * half;
                    emit16_sub(q, dl[e / 16], 0.f, 0, OUT_AT(e));
                }
        }
        break;
    }
    }
#undef OUT_AT
}

/* One function per type and output (the type and its block geometry constants: no switch per
 * block). On x86 the same change made avx2's prompts 1.1x and portable's 1.5-2.1x faster; on ARM
 * it is unmeasured. */
#define EXPAND(suffix, QT)                                                                                \
    static void expand_f32_##suffix(int qtype, const uint8_t *row, int64_t K, float *out) {             \
        (void)qtype;                                                                                      \
        for (int64_t ib = 0; ib < K / lt_block_elems(QT); ib++)                                           \
            expand_block(QT, row + ib * lt_block_bytes(QT), out + ib * lt_block_elems(QT), NULL);        \
    }                                                                                                     \
    static void expand_bf16_##suffix(int qtype, const uint8_t *row, int64_t K, uint16_t *out) {         \
        (void)qtype;                                                                                      \
        for (int64_t ib = 0; ib < K / lt_block_elems(QT); ib++)                                           \
            expand_block(QT, row + ib * lt_block_bytes(QT), NULL, out + ib * lt_block_elems(QT));        \
    }
LT_EXPANDABLE(EXPAND)
#undef EXPAND

/* ----- rows on 8-bit x (lantern.h lt_gemm_q8_fn): the dotprod variant --------------------------
 * The records' layout maps onto SDOT by element: a weight record's 16 bytes hold 4 quads of codes,
 * an x record's quad is 32 bytes (8 rows by 4 elements), and one sdot of 16 of those bytes (4 rows)
 * with quad q of the weights (lane q) adds 4 products to each row's int32 sum: 16 products an
 * instruction, where the 15-bit row kernels get 8 (two sdots per 16 products of one row). The
 * per-sub-block sums (with Q6_K's offsets, x's side) times the integer sub-scale, then float as
 * lantern.h orders it, so the results equal lt_gemm_q8_generic's bit for bit. Without dotprod
 * (Cortex-A53/A72) the level has no tile: these rows keep 15 bits. */
#if LT_NEON_DP
/* acc + per lane the dot of 4 signed bytes of a with bytes 4 lane .. 4 lane + 3 of b */
TGT_DP NI int32x4_t sdot_lane(int32x4_t acc, int8x16_t a, int8x16_t b, const int lane) {
#if defined(__ARM_FEATURE_DOTPROD) || !defined(__clang__)
#define SDOT_LANE(l) return vdotq_laneq_s32(acc, a, b, l)
#else
#define SDOT_LANE(l)                                                                               \
    __asm__("sdot %0.4s, %1.16b, %2.4b[" #l "]" : "+w"(acc) : "w"(a), "w"(b));                     \
    return acc
#endif
    switch (lane) {
    case 0: SDOT_LANE(0);
    case 1: SDOT_LANE(1);
    case 2: SDOT_LANE(2);
    default: SDOT_LANE(3);
    }
#undef SDOT_LANE
}

/* lt_expand_q8_generic's record, with vectors: the same bytes where the tile reads them */
static void expand_q8_neon(int qtype, const uint8_t *blk, uint8_t *rec) {
    int32_t *S = (int32_t *)(rec + LT_Q8_W_S);
    float *Sf = (float *)(rec + LT_Q8_W_SF), *mins = (float *)(rec + LT_Q8_W_MINS), d;
    int32x4_t s[4]; /* the integer sub-scales */
    int n;
    if (qtype == LT_Q6_K) {
        uint8x16_t u[8];
        for (int h = 0; h < 2; h++) {
            q6k_stored(blk, h, u);
            for (int j = 0; j < 8; j++) vst1q_u8(rec + 128 * h + 16 * j, u[j]);
        }
        const int8x16_t s8 = vld1q_s8((const int8_t *)blk + 192);
        const int16x8_t a = vmovl_s8(vget_low_s8(s8)), b = vmovl_high_s8(s8);
        s[0] = vmovl_s16(vget_low_s16(a));
        s[1] = vmovl_high_s16(a);
        s[2] = vmovl_s16(vget_low_s16(b));
        s[3] = vmovl_high_s16(b);
        n = 4;
        d = f16s(blk + 208);
    } else { /* Q4_K, Q5_K */
        const int five = qtype == LT_Q5_K;
        const uint8_t *qs = blk + (five ? 48 : 16);
        const uint8x16_t qh0 = five ? vld1q_u8(blk + 16) : vdupq_n_u8(0), qh1 = five ? vld1q_u8(blk + 32) : vdupq_n_u8(0);
        for (int g = 0; g < 4; g++) {
            int8x16_t c[4];
            q4k_codes(qs, qh0, qh1, g, five, c);
            for (int i = 0; i < 4; i++) vst1q_s8((int8_t *)rec + 64 * g + 16 * i, c[i]);
        }
        const uint16x8_t s16 = vmovl_u8(vget_low_u8(k4_scale_bytes(blk)));
        s[0] = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(s16)));
        s[1] = vreinterpretq_s32_u32(vmovl_high_u16(s16));
        n = 2;
        float32x4_t sc[2], mn[2]; /* the mins as the row kernels form them; the record keeps S and d apart */
        k4_scales(blk, sc, mn);
        vst1q_f32(mins, mn[0]);
        vst1q_f32(mins + 4, mn[1]);
        d = f16s(blk);
    }
    for (int i = 0; i < n; i++) { /* S: the sub-scale in both int16 halves; Sf: as a float */
        vst1q_s32(S + 4 * i, vorrq_s32(vandq_s32(s[i], vdupq_n_s32(0xFFFF)), vshlq_n_s32(s[i], 16)));
        vst1q_f32(Sf + 4 * i, vcvtq_f32_s32(s[i]));
    }
    memcpy(rec + LT_Q8_W_D, &d, 4);
}

/* NW weight records against NX records of x (NW * NX <= 4): per group of 32 and pair of records an
 * int32x4 for each half of x's 8 rows, 8 quads deep (Q6_K: 4 per sub-block, started at its offset) */
TGT_DP NI void q8_tile(const uint8_t *w, const int NW, const uint8_t *x, int64_t xstride, const int NX, const int qtype,
                       float *c, int64_t ldc) {
    const int six = qtype == LT_Q6_K;
    float32x4_t f[4][2]; /* [r * NX + b][half of x's rows] */
    for (int p = 0; p < NW * NX; p++) f[p][0] = f[p][1] = vdupq_n_f32(0.f);
    for (int g = 0; g < 8; g++) {
        int32x4_t t[4][2]; /* the group's sum_s S_s isum_s */
        for (int s = 0; s < 2; s++) { /* quads 8g + 4s .. + 3: Q6_K's sub-block 2g + s */
            int32x4_t a[4][2];
            int8x16_t wv[4];
            for (int r = 0; r < NW; r++) wv[r] = vld1q_s8((const int8_t *)w + r * LT_Q8_WREC + 32 * g + 16 * s);
            for (int b = 0; b < NX; b++) {
                const int32_t *o32 = (const int32_t *)(x + b * xstride + LT_Q8_X_O32) + 8 * (2 * g + s);
                for (int r = 0; r < NW; r++)
                    for (int h = 0; h < 2; h++)
                        a[r * NX + b][h] = six ? vld1q_s32(o32 + 4 * h) : s ? t[r * NX + b][h] : vdupq_n_s32(0);
            }
            for (int q = 0; q < 4; q++)
                for (int b = 0; b < NX; b++) {
                    const int8_t *xq = (const int8_t *)x + b * xstride + (8 * g + 4 * s + q) * 32;
                    const int8x16_t x0 = vld1q_s8(xq), x1 = vld1q_s8(xq + 16);
                    for (int r = 0; r < NW; r++) {
                        a[r * NX + b][0] = sdot_lane(a[r * NX + b][0], x0, wv[r], q);
                        a[r * NX + b][1] = sdot_lane(a[r * NX + b][1], x1, wv[r], q);
                    }
                }
            for (int r = 0; r < NW; r++) {
                const int16_t *S16 = (const int16_t *)(w + r * LT_Q8_WREC + LT_Q8_W_S);
                for (int b = 0; b < NX; b++)
                    for (int h = 0; h < 2; h++) {
                        int32x4_t *tp = &t[r * NX + b][h];
                        if (!six) *tp = s ? vmulq_n_s32(a[r * NX + b][h], S16[2 * g]) : a[r * NX + b][h];
                        else *tp = s ? vmlaq_n_s32(*tp, a[r * NX + b][h], S16[2 * (2 * g + 1)])
                                     : vmulq_n_s32(a[r * NX + b][h], S16[2 * (2 * g)]);
                    }
            }
        }
        for (int b = 0; b < NX; b++) {
            const float *xd = (const float *)(x + b * xstride + LT_Q8_X_D) + 8 * g;
            for (int r = 0; r < NW; r++)
                for (int h = 0; h < 2; h++)
                    f[r * NX + b][h] = vfmaq_f32(f[r * NX + b][h], vcvtq_f32_s32(t[r * NX + b][h]), vld1q_f32(xd + 4 * h));
        }
    }
    for (int r = 0; r < NW; r++) {
        const uint8_t *rec = w + r * LT_Q8_WREC;
        float d;
        memcpy(&d, rec + LT_Q8_W_D, 4);
        const float *mins = (const float *)(rec + LT_Q8_W_MINS);
        for (int b = 0; b < NX; b++) {
            const float *xs = (const float *)(x + b * xstride + LT_Q8_X_S32);
            float *cl = c + b * ldc + 8 * r;
            for (int h = 0; h < 2; h++) {
                float32x4_t v = vfmaq_n_f32(vld1q_f32(cl + 4 * h), f[r * NX + b][h], d);
                for (int j = 0; !six && j < 8; j++) v = vfmaq_n_f32(v, vld1q_f32(xs + 8 * j + 4 * h), mins[j]);
                vst1q_f32(cl + 4 * h, v);
            }
        }
    }
}

#define Q8_TILES(QT)                                                                                     \
    do {                                                                                                 \
        if (nx == 1) { /* a decode pass's one record: up to LT_Q8_NW1 weight rows at once */             \
            for (int r = 0; r < nw;) {                                                                   \
                const int n = nw - r;                                                                    \
                if (n >= 4) q8_tile(w + r * LT_Q8_WREC, 4, x, xstride, 1, QT, c + 8 * r, ldc), r += 4;   \
                else if (n == 3) q8_tile(w + r * LT_Q8_WREC, 3, x, xstride, 1, QT, c + 8 * r, ldc), r += 3; \
                else if (n == 2) q8_tile(w + r * LT_Q8_WREC, 2, x, xstride, 1, QT, c + 8 * r, ldc), r += 2; \
                else q8_tile(w + r * LT_Q8_WREC, 1, x, xstride, 1, QT, c + 8 * r, ldc), r += 1;          \
            }                                                                                            \
            break;                                                                                       \
        }                                                                                                \
        for (int r = 0; r < nw; r += 2) { /* prompt rows: pairs of weight rows by pairs of records */   \
            const uint8_t *wr = w + r * LT_Q8_WREC;                                                      \
            float *cr = c + 8 * r;                                                                       \
            for (int b = 0; b < nx; b += 2) {                                                            \
                const uint8_t *xb = x + b * xstride;                                                     \
                float *cb = cr + b * ldc;                                                                \
                if (nw - r >= 2 && nx - b >= 2) q8_tile(wr, 2, xb, xstride, 2, QT, cb, ldc);             \
                else if (nw - r >= 2) q8_tile(wr, 2, xb, xstride, 1, QT, cb, ldc);                       \
                else if (nx - b >= 2) q8_tile(wr, 1, xb, xstride, 2, QT, cb, ldc);                       \
                else q8_tile(wr, 1, xb, xstride, 1, QT, cb, ldc);                                        \
            }                                                                                            \
        }                                                                                                \
    } while (0)
TGT_DP static void gemm_q8_neon_dp(const uint8_t *w, int nw, const uint8_t *x, int64_t xstride, int nx, int qtype,
                                   float *c, int64_t ldc) {
    if (qtype == LT_Q4_K) Q8_TILES(LT_Q4_K);
    else if (qtype == LT_Q5_K) Q8_TILES(LT_Q5_K);
    else Q8_TILES(LT_Q6_K);
}
#undef Q8_TILES
#endif

/* ----- exp over float32 arrays --------------------------------------------------------------
 * Cephes' expf, as the AVX-512 file: x = n ln2 + r, exp(r) by a degree-7 polynomial, times
 * 2^n as two factors 2^(n/2) 2^(n - n/2) (both normal for n in [-150, 128], so results in
 * float32's subnormals round once); inputs below -103.97 give 0, above 88.72 FLT_MAX's order. */
NI float32x4_t exp_neon(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-103.9720840454f)), vdupq_n_f32(88.7228317261f));
    const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.f)), p, vmulq_f32(r, r));
    const int32x4_t ni = vcvtq_s32_f32(n), n1 = vshrq_n_s32(ni, 1), n2 = vsubq_s32(ni, n1);
    const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n1, vdupq_n_s32(127)), 23));
    const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(n2, vdupq_n_s32(127)), 23));
    return vmulq_f32(vmulq_f32(p, s1), s2);
}

/* s[t] = exp(s[t] - mx) for t < T; returns the sum. */
static float exp_sum_neon(float *s, int64_t T, float mx) {
    const float32x4_t m = vdupq_n_f32(mx);
    float32x4_t acc0 = vdupq_n_f32(0.f), acc1 = vdupq_n_f32(0.f);
    int64_t t = 0;
    for (; t + 8 <= T; t += 8) {
        const float32x4_t e0 = exp_neon(vsubq_f32(vld1q_f32(s + t), m));
        const float32x4_t e1 = exp_neon(vsubq_f32(vld1q_f32(s + t + 4), m));
        vst1q_f32(s + t, e0);
        vst1q_f32(s + t + 4, e1);
        acc0 = vaddq_f32(acc0, e0);
        acc1 = vaddq_f32(acc1, e1);
    }
    for (; t + 4 <= T; t += 4) {
        const float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(s + t), m));
        vst1q_f32(s + t, e);
        acc0 = vaddq_f32(acc0, e);
    }
    if (t < T) { /* the last 1-3 through a padded copy */
        float buf[4] = {mx, mx, mx, mx};
        for (int64_t i = t; i < T; i++) buf[i - t] = s[i];
        const float32x4_t e = exp_neon(vsubq_f32(vld1q_f32(buf), m));
        vst1q_f32(buf, e);
        for (int64_t i = t; i < T; i++) s[i] = buf[i - t];
        static const uint32_t keep[4][4] = {{0, 0, 0, 0}, {~0u, 0, 0, 0}, {~0u, ~0u, 0, 0}, {~0u, ~0u, ~0u, 0}};
        acc1 = vaddq_f32(acc1, vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), vld1q_u32(keep[T - t]))));
    }
    return vaddvq_f32(vaddq_f32(acc0, acc1));
}

/* out[i] = g[i] / (1 + exp(-g[i])) * u[i]: SiLU(gate) times up */
static void silu_mul_neon(const float *g, const float *u, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float32x4_t x = vld1q_f32(g + i);
        const float32x4_t e = exp_neon(vnegq_f32(x));
        vst1q_f32(out + i, vmulq_f32(vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.f), e)), vld1q_f32(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.f + expf(-g[i])) * u[i];
}

static void to_f16_neon(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x4_t a = vcvt_f16_f32(vld1q_f32(src + i)), b = vcvt_f16_f32(vld1q_f32(src + i + 4));
        vst1q_u16(dst + i, vcombine_u16(vreinterpret_u16_f16(a), vreinterpret_u16_f16(b)));
    }
    for (; i + 4 <= n; i += 4) vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
    for (; i < n; i++) dst[i] = lt_f32_to_f16(src[i]);
}

/* ----- attention spans (attention.c) ---------------------------------------------------------- */

NI void ldh8(const uint16_t *p, float32x4_t *lo, float32x4_t *hi) {
    const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(p));
    *lo = vcvt_f32_f16(vget_low_f16(h));
    *hi = vcvt_high_f32_f16(h);
}

#define SPAN_BLOCK 64 /* positions whose values stay in L1 while every chunk of dims passes over them */

/* Scores, softmax and weighted values of HN query heads over T positions of one KV head; writes
 * (max, sum of exp, unnormalised outputs) per head to part. */
NI void attn_span_neon(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T, float scale,
                       float *s, float *part, const int D, const int HN) {
    float qs[LT_ATTN_HEADS][256];
    for (int j = 0; j < HN; j++)
        for (int d = 0; d < D; d += 4) vst1q_f32(qs[j] + d, vmulq_n_f32(vld1q_f32(q[j] + d), scale));
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) { /* 4 positions x HN heads */
        float32x4_t acc[LT_ATTN_HEADS][4];
        for (int j = 0; j < HN; j++)
            for (int u = 0; u < 4; u++) acc[j][u] = vdupq_n_f32(0.f);
        for (int d = 0; d < D; d += 8) {
            float32x4_t k0[4], k1[4];
            for (int u = 0; u < 4; u++) ldh8(k + (t + u) * D + d, &k0[u], &k1[u]);
            for (int j = 0; j < HN; j++) {
                const float32x4_t q0 = vld1q_f32(qs[j] + d), q1 = vld1q_f32(qs[j] + d + 4);
                for (int u = 0; u < 4; u++) {
                    acc[j][u] = vfmaq_f32(acc[j][u], q0, k0[u]);
                    acc[j][u] = vfmaq_f32(acc[j][u], q1, k1[u]);
                }
            }
        }
        for (int j = 0; j < HN; j++)
            vst1q_f32(s + j * T + t, vpaddq_f32(vpaddq_f32(acc[j][0], acc[j][1]), vpaddq_f32(acc[j][2], acc[j][3])));
    }
    for (; t < T; t++) {
        float32x4_t acc[LT_ATTN_HEADS];
        for (int j = 0; j < HN; j++) acc[j] = vdupq_n_f32(0.f);
        for (int d = 0; d < D; d += 8) {
            float32x4_t k0, k1;
            ldh8(k + t * D + d, &k0, &k1);
            for (int j = 0; j < HN; j++)
                acc[j] = vfmaq_f32(vfmaq_f32(acc[j], vld1q_f32(qs[j] + d), k0), vld1q_f32(qs[j] + d + 4), k1);
        }
        for (int j = 0; j < HN; j++) s[j * T + t] = vaddvq_f32(acc[j]);
    }
    for (int j = 0; j < HN; j++) {
        float mx = -INFINITY;
        for (int64_t u = 0; u < T; u++) mx = s[j * T + u] > mx ? s[j * T + u] : mx;
        part[j * (D + 2)] = mx;
        part[j * (D + 2) + 1] = exp_sum_neon(s + j * T, T, mx);
        for (int d = 0; d < D; d++) part[j * (D + 2) + 2 + d] = 0.f;
    }
    /* outputs: per block of positions, per chunk of DC dims (HN * DC / 4 accumulators) */
    const int DC = HN <= 2 ? 32 : 16;
    for (int64_t t0 = 0; t0 < T; t0 += SPAN_BLOCK) {
        const int64_t t1 = t0 + SPAN_BLOCK < T ? t0 + SPAN_BLOCK : T;
        for (int c = 0; c < D; c += DC) {
            float32x4_t o[LT_ATTN_HEADS][8];
            for (int j = 0; j < HN; j++)
                for (int i = 0; i < DC / 4; i++) o[j][i] = vld1q_f32(part + j * (D + 2) + 2 + c + 4 * i);
            for (int64_t u = t0; u < t1; u++) {
                float32x4_t vv[8];
                for (int i = 0; i < DC / 8; i++) ldh8(v + u * D + c + 8 * i, &vv[2 * i], &vv[2 * i + 1]);
                for (int j = 0; j < HN; j++) {
                    const float w = s[j * T + u];
                    for (int i = 0; i < DC / 4; i++) o[j][i] = vfmaq_n_f32(o[j][i], vv[i], w);
                }
            }
            for (int j = 0; j < HN; j++)
                for (int i = 0; i < DC / 4; i++) vst1q_f32(part + j * (D + 2) + 2 + c + 4 * i, o[j][i]);
        }
    }
}

#define SPAN(D, HN)                                                                                             \
    static void attn_span_##D##_##HN(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T,    \
                                     float scale, float *s, float *part) {                                      \
        attn_span_neon(q, k, v, T, scale, s, part, D, HN);                                                      \
    }
SPAN(64, 1) SPAN(64, 2) SPAN(64, 3) SPAN(64, 4)
SPAN(96, 1) SPAN(96, 2) SPAN(96, 3) SPAN(96, 4)
SPAN(128, 1) SPAN(128, 2) SPAN(128, 3) SPAN(128, 4)
SPAN(256, 1) SPAN(256, 2) SPAN(256, 3) SPAN(256, 4)

/* ----- the level ------------------------------------------------------------------------------ */

void lt_fill_neon(lt_kernels *k) {
    const int feat = neon_features();
    k->x_format = LT_X_Q15;
    k->x_prepare = x_prepare_neon;
#define SET_ROWS(qt, name, label, sfx)                                                         \
    k->row[qt][0] = name##_1##sfx; k->row[qt][1] = name##_2##sfx; k->row[qt][2] = name##_3##sfx; \
    k->row[qt][3] = name##_4##sfx; k->row[qt][4] = name##_8##sfx; k->row_name[qt] = label;
#define SET_ALL(sfx, nsfx)                                                                                 \
    SET_ROWS(LT_Q4_0, rq40, "q4_0" nsfx, sfx) SET_ROWS(LT_Q4_1, rq41, "q4_1" nsfx, sfx)                      \
    SET_ROWS(LT_Q5_0, rq50, "q5_0" nsfx, sfx) SET_ROWS(LT_Q5_1, rq51, "q5_1" nsfx, sfx)                      \
    SET_ROWS(LT_Q8_0, rq80, "q8_0" nsfx, sfx) SET_ROWS(LT_Q4_K, rq4k, "q4_k" nsfx, sfx)                      \
    SET_ROWS(LT_Q5_K, rq5k, "q5_k" nsfx, sfx) SET_ROWS(LT_Q6_K, rq6k, "q6_k" nsfx, sfx)                      \
    SET_ROWS(LT_IQ4_NL, riq4nl, "iq4_nl" nsfx, sfx) SET_ROWS(LT_IQ4_XS, riq4xs, "iq4_xs" nsfx, sfx)
    SET_ALL(, "_neon")
#if LT_NEON_DP
    if (feat & NEON_DOTPROD) {
        k->x_prepare = x_prepare_neon_dp;
        SET_ALL(_dp, "_neon_dotprod")
        k->gemm_q8 = gemm_q8_neon_dp;
        k->gemm_q8_name = "gemm_q8_neon_dotprod";
        k->expand_q8[LT_Q4_K] = k->expand_q8[LT_Q5_K] = k->expand_q8[LT_Q6_K] = expand_q8_neon;
    }
#else
    (void)feat;
#endif
#undef SET_ALL
#undef SET_ROWS
#define SET_EXPAND(suffix, QT)                                                                  \
    k->expand_f32[QT] = expand_f32_##suffix; k->expand_f32_name[QT] = "expand_f32_neon";         \
    k->expand_bf16[QT] = expand_bf16_##suffix; k->expand_bf16_name[QT] = "expand_bf16_neon";
    LT_EXPANDABLE(SET_EXPAND)
#undef SET_EXPAND
    static const lt_span_fn spans[LT_ATTN_DIMS][LT_ATTN_HEADS] = {{attn_span_64_1, attn_span_64_2, attn_span_64_3, attn_span_64_4},
                                           {attn_span_96_1, attn_span_96_2, attn_span_96_3, attn_span_96_4},
                                           {attn_span_128_1, attn_span_128_2, attn_span_128_3, attn_span_128_4},
                                           {attn_span_256_1, attn_span_256_2, attn_span_256_3, attn_span_256_4}};
    memcpy(k->attn_span, spans, sizeof(spans));
    k->attn_name = "attention_neon";
    k->exp_sum = exp_sum_neon;
    k->silu_mul = silu_mul_neon;
    k->to_f16 = to_f16_neon;
    k->vec_name = "vec_neon";
}
#endif /* LT_ARM64 */

#else /* LT_NEON_ROWS: the template of the row kernels, included above once per variant */

/* ----- rows: out[m] = row . x[m0 + m] (the template; see "row kernels" above) ------------------
 * RDP 0: codes widened to int16, vmull_s16 / vmlal_high_s16 with q. RDP 1: sdot of the byte codes
 * with q8's hi and lo bytes. Either gives the exact int32 dot per sub-block. */

#if RDP
#define XROWS const int8_t *xr = x->q8 + m0 * 2 * K
#define DOT32(c, w, m, e) dot32_dp((c)[0], (c)[1], xr + (m) * 2 * K + 2 * (e))
#define DOT16(c, w, m, e) dot16_dp((c), xr + (m) * 2 * K + 2 * ((e) & ~(int64_t)31) + ((e) & 31))
#else
#define XROWS const int16_t *xr = x->q + m0 * K
#define DOT32(c, w, m, e) dot32((w), xr + (m) * K + (e))
#define DOT16(c, w, m, e) dot16((w), xr + (m) * K + (e))
#endif

/* 32-element blocks */
RATTR NI void RN(q32_rows)(const uint8_t *row, const lt_x *x, int64_t m0, float *out, const int M, const int qtype) {
    const int64_t K = x->K, G = x->G, nb = K / 32;
    const int64_t bytes = lt_block_bytes(qtype);
    const int has_min = qtype == LT_Q4_1 || qtype == LT_Q5_1;
    XROWS;
    const float *xd = x->qd + m0 * G, *xs = x->qs + m0 * G;
    float32x4_t acc[8];
    float macc[8];
    for (int m = 0; m < M; m++) { acc[m] = vdupq_n_f32(0.f); macc[m] = 0.f; }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * bytes;
        int8x16_t c[2];
        q32_codes(blk, qtype, c);
#if !RDP
        int16x8_t w[4];
        widen32(c[0], c[1], w);
#endif
        const float d = f16s(blk);
        for (int m = 0; m < M; m++) {
            const int32x4_t dot = DOT32(c, w, m, 32 * b);
            acc[m] = vfmaq_n_f32(acc[m], vcvtq_f32_s32(dot), d * xd[m * G + b]);
        }
        if (has_min) {
            const float mv = f16s(blk + 2);
            for (int m = 0; m < M; m++) macc[m] += mv * xs[m * G + b];
        }
    }
    for (int m = 0; m < M; m++) out[m] = vaddvq_f32(acc[m]) + macc[m];
}

/* Q4_K / Q5_K */
RATTR NI void RN(q4k_rows)(const uint8_t *row, const lt_x *x, int64_t m0, float *out, const int M, const int five) {
    const int64_t K = x->K, G = x->G, nb = K / 256, bytes = five ? 176 : 144;
    XROWS;
    const float *xd = x->qd + m0 * G, *xs = x->qs + m0 * G;
    float32x4_t acc[8];
    for (int m = 0; m < M; m++) acc[m] = vdupq_n_f32(0.f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * bytes;
        float32x4_t sc[2], mn[2];
        k4_scales(blk, sc, mn);
        const uint8_t *qs = blk + (five ? 48 : 16);
        uint8x16_t qh0 = vdupq_n_u8(0), qh1 = vdupq_n_u8(0);
        if (five) { qh0 = vld1q_u8(blk + 16); qh1 = vld1q_u8(blk + 32); }
        for (int m = 0; m < M; m++) { /* the mins: -(dmin * m[j]) * qs[j] */
            acc[m] = vfmaq_f32(acc[m], mn[0], vld1q_f32(xs + m * G + 8 * b));
            acc[m] = vfmaq_f32(acc[m], mn[1], vld1q_f32(xs + m * G + 8 * b + 4));
        }
        /* sub-blocks 2g (low nibbles) and 2g + 1 (high), scales in lanes 2g % 4, + 1 of sc[g / 2].
         * dotprod: the int32 sums of 4 sub-blocks gathered into one vector by pairwise adds (exact),
         * then one conversion and FMA (as avx2's sums*): under qemu 0.656 instructions per weight
         * at M = 1 and 0.448 at M = 8, against 0.709 and 0.525 with a conversion and FMA per
         * sub-block. The plain variant keeps those: gathering spills its widened codes (M = 1:
         * 1.04x the instructions). */
#if RDP
#define Q4K_WIDEN
#define Q4K_ACC(g, SCV, d0, d1)                                                                    \
        {                                                                                          \
            const int32x4_t p = vpaddq_s32(d0, d1);                                                \
            if ((g) % 2 == 0) {                                                                    \
                pend[m] = p;                                                                       \
            } else {                                                                               \
                const float32x4_t f = vmulq_f32(SCV, vld1q_f32(xd + m * G + 8 * b + 2 * (g) - 2)); \
                acc[m] = vfmaq_f32(acc[m], vcvtq_f32_s32(vpaddq_s32(pend[m], p)), f);              \
            }                                                                                      \
        }
#else
#define Q4K_WIDEN int16x8_t wl[4], wh[4]; widen32(c[0], c[1], wl); widen32(c[2], c[3], wh);
#define Q4K_ACC(g, SCV, d0, d1)                                                                    \
        {                                                                                          \
            const float32x2_t sp = (g) % 2 ? vget_high_f32(SCV) : vget_low_f32(SCV);               \
            const float32x2_t f = vmul_f32(sp, vld1_f32(xd + m * G + 8 * b + 2 * (g)));            \
            acc[m] = vfmaq_lane_f32(acc[m], vcvtq_f32_s32(d0), f, 0);                              \
            acc[m] = vfmaq_lane_f32(acc[m], vcvtq_f32_s32(d1), f, 1);                              \
        }
#endif
        int32x4_t pend[8]; /* dotprod: sub-blocks 2g, 2g + 1 of an even g, awaiting the next two */
        (void)pend;
#define Q4K_G(g, SCV)                                                                              \
        {                                                                                          \
            int8x16_t c[4];                                                                        \
            q4k_codes(qs, qh0, qh1, g, five, c);                                                   \
            Q4K_WIDEN                                                                              \
            for (int m = 0; m < M; m++) {                                                          \
                const int64_t e = 256 * b + 64 * g;                                                \
                Q4K_ACC(g, SCV, DOT32(c, wl, m, e), DOT32(c + 2, wh, m, e + 32))                   \
            }                                                                                      \
        }
        Q4K_G(0, sc[0]) Q4K_G(1, sc[0]) Q4K_G(2, sc[1]) Q4K_G(3, sc[1])
#undef Q4K_G
#undef Q4K_ACC
#undef Q4K_WIDEN
    }
    for (int m = 0; m < M; m++) out[m] = vaddvq_f32(acc[m]);
}

RATTR NI void RN(q6k_rows)(const uint8_t *row, const lt_x *x, int64_t m0, float *out, const int M) {
    const int64_t K = x->K, G = x->G, nb = K / 256;
    XROWS;
    const float *xd = x->qd + m0 * G;
    float32x4_t acc[8];
    for (int m = 0; m < M; m++) acc[m] = vdupq_n_f32(0.f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * 210;
        float32x4_t S[4];
        q6k_scales(blk, S);
        for (int h = 0; h < 2; h++) {
            int8x16_t c[8];
            q6k_codes(blk, h, c);
            /* group (of 32) 4h + t: sub-blocks 8h + 2t and 8h + 2t + 1, scales S[2h + t / 2] lanes 2(t % 2) + 0/1 */
#if RDP
#define Q6K_WIDEN(t)
#else
#define Q6K_WIDEN(t) int16x8_t w0[2] = {w16lo(c[2 * (t)]), w16hi(c[2 * (t)])}; \
                     int16x8_t w1[2] = {w16lo(c[2 * (t) + 1]), w16hi(c[2 * (t) + 1])};
#endif
#define Q6K_T(t)                                                                                   \
            {                                                                                      \
                Q6K_WIDEN(t)                                                                       \
                const float32x2_t sp = (t) % 2 ? vget_high_f32(S[2 * h + (t) / 2]) : vget_low_f32(S[2 * h + (t) / 2]); \
                for (int m = 0; m < M; m++) {                                                      \
                    const int64_t e = 256 * b + 128 * h + 32 * (t);                                \
                    const float32x2_t f = vmul_n_f32(sp, xd[m * G + 8 * b + 4 * h + (t)]);         \
                    acc[m] = vfmaq_lane_f32(acc[m], vcvtq_f32_s32(DOT16(c[2 * (t)], w0, m, e)), f, 0); \
                    acc[m] = vfmaq_lane_f32(acc[m], vcvtq_f32_s32(DOT16(c[2 * (t) + 1], w1, m, e + 16)), f, 1); \
                }                                                                                  \
            }
            Q6K_T(0) Q6K_T(1) Q6K_T(2) Q6K_T(3)
#undef Q6K_T
#undef Q6K_WIDEN
        }
    }
    for (int m = 0; m < M; m++) out[m] = vaddvq_f32(acc[m]);
}

/* IQ4_XS: 8 sub-blocks of 32 (no mins), two per step as Q4_K's pairs */
RATTR NI void RN(iq4xs_rows)(const uint8_t *row, const lt_x *x, int64_t m0, float *out, const int M) {
    const int64_t K = x->K, G = x->G, nb = K / 256;
    XROWS;
    const float *xd = x->qd + m0 * G;
    const int8x16_t tab = iq4_table();
    float32x4_t acc[8];
    for (int m = 0; m < M; m++) acc[m] = vdupq_n_f32(0.f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * 136;
        float32x4_t sc[2];
        iq4xs_scales(blk, sc);
        /* sub-blocks 2g (c[0..1]) and 2g + 1 (c[2..3]); their scales: lanes 2g % 4, + 1 of sc[g / 2] */
#if RDP
#define IQ4_WIDEN
#else
#define IQ4_WIDEN int16x8_t wl[4], wh[4]; widen32(c[0], c[1], wl); widen32(c[2], c[3], wh);
#endif
#define IQ4_G(g, SCV, LO)                                                                          \
        {                                                                                          \
            int8x16_t c[4];                                                                        \
            iq4_codes(blk + 8 + 32 * (g), tab, c);                                                 \
            iq4_codes(blk + 24 + 32 * (g), tab, c + 2);                                            \
            IQ4_WIDEN                                                                              \
            const float32x2_t sp = LO ? vget_low_f32(SCV) : vget_high_f32(SCV);                    \
            for (int m = 0; m < M; m++) {                                                          \
                const int64_t e = 256 * b + 64 * (g);                                              \
                const float32x2_t f = vmul_f32(sp, vld1_f32(xd + m * G + 8 * b + 2 * (g)));        \
                acc[m] = vfmaq_lane_f32(acc[m], vcvtq_f32_s32(DOT32(c, wl, m, e)), f, 0);          \
                acc[m] = vfmaq_lane_f32(acc[m], vcvtq_f32_s32(DOT32(c + 2, wh, m, e + 32)), f, 1); \
            }                                                                                      \
        }
        IQ4_G(0, sc[0], 1) IQ4_G(1, sc[0], 0) IQ4_G(2, sc[1], 1) IQ4_G(3, sc[1], 0)
#undef IQ4_G
#undef IQ4_WIDEN
    }
    for (int m = 0; m < M; m++) out[m] = vaddvq_f32(acc[m]);
}

#undef XROWS
#undef DOT32
#undef DOT16

#define ROW_ARGS const uint8_t *row, const lt_x *x, int64_t m0, float *out
#if RDP /* without q8 (its x_prepare found no memory for it): the plain kernel */
#define ROW_FALLBACK(name, M) if (!x->q8) { name##_##M(row, x, m0, out); return; }
#else
#define ROW_FALLBACK(name, M)
#endif
#define INSTANCES(name, call)                                                                  \
    static RATTR void RN(name##_1)(ROW_ARGS) { ROW_FALLBACK(name, 1) call(1); }                \
    static RATTR void RN(name##_2)(ROW_ARGS) { ROW_FALLBACK(name, 2) call(2); }                \
    static RATTR void RN(name##_3)(ROW_ARGS) { ROW_FALLBACK(name, 3) call(3); }                \
    static RATTR void RN(name##_4)(ROW_ARGS) { ROW_FALLBACK(name, 4) call(4); }                \
    static RATTR void RN(name##_8)(ROW_ARGS) { ROW_FALLBACK(name, 8) call(8); }
#define R40(M) RN(q32_rows)(row, x, m0, out, M, LT_Q4_0)
#define R41(M) RN(q32_rows)(row, x, m0, out, M, LT_Q4_1)
#define R50(M) RN(q32_rows)(row, x, m0, out, M, LT_Q5_0)
#define R51(M) RN(q32_rows)(row, x, m0, out, M, LT_Q5_1)
#define R80(M) RN(q32_rows)(row, x, m0, out, M, LT_Q8_0)
#define R4K(M) RN(q4k_rows)(row, x, m0, out, M, 0)
#define R5K(M) RN(q4k_rows)(row, x, m0, out, M, 1)
#define R6K(M) RN(q6k_rows)(row, x, m0, out, M)
#define RIQ4NL(M) RN(q32_rows)(row, x, m0, out, M, LT_IQ4_NL)
#define RIQ4XS(M) RN(iq4xs_rows)(row, x, m0, out, M)
INSTANCES(rq40, R40)
INSTANCES(rq41, R41)
INSTANCES(rq50, R50)
INSTANCES(rq51, R51)
INSTANCES(rq80, R80)
INSTANCES(rq4k, R4K)
INSTANCES(rq5k, R5K)
INSTANCES(rq6k, R6K)
INSTANCES(riq4nl, RIQ4NL)
INSTANCES(riq4xs, RIQ4XS)
#undef ROW_ARGS
#undef ROW_FALLBACK
#undef INSTANCES
#undef R40
#undef R41
#undef R50
#undef R51
#undef R80
#undef R4K
#undef R5K
#undef R6K
#undef RIQ4NL
#undef RIQ4XS

#endif /* LT_NEON_ROWS */

/* GGUF block formats and the scalar conversions every kernel file shares (ggml-common.h,
 * ggml-quants.c). Header-only: each file inlines what it uses. */
#ifndef LANTERN_BLOCKS_H
#define LANTERN_BLOCKS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float lt_f16_to_f32(uint16_t h) {
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

/* float32 -> float16, round to nearest even; overflow to inf, NaN kept */
static inline uint16_t lt_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    x &= 0x7fffffff;
    if (x >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (x > 0x7f800000 ? 0x200 : 0));
    if (x >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds to above 65504 */
    if (x < 0x38800000) { /* subnormal or zero in half precision */
        if (x < 0x33000000) return (uint16_t)sign;   /* below half the smallest subnormal */
        const uint32_t e = x >> 23, man = (x & 0x7fffff) | 0x800000;
        const int shift = 126 - (int)e; /* 14..24 */
        uint32_t h = man >> shift;
        const uint32_t rem = man & ((1u << shift) - 1), halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((x - 0x38000000) >> 13);
    const uint32_t rem = x & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static inline float lt_bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* float32 -> bf16, round to nearest even, as torch's scalar rounding (NaN -> 0x7fc0) */
static inline uint16_t lt_f32_to_bf16(float f) {
    if (f != f) return 0x7fc0;
    uint32_t bits;
    memcpy(&bits, &f, 4);
    bits += 0x7fff + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

/* the float16 at p (unaligned) */
static inline float lt_rd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return lt_f16_to_f32(h);
}

/* Q4_K/Q5_K: the 8 6-bit scales and mins (llama.cpp's get_scale_min_k4). */
static inline void lt_k4_scale_min(const uint8_t *q, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) { sc[j] = q[j] & 63; mn[j] = q[j + 4] & 63; }
        else { sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
    }
}

/* IQ4_NL / IQ4_XS: the 16 values of a 4-bit code (ggml-common.h's kvalues_iq4nl), as an
 * initializer (each file that reads them makes its own table: no unused statics in headers) */
#define LT_IQ4_VALUES_INIT {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}

/* IQ4_XS: the 6-bit scale of sub-block ib (0..7) minus 32, from the block's scales_h (bytes 2-3)
 * and scales_l (bytes 4-7) */
static inline int lt_iq4xs_scale(const uint8_t *b, int ib) {
    const int sh = b[2] | (b[3] << 8);
    return (((b[4 + ib / 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4)) - 32;
}

/* One block of an in-place type -> its codes q[elems] and per sub-block (32 weights; Q6_K 16)
 * scale and minv, so that weight i = scale[s] * q[i] + minv[s] (minv 0 where the type has no
 * min), the float32 factors formed as llama.cpp forms them (d * sc, -(dmin * m); IQ4: q the
 * table's value, scale d (IQ4_NL) or d * (ls - 32) (IQ4_XS)). In generic/kernels.c. */
void lt_decode_block(int qtype, const uint8_t *b, int8_t *q, float *scale, float *minv);

/* Sub-block length of an in-place type: 16 for Q6_K, else 32. */
static inline int lt_sub_block(int qtype) { return qtype == 14 ? 16 : 32; }

/* gelu_tanh(x) as x * sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3) (lt_kernels.gelu_mul) */
static inline float lt_gelu_tanh(float x) {
    const float z = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return x / (1.f + expf(-2.f * z));
}

#endif

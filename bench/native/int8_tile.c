/* int8_tile: 8-bit activations with a scale per 32 in avx2 prompt chunks, tile against tile. One
 * core, everything in L1, register-blocked tiles taking turns:
 *
 *   float32:    lantern's prompt micro-kernel (6 weight rows x 16 rows of x, 12 accumulators, one
 *               FMA per 8 multiply-adds; weights expanded to float32, x exact);
 *   int8/32:    the first 8-bit tile (2026-12-03): 2 weight rows x 6 rows of x, the lanes along
 *               a group's weights; per 32 weights and row pair: vpmaddubsw (unsigned codes times x
 *               rounded to int8 with its own scale per 32), vpmaddwd by the K-quant's integer
 *               sub-scale, a conversion to float and an FMA by x's scale;
 *   lanes:      today's (x86/avx2.c q8_tile): 2 weight rows x 4 records of 8 rows of x, the rows
 *               of x in the lanes; per 4 weights a broadcast of their codes and per record one
 *               vpmaddubsw, summed in int16 over a group (Q4_K), then per group one vpmaddwd by
 *               the sub-scale, a conversion and an FMA by x's scales (a vector over the rows);
 *   lanes vnni: the same with vpdpbusd (AVX-512 VNNI with VL; where the CPU has it), the int32
 *               sums times the sub-scale in float.
 *
 * Each prints G multiply-adds per second (the fastest of 9 alternating reps). On a Zen 3
 * (docs/PERFORMANCE.md, 2026-12-03) the int8/32 tile ran 1.37x the float one; on an Ice Lake
 * Xeon (2026-12-04) the lanes tile ran 1.6x the int8/32 one and its vnni variant 2.8x. What the
 * rounding costs in fidelity: bench/prompt_int8_fidelity.py.
 *
 *   cc -O2 -o /tmp/int8_tile bench/native/int8_tile.c && /tmp/int8_tile
 */

#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#define KC 256 /* columns: one K-quant super-block */
#define IR 2   /* int8 tile: weight rows */
#define IC 6   /* int8 tile: rows of x */
#define UNROLL _Pragma("GCC unroll 16")

/* c[r][j] (8 lanes each) += sum over the super-block's 8 groups of 32 of
 *   cvt(madd(maddubs(w codes, x int8), sub-scale)) * x's scale, then times the row's d. */
__attribute__((target("avx2,fma"), noinline)) static void tile_int8(const uint8_t *w, const int8_t *xq,
                                                                     const float *xd, const float *d, float *c) {
    __m256 sb[IR][IC];
    UNROLL for (int r = 0; r < IR; r++) UNROLL for (int j = 0; j < IC; j++) sb[r][j] = _mm256_setzero_ps();
    for (int g = 0; g < KC / 32; g++) {
        __m256i W[IR];
        UNROLL for (int r = 0; r < IR; r++) W[r] = _mm256_load_si256((const __m256i *)(w + r * 2 * KC + g * 32));
        UNROLL for (int r = 0; r < IR; r++) {
            const __m256i S = _mm256_load_si256((const __m256i *)(w + r * 2 * KC + KC + g * 32));
            UNROLL for (int j = 0; j < IC; j++) {
                __m256i t = _mm256_maddubs_epi16(W[r], _mm256_load_si256((const __m256i *)(xq + (g * IC + j) * 32)));
                t = _mm256_madd_epi16(t, S);
                sb[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_load_ps(xd + (g * IC + j) * 8), sb[r][j]);
            }
        }
    }
    UNROLL for (int r = 0; r < IR; r++) {
        const __m256 dr = _mm256_broadcast_ss(d + r);
        UNROLL for (int j = 0; j < IC; j++)
            _mm256_store_ps(c + (r * IC + j) * 8, _mm256_fmadd_ps(sb[r][j], dr, _mm256_load_ps(c + (r * IC + j) * 8)));
    }
}

/* lantern's float tile (x86/avx2.c gemm_tile): c[i][m] += sum_k w[i][k] * xp[k][m], 6 x 16. */
__attribute__((target("avx2,fma"), noinline)) static void tile_f32(const float *w, const float *xp, float *c) {
    __m256 a[6][2];
    UNROLL for (int i = 0; i < 6; i++) {
        a[i][0] = _mm256_load_ps(c + i * 16);
        a[i][1] = _mm256_load_ps(c + i * 16 + 8);
    }
    for (int k = 0; k < KC; k++) {
        const __m256 x0 = _mm256_load_ps(xp + k * 16), x1 = _mm256_load_ps(xp + k * 16 + 8);
        UNROLL for (int i = 0; i < 6; i++) {
            const __m256 wv = _mm256_broadcast_ss(w + i * KC + k);
            a[i][0] = _mm256_fmadd_ps(wv, x0, a[i][0]);
            a[i][1] = _mm256_fmadd_ps(wv, x1, a[i][1]);
        }
    }
    UNROLL for (int i = 0; i < 6; i++) {
        _mm256_store_ps(c + i * 16, a[i][0]);
        _mm256_store_ps(c + i * 16 + 8, a[i][1]);
    }
}


/* The lanes tile: c[a][b] (8 rows of x each) += w row a . x record b ([64 quads][8 rows][4 bytes]),
 * Q4_K-like codes (0-15: a group's 8 quads summed in int16 without overflow) */
enum { LA = 2, LB = 4 };
#define LANES(NAME, ATTR, VNNI)                                                                                 \
    __attribute__((target(ATTR), noinline)) static void NAME(const uint8_t *w, const int32_t *S32, const float *Sf, \
                                                             const uint8_t *x, const float *xd, float *c) {       \
        __m256 f[LA][LB];                                                                                         \
        UNROLL for (int a = 0; a < LA; a++) UNROLL for (int b = 0; b < LB; b++) f[a][b] = _mm256_setzero_ps();    \
        for (int g = 0; g < 8; g++) {                                                                             \
            __m256i t[LA][LB];                                                                                    \
            UNROLL for (int a = 0; a < LA; a++) UNROLL for (int b = 0; b < LB; b++) t[a][b] = _mm256_setzero_si256(); \
            UNROLL for (int q = 0; q < 8; q++) {                                                                  \
                __m256i wv[LA], xv[LB];                                                                           \
                UNROLL for (int a = 0; a < LA; a++) wv[a] = _mm256_set1_epi32(*(const int32_t *)(w + a * 256 + 32 * g + 4 * q)); \
                UNROLL for (int b = 0; b < LB; b++) xv[b] = _mm256_load_si256((const __m256i *)(x + b * 2048 + (8 * g + q) * 32)); \
                UNROLL for (int a = 0; a < LA; a++) UNROLL for (int b = 0; b < LB; b++) {                         \
                    if (VNNI) t[a][b] = _mm256_dpbusd_epi32(t[a][b], wv[a], xv[b]);                               \
                    else t[a][b] = _mm256_add_epi16(t[a][b], _mm256_maddubs_epi16(wv[a], xv[b]));                 \
                }                                                                                                 \
            }                                                                                                     \
            UNROLL for (int a = 0; a < LA; a++) UNROLL for (int b = 0; b < LB; b++) {                             \
                __m256 v;                                                                                         \
                if (VNNI) v = _mm256_mul_ps(_mm256_cvtepi32_ps(t[a][b]), _mm256_set1_ps(Sf[a * 8 + g]));          \
                else v = _mm256_cvtepi32_ps(_mm256_madd_epi16(t[a][b], _mm256_set1_epi32(S32[a * 8 + g])));       \
                f[a][b] = _mm256_fmadd_ps(v, _mm256_load_ps(xd + b * 64 + g * 8), f[a][b]);                       \
            }                                                                                                     \
        }                                                                                                         \
        UNROLL for (int a = 0; a < LA; a++) UNROLL for (int b = 0; b < LB; b++)                                   \
            _mm256_store_ps(c + (a * LB + b) * 8, _mm256_add_ps(f[a][b], _mm256_load_ps(c + (a * LB + b) * 8)));  \
    }
LANES(tile_lanes, "avx2,fma", 0)
LANES(tile_lanes_vnni, "avx2,fma,avx512f,avx512vl,avx512vnni", 1)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(void) {
    static uint8_t w8[IR * 2 * KC] __attribute__((aligned(64)));
    static int8_t xq[KC * IC] __attribute__((aligned(64)));
    static float xd[KC / 32 * IC * 8] __attribute__((aligned(64))), d8[IR] = {0.5f, 0.25f};
    static float c8[IR * IC * 8] __attribute__((aligned(64)));
    static float wf[6 * KC] __attribute__((aligned(64))), xf[KC * 16] __attribute__((aligned(64)));
    static float cf[6 * 16] __attribute__((aligned(64)));
    static uint8_t wl[LA * 256] __attribute__((aligned(64))), xl[LB * 2048] __attribute__((aligned(64)));
    static int32_t S32[LA * 8];
    static float Sf[LA * 8], xdl[LB * 64] __attribute__((aligned(64))), cl[LA * LB * 8] __attribute__((aligned(64)));
    for (int i = 0; i < IR * 2 * KC; i++) w8[i] = (uint8_t)(i % 13);
    for (int i = 0; i < KC * IC; i++) xq[i] = (int8_t)((i * 7) % 200 - 100);
    for (int i = 0; i < KC / 32 * IC * 8; i++) xd[i] = 1e-3f;
    for (int i = 0; i < 6 * KC; i++) wf[i] = 1e-3f * (float)(i % 17);
    for (int i = 0; i < KC * 16; i++) xf[i] = 1e-3f * (float)(i % 19);
    for (int i = 0; i < LA * 256; i++) wl[i] = (uint8_t)(i % 13);
    for (int i = 0; i < LB * 2048; i++) xl[i] = (uint8_t)((i * 7) % 200 - 100);
    for (int i = 0; i < LA * 8; i++) {
        S32[i] = 5 | 5 << 16;
        Sf[i] = 5.f;
    }
    for (int i = 0; i < LB * 64; i++) xdl[i] = 1e-3f;
    const int vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
    const long reps = 200000;
    double best8 = 0, bestf = 0, bestl = 0, bestv = 0;
    for (int round = 0; round < 9; round++) {
        double t = now();
        for (long i = 0; i < reps; i++) tile_int8(w8, xq, xd, d8, c8);
        double rate = (double)reps * IR * IC * KC / (now() - t) * 1e-9;
        if (rate > best8) best8 = rate;
        t = now();
        for (long i = 0; i < reps; i++) tile_f32(wf, xf, cf);
        rate = (double)reps * 6 * 16 * KC / (now() - t) * 1e-9;
        if (rate > bestf) bestf = rate;
        t = now();
        for (long i = 0; i < reps; i++) tile_lanes(wl, S32, Sf, xl, xdl, cl);
        rate = (double)reps * LA * LB * 8 * 256 / (now() - t) * 1e-9;
        if (rate > bestl) bestl = rate;
        if (!vnni) continue;
        t = now();
        for (long i = 0; i < reps; i++) tile_lanes_vnni(wl, S32, Sf, xl, xdl, cl);
        rate = (double)reps * LA * LB * 8 * 256 / (now() - t) * 1e-9;
        if (rate > bestv) bestv = rate;
    }
    printf("G multiply-adds/s: float32 tile %.1f, int8/32 tile %.1f (%.2fx float32), lanes %.1f (%.2fx int8/32)",
           bestf, best8, best8 / bestf, bestl, bestl / best8);
    if (vnni) printf(", lanes vnni %.1f (%.2fx int8/32)", bestv, bestv / best8);
    else printf(", lanes vnni: this CPU has no AVX-512 VNNI");
    printf("  [%g %g %g]\n", (double)c8[0], (double)cf[0], (double)cl[0]);
    return 0;
}

/* prompt_q8_matmul: lt_gguf_matmul on a Phi-3-mini-shaped Q4_K matrix (3072 x 3072, random
 * blocks), one thread, M rows of x taken as prompt rows (x int8 per 32, lantern.h's 8-bit tile)
 * against the same rows kept to 15 bits (the 8-row tile), alternating 15 times; prints the
 * median ratio (15-bit time / int8 time) and the tile alone in L1. The task geometry (Q8_ROWS,
 * Q8_XB in matmul.c) can be set with -D to compare:
 *
 *   cc -O3 -std=c11 -pthread -Ilantern/weights/csrc bench/native/prompt_q8_matmul.c \
 *      $(find lantern/weights/csrc -name '*.c' ! -name module.c) -lm -o /tmp/q8mm && /tmp/q8mm 256
 */

#include "blocks.h"
#include "lantern.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const int64_t N = 3072, K = 3072, M = argc > 1 ? atoi(argv[1]) : 256, B = 144;
    const lt_kernels *k = lt_kernels_get();
    if (!k->gemm_q8) {
        printf("the %s level has no 8-bit prompt tile (avx2 has)\n", k->isa);
        return 1;
    }
    uint8_t *w = malloc((size_t)(N * K / 256 * B));
    for (int64_t i = 0; i < N * K / 256 * B; i++) w[i] = (uint8_t)rand();
    for (int64_t b = 0; b < N * K / 256; b++) { /* d and dmin 2^-7 */
        const uint16_t h = 0x2000;
        memcpy(w + b * B, &h, 2);
        memcpy(w + b * B + 2, &h, 2);
    }
    float *x = malloc((size_t)(M * K) * 4), *y = malloc((size_t)(M * N) * 4);
    for (int64_t i = 0; i < M * K; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;

    static uint8_t rec[LT_Q8_NW * LT_Q8_WREC] __attribute__((aligned(64)));
    static uint8_t xr[LT_Q8_NX * LT_Q8_XREC] __attribute__((aligned(64)));
    static float c[LT_Q8_NX * LT_Q8_NW * LT_Q8_XROWS] __attribute__((aligned(64)));
    for (int r = 0; r < LT_Q8_NW; r++) k->expand_q8[LT_Q4_K](LT_Q4_K, w + B * (K / 256) * r, rec + r * LT_Q8_WREC);
    float *x1 = malloc((size_t)(LT_Q8_NX * LT_Q8_XROWS * 256) * 4);
    for (int64_t i = 0; i < LT_Q8_NX * LT_Q8_XROWS * 256; i++) x1[i] = x[i % (M * K)];
    lt_pack_q8_rows(x1, LT_Q8_NX * LT_Q8_XROWS, 256, LT_Q4_K, 0, LT_Q8_NX, xr);
    double best = 0;
    for (int r = 0; r < 5; r++) {
        const double t = now();
        for (int i = 0; i < 200000; i++) k->gemm_q8(rec, LT_Q8_NW, xr, LT_Q8_XREC, LT_Q8_NX, LT_Q4_K, c, LT_Q8_NW * LT_Q8_XROWS);
        const double g = 200000.0 * LT_Q8_NW * LT_Q8_NX * LT_Q8_XROWS * 256 / (now() - t) * 1e-9;
        if (g > best) best = g;
    }
    double ratio[15];
    for (int i = 0; i < 15; i++) {
        double t = now();
        lt_gguf_matmul(w, LT_Q4_K, x, y, N, N, K, M, M, 1);
        const double exact = now() - t;
        t = now();
        lt_gguf_matmul(w, LT_Q4_K, x, y, N, N, K, M, 0, 1);
        ratio[i] = exact / (now() - t);
    }
    qsort(ratio, 15, sizeof(double), by_value);
    printf("%s: tile in L1 %.1f G multiply-adds/s; Q4_K %lldx%lld, M = %lld, one thread: int8 / exact speed, "
           "median of 15 %.3f (quartiles %.3f-%.3f)\n", k->isa, best, (long long)N, (long long)K, (long long)M,
           ratio[7], ratio[4], ratio[10]);
    return 0;
}

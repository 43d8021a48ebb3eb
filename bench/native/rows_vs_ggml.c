/* rows_vs_ggml: lantern's decode matmul (M rows of x, 1 to 12: lt_gguf_matmul on one thread, as
 * a decode or batch pass runs it, x's preparation included: the row kernels, and from
 * LT_ROWS8_MIN rows the 8-row tile where the level has one) against llama.cpp's own vec_dot on
 * one core, in one process, alternating, over a weight matrix that stays in the last-level
 * cache: what each kernel computes per cycle, without the memory's speed or the machine's drift
 * between runs in the figure (the fastest of many alternating reps of each).
 *
 * Built and run by bench/rows_vs_ggml.py (it finds llama-cpp-python's libggml-cpu); by hand:
 *   cc -O3 -std=c11 -pthread -Ilantern/weights/csrc bench/native/rows_vs_ggml.c \
 *      $(ls lantern/weights/csrc/*.c lantern/weights/csrc/x86/*.c lantern/weights/csrc/generic/*.c | grep -v module.c) -lm -ldl
 *   ./a.out LIBGGML_CPU LEVEL QTYPE M [N K REPS]
 * LEVEL: lantern's instruction-set level (0 portable, 1 avx2, 2 avx512, 3 neon); QTYPE: the GGML
 * type id (12 Q4_K, 13 Q5_K, 14 Q6_K, 2 Q4_0, 3 Q4_1, 8 Q8_0, ...). llama.cpp multiplies the same
 * blocks by x quantized to its vec_dot type (Q8_K for the K-quants, Q8_0/Q8_1 for the others),
 * one row of x at a time. Prints one line: G weights/s of each (weights of the matrix per second:
 * for M rows of x, M times as many products) and lantern / llama.cpp. */

#include "blocks.h"
#include "lantern.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int lantern_set_isa(int isa);
const char *lantern_kernel_name(int what, int qtype);

/* ggml-cpu.h: struct ggml_type_traits_cpu */
typedef void (*ggml_from_float_t)(const float *x, void *y, int64_t k);
typedef void (*ggml_vec_dot_t)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by, int nrc);
typedef struct {
    ggml_from_float_t from_float;
    ggml_vec_dot_t vec_dot;
    int vec_dot_type;
    int64_t nrows;
} ggml_traits_cpu;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *xmalloc(size_t n) {
    void *p = calloc(1, n + 64);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(2); }
    return p;
}

/* bytes of one row of K elements of a type llama.cpp quantizes x to */
static size_t ggml_row_bytes(int type, int64_t K) {
    switch (type) {
    case 8: return (size_t)(K / 32 * 34);   /* Q8_0 */
    case 9: return (size_t)(K / 32 * 36);   /* Q8_1 */
    case 15: return (size_t)(K / 256 * 292); /* Q8_K */
    default: return 0;
    }
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s LIBGGML_CPU LEVEL QTYPE M [N K REPS]\n", argv[0]);
        return 2;
    }
    const int level = atoi(argv[2]), qt = atoi(argv[3]), M = atoi(argv[4]);
    const int64_t N = argc > 5 ? atoll(argv[5]) : 2048, K = argc > 6 ? atoll(argv[6]) : 3072;
    const int reps = argc > 7 ? atoi(argv[7]) : 41;
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror()); return 2; }
    void (*ggml_cpu_init)(void) = (void (*)(void))dlsym(lib, "ggml_cpu_init");
    const ggml_traits_cpu *(*traits)(int) = (const ggml_traits_cpu *(*)(int))dlsym(lib, "ggml_get_type_traits_cpu");
    if (!ggml_cpu_init || !traits) { fprintf(stderr, "%s has no ggml_get_type_traits_cpu\n", argv[1]); return 2; }
    ggml_cpu_init();
    if (lantern_set_isa(level) != level) { fprintf(stderr, "this CPU does not run level %d\n", level); return 2; }
    const lt_kernels *k = lt_kernels_get();
    if (M < 1 || M > LT_ROWS_MAX_M || qt < 0 || qt >= LT_NTYPES || !k->row[qt][0]) {
        fprintf(stderr, "no row kernel for type %d with M = %d at level %s (M: 1 to %d)\n", qt, M, k->isa, LT_ROWS_MAX_M);
        return 2;
    }
    const ggml_traits_cpu *t = traits(qt), *tx = traits(t->vec_dot_type);
    const size_t xrow = ggml_row_bytes(t->vec_dot_type, K);
    if (!t->vec_dot || !tx->from_float || !xrow) { fprintf(stderr, "llama.cpp has no vec_dot for type %d here\n", qt); return 2; }

    /* weights: random blocks with sane float16 scales (no NaN, infinity or subnormal) */
    int64_t E = 0, B = 0;
    lt_block_geometry(qt, &E, &B);
    const size_t rowb = (size_t)(K / E * B);
    uint8_t *w = (uint8_t *)xmalloc(rowb * (size_t)N);
    srand(1);
    for (size_t i = 0; i < rowb * (size_t)N; i++) w[i] = (uint8_t)rand();
    const int d_at = qt == LT_Q6_K ? 208 : qt == LT_Q3_K ? 108 : qt == LT_Q2_K ? 80 : 0;
    const int two = qt == LT_Q4_1 || qt == LT_Q5_1 || qt == LT_Q4_K || qt == LT_Q5_K || qt == LT_Q2_K;
    for (int64_t b = 0; b < N * K / E; b++)
        for (int j = 0; j <= two; j++) {
            const uint16_t h = (uint16_t)(0x2000 + rand() % 0x800);
            memcpy(w + b * B + d_at + 2 * j, &h, 2);
        }

    float *x = (float *)xmalloc(sizeof(float) * (size_t)(M * K));
    for (int64_t i = 0; i < M * K; i++) x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    uint8_t *xq = (uint8_t *)xmalloc(xrow * (size_t)M);
    for (int m = 0; m < M; m++) tx->from_float(x + m * K, xq + xrow * (size_t)m, K);

    float *out = (float *)xmalloc(sizeof(float) * (size_t)(N * M));
    double best_l = 1e30, best_g = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        if (lt_gguf_matmul(w, qt, x, out, N, N, K, M, M, 1)) { fprintf(stderr, "lt_gguf_matmul failed\n"); return 2; }
        const double tl = now() - t0;
        t0 = now();
        for (int64_t i = 0; i < N; i++)
            for (int m = 0; m < M; m++) t->vec_dot((int)K, out + i * M + m, 0, w + rowb * (size_t)i, 0, xq + xrow * (size_t)m, 0, 1);
        const double tg = now() - t0;
        if (tl < best_l) best_l = tl;
        if (tg < best_g) best_g = tg;
    }
    const double gw = (double)(N * K) / 1e9;
    const char *tile = M >= LT_ROWS8_MIN && k->rows8[qt] ? k->rows8_name : "";
    printf("%-14s %-10s M=%-2d %dx%d: lantern %6.2f  llama.cpp %6.2f G weights/s  ratio %.2f\n", k->row_name[qt], tile, M, (int)N, (int)K,
           gw / best_l, gw / best_g, best_g / best_l);
    return 0;
}

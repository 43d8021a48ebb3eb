/* matmul_insns: one lt_gguf_matmul (or expansion) repeated R times on random blocks, one thread,
 * for counting executed instructions under qemu (bench/arm_instructions.py runs it with R = 0 and
 * R > 0 under qemu_insn_plugin.c and takes the difference).
 *
 *   matmul_insns TYPE K N M ROUTE R
 *     TYPE  a ggml type id (12 Q4_K, 13 Q5_K, 14 Q6_K, ...)
 *     ROUTE exact: every row of x on 15 bits (the row kernels; more than LT_ROWS_MAX_M rows: the
 *                  level's prompt route in C);
 *           int8:  every row on 8-bit x (lantern.h's 8-bit tile, where the level has one);
 *           expand: the rows of W expanded to float32 (the first half of torch's prompt route)
 * Prints the level and the functions serving the type, so a count is never of the wrong code. */

#include "lantern.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *lantern_kernel_name(int what, int qtype);
int lantern_gguf_expand(const uint8_t *w, int qtype, void *out, int64_t N, int64_t K, int f32, int nthreads);

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s TYPE K N M exact|int8|expand R\n", argv[0]);
        return 2;
    }
    const int qt = atoi(argv[1]), reps = atoi(argv[6]);
    const int64_t K = atoll(argv[2]), N = atoll(argv[3]), M = atoll(argv[4]);
    const char *route = argv[5];
    const lt_kernels *k = lt_kernels_get();
    int64_t E = 0, B = 0;
    if (lt_block_geometry(qt, &E, &B) || K % E) {
        fprintf(stderr, "type %d does not take K = %lld\n", qt, (long long)K);
        return 2;
    }
    if (!strcmp(route, "int8") && !(k->gemm_q8 && k->expand_q8[qt])) {
        fprintf(stderr, "the %s level has no 8-bit tile for type %d\n", k->isa, qt);
        return 3;
    }
    const int64_t rowbytes = K / E * B;
    uint8_t *w = malloc((size_t)(N * rowbytes));
    float *x = malloc((size_t)(M * K) * 4), *y = malloc((size_t)(M * N) * 4), *wf = malloc((size_t)(N * K) * 4);
    srand(1);
    for (int64_t i = 0; i < N * rowbytes; i++) w[i] = (uint8_t)rand();
    for (int64_t r = 0; r < N; r++) /* every scale a small float16: 2^-7, so no block is inf or NaN */
        for (int64_t b = 0; b < K / E; b++) {
            uint8_t *blk = w + r * rowbytes + b * B;
            const int at = qt == LT_Q6_K ? 208 : qt == LT_Q8_0 || qt == LT_Q4_0 || qt == LT_Q5_0 || qt == LT_IQ4_NL ? 0 : -1;
            if (at >= 0) { blk[at] = 0x00; blk[at + 1] = 0x20; }
            else { blk[0] = blk[2] = 0x00; blk[1] = blk[3] = 0x20; } /* d, dmin (or d, m) */
        }
    for (int64_t i = 0; i < M * K; i++) x[i] = (float)(rand() % 2001 - 1000) / 1000.f;
    printf("level %s, row kernel %s, 8-bit tile %s\n", k->isa, lantern_kernel_name(0, qt),
           lantern_kernel_name(6, qt) ? lantern_kernel_name(6, qt) : "(none)");
    for (int r = 0; r < reps; r++) {
        int rc;
        if (!strcmp(route, "expand")) rc = lantern_gguf_expand(w, qt, wf, N, K, 1, 1);
        else rc = lt_gguf_matmul(w, qt, x, y, N, N, K, M, !strcmp(route, "int8") ? 0 : M, 1);
        if (rc) {
            fprintf(stderr, "the call failed\n");
            return 1;
        }
    }
    free(w);
    free(x);
    free(y);
    free(wf);
    return 0;
}

/* What lantern's native sources share (_native.c: the weight kernels, the thread pool and
 * attention; _step.c: whole forward passes built on them). Internal: not called from Python. */
#ifndef LANTERN_NATIVE_H
#define LANTERN_NATIVE_H

#include <stdint.h>

typedef void (*task_fn)(void *args, int64_t task);

/* fn(args, t) for t in [0, ntasks) on up to `nthreads` threads, the caller included. */
void lt_pool_run(task_fn fn, void *args, int64_t ntasks, int nthreads);

/* y[m, r] (rows of y `ldy` floats apart) = x[m] . W[r] for the GGUF blocks w of type `qtype`
 * ([N, K] weights), m < M. Returns 0, or -1 for an unknown type or K not a multiple of the block. */
int lt_gguf_matmul(const uint8_t *w, int qtype, const float *x, float *y, int64_t ldy, int64_t N, int64_t K,
                   int64_t M, int nthreads);

/* Causal attention of n queries (rows `ldq` floats apart) over a float16 KV cache; see _native.c. */
int lt_attention_f16(const float *q, int64_t ldq, const uint16_t *k, const uint16_t *v, float *out, int64_t n,
                     int64_t H, int64_t KVH, int64_t D, int64_t start, int64_t stride, int64_t window, float scale,
                     int nthreads);

/* out[i] = silu(g[i]) * u[i] = g[i] / (1 + exp(-g[i])) * u[i] */
void lt_silu_mul(const float *g, const float *u, float *out, int64_t n);

/* float32 -> float16, round to nearest even */
void lt_to_f16(const float *src, uint16_t *dst, int64_t n);

int lantern_cpu_features(void);

#endif

/* lantern's native CPU library: what its files share. Internal: Python sees only the lantern_*
 * functions (ctypes, lantern/weights/kernels/native.py).
 *
 * Layout (as ggml-cpu's): ISA-free drivers (pool.c, matmul.c, attention.c, step.c) call kernels
 * through one table (lt_kernels) that dispatch.c fills once per instruction-set level: first
 * with the portable C of generic/kernels.c, then each level up to the chosen one overrides what
 * it has (x86/avx2.c, x86/avx512.c, arm/neon.c). A level that lacks a kernel keeps the generic
 * one, whose name then says so. Adding an ISA: one file with an lt_fill_* function, one entry
 * in dispatch.c's LEVELS. */
#ifndef LANTERN_H
#define LANTERN_H

#include <stddef.h>
#include <stdint.h>

/* Bumped whenever an exported function or struct changes shape; native.py checks it. */
#define LT_ABI_VERSION 6

#if defined(__x86_64__) || defined(_M_X64)
#define LT_X86 1
#endif
#if defined(__aarch64__) || defined(_M_ARM64)
#define LT_ARM64 1
#endif

/* Portability (gcc, clang, MinGW, MSVC; README "Platforms"). LT_ALIGN goes before the type
 * (`static LT_ALIGN(64) float t[16];`: the one place both spellings accept). LT_TARGET(s): the
 * instruction sets a function may use, for gcc/clang (function-level target attributes); MSVC
 * compiles any intrinsic anywhere, so it is empty there (dispatch.c still decides what runs).
 * LT_PREFETCH(p): a read prefetch into all cache levels (a hint; nothing where none exists). */
#if defined(_MSC_VER) && !defined(__clang__)
#define LT_MSVC 1
#define LT_ALIGN(n) __declspec(align(n))
#define LT_INLINE static __forceinline
#define LT_THREAD_LOCAL __declspec(thread)
#define LT_TARGET(isas)
#else
#define LT_ALIGN(n) __attribute__((aligned(n)))
#define LT_INLINE static inline __attribute__((always_inline))
#define LT_THREAD_LOCAL _Thread_local
#define LT_TARGET(isas) __attribute__((target(isas)))
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LT_PREFETCH(p) __builtin_prefetch(p)
#elif defined(LT_MSVC) && defined(LT_X86)
#include <intrin.h>
#define LT_PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
#elif defined(LT_MSVC) && defined(LT_ARM64)
#include <intrin.h>
#define LT_PREFETCH(p) __prefetch(p)
#else
#define LT_PREFETCH(p) ((void)(p))
#endif

#ifdef _WIN32
#define LT_EXPORT __declspec(dllexport)
#else
#define LT_EXPORT __attribute__((visibility("default")))
#endif

/* GGML type ids */
enum { LT_Q4_0 = 2, LT_Q4_1 = 3, LT_Q5_0 = 6, LT_Q5_1 = 7, LT_Q8_0 = 8, LT_Q2_K = 10, LT_Q3_K = 11,
       LT_Q4_K = 12, LT_Q5_K = 13, LT_Q6_K = 14, LT_IQ4_NL = 20, LT_IQ4_XS = 23, LT_NTYPES = 24 };

/* Weights per block and bytes per block of an in-place type (bytes 0: not one); inline, so that a
 * kernel instantiated for one type loops over constants. */
static inline int64_t lt_block_elems(int qtype) {
    return qtype == LT_Q4_0 || qtype == LT_Q4_1 || qtype == LT_Q5_0 || qtype == LT_Q5_1 || qtype == LT_Q8_0 ||
                   qtype == LT_IQ4_NL
               ? 32
               : 256;
}
static inline int64_t lt_block_bytes(int qtype) {
    switch (qtype) {
    case LT_Q4_0: return 18;
    case LT_Q4_1: return 20;
    case LT_Q5_0: return 22;
    case LT_Q5_1: return 24;
    case LT_Q8_0: return 34;
    case LT_Q2_K: return 84;
    case LT_Q3_K: return 110;
    case LT_Q4_K: return 144;
    case LT_Q5_K: return 176;
    case LT_Q6_K: return 210;
    case LT_IQ4_NL: return 18;
    case LT_IQ4_XS: return 136;
    default: return 0;
    }
}

/* The types lt_kernels.expand_* take, as X(suffix, type): each ISA file makes and registers one
 * expansion function per type from it. */
#define LT_EXPANDABLE(X)                                                                                \
    X(q4_0, LT_Q4_0) X(q4_1, LT_Q4_1) X(q5_0, LT_Q5_0) X(q5_1, LT_Q5_1) X(q8_0, LT_Q8_0) X(q2_k, LT_Q2_K) \
    X(q3_k, LT_Q3_K) X(q4_k, LT_Q4_K) X(q5_k, LT_Q5_K) X(q6_k, LT_Q6_K) X(iq4_nl, LT_IQ4_NL) X(iq4_xs, LT_IQ4_XS)

/* Instruction-set levels (LANTERN_ISA): each CPU runs the best level it has. */
enum { LT_ISA_PORTABLE = 0, LT_ISA_AVX2 = 1, LT_ISA_AVX512 = 2, LT_ISA_NEON = 3, LT_ISA_COUNT = 4 };

/* ----- activations, as the row kernels read them ----------------------------------------------
 * The matmul driver converts x once per call into the form the level's row kernels take:
 *   LT_X_BF16: bf16(x) (round to nearest even) and, per row of `ld` floats, the sums per 32 of x
 *              (first G floats) and of bf16(x) (from ld / 2 on): AVX-512 BF16's vdpbf16ps.
 *   LT_X_Q15:  x per group of 32 as int16 q with |q| <= 16383 and a float32 scale qd
 *              (x ~ qd * q, qd = max|x| / 16383), and qs = qd * sum(q) per group (the mins).
 *              Products with the weights' small integer codes are exact in int32, so only the
 *              rounding of x to 15 bits (2^-15 of the group's largest |x|, 64x finer than bf16)
 *              and float32 accumulation remain. 15 bits, not 16: |q| <= 16383 splits exactly
 *              into two signed bytes (128 * hi + lo, lo in 0..127) for byte dot products. */
enum { LT_X_BF16 = 1, LT_X_Q15 = 2 };

typedef struct {
    int64_t K, G, ld;   /* elements per row of x; groups of 32 per row; floats per row of bs */
    const float *f;     /* x float32 [M, K] (always) */
    const uint16_t *bf; /* LT_X_BF16: [M, K] */
    const float *bs;    /* LT_X_BF16: [M, ld] sums per 32 of x, then (at ld / 2) of bf16(x) */
    const int16_t *q;   /* LT_X_Q15: [M, K] */
    const float *qd;    /* LT_X_Q15: [M, G] */
    const float *qs;    /* LT_X_Q15: [M, G] */
    const int8_t *q8;   /* LT_X_Q15, where the level's x_prepare makes it (else NULL): q split into
                           two signed bytes, per group of 32 the 32 hi then the 32 lo ([M, 2K]) */
    /* LT_X_Q15 where the type's rows take the rows8 tile (else NULL): x in blocks of 8 rows (zero
     * rows past M) with the rows in the lanes: q as pairs [M / 8][K / 2][8][2], qd and qs as [M / 8][G][8] */
    const int16_t *p8;
    const float *qd8, *qs8;
    /* LT_X_Q15 where the type's row kernels read x's groups of 32 as their 16 even elements, then
     * their 16 odd ones (lt_kernels.even_odd_types; else NULL): [M, K]. A 16-bit word of a block's
     * packed codes holds two neighbouring weights, which split into two vectors of int16 codes with
     * in-lane shifts and masks (1-2 operations) instead of a lane-crossing widening of bytes (x86:
     * vpmovzxbw, about 1.25 cycles each). */
    const int16_t *qeo;
    /* with qeo: 32 * the sums of q per 16 elements, per 128 in the order of sub-blocks 0 2 4 6 1 3 5
     * 7 ([M, K / 16]): Q6_K's code offset (its codes are stored + 32) taken on x's side, once per
     * call, instead of a subtraction per code and block in the row kernels */
    const int32_t *s16;
} lt_x;

/* x->q's rows [0, M) -> qeo in lt_x.qeo's order, and s16 as lt_x.s16 */
void lt_x_even_odd(const lt_x *xp, int64_t M, int16_t *qeo, int32_t *s16);

/* out[m] = row . x[m0 + m] for m < the kernel's row count (1, 2, 3, 4 or 8). */
typedef void (*lt_row_fn)(const uint8_t *row, const lt_x *x, int64_t m0, float *out);
#define LT_ROW_COUNTS 5
static const int LT_ROW_M[LT_ROW_COUNTS] = {1, 2, 3, 4, 8};
#ifndef LT_ROWS_MAX_M
#define LT_ROWS_MAX_M 12 /* lt_gguf_matmul: up to this many rows of x, the row kernels over W in place
                            (decode, verify passes); more: a prompt chunk (native.py's GGUF_MAX_M,
                            checked against lantern_rows_max_m() at load) */
#endif

/* Rows of x 8 at a time on 15-bit x, at levels with a rows8 tile (avx2): y[m * ldy + r] = weight
 * row r . x row m for r < LT_ROWS8_NW rows `rowbytes` apart and m in [8 xb0, min(8 (xb0 + nxb),
 * m1)): x->p8's blocks xb0 .. xb0 + nxb - 1 (nxb <= LT_ROWS8_XB). The 8 rows of a block are the
 * lanes of one vector: per pair of weights one broadcast and one vpmaddwd give 8 rows' products,
 * the int32 sums per group of 32 are exact, and the float scaling (a conversion, a multiply, an
 * FMA or two) is paid once per group and weight row, where the row kernels pay it per group,
 * weight row and row of x. Each 256 weights are decoded once
 * for all nxb blocks. The same products as the row kernels, so the same tolerance. Decode passes
 * of LT_ROWS8_MIN to LT_ROWS_MAX_M rows take it for x rows 0-7; longer calls (prompt chunks) for
 * all their rows, in place of the float32 micro-kernel. */
typedef void (*lt_rows8_fn)(const uint8_t *w, int64_t rowbytes, const lt_x *x, int64_t xb0, int64_t nxb, float *y,
                            int64_t ldy, int64_t m1);
#define LT_ROWS8_NW 4
#define LT_ROWS8_XB 8 /* blocks of x per call at most: 64 rows, up to 400 KB of x at K = 3072 (L2) */
#ifndef LT_ROWS8_MIN
#define LT_ROWS8_MIN 5 /* rows of x from which a decode pass takes the tile (bench/rows_vs_ggml.py) */
#endif

/* One row of GGUF blocks (K weights) -> weights (prompt chunks, then a dense GEMM). */
typedef void (*lt_expand_bf16_fn)(int qtype, const uint8_t *row, int64_t K, uint16_t *out);
typedef void (*lt_expand_f32_fn)(int qtype, const uint8_t *row, int64_t K, float *out);

/* Prompt chunks, at levels with a float32 micro-kernel: c[i][m] += sum_k w[i * ldw + k] * xp[k][m]
 * for i < nw (<= LT_GEMM_NW weight rows, expanded to float32: exactly lantern's dequantization),
 * m < LT_GEMM_MB rows of x packed as [KC][LT_GEMM_MB] (transposed), c [nw][LT_GEMM_MB]. Each c
 * element is one chain of fused multiply-adds in k order, whatever the tiling around it, so the
 * result does not depend on M, the threads or a row's place in the batch. */
typedef void (*lt_gemm_f32_fn)(const float *w, int64_t ldw, int nw, const float *xp, int64_t KC, float *c);
#define LT_GEMM_NW 6  /* weight rows per call: 6 x 2 accumulators of 8 floats, 15 of AVX2's 16 registers */
#define LT_GEMM_MB 16 /* rows of x per call */

/* 8-bit rows at levels with an 8-bit tile (avx2; neon's dotprod variant), for the K-quants (prompt rows; a batched pass's
 * decode rows, where Model.forward_batch asks): x rounded to int8 with a
 * scale per 32 (xd = max|x| / 127), where llama.cpp rounds per 256; the weights as unsigned
 * codes u times integer sub-scales S and a float d per super-block, plus (Q4_K, Q5_K) float mins:
 *   y = sum over super-blocks of d * sum_g xd_g * sum_{s in g} S_s * (sum_i u_i q_i + o_s)  (exact in int32)
 *       + sum_g mins_g * (xd_g * sum_i q_i over group g)                                      (Q4_K, Q5_K)
 * with o_s = -32 * sum_i q_i over Q6_K's sub-block s (its codes' offset, u = code + 32; 0 for the
 * others), i.e. exactly the rounded x against lantern's dequantized weights, in float32. A row's
 * result depends on that row alone (its own rounding; each lane's sums in a fixed order, whatever
 * M, the record or the tile shape), so a request's output does not depend on what shares its
 * pass once its rows take this route; which rows do is the caller's (lt_gguf_matmul's m_exact).
 * docs/FIDELITY.md has what the rounding costs.
 *
 * x is packed 8 rows to a record, the rows in the lanes of a vector (as the rows8 tile's), so that
 * one vpmaddubsw (or vpdpbusd) of 4 broadcast codes with a record's 4 bytes of 8 rows makes 32
 * products, and x's scale per 32 is a vector over the rows: the float work is paid once per group
 * of 32, weight row and 8 rows of x. NEON's SDOT by element does the same with 4 rows of x to a
 * vector: one instruction per 4 weights and 4 rows. */
/* One row's super-block, LT_Q8_WREC bytes: codes u[256], then (byte offsets) */
#define LT_Q8_W_S 256    /* S int32 [16]: the sub-scale in both int16 halves (vpmaddwd); Q4_K, Q5_K: 8 */
#define LT_Q8_W_SF 320   /* S float [16] (vpdpbusd's int32 sums times S in float: exact, < 2^24) */
#define LT_Q8_W_MINS 384 /* mins float [8] per 32 (Q4_K, Q5_K) */
#define LT_Q8_W_D 448    /* d float */
#define LT_Q8_WREC 512
#define LT_Q8_XROWS 8 /* rows of x per record: the lanes of one vector */
/* One record of LT_Q8_XROWS rows of x over a super-block, LT_Q8_XREC bytes: q int8 [64 quads][8 rows][4]
 * (quad i: elements 4i .. 4i + 3), then (byte offsets): xd float [8 groups][8 rows]; the sums of
 * xd * q per 32, float [8][8 rows]; for Q6_K only, its offsets o_s, int32 [16][8 rows], and the same
 * per pair of quads as the lanes of their vpmaddubsw products hold them, int16 [32][8 rows][2] (-32 *
 * the sums of elements 2k, 2k + 1 of both quads, k = 0, 1). */
#define LT_Q8_X_D 2048
#define LT_Q8_X_S32 (LT_Q8_X_D + 8 * 8 * 4)
#define LT_Q8_X_O32 (LT_Q8_X_S32 + 8 * 8 * 4)
#define LT_Q8_X_O16 (LT_Q8_X_O32 + 16 * 8 * 4)
#define LT_Q8_XREC (LT_Q8_X_O16 + 32 * 16 * 2)
#define LT_Q8_NW 2  /* weight records per call at most */
#define LT_Q8_NW1 4 /* ... where nx is 1 (decode passes: lt_gguf_matmul's rows on 8-bit x, up to 8) */
#define LT_Q8_NX 4  /* x records per call at most */
typedef void (*lt_expand_q8_fn)(int qtype, const uint8_t *blk, uint8_t *rec); /* one super-block */
/* c[b * ldc + 8 r + l] += weight record r (r < nw <= LT_Q8_NW, or LT_Q8_NW1 where nx = 1; LT_Q8_WREC bytes apart) . row l of
 * x record b (b < nx <= LT_Q8_NX, xstride bytes apart). Per output, in this order: f = 0, per group
 * of 32 f = fma(float(sum_{s in g} S_s isum_s), xd_g, f) (the int32 sum exact, one rounding), then
 * c = fma(f, d, c), then c = fma(mins_h, xs_h, c) per sub-block h: the generic and every level's
 * tile agree bit for bit. */
typedef void (*lt_gemm_q8_fn)(const uint8_t *w, int nw, const uint8_t *x, int64_t xstride, int nx, int qtype, float *c,
                              int64_t ldc);
void lt_expand_q8_generic(int qtype, const uint8_t *blk, uint8_t *rec);
void lt_gemm_q8_generic(const uint8_t *w, int nw, const uint8_t *x, int64_t xstride, int nx, int qtype, float *c,
                        int64_t ldc);
/* x [M, K] (K a multiple of 256) -> records [ceil(M / LT_Q8_XROWS)][K / 256] (zero rows past M), for
 * weights of `qtype` (Q6_K's offsets only where it is Q6_K) */
void lt_pack_q8_rows(const float *x, int64_t M, int64_t K, int qtype, int64_t xb0, int64_t xb1, uint8_t *out);

/* Attention of HN query heads q[j] (scores times `scale`) over T positions of one KV head
 * (float16 rows of D): writes per head (max score, sum of exp, D unnormalised outputs) to
 * part[j * (D + 2)]; s is scratch of HN * T floats. */
typedef void (*lt_span_fn)(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T, float scale,
                           float *s, float *part);
#define LT_ATTN_HEADS 4 /* query heads per span task */
#define LT_ATTN_DIMS 4  /* head dims with span kernels: 64, 96, 128, 256 (Gemma 3) */

typedef struct {
    const char *isa;                                 /* the level's name */
    int x_format;                                    /* LT_X_BF16 or LT_X_Q15 */
    void (*x_prepare)(const float *x, int64_t M, lt_x *xp); /* fills what x_format names */
    /* Types whose row kernels read LT_X_Q15 at a level whose x_format is LT_X_BF16 (bit t: type
     * t), and the function that fills that form for them. AVX-512: Q8_0 (8-bit codes widen to
     * int16 for vpmaddwd in fewer instructions than to float32, nor are they exact in bf16 with
     * one instruction) and Q4_1, both on the avx2 level's row kernels, faster there than the
     * bf16 ones; 15-bit activations are also 64x finer than bf16. */
    uint32_t q15_types;
    void (*x_prepare_q15)(const float *x, int64_t M, lt_x *xp);
    uint32_t even_odd_types; /* types whose LT_X_Q15 row kernels read lt_x.qeo (bit t: type t) */
    /* Decode passes over rows of more than 1 KB: bytes ahead of its rows that a task fetches the
     * weights (0: none, the hardware prefetcher alone; short rows always fetch 1 KB ahead). Where
     * rows_fetch is set, only the 8-bit tile's tasks do so throughout; the others fetch just that
     * far from their start, and the row kernels and the 8-row tile fetch ahead as they go. */
    int64_t fetch_long;
    int rows_fetch;
    lt_row_fn row[LT_NTYPES][LT_ROW_COUNTS];         /* NULL: the type is not multiplied in place */
    const char *row_name[LT_NTYPES];
    lt_rows8_fn rows8[LT_NTYPES];                    /* NULL: 5-12 rows of x take the row kernels */
    const char *rows8_name;
    lt_expand_bf16_fn expand_bf16[LT_NTYPES];
    const char *expand_bf16_name[LT_NTYPES];
    lt_expand_f32_fn expand_f32[LT_NTYPES];
    const char *expand_f32_name[LT_NTYPES];
    /* NULL: prompt chunks take the row kernels. Else lt_gguf_matmul multiplies more than
     * LT_ROWS_MAX_M rows of x with this, over weights expanded by expand_f32 256 columns at a time. */
    lt_gemm_f32_fn gemm_f32;
    const char *gemm_name;
    /* NULL: prompt rows take the exact route above. Else, for types with expand_q8, 8-bit x. */
    lt_gemm_q8_fn gemm_q8;
    const char *gemm_q8_name;
    lt_expand_q8_fn expand_q8[LT_NTYPES];
    lt_span_fn attn_span[LT_ATTN_DIMS][LT_ATTN_HEADS]; /* by head dim (64, 96, 128, 256), heads - 1 */
    const char *attn_name;
    float (*exp_sum)(float *s, int64_t T, float mx); /* s[t] = exp(s[t] - mx); returns the sum */
    void (*silu_mul)(const float *g, const float *u, float *out, int64_t n);
    /* out = gelu_tanh(g) * u (Gemma's GeGLU), as g * sigmoid(2 * 0.79788456 * (g + 0.044715 g^3)):
     * torch's 0.5 g (1 + tanh(...)) without its cancellation for negative g */
    void (*gelu_mul)(const float *g, const float *u, float *out, int64_t n);
    void (*to_f16)(const float *src, uint16_t *dst, int64_t n);
    const char *vec_name; /* of exp_sum / silu_mul / gelu_mul / to_f16 */
} lt_kernels;

/* The form of x that `qtype`'s row kernels read at this level (LT_X_BF16 or LT_X_Q15). */
static inline int lt_x_format_of(const lt_kernels *k, int qtype) {
    return k->x_format == LT_X_BF16 && (k->q15_types >> qtype & 1u) ? LT_X_Q15 : k->x_format;
}

/* The table in use (dispatch.c); never NULL once lt_kernels_get() has run. */
const lt_kernels *lt_kernels_get(void);

/* The micro-kernel in plain C, each multiply-add rounded once: the oracle of the levels' (bit-exact: the same chains). */
void lt_gemm_f32_generic(const float *w, int64_t ldw, int nw, const float *xp, int64_t KC, float *c);

/* Fillers: generic first, then each level up to the chosen one. */
void lt_fill_generic(lt_kernels *k);
#ifdef LT_X86
void lt_fill_avx2(lt_kernels *k);
void lt_fill_avx512(lt_kernels *k);
void lt_x_prepare_q15_avx2(const float *x, int64_t M, lt_x *xp); /* the avx2 level's, for avx512's q15_types */
int lt_cpu_avx512_vnni(void); /* AVX-512 VNNI with VL: the avx2 level's vnni variant of its tiles */
int lt_cpu_avx_vnni(void);    /* AVX-VNNI (VEX): the avx2 level's avxvnni variant of its tiles */
#endif
#ifdef LT_ARM64
void lt_fill_neon(lt_kernels *k);
#endif

/* ----- drivers ---------------------------------------------------------------------------- */
typedef void (*task_fn)(void *args, int64_t task);

/* fn(args, t) for t in [0, ntasks) on up to `nthreads` threads, the caller included. */
void lt_pool_run(task_fn fn, void *args, int64_t ntasks, int nthreads);
/* fn(args, a, b) over [0, N) in pieces of `align` multiples, about 4 per thread. */
void lt_parallel_rows(void (*fn)(void *, int64_t, int64_t), void *args, int64_t N, int nthreads, int64_t align);

/* y[m, r] (rows of y `ldy` floats apart) = x[m] . W[r] for the GGUF blocks w of type `qtype`
 * ([N, K] weights), m < M; rows m >= m_exact are 8-bit rows (8-bit x where the level has it; above). Returns 0, or -1 for a type not multiplied in place, K not a
 * multiple of the block, or no memory. */
int lt_gguf_matmul(const uint8_t *w, int qtype, const float *x, float *y, int64_t ldy, int64_t N, int64_t K,
                   int64_t M, int64_t m_exact, int nthreads);

/* Causal attention of n queries (rows `ldq` floats apart) over a float16 KV cache; see attention.c. */
typedef struct {
    const float *q;
    int64_t ldq;
    const uint16_t *k, *v;
    float *out;
    int64_t n, start, stride;
} lt_attn_seq;
/* 1 to LT_ATTN_SEQS sequences of one shape, each on its own cache, in one dispatch of the pool
 * (more: the caller splits them); -1 on a bad count or shape, or no memory */
#define LT_ATTN_SEQS 64
int lt_attention_f16_seqs(const lt_attn_seq *seqs, int64_t nseq, int64_t H, int64_t KVH, int64_t D, int64_t window,
                          float scale, int nthreads);
int lt_attention_f16(const float *q, int64_t ldq, const uint16_t *k, const uint16_t *v, float *out, int64_t n,
                     int64_t H, int64_t KVH, int64_t D, int64_t start, int64_t stride, int64_t window, float scale,
                     int nthreads);
int lt_attention_f16_plain(const float *q, int64_t ldq, const uint16_t *k, const uint16_t *v, float *out, int64_t n,
                           int64_t H, int64_t KVH, int64_t D, int64_t start, int64_t stride, int64_t window,
                           float scale, int nthreads);

/* Per-thread scratch memory, 64-byte aligned, grown as needed (slot: one per concurrent use). */
void *lt_scratch(int slot, size_t n);
enum { LT_SCRATCH_X = 0, LT_SCRATCH_ATTN = 1, LT_SCRATCH_STEP = 2, LT_SCRATCH_GEMM = 3, LT_SCRATCH_SLOTS = 4 };

/* Geometry of a GGUF block type: elements and bytes per block; -1 for a type lantern does not read. */
int lt_block_geometry(int qtype, int64_t *elems, int64_t *bytes);

#endif

/* lantern's native CPU kernels: the GGUF types torch has no kernel for.
 *
 * Plain C (no torch at build time). Called through ctypes (which releases the GIL) by
 * lantern/weights/kernels/native.py; the Python module init below only exists so that setuptools
 * builds and installs this file as an ordinary extension module.
 *
 * The AVX-512 paths are compiled with function-level target attributes and chosen at run time
 * (lantern_cpu_features), so the library builds with any x86-64 gcc/clang and never executes an
 * instruction the CPU lacks. Other machines get the portable C loops.
 *
 * Q6_K block (ggml-common.h): ql[128], qh[64], scales int8[16], d f16 (210 bytes, 256 weights).
 * Weight 128h + 32t + l (h: half, t: 0..3, l: 0..31) =
 *   d * sc[8h + 2t + l/16] * (((ql[64h + 32(t&1) + l] >> 4(t>>1)) & 15 | ((qh[32h + l] >> 2t) & 3) << 4) - 32)
 * (llama.cpp's dequantize_row_q6_K). d * sc is formed first in float32, as llama.cpp does.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_native.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef LANTERN_PACK_CH
#define LANTERN_PACK_CH 1024
#endif

#define QK_K 256
#define Q6K_BYTES 210

#if defined(__x86_64__) || defined(_M_X64)
#define LANTERN_X86 1
#include <immintrin.h>
#endif

static float f16_to_f32(uint16_t h) {
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

static uint16_t f32_to_bf16(float f) { /* round to nearest even (finite values) */
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7f800000) == 0x7f800000) return (uint16_t)((bits >> 16) | ((bits & 0xffff) ? 0x40 : 0));
    bits += 0x7fff + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

static uint16_t f32_to_f16(float f) { /* round to nearest even; overflow to inf, NaN kept */
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

/* ----- Q6_K: one block -> 256 float32 weights ------------------------------------------------ */

static void q6k_block_scalar(const uint8_t *b, float *out) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    uint16_t dh;
    memcpy(&dh, b + 208, 2);
    const float d = f16_to_f32(dh);
    for (int h = 0; h < 2; h++) {
        for (int l = 0; l < 32; l++) {
            int is = 8 * h + l / 16;
            int q1 = ((ql[64 * h + l] & 0xF) | (((qh[32 * h + l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[64 * h + l + 32] & 0xF) | (((qh[32 * h + l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[64 * h + l] >> 4) | (((qh[32 * h + l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[64 * h + l + 32] >> 4) | (((qh[32 * h + l] >> 6) & 3) << 4)) - 32;
            out[128 * h + l + 0] = (d * sc[is + 0]) * q1;
            out[128 * h + l + 32] = (d * sc[is + 2]) * q2;
            out[128 * h + l + 64] = (d * sc[is + 4]) * q3;
            out[128 * h + l + 96] = (d * sc[is + 6]) * q4;
        }
    }
}

#ifdef LANTERN_X86
__attribute__((target("avx512f,avx512bw")))
static void q6k_block_avx512(const uint8_t *b, float *out) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    uint16_t dh;
    memcpy(&dh, b + 208, 2);
    const float d = f16_to_f32(dh);
    const __m512i m4 = _mm512_set1_epi32(15), m2 = _mm512_set1_epi32(3), k32 = _mm512_set1_epi32(32);
    for (int h = 0; h < 2; h++) {
        for (int c = 0; c < 2; c++) { /* l = 16c .. 16c + 15 */
            const int o = 16 * c;
            __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ql + 64 * h + o)));
            __m512i a2 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ql + 64 * h + 32 + o)));
            __m512i hb = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qh + 32 * h + o)));
            __m512i q1 = _mm512_or_si512(_mm512_and_si512(a, m4), _mm512_slli_epi32(_mm512_and_si512(hb, m2), 4));
            __m512i q2 = _mm512_or_si512(_mm512_and_si512(a2, m4),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 2), m2), 4));
            __m512i q3 = _mm512_or_si512(_mm512_srli_epi32(a, 4),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 4), m2), 4));
            __m512i q4 = _mm512_or_si512(_mm512_srli_epi32(a2, 4), _mm512_slli_epi32(_mm512_srli_epi32(hb, 6), 4));
            const int is = 8 * h + c;
            float *y = out + 128 * h + o;
            _mm512_storeu_ps(y + 0, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 0]), _mm512_cvtepi32_ps(_mm512_sub_epi32(q1, k32))));
            _mm512_storeu_ps(y + 32, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 2]), _mm512_cvtepi32_ps(_mm512_sub_epi32(q2, k32))));
            _mm512_storeu_ps(y + 64, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 4]), _mm512_cvtepi32_ps(_mm512_sub_epi32(q3, k32))));
            _mm512_storeu_ps(y + 96, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 6]), _mm512_cvtepi32_ps(_mm512_sub_epi32(q4, k32))));
        }
    }
}

/* acc[m] += w[0:256] . x[m][0:256] for m < M (x rows `ldx` floats apart). */
__attribute__((target("avx512f")))
static void dot256_avx512(const float *w, const float *x, int64_t ldx, int64_t M, float *acc) {
    __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16);
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * ldx;
        __m512 s0 = _mm512_mul_ps(w0, _mm512_loadu_ps(xm));
        __m512 s1 = _mm512_mul_ps(w1, _mm512_loadu_ps(xm + 16));
        __m512 s2 = _mm512_mul_ps(_mm512_loadu_ps(w + 32), _mm512_loadu_ps(xm + 32));
        __m512 s3 = _mm512_mul_ps(_mm512_loadu_ps(w + 48), _mm512_loadu_ps(xm + 48));
        for (int j = 64; j < 256; j += 64) {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j), _mm512_loadu_ps(xm + j), s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 16), _mm512_loadu_ps(xm + j + 16), s1);
            s2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 32), _mm512_loadu_ps(xm + j + 32), s2);
            s3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 48), _mm512_loadu_ps(xm + j + 48), s3);
        }
        acc[m] += _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    }
}

/* y[m] = sum over the row's blocks of W . x[m], for m < M <= 8: the 16-float sub-blocks are
 * decoded in registers and accumulated in vector form; one horizontal sum per row and m. */
__attribute__((target("avx512f,avx512bw")))
static void q6k_row_avx512(const uint8_t *row, int64_t nb, const float *x, int64_t ldx, int64_t M, float *y) {
    __m512 acc[8][2];
    for (int64_t m = 0; m < M; m++) { acc[m][0] = _mm512_setzero_ps(); acc[m][1] = _mm512_setzero_ps(); }
    const __m512i m4 = _mm512_set1_epi32(15), m2 = _mm512_set1_epi32(3), k32 = _mm512_set1_epi32(32);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + b * Q6K_BYTES;
        const uint8_t *ql = blk, *qh = blk + 128;
        const int8_t *sc = (const int8_t *)(blk + 192);
        uint16_t dh;
        memcpy(&dh, blk + 208, 2);
        const float d = f16_to_f32(dh);
        for (int h = 0; h < 2; h++) {
            for (int c = 0; c < 2; c++) {
                const int o = 16 * c;
                __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ql + 64 * h + o)));
                __m512i a2 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ql + 64 * h + 32 + o)));
                __m512i hb = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qh + 32 * h + o)));
                __m512i q[4];
                q[0] = _mm512_or_si512(_mm512_and_si512(a, m4), _mm512_slli_epi32(_mm512_and_si512(hb, m2), 4));
                q[1] = _mm512_or_si512(_mm512_and_si512(a2, m4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 2), m2), 4));
                q[2] = _mm512_or_si512(_mm512_srli_epi32(a, 4), _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(hb, 4), m2), 4));
                q[3] = _mm512_or_si512(_mm512_srli_epi32(a2, 4), _mm512_slli_epi32(_mm512_srli_epi32(hb, 6), 4));
                const int is = 8 * h + c;
                __m512 w[4];
                for (int t = 0; t < 4; t++)
                    w[t] = _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 2 * t]), _mm512_cvtepi32_ps(_mm512_sub_epi32(q[t], k32)));
                const int64_t off = b * QK_K + 128 * h + o;
                for (int64_t m = 0; m < M; m++) {
                    const float *xm = x + m * ldx + off;
                    acc[m][0] = _mm512_fmadd_ps(w[0], _mm512_loadu_ps(xm), acc[m][0]);
                    acc[m][1] = _mm512_fmadd_ps(w[1], _mm512_loadu_ps(xm + 32), acc[m][1]);
                    acc[m][0] = _mm512_fmadd_ps(w[2], _mm512_loadu_ps(xm + 64), acc[m][0]);
                    acc[m][1] = _mm512_fmadd_ps(w[3], _mm512_loadu_ps(xm + 96), acc[m][1]);
                }
            }
        }
    }
    for (int64_t m = 0; m < M; m++) y[m] = _mm512_reduce_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]));
}

__attribute__((target("avx512f,avx512bw")))
static void to_bf16_avx512(const float *src, uint16_t *dst, int64_t n) {
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i v = _mm512_castps_si512(_mm512_loadu_ps(src + i));
        __m512i r = _mm512_add_epi32(v, _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(v, 16), one)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
    for (; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}
#endif

/* Features the library uses, detected once: bit 0 AVX-512 F+BW (the Q6_K float32 kernel and the
 * converters), bit 1 AVX-512 F+BW+VL+DQ+BF16 with F16C/FMA (the GGUF kernels below). */
enum { FEAT_AVX512 = 1, FEAT_BF16 = 2 };
static int g_feat = -1, g_feat_have = -1;
#define g_avx512 (g_feat & FEAT_AVX512)

static int detect_features(void) {
#ifdef LANTERN_X86
    __builtin_cpu_init();
    int f = 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
        f |= FEAT_AVX512;
        if (__builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma"))
            f |= FEAT_BF16;
    }
    return f;
#else
    return 0;
#endif
}

int lantern_cpu_features(void) { /* the bit mask above, as in use (see lantern_set_features) */
    if (g_feat < 0) {
        if (g_feat_have < 0) g_feat_have = detect_features();
        g_feat = g_feat_have;
    }
    return g_feat;
}

/* Tests: use only the features in `mask` (0: the portable C paths everywhere), or -1 to use all
 * the CPU has again. Returns the mask now in use. Not to be called while kernels run. */
int lantern_set_features(int mask) {
    if (g_feat_have < 0) g_feat_have = detect_features();
    g_feat = mask < 0 ? g_feat_have : (mask & g_feat_have);
    return g_feat;
}

static void q6k_block(const uint8_t *b, float *out) {
#ifdef LANTERN_X86
    if (g_avx512) { q6k_block_avx512(b, out); return; }
#endif
    q6k_block_scalar(b, out);
}

static void dot256(const float *w, const float *x, int64_t ldx, int64_t M, float *acc) {
#ifdef LANTERN_X86
    if (g_avx512) { dot256_avx512(w, x, ldx, M, acc); return; }
#endif
    for (int64_t m = 0; m < M; m++) {
        const float *xm = x + m * ldx;
        float s = 0.f;
        for (int j = 0; j < 256; j++) s += w[j] * xm[j];
        acc[m] += s;
    }
}

static void to_bf16(const float *src, uint16_t *dst, int64_t n) {
#ifdef LANTERN_X86
    if (g_avx512) { to_bf16_avx512(src, dst, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

/* ----- thread pool ---------------------------------------------------------------------------
 * Created lazily, grown to the largest thread count asked for (the caller is one of the threads:
 * nthreads - 1 workers). A job is `ntasks` calls fn(args, task); the caller publishes it by
 * bumping a generation counter, works on it itself, and waits until every task is done. Tasks
 * are claimed one at a time from a shared ticket (generation << 32 | next task), so a thread that
 * the OS has descheduled (a busy machine) holds up at most the task it claimed: the others take
 * the rest. Idle workers spin on the generation for LANTERN_SPIN_US microseconds (default 100)
 * after their last task, then sleep on a futex (Linux; elsewhere a short nanosleep loop).
 * Calls from several threads at once are safe: one at a time uses the pool, the others run
 * their tasks inline. After fork() the child starts a new pool on its first parallel call.
 * Busy machines: a worker the OS preempts while it holds a task holds up the caller until it runs
 * again (a scheduler time slice, milliseconds). When the caller has waited over STALL_NS for the
 * workers, the next calls run on the caller alone, 2, 4, ... up to 4096 of them (backoff), before
 * the workers are tried again; a call without such a wait resets the backoff. */

typedef struct {
    task_fn fn;
    void *args;
    int64_t ntasks;
    int maxw; /* workers 0 .. maxw-1 take part */
    _Atomic int64_t done;
} pool_job;

#define POOL_MAX 64

static struct {
    pthread_mutex_t lock;
    int nworkers, atfork;
    _Atomic uint32_t gen; /* futex word */
    _Atomic uint64_t ticket;
    _Atomic int sleepers;
    int64_t spin_ns;
    int64_t solo_left; /* calls left to run on the caller alone (backoff after a stall) */
    int backoff;       /* log2 of the next backoff */
    pool_job job[2]; /* generation g uses job[g & 1]: a late worker never sees a half-written job */
} P = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0, 0, -1, 0, 0, {{0}}};

#define STALL_NS 500000

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif
#include <sched.h>
#include <time.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#ifdef LANTERN_X86
    _mm_pause();
#endif
}

static void gen_wait(uint32_t seen) {
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)&P.gen, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
    struct timespec ts = {0, 50000};
    (void)seen;
    nanosleep(&ts, NULL);
#endif
}

static void gen_wake(void) {
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)&P.gen, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
#endif
}

static void run_tasks(uint32_t g) {
    pool_job *j = &P.job[g & 1];
    uint64_t t = atomic_load_explicit(&P.ticket, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(t >> 32) != g) return;             /* the job is over */
        if ((int64_t)(uint32_t)t >= j->ntasks) return;     /* all claimed */
        if (atomic_compare_exchange_weak_explicit(&P.ticket, &t, t + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            /* claimed while the ticket still had generation g: job[g & 1] is g's */
            j->fn(j->args, (int64_t)(uint32_t)t);
            atomic_fetch_add_explicit(&j->done, 1, memory_order_acq_rel);
            t = atomic_load_explicit(&P.ticket, memory_order_acquire);
        }
    }
}

static void *pool_worker(void *p) {
    const int id = (int)(intptr_t)p;
    uint32_t seen = atomic_load(&P.gen);
    for (;;) {
        uint32_t g;
        int64_t t0 = 0;
        int spins = 0;
        while ((g = atomic_load_explicit(&P.gen, memory_order_acquire)) == seen) {
            if (++spins < 64) { cpu_relax(); continue; }
            spins = 0;
            /* give the core to any other runnable thread (torch's OpenMP workers, other
             * processes): a spinning worker must not hold up a thread that has work */
            sched_yield();
            const int64_t t = now_ns();
            if (!t0) t0 = t;
            else if (t - t0 > P.spin_ns) {
                atomic_fetch_add(&P.sleepers, 1);
                if (atomic_load(&P.gen) == seen) gen_wait(seen);
                atomic_fetch_sub(&P.sleepers, 1);
                t0 = 0;
            }
        }
        seen = g;
        if (id < P.job[g & 1].maxw) run_tasks(g);
    }
    return NULL;
}

static void pool_atfork_child(void) {
    pthread_mutex_init(&P.lock, NULL);
    P.nworkers = 0;
    P.solo_left = 0;
    P.backoff = 0;
    atomic_store(&P.sleepers, 0);
}

static void pool_grow(int want) { /* called with the lock held */
    if (want > POOL_MAX) want = POOL_MAX;
    if (P.spin_ns < 0) {
        const char *e = getenv("LANTERN_SPIN_US");
        P.spin_ns = (e && *e ? atoll(e) : 100) * 1000;
    }
    if (!P.atfork) { pthread_atfork(NULL, NULL, pool_atfork_child); P.atfork = 1; }
    while (P.nworkers < want) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 1 << 20);
        const int ok = pthread_create(&t, &at, pool_worker, (void *)(intptr_t)P.nworkers) == 0;
        pthread_attr_destroy(&at);
        if (!ok) break;
        P.nworkers++;
    }
}

/* fn(args, t) for t in [0, ntasks) on up to `nthreads` threads (the caller included). */
static void pool_run(task_fn fn, void *args, int64_t ntasks, int nthreads) {
    if (ntasks <= 0) return;
    if (nthreads > ntasks) nthreads = (int)ntasks;
    if (nthreads <= 1 || ntasks > 0xffffffffLL || pthread_mutex_trylock(&P.lock) != 0) {
        for (int64_t t = 0; t < ntasks; t++) fn(args, t);
        return;
    }
    if (P.solo_left > 0) { /* backing off after a stall */
        P.solo_left--;
        pthread_mutex_unlock(&P.lock);
        for (int64_t t = 0; t < ntasks; t++) fn(args, t);
        return;
    }
    pool_grow(nthreads - 1);
    const uint32_t g = atomic_load(&P.gen) + 1;
    pool_job *j = &P.job[g & 1];
    j->fn = fn;
    j->args = args;
    j->ntasks = ntasks;
    j->maxw = nthreads - 1 < P.nworkers ? nthreads - 1 : P.nworkers;
    atomic_store(&j->done, 0);
    atomic_store_explicit(&P.ticket, (uint64_t)g << 32, memory_order_release);
    atomic_store(&P.gen, g);
    if (atomic_load(&P.sleepers) > 0) gen_wake();
    run_tasks(g);
    int64_t t0 = 0, waited = 0;
    int spins = 0;
    while (atomic_load_explicit(&j->done, memory_order_acquire) < ntasks) {
        /* a worker is finishing a task; if it was descheduled, give it this core */
        if (++spins < 64) { cpu_relax(); continue; }
        spins = 0;
        const int64_t t = now_ns();
        if (!t0) t0 = t;
        else if ((waited = t - t0) > 50000) sched_yield();
    }
    if (waited > STALL_NS) {
        P.solo_left = (int64_t)1 << P.backoff;
        if (P.backoff < 12) P.backoff++;
    } else {
        P.backoff = 0;
    }
    pthread_mutex_unlock(&P.lock);
}

void lt_pool_run(task_fn fn, void *args, int64_t ntasks, int nthreads) { pool_run(fn, args, ntasks, nthreads); }

typedef struct {
    void (*fn)(void *args, int64_t r0, int64_t r1);
    void *args;
    int64_t r0, r1, per;
} range_job;

static void range_task(void *p, int64_t t) {
    const range_job *j = (const range_job *)p;
    const int64_t a = j->r0 + t * j->per, b = a + j->per < j->r1 ? a + j->per : j->r1;
    j->fn(j->args, a, b);
}

/* fn(args, a, b) over [r0, r1) in pieces of `align`-multiples, about 4 per thread. */
static void parallel_range(void (*fn)(void *, int64_t, int64_t), void *args, int64_t r0, int64_t r1, int nthreads,
                           int64_t align) {
    if (r1 <= r0) return;
    if (nthreads < 1) nthreads = 1;
    int64_t per = (r1 - r0 + 4 * nthreads - 1) / (4 * nthreads);
    if (nthreads == 1) per = r1 - r0;
    per = (per + align - 1) / align * align;
    range_job j = {fn, args, r0, r1, per};
    pool_run(range_task, &j, (r1 - r0 + per - 1) / per, nthreads);
}

static void parallel_rows(void (*fn)(void *, int64_t, int64_t), void *args, int64_t N, int nthreads, int64_t align) {
    parallel_range(fn, args, 0, N, nthreads, align);
}

/* ----- Q6_K matmul: y[M, N] = x[M, K] @ W[N, K].T -------------------------------------------- */

typedef struct {
    const uint8_t *w;
    const float *x;
    float *y;
    int64_t N, K, M;
} mm_args;

static void q6k_mm_rows(void *p, int64_t r0, int64_t r1) {
    mm_args *a = (mm_args *)p;
    const int64_t nb = a->K / QK_K;
    float buf[QK_K] __attribute__((aligned(64)));
    float acc[64];
#ifdef LANTERN_X86
    if (g_avx512) {
        for (int64_t m0 = 0; m0 < a->M; m0 += 8) {
            int64_t mc = a->M - m0 < 8 ? a->M - m0 : 8;
            for (int64_t r = r0; r < r1; r++) {
                q6k_row_avx512(a->w + r * nb * Q6K_BYTES, nb, a->x + m0 * a->K, a->K, mc, acc);
                for (int64_t m = 0; m < mc; m++) a->y[(m0 + m) * a->N + r] = acc[m];
            }
        }
        return;
    }
#endif
    for (int64_t m0 = 0; m0 < a->M; m0 += 64) {
        int64_t mc = a->M - m0 < 64 ? a->M - m0 : 64;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *row = a->w + r * nb * Q6K_BYTES;
            for (int64_t m = 0; m < mc; m++) acc[m] = 0.f;
            for (int64_t b = 0; b < nb; b++) {
                q6k_block(row + b * Q6K_BYTES, buf);
                dot256(buf, a->x + m0 * a->K + b * QK_K, a->K, mc, acc);
            }
            for (int64_t m = 0; m < mc; m++) a->y[(m0 + m) * a->N + r] = acc[m];
        }
    }
}

void lantern_q6k_matmul(const uint8_t *w, const float *x, float *y, int64_t N, int64_t K, int64_t M, int nthreads) {
    lantern_cpu_features();
    mm_args a = {w, x, y, N, K, M};
    parallel_rows(q6k_mm_rows, &a, N, nthreads, 4);
}

/* ----- Q6_K rows -> bfloat16 (prompt chunks: then a dense bf16 GEMM) ------------------------- */

typedef struct {
    const uint8_t *w;
    uint16_t *out;
    int64_t K;
} dq_args;

static void q6k_bf16_rows(void *p, int64_t r0, int64_t r1) {
    dq_args *a = (dq_args *)p;
    const int64_t nb = a->K / QK_K;
    float buf[QK_K] __attribute__((aligned(64)));
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t b = 0; b < nb; b++) {
            q6k_block(a->w + (r * nb + b) * Q6K_BYTES, buf);
            to_bf16(buf, a->out + r * a->K + b * QK_K, QK_K);
        }
    }
}

void lantern_q6k_to_bf16(const uint8_t *w, uint16_t *out, int64_t N, int64_t K, int nthreads) {
    lantern_cpu_features();
    dq_args a = {w, out, K};
    parallel_rows(q6k_bf16_rows, &a, N, nthreads, 1);
}

/* ----- torch's CPU int4 layout -> bfloat16 rows ---------------------------------------------
 * packed: [N/64, K, 32] bytes, byte (k, j) = q[64b + j, k] | q[64b + 32 + j, k] << 4;
 * sz: [K/32, N, 2] bf16 (scale, zero); w = (q - 8) * scale + zero. `pieces` such weights
 * (same N, K) are summed. Rows r0..r1 must be multiples of 64. */

typedef struct {
    const uint8_t *const *packed;
    const uint16_t *const *sz;
    int pieces;
    uint16_t *out;
    int64_t N, K;
} i4_args;

static float bf16_to_f32(uint16_t v) {
    uint32_t bits = (uint32_t)v << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void int4_bf16_rows(void *p, int64_t r0, int64_t r1) {
    i4_args *a = (i4_args *)p;
    const int64_t K = a->K, N = a->N;
    float buf[32][64]; /* [k][row]: inner loops run over 32 contiguous rows */
    float scale[64], zero[64], col[32];
    for (int64_t blk = r0 / 64; blk < r1 / 64; blk++) {
        for (int64_t k0 = 0; k0 < K; k0 += 32) { /* one group: 64 rows x 32 k */
            for (int pc = 0; pc < a->pieces; pc++) {
                const uint8_t *src = a->packed[pc] + (blk * K + k0) * 32;
                const uint16_t *s = a->sz[pc] + ((k0 / 32) * N + blk * 64) * 2;
                for (int j = 0; j < 64; j++) {
                    scale[j] = bf16_to_f32(s[2 * j]);
                    zero[j] = bf16_to_f32(s[2 * j + 1]) - 8.f * scale[j];
                }
                for (int k = 0; k < 32; k++) {
                    const uint8_t *bytes = src + k * 32;
                    float *lo = buf[k], *hi = buf[k] + 32;
                    if (pc == 0) {
                        for (int j = 0; j < 32; j++) lo[j] = (float)(bytes[j] & 15) * scale[j] + zero[j];
                        for (int j = 0; j < 32; j++) hi[j] = (float)(bytes[j] >> 4) * scale[32 + j] + zero[32 + j];
                    } else {
                        for (int j = 0; j < 32; j++) lo[j] += (float)(bytes[j] & 15) * scale[j] + zero[j];
                        for (int j = 0; j < 32; j++) hi[j] += (float)(bytes[j] >> 4) * scale[32 + j] + zero[32 + j];
                    }
                }
            }
            for (int j = 0; j < 64; j++) {
                for (int k = 0; k < 32; k++) col[k] = buf[k][j];
                to_bf16(col, a->out + (blk * 64 + j) * K + k0, 32);
            }
        }
    }
}

void lantern_int4_to_bf16(const uint8_t *const *packed, const uint16_t *const *sz, int pieces, uint16_t *out,
                          int64_t N, int64_t K, int64_t r0, int64_t r1, int nthreads) {
    lantern_cpu_features();
    i4_args a = {packed, sz, pieces, out - r0 * K, N, K};
    /* rows are relative to the whole weight; `out` holds rows r0..r1 */
    parallel_range(int4_bf16_rows, &a, r0, r1, nthreads, 64);
}

/* ----- GGUF blocks -> torch's CPU int4 layout (load-time conversion) --------------------------
 * The exact bytes `int4.py` writes in PyTorch (`decode_pieces` + `_pack_codes_manual`), for rows
 * [r0, r1) (multiples of 64) of a weight with `rows` real rows padded to N (multiple of 64):
 *   packed[pc]: [N/64, K, 32] bytes, byte (b, k, j) = code[64b + j, k] | code[64b + 32 + j, k] << 4
 *   sz[pc]:     [K/32, N, 2] bf16 (scale, zero), rounded to nearest even from float32
 * Padding rows get code 8, scale 0, zero 0. Scales and zeros are formed in float32 in the same
 * order as the PyTorch code (no FMA contraction: this file is built without -mfma and with
 * -std=c11, i.e. -ffp-contract=off), so the output is bit-identical. Pieces per type:
 *   Q4_0 (lo, d, 0)            Q4_1 (lo, d, m + 8d)
 *   Q5_0 (lo, d, 8d) + (hb + 7, 16d, 0)          Q5_1 (lo, d, m + 8d) + (hb + 8, 16d, 0)
 *   Q8_0 (q & 15, d, 8d) + ((q >> 4 & 15) ^ 8, 16d, 0)
 *   Q4_K (lo, S, 8S - M)       Q5_K (lo, S, 8S - M) + (hb + 8, 16S, 0), S = d*sc, M = dmin*m. */

enum { LT_Q4_0 = 2, LT_Q4_1 = 3, LT_Q5_0 = 6, LT_Q5_1 = 7, LT_Q8_0 = 8, LT_Q4_K = 12, LT_Q5_K = 13 };

static uint16_t f32_to_bf16_rne(float f) { /* torch's scalar rounding (NaN -> 0x7fc0) */
    if (f != f) return 0x7fc0;
    uint32_t bits;
    memcpy(&bits, &f, 4);
    bits += 0x7fff + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

static float rd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return f16_to_f32(h);
}

typedef struct {
    const uint8_t *raw; /* rows x (K / elems) blocks of `nbytes` */
    uint8_t *const *packed;
    uint16_t *const *sz;
    int qtype, pieces;
    int64_t rows, N, K, elems, nbytes;
    int failed; /* set by a thread that could not allocate its buffers */
} pack_args;

/* One GGUF block of row `r` (elements k0 .. k0 + elems) -> codes c0/c1 (the two pieces) and
 * the scale/zero pairs of its groups. */
static void decode_block(const pack_args *a, const uint8_t *b, uint8_t *c0, uint8_t *c1, int64_t r, int64_t g0) {
    float sc[8][2], sc1[8];
    int ng = 1;
    switch (a->qtype) {
    case LT_Q4_0: case LT_Q4_1: case LT_Q5_0: case LT_Q5_1: {
        const float d = rd_f16(b);
        const uint8_t *qs;
        uint32_t qh = 0;
        if (a->qtype == LT_Q4_0) { qs = b + 2; sc[0][0] = d; sc[0][1] = 0.f; }
        else if (a->qtype == LT_Q4_1) { qs = b + 4; sc[0][0] = d; sc[0][1] = rd_f16(b + 2) + 8 * d; }
        else if (a->qtype == LT_Q5_0) { qs = b + 6; memcpy(&qh, b + 2, 4); sc[0][0] = d; sc[0][1] = 8 * d; }
        else { qs = b + 8; memcpy(&qh, b + 4, 4); sc[0][0] = d; sc[0][1] = rd_f16(b + 2) + 8 * d; }
        for (int l = 0; l < 16; l++) { c0[l] = qs[l] & 15; c0[l + 16] = qs[l] >> 4; }
        if (a->pieces == 2) {
            const uint8_t add = a->qtype == LT_Q5_0 ? 7 : 8;
            for (int l = 0; l < 32; l++) c1[l] = (uint8_t)(((qh >> l) & 1) + add);
            sc1[0] = 16 * d;
        }
        break;
    }
    case LT_Q8_0: {
        const float d = rd_f16(b);
        const uint8_t *qs = b + 2;
        for (int l = 0; l < 32; l++) { c0[l] = qs[l] & 15; c1[l] = (uint8_t)((qs[l] >> 4) ^ 8); }
        sc[0][0] = d; sc[0][1] = 8 * d; sc1[0] = 16 * d;
        break;
    }
    default: { /* Q4_K, Q5_K */
        const float d = rd_f16(b), dmin = rd_f16(b + 2);
        const uint8_t *q = b + 4;
        for (int j = 0; j < 8; j++) {
            int s, m;
            if (j < 4) { s = q[j] & 63; m = q[j + 4] & 63; }
            else { s = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
            const float S = d * (float)s, M = dmin * (float)m;
            sc[j][0] = S;
            sc[j][1] = 8 * S - M;
            sc1[j] = 16 * S;
        }
        const uint8_t *qs = a->qtype == LT_Q4_K ? b + 16 : b + 48;
        for (int i = 0; i < 4; i++) {
            for (int l = 0; l < 32; l++) { c0[64 * i + l] = qs[32 * i + l] & 15; c0[64 * i + 32 + l] = qs[32 * i + l] >> 4; }
        }
        if (a->qtype == LT_Q5_K) {
            const uint8_t *qh = b + 16;
            for (int s = 0; s < 8; s++)
                for (int l = 0; l < 32; l++) c1[32 * s + l] = (uint8_t)(((qh[l] >> s) & 1) | 8);
        }
        ng = 8;
        break;
    }
    }
    for (int j = 0; j < ng; j++) {
        uint16_t *o = a->sz[0] + ((g0 + j) * a->N + r) * 2;
        o[0] = f32_to_bf16_rne(sc[j][0]);
        o[1] = f32_to_bf16_rne(sc[j][1]);
        if (a->pieces == 2) {
            uint16_t *o1 = a->sz[1] + ((g0 + j) * a->N + r) * 2;
            o1[0] = f32_to_bf16_rne(sc1[j]);
            o1[1] = 0;
        }
    }
}

/* dst[k * 32 + j] = c[j][k] | c[j + 32][k] << 4 for j < 32, k < E <= 256 (c rows `ld` apart). */
static void pack_tile(const uint8_t *c, int64_t ld, int64_t E, uint8_t *dst) {
    uint8_t p[32][256] __attribute__((aligned(16)));
    for (int j = 0; j < 32; j++)
        for (int64_t k = 0; k < E; k++) p[j][k] = (uint8_t)(c[j * ld + k] | (c[(j + 32) * ld + k] << 4));
#ifdef LANTERN_X86
    for (int j0 = 0; j0 < 32; j0 += 16) {
        for (int64_t k0 = 0; k0 < E; k0 += 16) {
            /* 16x16 byte transpose: four rounds of unpack(v[i], v[i + 8]) rotate the 8-bit index
             * (row, column) by 4 bits. */
            __m128i v[16], t[16];
            for (int i = 0; i < 16; i++) v[i] = _mm_load_si128((const __m128i *)&p[j0 + i][k0]);
            for (int round = 0; round < 4; round++) {
                for (int i = 0; i < 8; i++) {
                    t[2 * i] = _mm_unpacklo_epi8(v[i], v[i + 8]);
                    t[2 * i + 1] = _mm_unpackhi_epi8(v[i], v[i + 8]);
                }
                for (int i = 0; i < 16; i++) v[i] = t[i];
            }
            for (int i = 0; i < 16; i++) _mm_storeu_si128((__m128i *)(dst + (k0 + i) * 32 + j0), v[i]);
        }
    }
#else
    for (int64_t k = 0; k < E; k++)
        for (int j = 0; j < 32; j++) dst[k * 32 + j] = p[j][k];
#endif
}

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
#endif

/* Map [p, p + n) into the page tables in one call (MADV_POPULATE_READ, Linux 5.14+; a no-op
 * elsewhere or on error). Software prefetches to pages not yet mapped are dropped by the CPU, and
 * a file map is otherwise mapped 16 pages per fault while the converter reads 64 rows at once. */
static void populate_read(const void *p, int64_t n) {
#if defined(__linux__) && defined(MADV_POPULATE_READ)
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)p / page * page, hi = (uintptr_t)p + (uintptr_t)n;
    if (n > 0) madvise((void *)lo, hi - lo, MADV_POPULATE_READ);
#else
    (void)p; (void)n;
#endif
}

static void int4_pack_rows(void *p, int64_t r0, int64_t r1) {
    const pack_args *a = (const pack_args *)p;
    const int64_t E = a->elems, K = a->K, nb = K / E, G = K / 32;
    const int64_t last = r1 < a->rows ? r1 : a->rows;
    if (last > r0) populate_read(a->raw + r0 * nb * a->nbytes, (last - r0) * nb * a->nbytes);
    /* codes of 64 rows x CH columns per piece: each row's blocks are read CH at a time (a few
     * hundred bytes in sequence) rather than 64 rows one block each */
    enum { CH = LANTERN_PACK_CH };
    uint8_t (*c)[64 * CH] = malloc(sizeof(uint8_t[2][64 * CH]));
    if (!c) { __atomic_store_n(&((pack_args *)p)->failed, 1, __ATOMIC_RELAXED); return; }
    const int64_t per_chunk = CH / E;
    for (int64_t blk = r0 / 64; blk < r1 / 64; blk++) {
        const int64_t base = blk * 64;
        const int real = base + 64 <= a->rows ? 64 : (int)(a->rows > base ? a->rows - base : 0);
        for (int j = real; j < 64; j++) { /* padding rows: weight 0 */
            for (int pc = 0; pc < a->pieces; pc++) {
                memset(c[pc] + j * CH, 8, CH);
                for (int64_t g = 0; g < G; g++) {
                    uint16_t *o = a->sz[pc] + (g * a->N + base + j) * 2;
                    o[0] = 0; o[1] = 0;
                }
            }
        }
        for (int64_t ib0 = 0; ib0 < nb; ib0 += per_chunk) { /* 64 rows x up to CH columns */
            const int64_t ib1 = ib0 + per_chunk < nb ? ib0 + per_chunk : nb;
            for (int j = 0; j < real; j++) {
                const uint8_t *row = a->raw + (base + j) * nb * a->nbytes;
                /* the next row's chunk (64 interleaved streams are too many for the hardware
                 * prefetcher; prefetching is harmless past the end: it never faults) */
                for (int64_t o = 0; o < (ib1 - ib0) * a->nbytes; o += 64)
                    __builtin_prefetch(row + nb * a->nbytes + ib0 * a->nbytes + o);
                for (int64_t ib = ib0; ib < ib1; ib++)
                    decode_block(a, row + ib * a->nbytes, c[0] + j * CH + (ib - ib0) * E,
                                 c[1] + j * CH + (ib - ib0) * E, base + j, ib * E / 32);
            }
            for (int pc = 0; pc < a->pieces; pc++)
                for (int64_t ib = ib0; ib < ib1; ib++)
                    pack_tile(c[pc] + (ib - ib0) * E, CH, E, a->packed[pc] + (blk * K + ib * E) * 32);
        }
    }
    free(c);
}

/* Returns 0, or -1 for a type without an int4 form, bad shapes, or no memory for the buffers. */
int lantern_int4_pack(const uint8_t *raw, int qtype, uint8_t *const *packed, uint16_t *const *sz, int64_t rows,
                      int64_t N, int64_t K, int64_t r0, int64_t r1, int nthreads) {
    pack_args a = {raw, packed, sz, qtype, 1, rows, N, K, 32, 0, 0};
    switch (qtype) {
    case LT_Q4_0: a.nbytes = 18; break;
    case LT_Q4_1: a.nbytes = 20; break;
    case LT_Q5_0: a.nbytes = 22; a.pieces = 2; break;
    case LT_Q5_1: a.nbytes = 24; a.pieces = 2; break;
    case LT_Q8_0: a.nbytes = 34; a.pieces = 2; break;
    case LT_Q4_K: a.nbytes = 144; a.elems = 256; break;
    case LT_Q5_K: a.nbytes = 176; a.elems = 256; a.pieces = 2; break;
    default: return -1;
    }
    if (K % a.elems || N % 64 || r0 % 64 || r1 % 64 || r1 > N) return -1;
    parallel_range(int4_pack_rows, &a, r0, r1, nthreads, 64); /* 64-row blocks */
    return a.failed ? -1 : 0;
}

/* ----- Q2_K / Q3_K rows -> bfloat16 (their dense fast path) ---------------------------------
 * The bytes `dense.py` gets from lantern's float32 dequantize (quants.py) rounded to bf16:
 *   Q2_K (84 bytes: scales[16], qs[64], d, dmin): element 128h + 32j + l, q = (qs[32h + l] >> 2j) & 3,
 *        sc = scales[e / 16]; y = (d * (sc & 15)) * q - dmin * (sc >> 4)
 *   Q3_K (110 bytes: hmask[32], qs[64], scales[12], d): q = ((qs[32h + l] >> 2j) & 3) - 4 unless
 *        bit 4h + j of hmask[l] is set; y = (d * (scale6[e / 16] - 32)) * q
 * float32 operations in the same order, unfused (see the int4 converter above). */

typedef struct {
    const uint8_t *w;
    uint16_t *out;
    int64_t K;
    int qtype;
} kq_args;

static void q2k_block_f32(const uint8_t *b, float *y) {
    const float d = rd_f16(b + 80), dmin = rd_f16(b + 82);
    const uint8_t *qs = b + 16;
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int half = 0; half < 2; half++) {
                const int e0 = 128 * h + 32 * j + 16 * half;
                const uint8_t sc = b[e0 / 16];
                const float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
                for (int l = 16 * half; l < 16 * half + 16; l++) {
                    float v = dl * (float)((qs[32 * h + l] >> (2 * j)) & 3);
                    y[128 * h + 32 * j + l] = v - ml;
                }
            }
}

static void q3k_block_f32(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *qs = b + 32, *s = b + 96;
    const float d = rd_f16(b + 108);
    float dl[16];
    for (int i = 0; i < 16; i++) {
        const int k = i & 3, sh = 2 * (i >> 2); /* high 2 bits: bits sh, sh+1 of s[8 + k] */
        const int lo = i < 4 ? s[k] & 15 : i < 8 ? s[4 + k] & 15 : i < 12 ? s[k] >> 4 : s[4 + k] >> 4;
        const int v = lo | (((s[8 + k] >> sh) & 3) << 4);
        dl[i] = d * (float)(int8_t)(uint8_t)(v - 32);
    }
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                const int e = 128 * h + 32 * j + l;
                int q = (qs[32 * h + l] >> (2 * j)) & 3;
                if (!((hm[l] >> (4 * h + j)) & 1)) q -= 4;
                y[e] = dl[e / 16] * (float)q;
            }
}

static void kq_bf16_rows(void *p, int64_t r0, int64_t r1) {
    const kq_args *a = (const kq_args *)p;
    const int64_t nb = a->K / QK_K, bytes = a->qtype == 10 ? 84 : 110;
    float buf[QK_K];
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t ib = 0; ib < nb; ib++) {
            const uint8_t *b = a->w + (r * nb + ib) * bytes;
            if (a->qtype == 10) q2k_block_f32(b, buf);
            else q3k_block_f32(b, buf);
            uint16_t *o = a->out + r * a->K + ib * QK_K;
            for (int i = 0; i < QK_K; i++) o[i] = f32_to_bf16_rne(buf[i]);
        }
    }
}

/* qtype: 10 (Q2_K) or 11 (Q3_K). Returns 0, or -1 for another type or K not a multiple of 256. */
int lantern_kquant_to_bf16(const uint8_t *w, int qtype, uint16_t *out, int64_t N, int64_t K, int nthreads) {
    if ((qtype != 10 && qtype != 11) || K % QK_K) return -1;
    kq_args a = {w, out, K, qtype};
    parallel_rows(kq_bf16_rows, &a, N, nthreads, 1);
    return 0;
}

/* ----- GGUF blocks multiplied in place: y[M, N] = x[M, K] @ W[N, K].T ------------------------
 * For decode (M = 1) and small batches: W's blocks are read straight from the file's memory map.
 * Every block is w = scale[s] * q + minv[s] over sub-blocks s (32 weights; 16 for Q6_K), q small
 * integers, scale/minv float32 formed as llama.cpp forms them (d * sc, -(dmin * m), m):
 *   y[m, n] = sum_s scale[s] * (sum_i q_i * bf16(x[m, i])) + minv[s] * (sum_i x[m, i])
 * x is rounded to bfloat16 once per call (the products q * x are exact in float32), the sums of
 * x per 32 (for the mins) stay float32; all accumulation is float32. Q8_0 multiplies float32 x.
 * AVX-512 BF16 path: q becomes bf16 in registers by a table lookup (vpermw / vpermt2w on the
 * nibble or 6-bit codes; the table bakes in Q4_0's -8, Q5_0's -16, Q6_K's -32), vdpbf16ps gives
 * 16 partial dot products per 32 weights, one FMA by the sub-block's scale adds them to float32
 * accumulators. Portable path: the same sums in C, one weight at a time.
 * GGUF type ids: Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, Q4_K 12, Q5_K 13, Q6_K 14. */

enum { LT_Q6_K = 14 };

static int gguf_geometry(int qtype, int64_t *elems, int64_t *bytes) {
    switch (qtype) {
    case LT_Q4_0: *elems = 32; *bytes = 18; return 0;
    case LT_Q4_1: *elems = 32; *bytes = 20; return 0;
    case LT_Q5_0: *elems = 32; *bytes = 22; return 0;
    case LT_Q5_1: *elems = 32; *bytes = 24; return 0;
    case LT_Q8_0: *elems = 32; *bytes = 34; return 0;
    case LT_Q4_K: *elems = 256; *bytes = 144; return 0;
    case LT_Q5_K: *elems = 256; *bytes = 176; return 0;
    case LT_Q6_K: *elems = 256; *bytes = 210; return 0;
    default: return -1;
    }
}

/* Q4_K/Q5_K: the 8 6-bit scales and mins (llama.cpp's get_scale_min_k4). */
static void k4_scale_min(const uint8_t *q, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) { sc[j] = q[j] & 63; mn[j] = q[j + 4] & 63; }
        else { sc[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); mn[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
    }
}

/* One block -> codes q[elems] and per-sub-block scale/minv (sub-blocks of 32, Q6_K 16). */
static void decode_codes(int qtype, const uint8_t *b, int8_t *q, float *scale, float *minv) {
    switch (qtype) {
    case LT_Q4_0: case LT_Q4_1: case LT_Q5_0: case LT_Q5_1: {
        const float d = rd_f16(b);
        const uint8_t *qs;
        uint32_t qh = 0;
        int off = 0;
        minv[0] = 0.f;
        if (qtype == LT_Q4_0) { qs = b + 2; off = -8; }
        else if (qtype == LT_Q4_1) { qs = b + 4; minv[0] = rd_f16(b + 2); }
        else if (qtype == LT_Q5_0) { qs = b + 6; memcpy(&qh, b + 2, 4); off = -16; }
        else { qs = b + 8; memcpy(&qh, b + 4, 4); minv[0] = rd_f16(b + 2); }
        for (int l = 0; l < 16; l++) {
            q[l] = (int8_t)((qs[l] & 15) + 16 * ((qh >> l) & 1) + off);
            q[l + 16] = (int8_t)((qs[l] >> 4) + 16 * ((qh >> (l + 16)) & 1) + off);
        }
        scale[0] = d;
        break;
    }
    case LT_Q8_0:
        memcpy(q, b + 2, 32);
        scale[0] = rd_f16(b);
        minv[0] = 0.f;
        break;
    case LT_Q4_K: case LT_Q5_K: {
        const float d = rd_f16(b), dmin = rd_f16(b + 2);
        uint8_t sc[8], mn[8];
        k4_scale_min(b + 4, sc, mn);
        for (int j = 0; j < 8; j++) { scale[j] = d * (float)sc[j]; minv[j] = -(dmin * (float)mn[j]); }
        const uint8_t *qs = qtype == LT_Q4_K ? b + 16 : b + 48, *qh = b + 16;
        for (int g = 0; g < 4; g++)
            for (int l = 0; l < 32; l++) {
                int lo = qs[32 * g + l] & 15, hi = qs[32 * g + l] >> 4;
                if (qtype == LT_Q5_K) { lo += 16 * ((qh[l] >> (2 * g)) & 1); hi += 16 * ((qh[l] >> (2 * g + 1)) & 1); }
                q[64 * g + l] = (int8_t)lo;
                q[64 * g + 32 + l] = (int8_t)hi;
            }
        break;
    }
    default: { /* Q6_K */
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        const float d = rd_f16(b + 208);
        for (int j = 0; j < 16; j++) { scale[j] = d * (float)sc[j]; minv[j] = 0.f; }
        for (int h = 0; h < 2; h++)
            for (int t = 0; t < 4; t++)
                for (int l = 0; l < 32; l++)
                    q[128 * h + 32 * t + l] = (int8_t)((((ql[64 * h + 32 * (t & 1) + l] >> (4 * (t >> 1))) & 15) |
                                                       (((qh[32 * h + l] >> (2 * t)) & 3) << 4)) - 32);
        break;
    }
    }
}

/* Portable: out[m] = row . x[m] for m < M. */
static void gguf_row_portable(int qtype, const uint8_t *row, int64_t K, const uint16_t *xb, const float *xf,
                              const float *xs, int64_t G, int64_t M, float *out) {
    int64_t E = 32, B = 0;
    gguf_geometry(qtype, &E, &B);
    const int SB = qtype == LT_Q6_K ? 16 : 32;
    int8_t q[256];
    float scale[16], minv[16];
    for (int64_t m = 0; m < M; m++) out[m] = 0.f;
    for (int64_t ib = 0; ib < K / E; ib++) {
        decode_codes(qtype, row + ib * B, q, scale, minv);
        for (int64_t m = 0; m < M; m++) {
            float acc = 0.f;
            for (int s = 0; s < E / SB; s++) {
                const int64_t e0 = ib * E + s * SB;
                float dot = 0.f;
                if (qtype == LT_Q8_0)
                    for (int i = 0; i < SB; i++) dot += (float)q[s * SB + i] * xf[m * K + e0 + i];
                else
                    for (int i = 0; i < SB; i++) dot += (float)q[s * SB + i] * bf16_to_f32(xb[m * K + e0 + i]);
                acc += scale[s] * dot;
                if (minv[s] != 0.f) acc += minv[s] * xs[m * G + e0 / 32];
            }
            out[m] += acc;
        }
    }
}

/* Portable: rows of blocks -> bf16 weights, the bytes of quants.py's dequantize rounded (RNE). */
static void gguf_bf16_row_portable(int qtype, const uint8_t *row, int64_t K, uint16_t *out) {
    int64_t E = 32, B = 0;
    gguf_geometry(qtype, &E, &B);
    const int SB = qtype == LT_Q6_K ? 16 : 32;
    int8_t q[256];
    float scale[16], minv[16];
    for (int64_t ib = 0; ib < K / E; ib++) {
        decode_codes(qtype, row + ib * B, q, scale, minv);
        for (int i = 0; i < E; i++) {
            float w = scale[i / SB] * (float)q[i];
            if (minv[i / SB] != 0.f) w = w + minv[i / SB];
            out[ib * E + i] = f32_to_bf16_rne(w);
        }
    }
}

#ifdef LANTERN_X86
#define TGT_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,f16c,fma")))
#define ALWAYS_INLINE inline __attribute__((always_inline))

/* bf16 tables indexed by code (vpermw: low 5 bits; vpermt2w: low 6 bits) */
static uint16_t TAB_U4[32] __attribute__((aligned(64)));    /* i & 15 */
static uint16_t TAB_U4P16[32] __attribute__((aligned(64))); /* (i & 15) + 16 */
static uint16_t TAB_Q40[32] __attribute__((aligned(64)));   /* (i & 15) - 8 */
static uint16_t TAB_Q50[32] __attribute__((aligned(64)));   /* (i & 15) - 16 */
static uint16_t TAB_U5[32] __attribute__((aligned(64)));    /* i */
static uint16_t TAB_Q6[64] __attribute__((aligned(64)));    /* i - 32 */
/* Q6_K: vpermps indices putting scale k in lanes 0-7 and k + 1 in lanes 8-15, k = 2 * (4h + t) */
static int32_t Q6_SIDX[8][16] __attribute__((aligned(64)));

__attribute__((constructor)) static void gguf_tables_init(void) {
    for (int i = 0; i < 32; i++) {
        TAB_U4[i] = f32_to_bf16_rne((float)(i & 15));
        TAB_U4P16[i] = f32_to_bf16_rne((float)((i & 15) + 16));
        TAB_Q40[i] = f32_to_bf16_rne((float)((i & 15) - 8));
        TAB_Q50[i] = f32_to_bf16_rne((float)((i & 15) - 16));
        TAB_U5[i] = f32_to_bf16_rne((float)i);
    }
    for (int i = 0; i < 64; i++) TAB_Q6[i] = f32_to_bf16_rne((float)(i - 32));
    for (int k = 0; k < 8; k++)
        for (int l = 0; l < 16; l++) Q6_SIDX[k][l] = 2 * k + (l >= 8);
}

#define SEL_LO4 0xE4 /* ternlog: c ? a : b, with c = 0x000F per word: low nibble from a, rest from b */

TGT_BF16 static ALWAYS_INLINE __m512 dpbf(__m512i w, const uint16_t *x) {
    return _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)w, (__m512bh)_mm512_loadu_si512(x));
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
        float sc[8] __attribute__((aligned(32)));
        const __m256 mn = k4_scales(blk, sc);
        /* Make the compiler read the scales back from memory: broadcasting a float from memory
         * is a load, from a register a shuffle, and shuffles are what this loop is short of
         * (Phi-3-mini's Q4_K shapes on Zen 4: 10-17% faster). */
        __asm__ volatile("" : : "r"(sc) : "memory");
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

/* 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1 (bf16 dot products), Q8_0 (float32). */

/* One block into acc[m] for the M rows of x. */
TGT_BF16 static ALWAYS_INLINE void q32_block(const uint8_t *blk, int64_t e0, float dscale, __m512 *acc, int64_t K,
                                             const uint16_t *xb, const float *xf, const int M, const int qtype) {
    const int biased = qtype == LT_Q4_0 || qtype == LT_Q4_1;
    const int qs_off = qtype == LT_Q4_0 ? 2 : qtype == LT_Q4_1 ? 4 : qtype == LT_Q5_0 ? 6 : qtype == LT_Q5_1 ? 8 : 2;
    const __m512 d = _mm512_set1_ps(dscale);
    if (qtype == LT_Q8_0) {
        const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2))));
        const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18))));
        for (int m = 0; m < M; m++) {
            const float *x = xf + m * K + e0;
            const __m512 t = _mm512_fmadd_ps(q1, _mm512_loadu_ps(x + 16), _mm512_mul_ps(q0, _mm512_loadu_ps(x)));
            acc[m] = _mm512_fmadd_ps(t, d, acc[m]);
        }
        return;
    }
    __m512i v = _mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(blk + qs_off))));
    v = _mm512_mask_srli_epi16(v, 0xFFFF0000u, v, 4); /* words 0-15 low nibbles, 16-31 high */
    __m512i w;
    if (biased) w = _mm512_ternarylogic_epi32(v, _mm512_set1_epi16(0x4300), _mm512_set1_epi16(0x000F), 0xEC); /* (v & 15) | 0x4300 */
    else w = _mm512_permutexvar_epi16(v, _mm512_load_si512(qtype == LT_Q5_0 ? TAB_Q50 : TAB_U4));
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
    const int64_t bytes = qtype == LT_Q4_0 ? 18 : qtype == LT_Q4_1 ? 20 : qtype == LT_Q5_0 ? 22 : qtype == LT_Q5_1 ? 24 : 34;
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
        float df[64] __attribute__((aligned(64))), mf[64] __attribute__((aligned(64)));
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
            if (M * K * (qtype == LT_Q8_0 ? 2 : 1) > XAHEAD_MIN)
                for (int m = 0; m < M; m++) {
                    if (qtype == LT_Q8_0) prefetch_x((const uint16_t *)(xf + m * K + (c0 + i) * 32), 256);
                    else prefetch_x(xb + m * K + (c0 + i) * 32, 128);
                }
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

typedef void (*row_fn)(ROW_ARGS);

#define ROW_PASS row, K, xb, xf, xs, G, out
#define INSTANCES(name, call)                                        \
    TGT_BF16 static void name##_1(ROW_ARGS) { call(ROW_PASS, 1); }   \
    TGT_BF16 static void name##_2(ROW_ARGS) { call(ROW_PASS, 2); }   \
    TGT_BF16 static void name##_3(ROW_ARGS) { call(ROW_PASS, 3); }   \
    TGT_BF16 static void name##_4(ROW_ARGS) { call(ROW_PASS, 4); }   \
    TGT_BF16 static void name##_8(ROW_ARGS) { call(ROW_PASS, 8); }

#define Q4K(args, M) q4k_impl(args, M, 0)
#define Q5K(args, M) q4k_impl(args, M, 1)
#define Q6K(args, M) q6k_impl(args, M)
#define Q40(args, M) q32_impl(args, M, LT_Q4_0)
#define Q41(args, M) q32_impl(args, M, LT_Q4_1)
#define Q50(args, M) q32_impl(args, M, LT_Q5_0)
#define Q51(args, M) q32_impl(args, M, LT_Q5_1)
#define Q80(args, M) q32_impl(args, M, LT_Q8_0)
INSTANCES(rq4k, Q4K)
INSTANCES(rq5k, Q5K)
INSTANCES(rq6k, Q6K)
INSTANCES(rq40, Q40)
INSTANCES(rq41, Q41)
INSTANCES(rq50, Q50)
INSTANCES(rq51, Q51)
INSTANCES(rq80, Q80)

static row_fn simd_row_fn(int qtype, int mc) { /* mc in 1, 2, 3, 4, 8 */
    const int i = mc == 1 ? 0 : mc == 2 ? 1 : mc == 3 ? 2 : mc == 4 ? 3 : 4;
#define PICK(name) { static const row_fn f[5] = {name##_1, name##_2, name##_3, name##_4, name##_8}; return f[i]; }
    switch (qtype) {
    case LT_Q4_K: PICK(rq4k)
    case LT_Q5_K: PICK(rq5k)
    case LT_Q6_K: PICK(rq6k)
    case LT_Q4_0: PICK(rq40)
    case LT_Q4_1: PICK(rq41)
    case LT_Q5_0: PICK(rq50)
    case LT_Q5_1: PICK(rq51)
    case LT_Q8_0: PICK(rq80)
    default: return NULL;
    }
#undef PICK
}

/* ---- expansion to bf16 (prompt chunks): w = scale * q + minv, rounded to nearest even ---- */

/* 32 weights from bf16 codes W (32 words): lanes 0-15 scaled by s0 (+ m0), 16-31 by s1 (+ m1). */
TGT_BF16 static ALWAYS_INLINE void emit32(uint16_t *dst, __m512i W, float s0, float s1, float m0, float m1, int has_min) {
    const __m512 lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(W)), 16));
    const __m512 hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(W, 1)), 16));
    __m512 a, b;
    if (has_min) {
        a = _mm512_fmadd_ps(lo, _mm512_set1_ps(s0), _mm512_set1_ps(m0));
        b = _mm512_fmadd_ps(hi, _mm512_set1_ps(s1), _mm512_set1_ps(m1));
    } else {
        a = _mm512_mul_ps(lo, _mm512_set1_ps(s0));
        b = _mm512_mul_ps(hi, _mm512_set1_ps(s1));
    }
    _mm512_storeu_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(b, a));
}

TGT_BF16 static void gguf_bf16_row_simd(int qtype, const uint8_t *row, int64_t K, uint16_t *out) {
    if (qtype == LT_Q4_K || qtype == LT_Q5_K) {
        const int five = qtype == LT_Q5_K;
        const __m512i T = _mm512_load_si512(five ? TAB_U5 : TAB_U4), m4 = _mm512_set1_epi16(0x000F);
        for (int64_t b = 0; b < K / 256; b++) {
            const uint8_t *blk = row + b * (five ? 176 : 144);
            float sc[8] __attribute__((aligned(32))), mn[8] __attribute__((aligned(32)));
            _mm256_store_ps(mn, _mm256_sub_ps(_mm256_setzero_ps(), k4_scales(blk, sc)));
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
    /* 32-element blocks */
    int64_t E = 32, bytes = 0;
    gguf_geometry(qtype, &E, &bytes);
    const int qs_off = qtype == LT_Q4_0 ? 2 : qtype == LT_Q4_1 ? 4 : qtype == LT_Q5_0 ? 6 : qtype == LT_Q5_1 ? 8 : 2;
    const __m512i T0 = _mm512_load_si512(qtype == LT_Q4_0 ? TAB_Q40 : qtype == LT_Q5_0 ? TAB_Q50 : TAB_U4);
    const __m512i T1 = _mm512_load_si512(qtype == LT_Q5_0 ? TAB_U4 : TAB_U4P16);
    const int has_min = qtype == LT_Q4_1 || qtype == LT_Q5_1;
    for (int64_t i = 0; i < K / 32; i++) {
        const uint8_t *blk = row + i * bytes;
        const float d = rd_f16(blk), mv = has_min ? rd_f16(blk + 2) : 0.f;
        if (qtype == LT_Q8_0) {
            const __m512 q0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2))));
            const __m512 q1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18))));
            const __m512 dv = _mm512_set1_ps(d);
            _mm512_storeu_si512(out + 32 * i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(q1, dv), _mm512_mul_ps(q0, dv)));
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
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
    for (; i < n; i++) dst[i] = f32_to_bf16_rne(x[i]);
}
#endif /* LANTERN_X86 */

/* ---- the matmul ---- */

typedef struct {
    const uint8_t *w;
    int qtype, simd;
    int64_t N, K, M, G, rowbytes, rpt;
    const float *x;
    const uint16_t *xb;
    const float *xs;
    float *y;
    int64_t ldy; /* floats between rows of y */
} gmm_args;

#define WAHEAD 1024 /* SmolLM2-135M's shapes, Q4_1 / Q8_0: 3-20% faster than without */
static void gmm_task(void *p, int64_t t) {
    const gmm_args *a = (const gmm_args *)p;
    const int64_t r0 = t * a->rpt, r1 = r0 + a->rpt < a->N ? r0 + a->rpt : a->N;
    const int64_t K = a->K, M = a->M, G = a->G;
    float out[8];
    /* Short rows (K of a few hundred): each task is a short stream that the hardware prefetcher
     * only ramps up to late; fetch the weights WAHEAD bytes ahead. (Long rows: it keeps up and
     * the extra loads only cost.) */
    const int fetch = a->rowbytes <= 1024;
    const uint8_t *end = a->w + r1 * a->rowbytes;
    if (fetch)
        for (const uint8_t *p = a->w + r0 * a->rowbytes; p < end && p < a->w + r0 * a->rowbytes + WAHEAD; p += 64)
            __builtin_prefetch(p);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = a->w + r * a->rowbytes;
        if (fetch)
            for (int64_t o = 0; o < a->rowbytes; o += 64) __builtin_prefetch(row + WAHEAD + o);
        for (int64_t m0 = 0; m0 < M;) {
            const int64_t rem = M - m0;
            const int mc = rem >= 8 ? 8 : rem >= 4 ? 4 : rem == 3 ? 3 : rem >= 2 ? 2 : 1;
#ifdef LANTERN_X86
            if (a->simd) simd_row_fn(a->qtype, mc)(row, K, a->xb + m0 * K, a->x + m0 * K, a->xs + m0 * G, G, out);
            else
#endif
                gguf_row_portable(a->qtype, row, K, a->xb + m0 * K, a->x + m0 * K, a->xs + m0 * G, G, mc, out);
            for (int m = 0; m < mc; m++) a->y[(m0 + m) * a->ldy + r] = out[m];
            m0 += mc;
        }
    }
}

static _Thread_local void *g_scratch;
static _Thread_local size_t g_scratch_cap;

static void *scratch(size_t n) { /* per calling thread, grown as needed, 64-byte aligned */
    if (n > g_scratch_cap) {
        free(g_scratch);
        g_scratch_cap = 0;
        g_scratch = NULL;
        if (posix_memalign(&g_scratch, 64, n + 4096) != 0) return NULL;
        g_scratch_cap = n + 4096;
    }
    return g_scratch;
}

/* y[m, r] (rows of y `ldy` floats apart) = x[m] . W[r] for m < M, r < N. Returns 0, or -1 for an
 * unknown type, K not a multiple of the block, or no memory. */
int lt_gguf_matmul(const uint8_t *w, int qtype, const float *x, float *y, int64_t ldy, int64_t N, int64_t K,
                   int64_t M, int nthreads) {
    int64_t E = 32, B = 0;
    if (gguf_geometry(qtype, &E, &B) || K % E || M <= 0 || N <= 0) return -1;
    const int feat = lantern_cpu_features();
    const int64_t G = K / 32, Gp = (G + 15) / 16 * 16, ld = 2 * Gp;
    /* scratch: bf16 x [M, K], then per row of x the sums per 32 of x and of bf16(x) [M, 2, Gp]
     * (+ padding for the masked loads) */
    uint8_t *s = (uint8_t *)scratch((size_t)(M * K * 2 + (M * ld + 64) * 4));
    if (!s) return -1;
    uint16_t *xb = (uint16_t *)s;
    float *xs = (float *)(s + M * K * 2);
#ifdef LANTERN_X86
    if (feat & FEAT_BF16) {
        x_to_bf16_simd(x, xb, M * K);
        for (int64_t m = 0; m < M; m++) x_sums_simd(x + m * K, xb + m * K, G, xs + m * ld, xs + m * ld + Gp);
    } else
#endif
    {
        for (int64_t i = 0; i < M * K; i++) xb[i] = f32_to_bf16_rne(x[i]);
        for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < G; g++) {
            const float *p = x + m * K + 32 * g;
            const uint16_t *q = xb + m * K + 32 * g;
            float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, b0 = 0.f, b1 = 0.f, b2 = 0.f, b3 = 0.f;
            for (int i = 0; i < 32; i += 4) {
                a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3];
                b0 += bf16_to_f32(q[i]); b1 += bf16_to_f32(q[i + 1]); b2 += bf16_to_f32(q[i + 2]); b3 += bf16_to_f32(q[i + 3]);
            }
            xs[m * ld + g] = (a0 + a1) + (a2 + a3);
            xs[m * ld + Gp + g] = (b0 + b1) + (b2 + b3);
        }
    }
    gmm_args a = {w, qtype, (feat & FEAT_BF16) != 0, N, K, M, ld, K / E * B, 1, x, xb, xs, y, ldy};
    /* tasks of about 1M weights (0.5-0.8 MB of blocks: long sequential streams for the hardware
     * prefetcher; Phi-3-mini shapes 1-5% faster than 256K), at least 2 per thread */
    int64_t rpt = (1 << 20) / K;
    if (rpt < 1) rpt = 1;
    if (nthreads < 1) nthreads = 1;
    const int64_t spread = (N + 2 * nthreads - 1) / (2 * nthreads);
    if (rpt > spread) rpt = spread;
    if (N * K < (1 << 15)) rpt = N; /* tiny: one task */
    a.rpt = rpt;
    pool_run(gmm_task, &a, (N + rpt - 1) / rpt, nthreads);
    return 0;
}

/* y[M, N] = x[M, K] @ W[N, K].T. Returns 0, or -1 as lt_gguf_matmul. */
int lantern_gguf_matmul(const uint8_t *w, int qtype, const float *x, float *y, int64_t N, int64_t K, int64_t M,
                        int nthreads) {
    return lt_gguf_matmul(w, qtype, x, y, N, N, K, M, nthreads);
}

typedef struct {
    const uint8_t *w;
    uint16_t *out;
    int qtype, simd;
    int64_t K, rowbytes;
} gbf_args;

static void gbf_rows(void *p, int64_t r0, int64_t r1) {
    const gbf_args *a = (const gbf_args *)p;
    for (int64_t r = r0; r < r1; r++) {
#ifdef LANTERN_X86
        if (a->simd) { gguf_bf16_row_simd(a->qtype, a->w + r * a->rowbytes, a->K, a->out + r * a->K); continue; }
#endif
        gguf_bf16_row_portable(a->qtype, a->w + r * a->rowbytes, a->K, a->out + r * a->K);
    }
}

/* Rows of GGUF blocks -> bf16 [N, K]: quants.py's float32 dequantize rounded to nearest even. */
int lantern_gguf_to_bf16(const uint8_t *w, int qtype, uint16_t *out, int64_t N, int64_t K, int nthreads) {
    int64_t E = 32, B = 0;
    if (gguf_geometry(qtype, &E, &B) || K % E) return -1;
    gbf_args a = {w, out, qtype, (lantern_cpu_features() & FEAT_BF16) != 0, K, K / E * B};
    parallel_rows(gbf_rows, &a, N, nthreads, 1);
    return 0;
}

/* Whether lantern_gguf_matmul takes this type (any CPU; fast where FEAT_BF16 is set). */
int lantern_gguf_supported(int qtype) {
    int64_t E = 32, B = 0;
    return gguf_geometry(qtype, &E, &B) == 0;
}

/* ----- exp over float32 arrays ----------------------------------------------------------------
 * Cephes' expf: x = n ln2 + r (|r| <= ln2 / 2, ln2 in two parts), exp(r) by a degree-7
 * polynomial, times 2^n; relative error about 1 ulp (expf's own). Inputs below -103.9 give 0. */

#ifdef LANTERN_X86
__attribute__((target("avx512f,fma")))
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
__attribute__((target("avx512f,fma")))
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
__attribute__((target("avx512f,fma")))
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
#endif

static float exp_sum(float *s, int64_t T, float mx) {
#ifdef LANTERN_X86
    if (g_avx512) return exp_sum_avx512(s, T, mx);
#endif
    float sum = 0.f;
    for (int64_t t = 0; t < T; t++) sum += (s[t] = expf(s[t] - mx));
    return sum;
}

void lt_silu_mul(const float *g, const float *u, float *out, int64_t n) {
#ifdef LANTERN_X86
    if (g_avx512) { silu_mul_avx512(g, u, out, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) out[i] = g[i] / (1.f + expf(-g[i])) * u[i];
}

#ifdef LANTERN_X86
__attribute__((target("avx512f,f16c")))
static void to_f16_avx512(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = f32_to_f16(src[i]);
}
#endif

void lt_to_f16(const float *src, uint16_t *dst, int64_t n) {
#ifdef LANTERN_X86
    if (g_avx512) { to_f16_avx512(src, dst, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) dst[i] = f32_to_f16(src[i]);
}

/* ----- attention of a few queries over a float16 KV cache ------------------------------------
 * out[i, h] = softmax_t(scale * q[i, h] . k[h / group, t]) v[h / group, t] over the keys that
 * query i (at position start + i) sees: t <= start + i and, with a window, start + i - t < window.
 * K and V are float16 [kv_heads, stride, D] (the cache as stored, half the bytes of float32: a
 * decode step reads all of them); q float32 [n, heads, D] with rows `ldq` floats apart, out
 * float32 [n, heads * D]; the math is float32. One task per (query, head). */
typedef struct {
    const float *q;
    const uint16_t *k, *v;
    float *out;
    int64_t H, KVH, D, start, stride, window, ldq;
    float scale;
    int simd;
} attn_args;

static float dot_f16(const float *q, const uint16_t *k, int64_t D) {
    float s = 0.f;
    for (int64_t d = 0; d < D; d++) s += q[d] * f16_to_f32(k[d]);
    return s;
}

static void axpy_f16(float a, const uint16_t *v, float *o, int64_t D) {
    for (int64_t d = 0; d < D; d++) o[d] += a * f16_to_f32(v[d]);
}

#ifdef LANTERN_X86
__attribute__((target("avx512f,f16c,fma")))
static float dot_f16_simd(const float *q, const uint16_t *k, int64_t D) {
    __m512 acc = _mm512_setzero_ps();
    int64_t d = 0;
    for (; d + 16 <= D; d += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + d))), acc);
    return _mm512_reduce_add_ps(acc) + dot_f16(q + d, k + d, D - d);
}

__attribute__((target("avx512f,f16c,fma")))
static void axpy_f16_simd(float a, const uint16_t *v, float *o, int64_t D) {
    const __m512 av = _mm512_set1_ps(a);
    int64_t d = 0;
    for (; d + 16 <= D; d += 16)
        _mm512_storeu_ps(o + d, _mm512_fmadd_ps(av, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + d))),
                                                _mm512_loadu_ps(o + d)));
    axpy_f16(a, v + d, o + d, D - d);
}
#endif

static void attn_task(void *p, int64_t task) {
    const attn_args *a = (const attn_args *)p;
    const int64_t i = task / a->H, h = task % a->H, kvh = h / (a->H / a->KVH), pos = a->start + i, D = a->D;
    const int64_t lo = a->window > 0 && pos - a->window + 1 > 0 ? pos - a->window + 1 : 0, T = pos + 1 - lo;
    const float *q = a->q + i * a->ldq + h * D;
    const uint16_t *k = a->k + (kvh * a->stride + lo) * D, *v = a->v + (kvh * a->stride + lo) * D;
    float *o = a->out + (i * a->H + h) * D;
    float buf[2048];
    float *s = T <= 2048 ? buf : (float *)malloc((size_t)T * sizeof(float));
    if (!s) { /* out of memory: NaN, not a silently wrong number */
        for (int64_t d = 0; d < D; d++) o[d] = NAN;
        return;
    }
    float mx = -INFINITY;
    for (int64_t t = 0; t < T; t++) {
#ifdef LANTERN_X86
        s[t] = a->scale * (a->simd ? dot_f16_simd(q, k + t * D, D) : dot_f16(q, k + t * D, D));
#else
        s[t] = a->scale * dot_f16(q, k + t * D, D);
#endif
        if (s[t] > mx) mx = s[t];
    }
    const float sum = exp_sum(s, T, mx);
    memset(o, 0, (size_t)D * sizeof(float));
    for (int64_t t = 0; t < T; t++) {
#ifdef LANTERN_X86
        if (a->simd) { axpy_f16_simd(s[t], v + t * D, o, D); continue; }
#endif
        axpy_f16(s[t], v + t * D, o, D);
    }
    const float inv = 1.f / sum;
    for (int64_t d = 0; d < D; d++) o[d] *= inv;
    if (s != buf) free(s);
}

#ifdef LANTERN_X86
/* The vector path: one task per (query, KV head, chunk of up to 4 of its query heads, span of up
 * to ATTN_SPAN positions). Each key and value row is converted from float16 once for all the
 * query heads of the chunk (grouped-query attention shares them), scores are reduced four
 * positions at a time, and the outputs stay in registers (SmolLM2-135M, 9 heads over 3 KV
 * heads: 1.9x faster than one task per head at 300 and 1,000 positions). A query's positions are split into
 * spans by their count alone, so a query's result does not depend on the thread count or on
 * the other queries of the pass; spans are merged like flash-decoding's partial softmaxes. */
#define ATTN_SPAN 1024 /* positions: long enough to stream (MHA at 1000 positions is memory-bound) */
#define ATTN_HEADS 4

typedef struct {
    const attn_args *a;
    int64_t nchunks, nspans; /* per (query, KV head); spans for the longest query */
    float *part;             /* per task: HEADS x (max, sum, D outputs) */
} attn_job;

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
 * writes (max, sum of exp, unnormalised outputs) per head to part. DV = D / 16. */
TGT_BF16 static ALWAYS_INLINE void attn_span(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T,
                                             float scale, float *s, float *part, const int DV, const int HN) {
    const int64_t D = 16 * DV;
    __m512 qv[ATTN_HEADS][8];
    for (int j = 0; j < HN; j++)
        for (int d = 0; d < DV; d++) qv[j][d] = _mm512_mul_ps(_mm512_loadu_ps(q[j] + 16 * d), _mm512_set1_ps(scale));
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) {
        __m512 acc[ATTN_HEADS][4];
        for (int u = 0; u < 4; u++) {
            const uint16_t *kr = k + (t + u) * D;
            for (int j = 0; j < HN; j++) acc[j][u] = _mm512_mul_ps(qv[j][0], ldh(kr));
            for (int d = 1; d < DV; d++) {
                const __m512 kd = ldh(kr + 16 * d);
                for (int j = 0; j < HN; j++) acc[j][u] = _mm512_fmadd_ps(qv[j][d], kd, acc[j][u]);
            }
        }
        for (int j = 0; j < HN; j++) _mm_storeu_ps(s + j * T + t, hsum4(acc[j][0], acc[j][1], acc[j][2], acc[j][3]));
    }
    for (; t < T; t++) {
        const uint16_t *kr = k + t * D;
        for (int j = 0; j < HN; j++) {
            __m512 acc = _mm512_mul_ps(qv[j][0], ldh(kr));
            for (int d = 1; d < DV; d++) acc = _mm512_fmadd_ps(qv[j][d], ldh(kr + 16 * d), acc);
            s[j * T + t] = _mm512_reduce_add_ps(acc);
        }
    }
    for (int j = 0; j < HN; j++) {
        float mx = -INFINITY;
        for (int64_t u = 0; u < T; u++) mx = s[j * T + u] > mx ? s[j * T + u] : mx;
        part[j * (D + 2)] = mx;
        part[j * (D + 2) + 1] = exp_sum_avx512(s + j * T, T, mx);
    }
    __m512 o[ATTN_HEADS][8];
    for (int j = 0; j < HN; j++)
        for (int d = 0; d < DV; d++) o[j][d] = _mm512_setzero_ps();
    for (t = 0; t < T; t++) {
        const uint16_t *vr = v + t * D;
        for (int d = 0; d < DV; d++) {
            const __m512 vd = ldh(vr + 16 * d);
            for (int j = 0; j < HN; j++) o[j][d] = _mm512_fmadd_ps(_mm512_set1_ps(s[j * T + t]), vd, o[j][d]);
        }
    }
    for (int j = 0; j < HN; j++)
        for (int d = 0; d < DV; d++) _mm512_storeu_ps(part + j * (D + 2) + 2 + 16 * d, o[j][d]);
}

typedef void (*span_fn)(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T, float scale, float *s,
                        float *part);
#define SPAN(DV, HN)                                                                                                 \
    TGT_BF16 static void attn_span_##DV##_##HN(const float *const *q, const uint16_t *k, const uint16_t *v, int64_t T, \
                                               float scale, float *s, float *part) {                                  \
        attn_span(q, k, v, T, scale, s, part, DV, HN);                                                                \
    }
SPAN(4, 1) SPAN(4, 2) SPAN(4, 3) SPAN(4, 4)
SPAN(6, 1) SPAN(6, 2) SPAN(6, 3) SPAN(6, 4)
SPAN(8, 1) SPAN(8, 2) SPAN(8, 3) SPAN(8, 4)

static span_fn attn_span_fn(int64_t D, int64_t hn) {
    static const span_fn f[3][4] = {{attn_span_4_1, attn_span_4_2, attn_span_4_3, attn_span_4_4},
                                    {attn_span_6_1, attn_span_6_2, attn_span_6_3, attn_span_6_4},
                                    {attn_span_8_1, attn_span_8_2, attn_span_8_3, attn_span_8_4}};
    const int i = D == 64 ? 0 : D == 96 ? 1 : D == 128 ? 2 : -1;
    return i < 0 || hn < 1 || hn > ATTN_HEADS ? NULL : f[i][hn - 1];
}

/* The positions query i sees: [lo, pos] */
static void attn_range(const attn_args *a, int64_t i, int64_t *lo, int64_t *T) {
    const int64_t pos = a->start + i;
    *lo = a->window > 0 && pos - a->window + 1 > 0 ? pos - a->window + 1 : 0;
    *T = pos + 1 - *lo;
}

static void attn_span_task(void *p, int64_t task) {
    const attn_job *job = (const attn_job *)p;
    const attn_args *a = job->a;
    const int64_t D = a->D, group = a->H / a->KVH;
    const int64_t sp = task % job->nspans, c = task / job->nspans % job->nchunks;
    const int64_t kvh = task / (job->nspans * job->nchunks) % a->KVH, i = task / (job->nspans * job->nchunks * a->KVH);
    int64_t lo, T;
    attn_range(a, i, &lo, &T);
    const int64_t spans = (T + ATTN_SPAN - 1) / ATTN_SPAN;
    float *part = job->part + task * ATTN_HEADS * (D + 2);
    const int64_t h0 = kvh * group + c * ATTN_HEADS, hn = group - c * ATTN_HEADS < ATTN_HEADS ? group - c * ATTN_HEADS : ATTN_HEADS;
    if (sp >= spans) { /* this query has fewer spans than the longest: nothing to add */
        for (int64_t j = 0; j < hn; j++) { part[j * (D + 2)] = -INFINITY; part[j * (D + 2) + 1] = 0.f; }
        return;
    }
    const int64_t t0 = lo + sp * ATTN_SPAN, n = t0 + ATTN_SPAN < lo + T ? ATTN_SPAN : lo + T - t0;
    const float *q[ATTN_HEADS];
    for (int64_t j = 0; j < hn; j++) q[j] = a->q + i * a->ldq + (h0 + j) * D;
    float s[ATTN_HEADS * ATTN_SPAN];
    attn_span_fn(D, hn)(q, a->k + (kvh * a->stride + t0) * D, a->v + (kvh * a->stride + t0) * D, n, a->scale, s, part);
}

/* Merge the spans of every (query, head): out = sum_s e^(m_s - m) o_s / sum_s e^(m_s - m) l_s. */
static void attn_merge(const attn_job *job, int64_t n) {
    const attn_args *a = job->a;
    const int64_t D = a->D, group = a->H / a->KVH, W = ATTN_HEADS * (D + 2);
    for (int64_t i = 0; i < n; i++)
        for (int64_t h = 0; h < a->H; h++) {
            const int64_t kvh = h / group, c = h % group / ATTN_HEADS, j = h % group % ATTN_HEADS;
            const float *first = job->part + ((i * a->KVH + kvh) * job->nchunks + c) * job->nspans * W + j * (D + 2);
            float m = -INFINITY;
            for (int64_t sp = 0; sp < job->nspans; sp++) m = first[sp * W] > m ? first[sp * W] : m;
            float *o = a->out + (i * a->H + h) * D;
            float l = 0.f;
            for (int64_t d = 0; d < D; d++) o[d] = 0.f;
            for (int64_t sp = 0; sp < job->nspans; sp++) {
                const float *ps = first + sp * W;
                if (ps[1] == 0.f) continue;
                const float e = job->nspans == 1 ? 1.f : expf(ps[0] - m);
                l += e * ps[1];
                for (int64_t d = 0; d < D; d++) o[d] += e * ps[2 + d];
            }
            const float inv = 1.f / l;
            for (int64_t d = 0; d < D; d++) o[d] *= inv;
        }
}

static _Thread_local float *g_attn;
static _Thread_local size_t g_attn_cap;

/* 0 when done, 1 when the shapes are not the vector path's, -1 without memory. */
static int attention_spans(const attn_args *a, int64_t n, int nthreads) {
    const int64_t group = a->H / a->KVH;
    if (!a->simd || !attn_span_fn(a->D, 1)) return 1;
    int64_t lo, T, Tmax = 0;
    for (int64_t i = 0; i < n; i++) { attn_range(a, i, &lo, &T); if (T > Tmax) Tmax = T; }
    attn_job job = {a, (group + ATTN_HEADS - 1) / ATTN_HEADS, (Tmax + ATTN_SPAN - 1) / ATTN_SPAN, NULL};
    const int64_t tasks = n * a->KVH * job.nchunks * job.nspans;
    const size_t need = (size_t)tasks * ATTN_HEADS * (a->D + 2);
    if (need > g_attn_cap) {
        free(g_attn);
        g_attn_cap = 0;
        if (!(g_attn = (float *)malloc(need * sizeof(float)))) return -1;
        g_attn_cap = need;
    }
    job.part = g_attn;
    pool_run(attn_span_task, &job, tasks, nthreads);
    attn_merge(&job, n);
    return 0;
}
#endif

/* As lantern_attention_f16, with query rows `ldq` floats apart. */
int lt_attention_f16(const float *q, int64_t ldq, const uint16_t *k, const uint16_t *v, float *out, int64_t n,
                     int64_t H, int64_t KVH, int64_t D, int64_t start, int64_t stride, int64_t window, float scale,
                     int nthreads) {
    if (n <= 0 || KVH <= 0 || H % KVH) return -1;
    attn_args a = {q, k, v, out, H, KVH, D, start, stride, window, ldq, scale,
                   (lantern_cpu_features() & FEAT_AVX512) != 0};
#ifdef LANTERN_X86
    const int rc = attention_spans(&a, n, nthreads);
    if (rc <= 0) return rc;
#endif
    pool_run(attn_task, &a, n * H, nthreads);
    return 0;
}

/* Returns 0, or -1 when the heads do not group evenly over the KV heads. */
int lantern_attention_f16(const float *q, const uint16_t *k, const uint16_t *v, float *out, int64_t n, int64_t H,
                          int64_t KVH, int64_t D, int64_t start, int64_t stride, int64_t window, float scale,
                          int nthreads) {
    return lt_attention_f16(q, H * D, k, v, out, n, H, KVH, D, start, stride, window, scale, nthreads);
}

/* ----- Python module: only so that setuptools builds and installs this file ------------------ */

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_native",
                                       "lantern native kernels (called through ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&moduledef); }

/* lantern's thread pool.
 *
 * Created lazily, grown to the largest thread count asked for (the caller is one of the threads:
 * nthreads - 1 workers). A job is `ntasks` calls fn(args, task); the caller publishes it by
 * bumping a generation counter, works on it itself, and waits until every task is done. Tasks
 * are claimed one at a time from a shared ticket (generation << 32 | next task), so a thread that
 * the OS has descheduled (a busy machine) holds up at most the task it claimed: the others take
 * the rest. Idle workers spin on the generation for LANTERN_SPIN_US microseconds (default 100)
 * after their last task, then sleep: on a futex on Linux, on a condition variable elsewhere.
 * Calls from several threads at once are safe: one at a time uses the pool, the others run
 * their tasks inline. After fork() the child starts a new pool on its first parallel call.
 * Busy machines: a worker the OS preempts while it holds a task holds up the caller until it runs
 * again (a scheduler time slice, milliseconds). When the caller has waited over STALL_NS for the
 * workers, the next calls run on the caller alone, 2, 4, ... up to 4096 of them (backoff), before
 * the workers are tried again; a call without such a wait resets the backoff.
 *
 * Portability: POSIX threads everywhere but Windows, which gets Win32 threads, SRW locks and
 * condition variables (MSVC has no pthreads; MinGW builds use the same code, so the Windows
 * tests run it under wine). C11 atomics everywhere but MSVC proper, whose <stdatomic.h> wants
 * /experimental:c11atomics: there the Interlocked functions (LT_POOL_INTERLOCKED compiles them
 * under MinGW too, for the tests). */

#define _GNU_SOURCE /* syscall, futex */

#include "lantern.h"

#include <stdlib.h>

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <process.h>
#include <windows.h>
#else
#include <pthread.h>
#include <sched.h>
#include <time.h>
#endif

/* LT_POOL_NO_FUTEX: the condition variable on Linux too (the tests run macOS's path so) */
#if defined(__linux__) && !defined(LT_POOL_NO_FUTEX)
#define LT_FUTEX 1
#endif
#ifdef LT_FUTEX
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#ifdef LT_X86
#include <immintrin.h>
#endif

/* ----- atomics: a32 (32-bit), a64 (64-bit) ------------------------------------------------------
 * LOAD/STORE/ADD: sequentially consistent; *_ACQ/_REL/_AR: acquire, release, acq_rel;
 * CAS64: weak compare-exchange (acq_rel, acquire on failure), *expected updated on failure. */
#if defined(LT_MSVC) && !defined(LT_POOL_INTERLOCKED)
#define LT_POOL_INTERLOCKED 1
#endif
#ifdef LT_POOL_INTERLOCKED
#if !defined(_WIN32)
#error "LT_POOL_INTERLOCKED: Windows only"
#endif
#include <intrin.h>
/* Interlocked*: full barriers. Plain aligned loads are atomic; on x86-64 the hardware keeps
 * them in order (acquire) and a compiler barrier keeps the compiler from moving them; ARM64
 * needs a dmb after each. The seq_cst stores and read-modify-writes are all Interlocked (full
 * barriers), so these loads are enough for the store-then-load pairs below (sleepers/gen). */
typedef volatile LONG a32;
typedef volatile LONG64 a64;
#if defined(LT_ARM64) && defined(LT_MSVC)
static __forceinline LONG a32_load(a32 *p) { const LONG v = __iso_volatile_load32((volatile __int32 *)p); __dmb(_ARM64_BARRIER_ISH); return v; }
static __forceinline LONG64 a64_load(a64 *p) { const LONG64 v = __iso_volatile_load64((volatile __int64 *)p); __dmb(_ARM64_BARRIER_ISH); return v; }
#else
static __inline LONG a32_load(a32 *p) { const LONG v = *p; _ReadWriteBarrier(); return v; }
static __inline LONG64 a64_load(a64 *p) { const LONG64 v = *p; _ReadWriteBarrier(); return v; }
#endif
static __inline int a64_cas(a64 *p, uint64_t *expected, uint64_t desired) {
    const LONG64 seen = InterlockedCompareExchange64(p, (LONG64)desired, (LONG64)*expected);
    if (seen == (LONG64)*expected) return 1;
    *expected = (uint64_t)seen;
    return 0;
}
#define LOAD32(p) ((uint32_t)a32_load(p))
#define LOAD32_ACQ(p) ((uint32_t)a32_load(p))
#define STORE32(p, v) ((void)InterlockedExchange((p), (LONG)(v)))
#define ADD32(p, v) ((void)InterlockedExchangeAdd((p), (LONG)(v)))
#define LOAD64(p) a64_load(p)
#define LOAD64_ACQ(p) a64_load(p)
#define STORE64(p, v) ((void)InterlockedExchange64((p), (LONG64)(v)))
#define STORE64_REL(p, v) ((void)InterlockedExchange64((p), (LONG64)(v)))
#define ADD64_AR(p, v) ((void)InterlockedExchangeAdd64((p), (LONG64)(v)))
#define CAS64(p, expected, desired) a64_cas((p), (expected), (desired))
#else
#include <stdatomic.h>
typedef _Atomic uint32_t a32;
typedef _Atomic uint64_t a64;
#define LOAD32(p) atomic_load(p)
#define LOAD32_ACQ(p) atomic_load_explicit((p), memory_order_acquire)
#define STORE32(p, v) atomic_store((p), (v))
#define ADD32(p, v) ((void)atomic_fetch_add((p), (uint32_t)(v)))
#define LOAD64(p) atomic_load(p)
#define LOAD64_ACQ(p) atomic_load_explicit((p), memory_order_acquire)
#define STORE64(p, v) atomic_store((p), (uint64_t)(v))
#define STORE64_REL(p, v) atomic_store_explicit((p), (uint64_t)(v), memory_order_release)
#define ADD64_AR(p, v) ((void)atomic_fetch_add_explicit((p), (uint64_t)(v), memory_order_acq_rel))
#define CAS64(p, expected, desired) \
    atomic_compare_exchange_weak_explicit((p), (expected), (desired), memory_order_acq_rel, memory_order_acquire)
#endif

/* ----- threads, locks, condition variables, clock --------------------------------------------- */
#ifdef _WIN32
typedef SRWLOCK lt_mutex;
typedef CONDITION_VARIABLE lt_cond;
#define LT_MUTEX_INIT SRWLOCK_INIT
#define LT_COND_INIT CONDITION_VARIABLE_INIT
static int mutex_trylock(lt_mutex *m) { return TryAcquireSRWLockExclusive(m) ? 0 : 1; }
static void mutex_lock(lt_mutex *m) { AcquireSRWLockExclusive(m); }
static void mutex_unlock(lt_mutex *m) { ReleaseSRWLockExclusive(m); }
static void cond_wait(lt_cond *c, lt_mutex *m) { SleepConditionVariableSRW(c, m, INFINITE, 0); }
static void cond_broadcast(lt_cond *c) { WakeAllConditionVariable(c); }
static void thread_yield(void) { SwitchToThread(); }

static int64_t now_ns(void) {
    LARGE_INTEGER f, c;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&c);
    return c.QuadPart / f.QuadPart * 1000000000LL + c.QuadPart % f.QuadPart * 1000000000LL / f.QuadPart;
}
#else
typedef pthread_mutex_t lt_mutex;
typedef pthread_cond_t lt_cond;
#define LT_MUTEX_INIT PTHREAD_MUTEX_INITIALIZER
#define LT_COND_INIT PTHREAD_COND_INITIALIZER
static int mutex_trylock(lt_mutex *m) { return pthread_mutex_trylock(m); }
static void mutex_unlock(lt_mutex *m) { pthread_mutex_unlock(m); }
#ifndef LT_FUTEX
static void mutex_lock(lt_mutex *m) { pthread_mutex_lock(m); }
static void cond_wait(lt_cond *c, lt_mutex *m) { pthread_cond_wait(c, m); }
static void cond_broadcast(lt_cond *c) { pthread_cond_broadcast(c); }
#endif
static void thread_yield(void) { sched_yield(); }

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
#endif

typedef struct {
    task_fn fn;
    void *args;
    int64_t ntasks;
    int maxw; /* workers 0 .. maxw-1 take part */
    a64 done;
} pool_job;

#define POOL_MAX 64
#define STALL_NS 500000

static struct {
    lt_mutex lock;
    int nworkers, atfork;
    a32 gen; /* futex word */
    a64 ticket;
    a32 sleepers;
    int64_t spin_ns;
    int64_t solo_left; /* calls left to run on the caller alone (backoff after a stall) */
    int backoff;       /* log2 of the next backoff */
    pool_job job[2]; /* generation g uses job[g & 1]: a late worker never sees a half-written job */
    uint32_t born[POOL_MAX]; /* the generation when worker i was created (see pool_worker) */
} P = {LT_MUTEX_INIT, 0, 0, 0, 0, 0, -1, 0, 0, {{0}}, {0}};

#ifndef LT_FUTEX
/* Where there is no futex: sleepers wait on a condition variable for the generation to move.
 * No lost wake-up: a sleeper counts itself in `sleepers` and then reads gen (both seq_cst), the
 * caller stores gen and then reads `sleepers`, so at least one of them sees the other's write;
 * and the sleeper checks gen again under sleep_lock, which the waker takes after storing gen. */
static lt_mutex sleep_lock = LT_MUTEX_INIT;
static lt_cond sleep_cond = LT_COND_INIT;
#endif

static inline void cpu_relax(void) {
#ifdef LT_X86
    _mm_pause();
#elif defined(LT_ARM64) && defined(LT_MSVC)
    __yield();
#elif defined(LT_ARM64)
    __asm__ __volatile__("yield");
#endif
}

static void gen_wait(uint32_t seen) {
#ifdef LT_FUTEX
    syscall(SYS_futex, (uint32_t *)&P.gen, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
    mutex_lock(&sleep_lock);
    while (LOAD32(&P.gen) == seen) cond_wait(&sleep_cond, &sleep_lock);
    mutex_unlock(&sleep_lock);
#endif
}

static void gen_wake(void) {
#ifdef LT_FUTEX
    syscall(SYS_futex, (uint32_t *)&P.gen, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
#else
    mutex_lock(&sleep_lock);
    cond_broadcast(&sleep_cond);
    mutex_unlock(&sleep_lock);
#endif
}

static void run_tasks(uint32_t g) {
    pool_job *j = &P.job[g & 1];
    uint64_t t = LOAD64_ACQ(&P.ticket);
    for (;;) {
        if ((uint32_t)(t >> 32) != g) return;             /* the job is over */
        if ((int64_t)(uint32_t)t >= j->ntasks) return;     /* all claimed */
        if (CAS64(&P.ticket, &t, t + 1)) {
            /* claimed while the ticket still had generation g: job[g & 1] is g's */
            j->fn(j->args, (int64_t)(uint32_t)t);
            ADD64_AR(&j->done, 1);
            t = LOAD64_ACQ(&P.ticket);
        }
    }
}

static void *pool_worker(void *p) {
    const int id = (int)(intptr_t)p;
    /* Not the generation now: the call that created this worker may have published its job
     * already, and a worker that took that as seen would sleep through it. */
    uint32_t seen = P.born[id];
    for (;;) {
        uint32_t g;
        int64_t t0 = 0;
        int spins = 0;
        while ((g = LOAD32_ACQ(&P.gen)) == seen) {
            if (++spins < 64) { cpu_relax(); continue; }
            spins = 0;
            /* give the core to any other runnable thread (torch's OpenMP workers, other
             * processes): a spinning worker must not hold up a thread that has work */
            thread_yield();
            const int64_t t = now_ns();
            if (!t0) t0 = t;
            else if (t - t0 > P.spin_ns) {
                ADD32(&P.sleepers, 1);
                if (LOAD32(&P.gen) == seen) gen_wait(seen);
                ADD32(&P.sleepers, -1);
                t0 = 0;
            }
        }
        seen = g;
        if (id < P.job[g & 1].maxw) run_tasks(g);
    }
    return NULL;
}

#ifdef _WIN32
static unsigned __stdcall pool_worker_win32(void *p) {
    pool_worker(p);
    return 0;
}

static int thread_start(int id) { /* detached, a 1 MB stack */
    const uintptr_t h = _beginthreadex(NULL, 1 << 20, pool_worker_win32, (void *)(intptr_t)id,
                                       STACK_SIZE_PARAM_IS_A_RESERVATION, NULL);
    if (!h) return -1;
    CloseHandle((HANDLE)h);
    return 0;
}
#else
static void pool_atfork_child(void) {
    pthread_mutex_init(&P.lock, NULL);
#ifndef LT_FUTEX
    pthread_mutex_init(&sleep_lock, NULL); /* a worker may have held it at the fork */
    pthread_cond_init(&sleep_cond, NULL);
#endif
    P.nworkers = 0;
    P.solo_left = 0;
    P.backoff = 0;
    STORE32(&P.sleepers, 0);
}

static int thread_start(int id) { /* detached, a 1 MB stack */
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 1 << 20);
    const int rc = pthread_create(&t, &at, pool_worker, (void *)(intptr_t)id);
    pthread_attr_destroy(&at);
    return rc == 0 ? 0 : -1;
}
#endif

static void pool_grow(int want) { /* called with the lock held */
    if (want > POOL_MAX) want = POOL_MAX;
    if (P.spin_ns < 0) {
        const char *e = getenv("LANTERN_SPIN_US");
        P.spin_ns = (e && *e ? atoll(e) : 100) * 1000;
    }
#ifndef _WIN32
    if (!P.atfork) { pthread_atfork(NULL, NULL, pool_atfork_child); P.atfork = 1; }
#endif
    while (P.nworkers < want) {
        P.born[P.nworkers] = LOAD32(&P.gen); /* written before the thread starts: it reads it */
        if (thread_start(P.nworkers)) break;
        P.nworkers++;
    }
}

void lt_pool_run(task_fn fn, void *args, int64_t ntasks, int nthreads) {
    if (ntasks <= 0) return;
    if (nthreads > ntasks) nthreads = (int)ntasks;
    if (nthreads <= 1 || ntasks > 0xffffffffLL || mutex_trylock(&P.lock) != 0) {
        for (int64_t t = 0; t < ntasks; t++) fn(args, t);
        return;
    }
    if (P.solo_left > 0) { /* backing off after a stall */
        P.solo_left--;
        mutex_unlock(&P.lock);
        for (int64_t t = 0; t < ntasks; t++) fn(args, t);
        return;
    }
    pool_grow(nthreads - 1);
    const uint32_t g = LOAD32(&P.gen) + 1;
    pool_job *j = &P.job[g & 1];
    j->fn = fn;
    j->args = args;
    j->ntasks = ntasks;
    j->maxw = nthreads - 1 < P.nworkers ? nthreads - 1 : P.nworkers;
    STORE64(&j->done, 0);
    STORE64_REL(&P.ticket, (uint64_t)g << 32);
    STORE32(&P.gen, g);
    if (LOAD32(&P.sleepers) > 0) gen_wake();
    run_tasks(g);
    int64_t t0 = 0, waited = 0;
    int spins = 0;
    while ((int64_t)LOAD64_ACQ(&j->done) < ntasks) {
        /* a worker is finishing a task; if it was descheduled, give it this core */
        if (++spins < 64) { cpu_relax(); continue; }
        spins = 0;
        const int64_t t = now_ns();
        if (!t0) t0 = t;
        else if ((waited = t - t0) > 50000) thread_yield();
    }
    if (waited > STALL_NS) {
        P.solo_left = (int64_t)1 << P.backoff;
        if (P.backoff < 12) P.backoff++;
    } else {
        P.backoff = 0;
    }
    mutex_unlock(&P.lock);
}

typedef struct {
    void (*fn)(void *args, int64_t r0, int64_t r1);
    void *args;
    int64_t r1, per;
} range_job;

static void range_task(void *p, int64_t t) {
    const range_job *j = (const range_job *)p;
    const int64_t a = t * j->per, b = a + j->per < j->r1 ? a + j->per : j->r1;
    j->fn(j->args, a, b);
}

void lt_parallel_rows(void (*fn)(void *, int64_t, int64_t), void *args, int64_t N, int nthreads, int64_t align) {
    if (N <= 0) return;
    if (nthreads < 1) nthreads = 1;
    int64_t per = nthreads == 1 ? N : (N + 4 * nthreads - 1) / (4 * nthreads);
    per = (per + align - 1) / align * align;
    range_job j = {fn, args, N, per};
    lt_pool_run(range_task, &j, (N + per - 1) / per, nthreads);
}

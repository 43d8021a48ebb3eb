/* The memory wall for decode: how fast T threads stream-read a buffer bigger than any cache
 * (AVX2 loads, each thread its own contiguous part, the hardware prefetcher alone). A one-sequence
 * decode step reads every weight once, so file bytes / this = the fastest a step can be.
 *
 *     cc -O2 -mavx2 -pthread bench/native/stream_read.c -o /tmp/stream_read
 *     /tmp/stream_read 2        # threads; optional second argument: MiB (default 2400)
 *
 * Prints GB/s for 5 passes; take the median. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t bytes;
static int threads;
static char *buf;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *read_part(void *arg) {
    const size_t part = bytes / threads / 128 * 128;
    const __m256i *q = (const __m256i *)(buf + (size_t)arg * part);
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i < part / 32; i += 4) { /* four chains: the adds never bound the loads */
        a = _mm256_add_epi8(a, _mm256_load_si256(q + i));
        b = _mm256_add_epi8(b, _mm256_load_si256(q + i + 1));
        c = _mm256_add_epi8(c, _mm256_load_si256(q + i + 2));
        d = _mm256_add_epi8(d, _mm256_load_si256(q + i + 3));
    }
    a = _mm256_add_epi8(_mm256_add_epi8(a, b), _mm256_add_epi8(c, d));
    return (void *)(size_t)(unsigned char)_mm256_extract_epi8(a, 0); /* keeps the loads */
}

int main(int argc, char **argv) {
    threads = argc > 1 ? atoi(argv[1]) : 1;
    bytes = (size_t)(argc > 2 ? atoi(argv[2]) : 2400) << 20;
    if (threads < 1 || threads > 64 || bytes == 0) {
        fprintf(stderr, "usage: stream_read [THREADS (1-64)] [MiB]\n");
        return 2;
    }
    buf = aligned_alloc(64, bytes);
    if (!buf) {
        fprintf(stderr, "stream_read: cannot allocate %zu MiB\n", bytes >> 20);
        return 1;
    }
    memset(buf, 1, bytes); /* the pages exist before the first pass */
    for (int pass = 0; pass < 5; pass++) {
        pthread_t th[64];
        const double t = now();
        for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, read_part, (void *)(size_t)i);
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        printf("%d thread(s): %.1f GB/s\n", threads, bytes / (now() - t) / 1e9);
    }
    free(buf);
    return 0;
}

/* check_kernels: every instruction-set level this CPU runs against the portable C (the oracle).
 *
 * A standalone C program: it links lantern's C library (every lantern/weights/csrc/ *.c but
 * module.c) and, for each level of lantern_isa_mask() (or the one named by --level=NAME),
 * compares the level's kernels with generic/kernels.c on random inputs (fixed seeds):
 *   x_prepare   LT_X_Q15 bit-exact vs lt_x_prepare_q15_generic; LT_X_BF16: bf16 bit-exact,
 *               sums within 1e-6 of sum |x| vs lt_x_prepare_bf16_generic
 *   rows        the 10 in-place types (IQ4_NL and IQ4_XS included), each row count (1, 2, 3,
 *               4, 8) called directly at a few m0, and through lt_gguf_matmul with M = 1..12
 *               (every row-count mix; at levels with an 8-row tile, rows8, M >= LT_ROWS8_MIN
 *               takes it for x rows 0-7, 10 weight rows so that two are left over), several K,
 *               against the generic row of the same x form (Q15: row_q15; BF16:
 *               lt_row_bf16_generic; the level's even_odd_types also get lt_x.qeo, as the driver
 *               makes it); tolerance 2e-5 of sum |w * x|. At levels with a prompt
 *               micro-kernel (gemm_f32), M > 12 bit-exact against lt_gemm_f32_generic over the
 *               generic expansion (float32 x, one fused multiply-add chain per output)
 *   prompt_q8   at levels with an 8-bit prompt tile (gemm_q8), each type it takes through
 *               lt_gguf_matmul (all rows 8-bit rows, and a mix after exact ones), 2 threads,
 *               three N over several tasks (the decode-sized route's 4 weight rows and each
 *               remainder), M from 1: bit-exact against lt_gemm_q8_generic over
 *               lt_expand_q8_generic and lt_pack_q8_rows (the same integer sums, float ops in the
 *               same order per output)
 *   expand      expand_f32 / expand_bf16 bit-exact for all 12 expandable types
 *   gemm_f32    at levels with a float32 micro-kernel, the tile itself bit-exact against
 *               lt_gemm_f32_generic (nw = 1..6, two column counts)
 *   attention   lt_attention_f16, head dims 64, 80, 96, 128, 256, groups 1-5, windows, positions
 *               past 1024 (several spans), vs the plain-C path (the portable level): 1e-5 of
 *               the head's largest |output|; several sequences in one dispatch
 *               (lt_attention_f16_seqs, head dims 64 and 128) bit-exact against each alone
 *   vec         exp_sum, silu_mul and gelu_mul within 1e-6 relative, to_f16 bit-exact on finite values
 *   names       at levels above portable, the row kernels' names must not end in "_generic":
 *               a FAIL only for the levels named by --require-isa-kernels[=a,b] (all levels
 *               when given without a list), else an INFO line
 * Prints one line per check, "PASS|FAIL <level> <what> <worst error>", INFO lines naming the
 * kernels each level chose, and last "N passed, M failed". Exit status 1 on any failure.
 *
 * Build (from the repository root; tests/test_native_isa.py does this): cc -O2 -std=c11 -pthread
 * -Ilantern/weights/csrc tests/native/check_kernels.c, then every .c file under
 * lantern/weights/csrc (its subfolders generic, x86 and arm included) except module.c, -lm.
 * Options: --level=NAME (one level; also -DLT_CHECK_ISA="NAME" at compile time),
 * --require-isa-kernels[=LEVEL,...]. */

#include "blocks.h"
#include "lantern.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* not in lantern.h: the exported functions (dispatch.c) and the generic oracles (generic/kernels.c) */
int lantern_isa_mask(void);
int lantern_set_isa(int isa);
const char *lantern_isa_name(int isa);
const char *lantern_kernel_name(int what, int qtype);
void lt_x_prepare_q15_generic(const float *x, int64_t M, lt_x *xp);
void lt_x_prepare_bf16_generic(const float *x, int64_t M, lt_x *xp);
void lt_row_bf16_generic(int qtype, const uint8_t *row, const lt_x *x, int64_t m0, int M, float *out);

/* ----- bookkeeping ------------------------------------------------------------------------- */

static int g_pass, g_fail, g_verbose;

static void report(int ok, const char *level, const char *what, double worst, const char *detail) {
    printf("%s %s %s %.3g%s%s\n", ok ? "PASS" : "FAIL", level, what, worst, detail && *detail ? "  " : "",
           detail ? detail : "");
    fflush(stdout);
    if (ok) g_pass++;
    else g_fail++;
}

/* zeroed memory (malloc's alignment is enough: the kernels load unaligned) */
static void *xmalloc(size_t n) {
    void *p = calloc(1, n + 64);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* ----- random numbers (splitmix64: deterministic everywhere) ------------------------------- */

static uint64_t g_rng;
static void seed(uint64_t s) { g_rng = s * 0x9E3779B97F4A7C15ull + 12345; }
static uint64_t rnd(void) {
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float unif(float lo, float hi) { return lo + (hi - lo) * (float)((rnd() >> 40) * (1.0 / 16777216.0)); }
static int rndint(int n) { return (int)(rnd() % (uint64_t)n); }

/* ----- GGUF blocks --------------------------------------------------------------------------- */

#define N_ROW_TYPES 10
#define N_EXPAND_TYPES 12
static const int ROW_TYPES[N_ROW_TYPES] = {LT_Q4_0, LT_Q4_1, LT_Q5_0, LT_Q5_1, LT_Q8_0,
                                           LT_Q4_K, LT_Q5_K, LT_Q6_K, LT_IQ4_NL, LT_IQ4_XS};
static const int EXPAND_TYPES[N_EXPAND_TYPES] = {LT_Q4_0, LT_Q4_1, LT_Q5_0, LT_Q5_1, LT_Q8_0, LT_Q2_K,
                                                 LT_Q3_K, LT_Q4_K, LT_Q5_K, LT_Q6_K, LT_IQ4_NL, LT_IQ4_XS};

static const char *type_name(int qt) {
    switch (qt) {
    case LT_Q4_0: return "q4_0";
    case LT_Q4_1: return "q4_1";
    case LT_Q5_0: return "q5_0";
    case LT_Q5_1: return "q5_1";
    case LT_Q8_0: return "q8_0";
    case LT_Q2_K: return "q2_k";
    case LT_Q3_K: return "q3_k";
    case LT_Q4_K: return "q4_k";
    case LT_Q5_K: return "q5_k";
    case LT_Q6_K: return "q6_k";
    case LT_IQ4_NL: return "iq4_nl";
    case LT_IQ4_XS: return "iq4_xs";
    default: return "?";
    }
}

/* a sane float16 scale: +-[1e-3, 0.1], now and then exactly 0 (or -0) */
static uint16_t rnd_f16_scale(void) {
    const int r = rndint(16);
    if (r == 0) return 0;
    if (r == 1) return 0x8000;
    const float v = unif(1e-3f, 0.1f) * (rnd() & 1 ? -1.f : 1.f);
    return lt_f32_to_f16(v);
}

static void put_f16(uint8_t *p, uint16_t h) { memcpy(p, &h, 2); }

/* one block: random bytes, the float16 fields set to sane finite values */
static void rnd_block(int qt, uint8_t *b) {
    int64_t E = 0, B = 0;
    lt_block_geometry(qt, &E, &B);
    for (int64_t i = 0; i < B; i++) b[i] = (uint8_t)rnd();
    switch (qt) {
    case LT_Q4_0: case LT_Q5_0: case LT_Q8_0: case LT_IQ4_NL: case LT_IQ4_XS: put_f16(b, rnd_f16_scale()); break;
    case LT_Q4_1: case LT_Q5_1: case LT_Q4_K: case LT_Q5_K:
        put_f16(b, rnd_f16_scale());
        put_f16(b + 2, rnd_f16_scale());
        break;
    case LT_Q2_K: put_f16(b + 80, rnd_f16_scale()); put_f16(b + 82, rnd_f16_scale()); break;
    case LT_Q3_K: put_f16(b + 108, rnd_f16_scale()); break;
    case LT_Q6_K: put_f16(b + 208, rnd_f16_scale()); break;
    default: break;
    }
}

static uint8_t *rnd_rows(int qt, int64_t N, int64_t K, int64_t *rowbytes) {
    int64_t E = 0, B = 0;
    lt_block_geometry(qt, &E, &B);
    *rowbytes = K / E * B;
    uint8_t *w = (uint8_t *)xmalloc((size_t)(N * *rowbytes));
    for (int64_t i = 0; i < N * K / E; i++) rnd_block(qt, w + i * B);
    return w;
}

/* activations: per group of 32 a random magnitude (1e-3 .. 1e2), now and then a zero group,
 * a group of exact rounding ties (max 16383: q = x, x = n + 0.5), or one outlier */
static void rnd_x(float *x, int64_t n) {
    for (int64_t g = 0; g < n / 32; g++) {
        float *p = x + 32 * g;
        const int kind = rndint(12);
        const float mag = powf(10.f, unif(-3.f, 2.f));
        for (int i = 0; i < 32; i++) p[i] = unif(-mag, mag);
        if (kind == 0) for (int i = 0; i < 32; i++) p[i] = 0.f;
        if (kind == 1) {
            for (int i = 0; i < 32; i++) p[i] = (float)(rndint(16000) - 8000) + 0.5f;
            p[rndint(32)] = rnd() & 1 ? 16383.f : -16383.f;
        }
        if (kind == 2) p[rndint(32)] = mag * 50.f;
    }
}

/* ----- x in a level's form ----------------------------------------------------------------- */

typedef struct {
    lt_x x;
    void *mem, *eo;
} xbuf;

/* as matmul.c's prepare_x, with buffers of this program's own */
static void x_alloc(xbuf *b, const float *x, int64_t M, int64_t K) {
    const int64_t G = K / 32, Gp = (G + 15) / 16 * 16, ld = 2 * Gp;
    memset(b, 0, sizeof(*b));
    b->x.K = K;
    b->x.G = G;
    b->x.ld = ld;
    b->x.f = x;
    const size_t n = (size_t)(M * K * 2) + (size_t)(M * ld + 64) * 4 + 2 * (size_t)(M * G + 16) * 4 + 4 * 64;
    uint8_t *s = (uint8_t *)xmalloc(n);
    b->mem = s;
    b->x.q = (const int16_t *)s;
    b->x.bf = (const uint16_t *)s; /* only one of q / bf is used: same memory */
    s += (M * K * 2 + 63) / 64 * 64;
    b->x.qd = (const float *)s;
    b->x.qs = b->x.qd + M * G + 16;
    s += ((2 * (M * G + 16)) * 4 + 63) / 64 * 64;
    b->x.bs = (const float *)s;
}

static void x_prepare(xbuf *b, int format, void (*prep)(const float *, int64_t, lt_x *), const float *x, int64_t M,
                      int64_t K) {
    x_alloc(b, x, M, K);
    if (!prep) prep = format == LT_X_BF16 ? lt_x_prepare_bf16_generic : lt_x_prepare_q15_generic;
    prep(x, M, &b->x);
}

/* x in even-odd order, for the types whose row kernels read it (lt_kernels.even_odd_types) */
static void x_even_odd(xbuf *b, const lt_kernels *k, int qtype, int64_t M) {
    if (!(k->even_odd_types >> qtype & 1u)) return;
    b->eo = xmalloc((size_t)(M * b->x.K) * 2 + (size_t)(M * b->x.K / 16) * 4);
    lt_x_even_odd(&b->x, M, (int16_t *)b->eo, (int32_t *)((int16_t *)b->eo + M * b->x.K));
    b->x.qeo = (const int16_t *)b->eo;
    b->x.s16 = (const int32_t *)((int16_t *)b->eo + M * b->x.K);
}

static void x_free(xbuf *b) {
    free(b->mem);
    free(b->eo);
}

/* ----- checks ----------------------------------------------------------------------------- */

static lt_kernels GEN; /* the generic table */

static void check_x_prepare_form(const char *lvl, int format, void (*prep)(const float *, int64_t, lt_x *)) {
    static const int64_t Ks[] = {32, 256, 576, 3072};
    double worst = 0.0;
    int ok = 1;
    char detail[160] = "";
    for (size_t ki = 0; ki < sizeof(Ks) / sizeof(Ks[0]); ki++)
        for (int64_t M = 1; M <= 9; M += 4) {
            const int64_t K = Ks[ki];
            seed(100 + (uint64_t)(K * 16 + M));
            float *x = (float *)xmalloc((size_t)(M * K) * 4);
            rnd_x(x, M * K);
            xbuf a, r;
            x_prepare(&a, format, prep, x, M, K);
            x_prepare(&r, format, NULL, x, M, K);
            const int64_t G = K / 32;
            if (format == LT_X_Q15) {
                for (int64_t i = 0; i < M * K; i++)
                    if (a.x.q[i] != r.x.q[i]) {
                        const double e = fabs((double)a.x.q[i] - r.x.q[i]);
                        if (e > worst) worst = e;
                        if (ok) snprintf(detail, sizeof detail, "q[%lld] %d != %d (K=%lld M=%lld)", (long long)i,
                                         a.x.q[i], r.x.q[i], (long long)K, (long long)M);
                        ok = 0;
                    }
                if (memcmp(a.x.qd, r.x.qd, (size_t)(M * G) * 4) || memcmp(a.x.qs, r.x.qs, (size_t)(M * G) * 4)) {
                    if (ok) snprintf(detail, sizeof detail, "qd/qs differ (K=%lld M=%lld)", (long long)K, (long long)M);
                    ok = 0;
                    worst = worst > 1 ? worst : 1;
                }
            } else {
                if (memcmp(a.x.bf, r.x.bf, (size_t)(M * K) * 2)) {
                    if (ok) snprintf(detail, sizeof detail, "bf16 differs (K=%lld M=%lld)", (long long)K, (long long)M);
                    ok = 0;
                    worst = worst > 1 ? worst : 1;
                }
                const int64_t ld = a.x.ld;
                for (int64_t m = 0; m < M; m++)
                    for (int64_t g = 0; g < G; g++) {
                        double sa = 0.0;
                        for (int i = 0; i < 32; i++) sa += fabs(x[m * K + 32 * g + i]);
                        for (int h = 0; h < 2; h++) {
                            const int64_t at = m * ld + h * (ld / 2) + g;
                            const double e = fabs((double)a.x.bs[at] - r.x.bs[at]) / (sa > 0 ? sa : 1e-30);
                            if (e > worst) worst = e;
                            if (e > 1e-6) ok = 0;
                        }
                    }
            }
            x_free(&a);
            x_free(&r);
            free(x);
        }
    report(ok, lvl, format == LT_X_Q15 ? "x_prepare_q15" : "x_prepare_bf16", worst, detail);
}

/* the level's x_prepare, and the Q15 one of its types that read that form at a bf16 level */
static void check_x_prepare(const char *lvl, const lt_kernels *k) {
    check_x_prepare_form(lvl, k->x_format, k->x_prepare);
    if (k->q15_types) check_x_prepare_form(lvl, LT_X_Q15, k->x_prepare_q15);
}

/* the reference rows: y[m, n] of the generic row kernel on x in the level's form, and sum |w * x| */
static void rows_reference(int qt, int format, const uint8_t *w, int64_t rowbytes, int64_t N, int64_t K,
                           const float *x, int64_t M, float *yref, double *mag) {
    xbuf r;
    x_prepare(&r, format, NULL, x, M, K);
    float *wf = (float *)xmalloc((size_t)K * 4);
    for (int64_t n = 0; n < N; n++) {
        GEN.expand_f32[qt](qt, w + n * rowbytes, K, wf);
        for (int64_t m = 0; m < M; m++) {
            float o = 0.f;
            if (format == LT_X_BF16) lt_row_bf16_generic(qt, w + n * rowbytes, &r.x, m, 1, &o);
            else GEN.row[qt][0](w + n * rowbytes, &r.x, m, &o);
            yref[m * N + n] = o;
            double s = 0.0;
            for (int64_t i = 0; i < K; i++) s += fabs((double)wf[i] * x[m * K + i]);
            mag[m * N + n] = s;
        }
    }
    free(wf);
    x_free(&r);
}

#define ROW_TOL 2e-5

/* Prompt chunks at levels with a micro-kernel (lt_kernels.gemm_f32): x in float32 against each
 * row expanded by the generic expansion, one chain of once-rounded multiply-adds per output
 * (lt_gemm_f32_generic over the whole row): what the level's tiled route must give bit for bit. */
static void gemm_reference(int qt, const uint8_t *w, int64_t rowbytes, int64_t N, int64_t K, const float *x,
                           int64_t M, float *yref) {
    float *wf = (float *)xmalloc((size_t)K * 4), *xp = (float *)xmalloc((size_t)(K * LT_GEMM_MB) * 4);
    for (int64_t m0 = 0; m0 < M; m0 += LT_GEMM_MB) {
        for (int64_t k = 0; k < K; k++)
            for (int m = 0; m < LT_GEMM_MB; m++) xp[k * LT_GEMM_MB + m] = m0 + m < M ? x[(m0 + m) * K + k] : 0.f;
        for (int64_t n = 0; n < N; n++) {
            float c[LT_GEMM_MB] = {0};
            GEN.expand_f32[qt](qt, w + n * rowbytes, K, wf);
            lt_gemm_f32_generic(wf, K, 1, xp, K, c);
            for (int m = 0; m < LT_GEMM_MB && m0 + m < M; m++) yref[(m0 + m) * N + n] = c[m];
        }
    }
    free(wf);
    free(xp);
}

static void check_rows(const char *lvl, const lt_kernels *k, int qt) {
    static const int64_t K32[] = {32, 96, 160, 576, 1536, 3072};
    static const int64_t K256[] = {256, 1536, 3072};
    const int is256 = qt == LT_Q4_K || qt == LT_Q5_K || qt == LT_Q6_K || qt == LT_IQ4_XS;
    const int64_t *Ks = is256 ? K256 : K32;
    const int nK = is256 ? 3 : 6;
    const int64_t MX = 70; /* rows of x: M up to 12 (decode, verify passes) and beyond (prompt chunks) */
    static const int64_t Ms[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 64, 70};
    double worst_direct = 0.0, worst_mm = 0.0;
    int ok_direct = 1, ok_mm = 1;
    char det_direct[200] = "", det_mm[200] = "";
    for (int ki = 0; ki < nK; ki++) {
        const int64_t K = Ks[ki], N = 10; /* not a multiple of LT_ROWS8_NW: the 8-row tile's leftover rows */
        seed(1000 + (uint64_t)qt * 977 + (uint64_t)K);
        int64_t rowbytes = 0;
        uint8_t *w = rnd_rows(qt, N, K, &rowbytes);
        float *x = (float *)xmalloc((size_t)(MX * K) * 4);
        rnd_x(x, MX * K);
        float *yref = (float *)xmalloc((size_t)(MX * N) * 4), *ygemm = (float *)xmalloc((size_t)(MX * N) * 4);
        double *mag = (double *)xmalloc((size_t)(MX * N) * 8);
        const int format = lt_x_format_of(k, qt);
        rows_reference(qt, format, w, rowbytes, N, K, x, MX, yref, mag);
        if (k->gemm_f32 && !k->rows8[qt]) gemm_reference(qt, w, rowbytes, N, K, x, MX, ygemm); /* else the tile takes M > 12 */

        /* each row count directly, at a few m0 */
        xbuf a;
        x_prepare(&a, format, format == k->x_format ? k->x_prepare : k->x_prepare_q15, x, MX, K);
        if (format == LT_X_Q15) x_even_odd(&a, k, qt, MX);
        for (int ci = 0; ci < LT_ROW_COUNTS; ci++) {
            const int cnt = LT_ROW_M[ci];
            const int64_t m0s[3] = {0, 1, MX - cnt};
            for (int mi = 0; mi < 3; mi++)
                for (int64_t n = 0; n < N; n++) {
                    float out[8];
                    for (int j = 0; j < 8; j++) out[j] = NAN;
                    k->row[qt][ci](w + n * rowbytes, &a.x, m0s[mi], out);
                    for (int j = 0; j < cnt; j++) {
                        const int64_t m = m0s[mi] + j;
                        const double e = fabs((double)out[j] - yref[m * N + n]) / (mag[m * N + n] > 0 ? mag[m * N + n] : 1e-30);
                        const double ee = e == e ? e : INFINITY;
                        if (ee > worst_direct) worst_direct = ee;
                        if (!(ee <= ROW_TOL)) {
                            if (ok_direct)
                                snprintf(det_direct, sizeof det_direct,
                                         "rows=%d m0=%lld K=%lld n=%lld m=%lld: %.9g vs %.9g", cnt, (long long)m0s[mi],
                                         (long long)K, (long long)n, (long long)m, out[j], yref[m * N + n]);
                            ok_direct = 0;
                        }
                    }
                }
        }
        x_free(&a);

        /* through the driver: M = 1 .. 12 (row-count mixes 8+4, 8+3, 4+2, ...) and a few longer, 2 threads */
        for (size_t mi = 0; mi < sizeof(Ms) / sizeof(Ms[0]); mi++) {
            const int64_t M = Ms[mi];
            float *y = (float *)xmalloc((size_t)(M * N) * 4);
            for (int64_t i = 0; i < M * N; i++) y[i] = NAN;
            const int rc = lt_gguf_matmul(w, qt, x, y, N, N, K, M, M, 2); /* every row exact */
            if (rc) {
                if (ok_mm) snprintf(det_mm, sizeof det_mm, "lt_gguf_matmul returned %d (K=%lld M=%lld)", rc,
                                    (long long)K, (long long)M);
                ok_mm = 0;
                worst_mm = INFINITY;
            }
            /* prompt chunks through the micro-kernel: bit-exact against its oracle */
            const int gemm = M > LT_ROWS_MAX_M && k->gemm_f32 && !k->rows8[qt]; /* the tile: rows' tolerance */
            const float *want = gemm ? ygemm : yref;
            const double tol = gemm ? 0.0 : ROW_TOL;
            for (int64_t m = 0; m < M && !rc; m++)
                for (int64_t n = 0; n < N; n++) {
                    const double e = fabs((double)y[m * N + n] - want[m * N + n]) / (mag[m * N + n] > 0 ? mag[m * N + n] : 1e-30);
                    const double ee = e == e ? e : INFINITY;
                    if (ee > worst_mm) worst_mm = ee;
                    if (!(ee <= tol)) {
                        if (ok_mm)
                            snprintf(det_mm, sizeof det_mm, "M=%lld K=%lld n=%lld m=%lld%s: %.9g vs %.9g", (long long)M,
                                     (long long)K, (long long)n, (long long)m, gemm ? " (gemm)" : "", y[m * N + n],
                                     want[m * N + n]);
                        ok_mm = 0;
                    }
                }
            free(y);
        }
        free(w);
        free(x);
        free(yref);
        free(ygemm);
        free(mag);
    }
    char what[64];
    snprintf(what, sizeof what, "rows_%s(1,2,3,4,8)", type_name(qt));
    report(ok_direct, lvl, what, worst_direct, det_direct);
    snprintf(what, sizeof what, "matmul_%s(M=1..13,17,64,70)", type_name(qt));
    report(ok_mm, lvl, what, worst_mm, det_mm);
}

/* Prompt rows on 8-bit x: the level's route against the generic tile, record by record. */
static void check_prompt_q8(const char *lvl, int qt) {
    static const int64_t Ks[] = {256, 768, 3072};
    static const int64_t Ms[] = {1, 5, 7, 8, 9, 13, 24, 33, 64, 100}; /* records of 8 rows: 1-13, tiles of 1-4 */
    /* N: decode-sized calls (M <= 8) split tasks of 16 rows into LT_Q8_NW1 = 4 and 1, 3 or 2 */
    static const int64_t Ns[] = {53, 55, 58};
    const int64_t MX = 100, R = LT_Q8_XROWS;
    double worst = 0.0;
    int ok = 1;
    char detail[200] = "";
    for (int ci = 0; ci < 9; ci++) {
        const int64_t K = Ks[ci % 3], N = Ns[ci / 3], nsb = K / 256, nxb = (MX + R - 1) / R;
        seed(5000 + (uint64_t)qt * 31 + (uint64_t)K);
        int64_t rowbytes = 0;
        uint8_t *w = rnd_rows(qt, N, K, &rowbytes);
        float *x = (float *)xmalloc((size_t)(MX * K) * 4), *yref = (float *)xmalloc((size_t)(MX * N) * 4);
        rnd_x(x, MX * K);
        uint8_t *xp = (uint8_t *)xmalloc((size_t)(nxb * nsb * LT_Q8_XREC)), rec[2 * LT_Q8_WREC];
        lt_pack_q8_rows(x, MX, K, qt, 0, nxb, xp);
        for (int64_t n = 0; n < N; n++)
            for (int64_t xb = 0; xb < nxb; xb++) {
                float c[LT_Q8_XROWS] = {0};
                for (int64_t kb = 0; kb < nsb; kb++) {
                    lt_expand_q8_generic(qt, w + n * rowbytes + kb * (rowbytes / nsb), rec);
                    lt_gemm_q8_generic(rec, 1, xp + (xb * nsb + kb) * LT_Q8_XREC, LT_Q8_XREC, 1, qt, c, LT_Q8_XROWS);
                }
                for (int j = 0; j < R && xb * R + j < MX; j++) yref[(xb * R + j) * N + n] = c[j];
            }
        for (size_t mi = 0; mi < sizeof(Ms) / sizeof(Ms[0]); mi++) {
            const int64_t M = Ms[mi];
            float *y = (float *)xmalloc((size_t)(M * N) * 4);
            for (int64_t i = 0; i < M * N; i++) y[i] = NAN;
            const int rc = lt_gguf_matmul(w, qt, x, y, N, N, K, M, 0, 2);
            for (int64_t i = 0; i < M * N; i++) {
                const double e = rc ? INFINITY : fabs((double)y[i] - yref[i]);
                const double ee = e == e ? e : INFINITY;
                if (ee > worst) worst = ee;
                if (!(ee == 0.0)) {
                    if (ok) snprintf(detail, sizeof detail, "rc=%d M=%lld N=%lld K=%lld i=%lld: %.9g vs %.9g", rc, (long long)M,
                                     (long long)N, (long long)K, (long long)i, y[i], yref[i]);
                    ok = 0;
                }
            }
            free(y);
        }
        /* exact rows first, prompt rows after: the prompt rows' x starts at row m_exact */
        const int64_t M = 40, m_exact = 13;
        float *y = (float *)xmalloc((size_t)(M * N) * 4), *ye = (float *)xmalloc((size_t)(m_exact * N) * 4);
        float *yq = (float *)xmalloc((size_t)((M - m_exact) * N) * 4);
        const int rc = lt_gguf_matmul(w, qt, x, y, N, N, K, M, m_exact, 2) |
                       lt_gguf_matmul(w, qt, x, ye, N, N, K, m_exact, m_exact, 2) |
                       lt_gguf_matmul(w, qt, x + m_exact * K, yq, N, N, K, M - m_exact, 0, 2);
        for (int64_t i = 0; i < M * N; i++) {
            const float want = i < m_exact * N ? ye[i] : yq[i - m_exact * N];
            if (rc || !(y[i] == want)) {
                if (ok) snprintf(detail, sizeof detail, "mixed rows (m_exact=%lld) K=%lld i=%lld: %.9g vs %.9g",
                                 (long long)m_exact, (long long)K, (long long)i, y[i], want);
                ok = 0;
                worst = INFINITY;
            }
        }
        free(y);
        free(ye);
        free(yq);
        free(w);
        free(x);
        free(yref);
        free(xp);
    }
    char what[64];
    snprintf(what, sizeof what, "prompt_q8_%s", type_name(qt));
    report(ok, lvl, what, worst, detail);
}

static void check_expand(const char *lvl, const lt_kernels *k, int qt) {
    static const int64_t K32[] = {32, 96, 576, 3072};
    static const int64_t K256[] = {256, 512, 3072};
    const int is256 = qt == LT_Q2_K || qt == LT_Q3_K || qt == LT_Q4_K || qt == LT_Q5_K || qt == LT_Q6_K || qt == LT_IQ4_XS;
    const int64_t *Ks = is256 ? K256 : K32;
    const int nK = is256 ? 3 : 4;
    for (int f32 = 1; f32 >= 0; f32--) {
        double worst = 0.0;
        int ok = 1;
        long nbad = 0;
        char detail[160] = "";
        if (f32 ? !k->expand_f32[qt] : !k->expand_bf16[qt]) {
            report(0, lvl, f32 ? "expand_f32" : "expand_bf16", INFINITY, "missing");
            continue;
        }
        for (int ki = 0; ki < nK; ki++) {
            const int64_t K = Ks[ki], N = 3;
            seed(5000 + (uint64_t)qt * 31 + (uint64_t)K);
            int64_t rowbytes = 0;
            uint8_t *w = rnd_rows(qt, N, K, &rowbytes);
            float *a = (float *)xmalloc((size_t)(N * K) * 4), *r = (float *)xmalloc((size_t)(N * K) * 4);
            for (int64_t n = 0; n < N; n++) {
                if (f32) {
                    k->expand_f32[qt](qt, w + n * rowbytes, K, a + n * K);
                    GEN.expand_f32[qt](qt, w + n * rowbytes, K, r + n * K);
                } else {
                    k->expand_bf16[qt](qt, w + n * rowbytes, K, (uint16_t *)a + n * K);
                    GEN.expand_bf16[qt](qt, w + n * rowbytes, K, (uint16_t *)r + n * K);
                }
            }
            for (int64_t i = 0; i < N * K; i++) {
                uint32_t ba, br;
                double va, vr;
                if (f32) {
                    memcpy(&ba, a + i, 4);
                    memcpy(&br, r + i, 4);
                    va = a[i];
                    vr = r[i];
                } else {
                    ba = ((uint16_t *)a)[i];
                    br = ((uint16_t *)r)[i];
                    va = lt_bf16_to_f32((uint16_t)ba);
                    vr = lt_bf16_to_f32((uint16_t)br);
                }
                if (ba != br) {
                    nbad++;
                    const double e = fabs(va - vr);
                    if (e > worst || worst == 0.0) worst = e > 0 ? e : worst;
                    if (ok) snprintf(detail, sizeof detail, "K=%lld [%lld]: 0x%x vs 0x%x", (long long)K, (long long)i,
                                     (unsigned)ba, (unsigned)br);
                    ok = 0;
                }
            }
            free(w);
            free(a);
            free(r);
        }
        char what[64];
        snprintf(what, sizeof what, "%s_%s", f32 ? "expand_f32" : "expand_bf16", type_name(qt));
        char full[200];
        snprintf(full, sizeof full, "%ld values differ, first %s", nbad, detail);
        report(ok, lvl, what, worst, ok ? "" : full);
    }
}

/* attention of the level vs the plain-C path (lt_attention_f16_plain: one head at a time) */
static void check_attention(const char *lvl, int isa, int64_t D) {
    typedef struct { int64_t start, n, window; } pos_case;
    static const pos_case cases[] = {{0, 1, 0}, {5, 3, 0}, {37, 2, 16}, {1030, 1, 0}, {1500, 2, 700},
                                     {2100, 2, 0}, {2050, 1, 1500}, {3000, 1, 0}};
    const int ncases = (int)(sizeof(cases) / sizeof(cases[0]));
    double worst = 0.0;
    int ok = 1;
    char detail[200] = "";
    int ci = 0;
    for (int64_t group = 1; group <= 5; group++)
        for (int rep = 0; rep < 3; rep++, ci++) {
            const pos_case c = cases[(ci * 3 + (int)D) % ncases];
            const int64_t KVH = 1 + (group + rep) % 2, H = KVH * group;
            const int64_t stride = c.start + c.n + 5;
            seed(9000 + (uint64_t)D * 101 + (uint64_t)ci);
            float *q = (float *)xmalloc((size_t)(c.n * H * D) * 4);
            uint16_t *kc = (uint16_t *)xmalloc((size_t)(KVH * stride * D) * 2);
            uint16_t *vc = (uint16_t *)xmalloc((size_t)(KVH * stride * D) * 2);
            float *oa = (float *)xmalloc((size_t)(c.n * H * D) * 4), *orf = (float *)xmalloc((size_t)(c.n * H * D) * 4);
            for (int64_t i = 0; i < c.n * H * D; i++) q[i] = unif(-3.f, 3.f);
            for (int64_t i = 0; i < KVH * stride * D; i++) {
                kc[i] = lt_f32_to_f16(unif(-1.f, 1.f));
                vc[i] = lt_f32_to_f16(unif(-1.f, 1.f));
            }
            const float scale = 1.f / sqrtf((float)D);
            lantern_set_isa(isa);
            const int ra = lt_attention_f16(q, H * D, kc, vc, oa, c.n, H, KVH, D, c.start, stride, c.window, scale, 2);
            const int rr = lt_attention_f16_plain(q, H * D, kc, vc, orf, c.n, H, KVH, D, c.start, stride, c.window, scale, 2);
            if (ra || rr) {
                if (ok) snprintf(detail, sizeof detail, "returned %d / %d", ra, rr);
                ok = 0;
                worst = INFINITY;
            } else {
                for (int64_t r = 0; r < c.n * H; r++) {
                    double mx = 0.0;
                    for (int64_t d = 0; d < D; d++) mx = fabs(orf[r * D + d]) > mx ? fabs(orf[r * D + d]) : mx;
                    for (int64_t d = 0; d < D; d++) {
                        const double e = fabs((double)oa[r * D + d] - orf[r * D + d]) / (mx > 0 ? mx : 1e-30);
                        const double ee = e == e ? e : INFINITY;
                        if (ee > worst) worst = ee;
                        if (!(ee <= 1e-5)) {
                            if (ok)
                                snprintf(detail, sizeof detail,
                                         "H=%lld KVH=%lld start=%lld n=%lld window=%lld row %lld d %lld: %.8g vs %.8g",
                                         (long long)H, (long long)KVH, (long long)c.start, (long long)c.n,
                                         (long long)c.window, (long long)r, (long long)d, oa[r * D + d], orf[r * D + d]);
                            ok = 0;
                        }
                    }
                }
            }
            free(q);
            free(kc);
            free(vc);
            free(oa);
            free(orf);
        }
    lantern_set_isa(isa);
    char what[64];
    snprintf(what, sizeof what, "attention_d%lld", (long long)D);
    report(ok, lvl, what, worst, detail);
}

/* several sequences in one dispatch (lt_attention_f16_seqs, a batched pass) vs each alone: the
 * same floats bit for bit (a sequence's result must not depend on what shares its pass), and
 * within the plain-C path's tolerance */
static void check_attention_seqs(const char *lvl, int isa, int64_t D) {
    enum { NSEQ = 6 };
    static const int64_t starts[NSEQ] = {0, 5, 1030, 37, 2100, 600}, ns[NSEQ] = {1, 3, 1, 4, 2, 1};
    const int64_t KVH = 3, H = 9;
    const float scale = 1.f / sqrtf((float)D);
    double worst = 0.0;
    int ok = 1;
    char detail[200] = "";
    lantern_set_isa(isa);
    for (int wi = 0; wi < 2; wi++) {
        const int64_t window = wi ? 700 : 0;
        lt_attn_seq seqs[NSEQ];
        float *alone[NSEQ], *plain[NSEQ];
        seed(9500 + (uint64_t)D + (uint64_t)wi);
        for (int s = 0; s < NSEQ; s++) {
            const int64_t n = ns[s], stride = starts[s] + n + 3, rows = n * H * D;
            float *q = (float *)xmalloc((size_t)rows * 4);
            uint16_t *kc = (uint16_t *)xmalloc((size_t)(KVH * stride * D) * 2);
            uint16_t *vc = (uint16_t *)xmalloc((size_t)(KVH * stride * D) * 2);
            for (int64_t i = 0; i < rows; i++) q[i] = unif(-3.f, 3.f);
            for (int64_t i = 0; i < KVH * stride * D; i++) {
                kc[i] = lt_f32_to_f16(unif(-1.f, 1.f));
                vc[i] = lt_f32_to_f16(unif(-1.f, 1.f));
            }
            seqs[s] = (lt_attn_seq){q, H * D, kc, vc, (float *)xmalloc((size_t)rows * 4), n, starts[s], stride};
            alone[s] = (float *)xmalloc((size_t)rows * 4);
            plain[s] = (float *)xmalloc((size_t)rows * 4);
            if (lt_attention_f16(q, H * D, kc, vc, alone[s], n, H, KVH, D, starts[s], stride, window, scale, 2) ||
                lt_attention_f16_plain(q, H * D, kc, vc, plain[s], n, H, KVH, D, starts[s], stride, window, scale, 2)) {
                if (ok) snprintf(detail, sizeof detail, "sequence %d alone failed", s);
                ok = 0;
            }
        }
        if (lt_attention_f16_seqs(seqs, NSEQ, H, KVH, D, window, scale, 2)) {
            if (ok) snprintf(detail, sizeof detail, "window %lld: lt_attention_f16_seqs failed", (long long)window);
            ok = 0;
        }
        for (int s = 0; s < NSEQ; s++) {
            const int64_t rows = ns[s] * H;
            if (memcmp(seqs[s].out, alone[s], (size_t)(rows * D) * 4)) {
                if (ok) snprintf(detail, sizeof detail, "window %lld: sequence %d differs from itself alone", (long long)window, s);
                ok = 0;
            }
            for (int64_t r = 0; r < rows; r++) {
                double mx = 0.0;
                for (int64_t d = 0; d < D; d++) mx = fabs(plain[s][r * D + d]) > mx ? fabs(plain[s][r * D + d]) : mx;
                for (int64_t d = 0; d < D; d++) {
                    const double e = fabs((double)seqs[s].out[r * D + d] - plain[s][r * D + d]) / (mx > 0 ? mx : 1e-30);
                    const double ee = e == e ? e : INFINITY;
                    if (ee > worst) worst = ee;
                    if (!(ee <= 1e-5)) {
                        if (ok) snprintf(detail, sizeof detail, "window %lld: sequence %d row %lld d %lld: %.8g vs %.8g",
                                         (long long)window, s, (long long)r, (long long)d, seqs[s].out[r * D + d], plain[s][r * D + d]);
                        ok = 0;
                    }
                }
            }
            free((void *)seqs[s].q);
            free((void *)seqs[s].k);
            free((void *)seqs[s].v);
            free(seqs[s].out);
            free(alone[s]);
            free(plain[s]);
        }
    }
    char what[64];
    snprintf(what, sizeof what, "attention_seqs_d%lld", (long long)D);
    report(ok, lvl, what, worst, detail);
}

static void check_vec(const char *lvl, const lt_kernels *k) {
    static const int64_t Ts[] = {1, 3, 4, 5, 7, 8, 16, 17, 63, 64, 1000, 1027};
    const int nT = (int)(sizeof(Ts) / sizeof(Ts[0]));
    /* exp_sum: each exp within 1e-6 relative (plus 1e-37: results in float32's subnormals), the
     * sum within 1e-6 plus float32 summation's own bound (T * 2^-24) */
    {
        double worst = 0.0;
        int ok = 1;
        char detail[160] = "";
        for (int ti = 0; ti < nT; ti++) {
            const int64_t T = Ts[ti];
            seed(7000 + (uint64_t)T);
            float *s0 = (float *)xmalloc((size_t)T * 4), *a = (float *)xmalloc((size_t)T * 4), *r = (float *)xmalloc((size_t)T * 4);
            float mx = -INFINITY;
            for (int64_t t = 0; t < T; t++) {
                s0[t] = unif(-25.f, 5.f);
                const int z = rndint(40);
                if (z == 0) s0[t] = -200.f;
                if (z == 1) s0[t] = unif(-110.f, -80.f);
                mx = s0[t] > mx ? s0[t] : mx;
            }
            if (T > 2) mx += 0.25f; /* the max need not be one of the scores (spans merge later) */
            memcpy(a, s0, (size_t)T * 4);
            memcpy(r, s0, (size_t)T * 4);
            const float sa = k->exp_sum(a, T, mx), sr = GEN.exp_sum(r, T, mx);
            for (int64_t t = 0; t < T; t++) {
                const double err = fabs((double)a[t] - r[t]);
                const double e = err / (fabs(r[t]) > 1e-30 ? fabs(r[t]) : 1e-30);
                if (err > 1e-6 * fabs(r[t]) + 1e-37 || a[t] != a[t]) {
                    if (ok) snprintf(detail, sizeof detail, "T=%lld exp(%.9g): %.9g vs %.9g", (long long)T, s0[t] - mx,
                                     a[t], r[t]);
                    ok = 0;
                }
                if (fabs(r[t]) > 1e-30 && e > worst) worst = e;
            }
            const double es = fabs((double)sa - sr) / fabs((double)sr);
            if (es > worst) worst = es;
            if (!(es <= 1e-6 + (double)T * 6e-8)) {
                if (ok) snprintf(detail, sizeof detail, "T=%lld sum %.9g vs %.9g", (long long)T, sa, sr);
                ok = 0;
            }
            free(s0);
            free(a);
            free(r);
        }
        report(ok, lvl, "exp_sum", worst, detail);
    }
    /* silu_mul, gelu_mul: within 1e-6 relative (gelu: plus its argument's rounding; 1e-30 absolute:
     * of a large negative gate, 0 or tiny) */
    for (int fi = 0; fi < 2; fi++) {
        void (*fa)(const float *, const float *, float *, int64_t) = fi ? k->gelu_mul : k->silu_mul;
        void (*fr)(const float *, const float *, float *, int64_t) = fi ? GEN.gelu_mul : GEN.silu_mul;
        const char *fname = fi ? "gelu_mul" : "silu_mul";
        double worst = 0.0;
        int ok = 1;
        char detail[160] = "";
        for (int ti = 0; ti < nT; ti++) {
            const int64_t n = Ts[ti];
            seed(7500 + (uint64_t)n + 100 * (uint64_t)fi);
            float *g = (float *)xmalloc((size_t)n * 4), *u = (float *)xmalloc((size_t)n * 4);
            float *a = (float *)xmalloc((size_t)n * 4), *r = (float *)xmalloc((size_t)n * 4);
            for (int64_t i = 0; i < n; i++) {
                g[i] = unif(-12.f, 12.f);
                const int z = rndint(30);
                if (z == 0) g[i] = unif(-100.f, -30.f);
                if (z == 1) g[i] = unif(30.f, 100.f);
                if (z == 2) g[i] = 0.f;
                u[i] = unif(-3.f, 3.f);
            }
            fa(g, u, a, n);
            fr(g, u, r, n);
            for (int64_t i = 0; i < n; i++) {
                const double err = fabs((double)a[i] - r[i]);
                const double e = err / (fabs(r[i]) > 1e-30 ? fabs(r[i]) : 1e-30);
                /* gelu: exp's argument -2z is rounded in float32 (a few ulps, FMA or not), and exp
                 * turns an error in its argument into that much relative error in its value */
                const double arg = fi ? 2.0 * 0.7978845608 * fabs((double)g[i] + 0.044715 * g[i] * g[i] * g[i]) : 0.0;
                const double rel = 1e-6 + 8.0 * arg * 0x1p-24;
                if (err > rel * fabs(r[i]) + 1e-30 || a[i] != a[i]) {
                    if (ok) snprintf(detail, sizeof detail, "n=%lld %s(%.9g)*%.9g: %.9g vs %.9g", (long long)n, fname, g[i],
                                     u[i], a[i], r[i]);
                    ok = 0;
                }
                if (fabs(r[i]) > 1e-30 && e > worst) worst = e;
            }
            free(g);
            free(u);
            free(a);
            free(r);
        }
        report(ok, lvl, fname, worst, detail);
    }
    /* to_f16: bit-exact on finite values (normals, subnormals, underflow to 0, overflow to inf, ties) */
    {
        const int64_t n = 4099;
        seed(7777);
        float *src = (float *)xmalloc((size_t)n * 4);
        uint16_t *a = (uint16_t *)xmalloc((size_t)n * 2), *r = (uint16_t *)xmalloc((size_t)n * 2);
        for (int64_t i = 0; i < n; i++) {
            const int kind = rndint(4);
            if (kind == 0) { /* halfway between two adjacent float16 values */
                uint16_t h = (uint16_t)(rnd() & 0x7bff);
                if ((h & 0x7c00) == 0x7c00) h = 0x7bfe;
                const float lo = lt_f16_to_f32(h), hi = lt_f16_to_f32((uint16_t)(h + 1));
                src[i] = (lo + hi) * 0.5f * (rnd() & 1 ? -1.f : 1.f);
            } else {
                src[i] = ldexpf(unif(1.f, 2.f), rndint(50) - 32) * (rnd() & 1 ? -1.f : 1.f);
            }
        }
        src[0] = 65504.f; src[1] = 65519.99f; src[2] = 65520.f; src[3] = -1e6f; src[4] = 0.f; src[5] = -0.f;
        src[6] = 5.96e-8f; src[7] = 2.98e-8f; src[8] = 2.9802322e-08f; src[9] = 1e-12f;
        k->to_f16(src, a, n);
        GEN.to_f16(src, r, n);
        int ok = 1;
        double worst = 0.0;
        char detail[160] = "";
        for (int64_t i = 0; i < n; i++)
            if (a[i] != r[i]) {
                const double e = fabs((double)lt_f16_to_f32(a[i]) - lt_f16_to_f32(r[i]));
                worst = e > worst ? e : worst;
                if (ok) snprintf(detail, sizeof detail, "f16(%.9g): 0x%04x vs 0x%04x", src[i], a[i], r[i]);
                ok = 0;
            }
        free(src);
        free(a);
        free(r);
        report(ok, lvl, "to_f16", worst, detail);
    }
}

/* the kernels the level chose (the tests read these lines), and the names check */
static void check_names(const char *lvl, int isa, const char *require) {
    int generic_rows = 0;
    char list[512] = "";
    for (int i = 0; i < N_ROW_TYPES; i++) {
        const char *nm = lantern_kernel_name(0, ROW_TYPES[i]);
        printf("INFO %s row %s %s\n", lvl, type_name(ROW_TYPES[i]), nm ? nm : "(none)");
        const size_t L = nm ? strlen(nm) : 0;
        if (!nm || (L >= 8 && strcmp(nm + L - 8, "_generic") == 0)) {
            generic_rows++;
            strncat(list, type_name(ROW_TYPES[i]), sizeof list - strlen(list) - 2);
            strncat(list, " ", sizeof list - strlen(list) - 1);
        }
    }
    for (int i = 0; i < N_EXPAND_TYPES; i++) {
        const char *b = lantern_kernel_name(1, EXPAND_TYPES[i]), *f = lantern_kernel_name(2, EXPAND_TYPES[i]);
        printf("INFO %s expand %s %s %s\n", lvl, type_name(EXPAND_TYPES[i]), f ? f : "(none)", b ? b : "(none)");
    }
    printf("INFO %s attention %s\n", lvl, lantern_kernel_name(3, 0));
    printf("INFO %s vec %s\n", lvl, lantern_kernel_name(4, 0));
    const char *g = lantern_kernel_name(5, 0);
    printf("INFO %s gemm %s\n", lvl, g ? g : "(none: prompt chunks take the row kernels)");
    for (int i = 0; i < N_ROW_TYPES; i++)
        if (lantern_kernel_name(6, ROW_TYPES[i]))
            printf("INFO %s prompt_q8 %s %s\n", lvl, type_name(ROW_TYPES[i]), lantern_kernel_name(6, ROW_TYPES[i]));
    const char *tile = lantern_kernel_name(7, LT_Q4_K);
    printf("INFO %s rows8 %s\n", lvl, tile ? tile : "(none)");
    fflush(stdout);
    if (isa == LT_ISA_PORTABLE) return;
    int required = 0;
    if (require) {
        if (!*require) required = 1;
        else {
            char buf[256];
            snprintf(buf, sizeof buf, "%s", require);
            for (char *t = strtok(buf, ","); t; t = strtok(NULL, ","))
                if (strcmp(t, lvl) == 0) required = 1;
        }
    }
    if (required) report(generic_rows == 0, lvl, "row_kernels_not_generic", generic_rows, list);
    else if (generic_rows) printf("INFO %s row kernels still generic (not required): %s\n", lvl, list);
}

/* The float32 micro-kernel itself, bit for bit against lt_gemm_f32_generic: at avx2 the 8-row
 * tile takes every in-place type's prompt chunks, so lt_gguf_matmul no longer reaches it there
 * (the avx512 level still runs it, on its batched passes' prompt chunks). */
static void check_gemm_f32(const char *lvl, const lt_kernels *k) {
    static const int64_t KCs[] = {37, 256};
    int ok = 1;
    char detail[200] = "";
    for (int ki = 0; ki < 2; ki++)
        for (int nw = 1; nw <= LT_GEMM_NW; nw++) {
            const int64_t KC = KCs[ki], ldw = 300;
            seed(7000 + (uint64_t)(nw * 10 + ki));
            float *w = (float *)xmalloc((size_t)(nw * ldw) * 4), *xp = (float *)xmalloc((size_t)(KC * LT_GEMM_MB) * 4);
            float c0[LT_GEMM_NW * LT_GEMM_MB], c1[LT_GEMM_NW * LT_GEMM_MB];
            rnd_x(w, nw * ldw);
            rnd_x(xp, KC * LT_GEMM_MB);
            rnd_x(c0, LT_GEMM_NW * LT_GEMM_MB);
            memcpy(c1, c0, sizeof(c0));
            k->gemm_f32(w, ldw, nw, xp, KC, c0);
            lt_gemm_f32_generic(w, ldw, nw, xp, KC, c1);
            if (memcmp(c0, c1, (size_t)(nw * LT_GEMM_MB) * 4) != 0) {
                if (ok) snprintf(detail, sizeof detail, "nw=%d KC=%lld differs from the generic tile", nw, (long long)KC);
                ok = 0;
            }
            free(w);
            free(xp);
        }
    report(ok, lvl, "gemm_f32_tile", ok ? 0.0 : 1.0, detail);
}

static void check_level(int isa, const char *require) {
    const char *lvl = lantern_isa_name(isa);
    if (lantern_set_isa(isa) != isa) {
        report(0, lvl ? lvl : "?", "set_isa", 1, "lantern_set_isa refused a level of lantern_isa_mask()");
        return;
    }
    const lt_kernels *k = lt_kernels_get();
    printf("INFO %s x_format %s\n", lvl, k->x_format == LT_X_Q15 ? "q15" : "bf16");
    check_names(lvl, isa, require);
    check_x_prepare(lvl, k);
    for (int i = 0; i < N_ROW_TYPES; i++) {
        if (!k->row[ROW_TYPES[i]][0]) {
            report(0, lvl, type_name(ROW_TYPES[i]), INFINITY, "no row kernel");
            continue;
        }
        check_rows(lvl, k, ROW_TYPES[i]);
    }
    for (int i = 0; i < N_EXPAND_TYPES; i++) check_expand(lvl, k, EXPAND_TYPES[i]);
    if (k->gemm_f32) check_gemm_f32(lvl, k);
    for (int i = 0; i < N_ROW_TYPES; i++)
        if (k->gemm_q8 && k->expand_q8[ROW_TYPES[i]]) check_prompt_q8(lvl, ROW_TYPES[i]);
    static const int64_t Ds[] = {64, 80, 96, 128, 256};
    for (int i = 0; i < 5; i++) check_attention(lvl, isa, Ds[i]);
    check_attention_seqs(lvl, isa, 64);
    check_attention_seqs(lvl, isa, 128);
    lantern_set_isa(isa);
    check_vec(lvl, lt_kernels_get());
}

int main(int argc, char **argv) {
    const char *only = NULL, *require = NULL;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--level=", 8) == 0) only = argv[i] + 8;
        else if (strcmp(argv[i], "--require-isa-kernels") == 0) require = "";
        else if (strncmp(argv[i], "--require-isa-kernels=", 22) == 0) require = argv[i] + 22;
        else if (strcmp(argv[i], "-v") == 0) g_verbose = 1;
        else {
            fprintf(stderr, "usage: %s [--level=NAME] [--require-isa-kernels[=LEVEL,...]]\n", argv[0]);
            return 2;
        }
    }
#ifdef LT_CHECK_ISA
    if (!only) only = LT_CHECK_ISA;
#endif
    lt_fill_generic(&GEN);
    const int mask = lantern_isa_mask();
    printf("INFO levels:");
    for (int isa = 0; isa < LT_ISA_COUNT; isa++)
        if (mask & (1 << isa)) printf(" %s", lantern_isa_name(isa));
    printf("\n");
    int ran = 0;
    for (int isa = 0; isa < LT_ISA_COUNT; isa++) {
        if (!(mask & (1 << isa))) continue;
        if (only && strcmp(only, lantern_isa_name(isa)) != 0) continue;
        check_level(isa, require);
        ran++;
    }
    if (only && !ran) report(0, only, "level", 1, "this build or CPU lacks the level");
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}

/* Which instruction-set level runs, and its kernel table.
 *
 * CPU features are detected here and nowhere else. LEVELS lists every level this build has, in
 * the order they build on each other; the table of a level is the generic one with each level up
 * to it laid over (lt_fill_*), so a kernel a level lacks stays the one below it. */

#include "lantern.h"

#include <stddef.h>

#ifdef LT_X86
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
static void cpuid(int leaf, int sub, unsigned r[4]) {
    int v[4];
    __cpuidex(v, leaf, sub);
    for (int i = 0; i < 4; i++) r[i] = (unsigned)v[i];
}
static unsigned long long xgetbv0(void) { return _xgetbv(0); }
#else
#include <cpuid.h>
static void cpuid(int leaf, int sub, unsigned r[4]) {
    r[0] = r[1] = r[2] = r[3] = 0;
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}
static unsigned long long xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

/* AVX2 + FMA + F16C, with the OS saving the YMM registers */
static int cpu_avx2(void) {
    unsigned a[4], b[4], c[4];
    cpuid(0, 0, a);
    if (a[0] < 7) return 0;
    cpuid(1, 0, b);
    const int osxsave = (b[2] >> 27) & 1, avx = (b[2] >> 28) & 1, fma = (b[2] >> 12) & 1, f16c = (b[2] >> 29) & 1;
    if (!(osxsave && avx && fma && f16c) || (xgetbv0() & 6) != 6) return 0;
    cpuid(7, 0, c);
    return (c[1] >> 5) & 1;
}

/* cpuid leaf 7's registers into c where the CPU has AVX2's features and the OS saves the ZMM
 * state (else 0): what every AVX-512 check starts from */
static int cpu_leaf7_zmm(unsigned c[4]) {
    if (!cpu_avx2() || (xgetbv0() & 0xE6) != 0xE6) return 0;
    cpuid(7, 0, c);
    return 1;
}

/* AVX-512 F, BW, VL, DQ and BF16 (with AVX2's features), the OS saving the ZMM state */
static int cpu_avx512(void) {
    unsigned c[4], d[4];
    if (!cpu_leaf7_zmm(c)) return 0;
    const int f = (c[1] >> 16) & 1, dq = (c[1] >> 17) & 1, bw = (c[1] >> 30) & 1, vl = (c[1] >> 31) & 1;
    if (!(f && dq && bw && vl)) return 0;
    cpuid(7, 1, d);
    return (d[0] >> 5) & 1;
}

/* AVX-512 F and VL with VNNI, the OS saving the ZMM state: vpdpwssd on 256-bit vectors, which the
 * avx2 level uses inside itself (its 8-row tile) where the CPU has it, as NEON its dotprod */
int lt_cpu_avx512_vnni(void) {
    unsigned c[4];
    if (!cpu_leaf7_zmm(c)) return 0;
    return ((c[1] >> 16) & 1) && ((c[1] >> 31) & 1) && ((c[2] >> 11) & 1);
}

/* AVX-VNNI (VEX-encoded vpdpbusd / vpdpwssd on 256-bit vectors) with AVX2's features: Intel's
 * client cores since Alder Lake, which have no AVX-512; the avx2 level's avxvnni variant */
int lt_cpu_avx_vnni(void) {
    unsigned c[4], d[4];
    if (!cpu_avx2()) return 0;
    cpuid(7, 0, c);
    if (c[0] < 1) return 0; /* no sub-leaf 1 */
    cpuid(7, 1, d);
    return (d[0] >> 4) & 1;
}
#endif

static int cpu_always(void) { return 1; }

typedef struct {
    int isa;
    const char *name;
    int (*cpu_has)(void);
    void (*fill)(lt_kernels *k); /* NULL: the generic table */
} lt_level;

static const lt_level LEVELS[] = {
    {LT_ISA_PORTABLE, "portable", cpu_always, NULL},
#ifdef LT_X86
    {LT_ISA_AVX2, "avx2", cpu_avx2, lt_fill_avx2},
    {LT_ISA_AVX512, "avx512", cpu_avx512, lt_fill_avx512},
#endif
#ifdef LT_ARM64
    {LT_ISA_NEON, "neon", cpu_always, lt_fill_neon}, /* the ARM64 baseline; dotprod/i8mm inside */
#endif
};
#define NLEVELS ((int)(sizeof(LEVELS) / sizeof(LEVELS[0])))

static lt_kernels g_table;
static int g_isa = -1;

static int level_index(int isa) {
    for (int i = 0; i < NLEVELS; i++)
        if (LEVELS[i].isa == isa) return i;
    return -1;
}

/* Bit `isa` set for every level this build has and this CPU runs. */
LT_EXPORT int lantern_isa_mask(void) {
    int mask = 0;
    for (int i = 0; i < NLEVELS; i++)
        if (LEVELS[i].cpu_has()) mask |= 1 << LEVELS[i].isa;
    return mask;
}

/* Use level `isa` (-1: the best this CPU runs). Returns the level now in use, or -1 (nothing
 * changed) when this build or CPU lacks it. Not to be called while kernels run. */
LT_EXPORT int lantern_set_isa(int isa) {
    const int mask = lantern_isa_mask();
    int top = -1;
    if (isa < 0) {
        for (int i = 0; i < NLEVELS; i++)
            if (mask & (1 << LEVELS[i].isa)) top = i;
    } else {
        top = level_index(isa);
        if (top < 0 || !(mask & (1 << isa))) return -1;
    }
    lt_fill_generic(&g_table);
    for (int i = 1; i <= top; i++)
        if (LEVELS[i].fill && LEVELS[i].cpu_has()) LEVELS[i].fill(&g_table);
    g_table.isa = LEVELS[top].name;
    g_isa = LEVELS[top].isa;
    return g_isa;
}

const lt_kernels *lt_kernels_get(void) {
    if (g_isa < 0) lantern_set_isa(-1);
    return &g_table;
}

LT_EXPORT int lantern_isa(void) {
    lt_kernels_get();
    return g_isa;
}

LT_EXPORT const char *lantern_isa_name(int isa) {
    const int i = level_index(isa);
    return i < 0 ? NULL : LEVELS[i].name;
}

/* The name of the function serving `what` at the level in use: 0 a row of type `qtype` in
 * place (decode), 1 its expansion to bf16, 2 to float32, 3 attention over the float16 cache,
 * 4 the vector helpers (exp, SiLU, float16 stores), 5 the prompt chunks' micro-kernel (NULL: the
 * row kernels serve them), 6 the 8-bit prompt tile of `qtype`, 7 its 8-row tile. NULL where
 * nothing serves it. */
LT_EXPORT const char *lantern_kernel_name(int what, int qtype) {
    const lt_kernels *k = lt_kernels_get();
    if ((what <= 2 || what >= 6) && (qtype < 0 || qtype >= LT_NTYPES)) return NULL;
    switch (what) {
    case 0: return k->row[qtype][0] ? k->row_name[qtype] : NULL;
    case 1: return k->expand_bf16[qtype] ? k->expand_bf16_name[qtype] : NULL;
    case 2: return k->expand_f32[qtype] ? k->expand_f32_name[qtype] : NULL;
    case 3: return k->attn_name;
    case 4: return k->vec_name;
    case 5: return k->gemm_f32 ? k->gemm_name : NULL;
    case 6: /* prompt rows of qtype on 8-bit x (lt_kernels.gemm_q8), where the level has it */
        return k->gemm_q8 && k->expand_q8[qtype] ? k->gemm_q8_name : NULL;
    case 7: /* 5-12 rows of x, and longer calls' 15-bit rows, on the 8-row tile (lt_kernels.rows8) */
        return k->rows8[qtype] ? k->rows8_name : NULL;
    default: return NULL;
    }
}

/* The activations' form at the level in use: LT_X_BF16 or LT_X_Q15 (lantern.h). */
LT_EXPORT int lantern_x_format(void) { return lt_kernels_get()->x_format; }

LT_EXPORT int lantern_abi_version(void) { return LT_ABI_VERSION; }

/* LT_ROWS_MAX_M as built (a -D can change it): native.py checks its GGUF_MAX_M against it. */
LT_EXPORT int lantern_rows_max_m(void) { return LT_ROWS_MAX_M; }

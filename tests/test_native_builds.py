"""lantern's C library (lantern/weights/csrc) builds warning-free with the compilers its users
have, and what each build makes runs (README, "Platforms"):

- gcc and clang natively (clang 14: what a macOS user's compiler understands), -Wall -Wextra
  -Werror at setup.py's -O3 -std=c11, the library then loaded by lantern in a subprocess
  (LANTERN_NATIVE_LIB) and checked at every level this CPU runs on random Q4_0 blocks against
  lantern's dequantize; the clang build also with the condition-variable pool (macOS's path,
  LT_POOL_NO_FUTEX) and the workers made to sleep between calls (LANTERN_SPIN_US=0); a gcc build
  with another LT_ROWS_MAX_M is refused at load (native.GGUF_MAX_M states the same limit);
- Windows x86-64: cross-built with MinGW-w64 (-Werror), a DLL loaded the way ctypes loads it
  by a small program that checks every level on 1-4 threads, and the C test harness
  (tests/native/check_kernels.c) with the library's pool on the Interlocked atomics MSVC
  builds use; both run under wine.
- the thread pool never sleeps through a job (a lost wake-up), on each of its sleep paths: the
  futex (Linux), the condition variable (macOS, elsewhere), Win32's (under wine);
- setup.py, when no compiler works, still succeeds and says so on stderr (or fails under
  LANTERN_REQUIRE_NATIVE=1).

A missing tool fails the test under CI=true (.ci/run installs them) and skips it elsewhere,
naming the Debian package. Builds go to temporary folders: never to the installed extension.

Budget: 3 minutes on the 2-core machines (about 1.5 on a quiet one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "lantern" / "weights" / "csrc"
HARNESS = ROOT / "tests" / "native" / "check_kernels.c"
STRICT = ["-Wall", "-Wextra", "-Werror"]
JOBS = max(2, os.cpu_count() or 2)


def _library_sources() -> list[Path]:
    return sorted(p for p in CSRC.rglob("*.c") if p.name != "module.c")


def _need(tool: str, package: str, fallbacks: tuple[str, ...] = ()) -> str:
    path = shutil.which(tool) or next((f for f in fallbacks if os.access(f, os.X_OK)), None)
    if path:
        return path
    why = f"{tool} is not installed (Debian package {package})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}: .ci/run installs it")
    pytest.skip(why)


def _run(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def _compile(cc: str, flags: list[str], sources: list[Path], out: Path) -> dict[Path, Path]:
    """Each source to an object under `out`, in parallel; fails the test on any diagnostic."""
    def one(src: Path) -> tuple[Path, Path, subprocess.CompletedProcess]:
        rel = src.relative_to(ROOT) if src.is_relative_to(ROOT) else Path(src.name)
        obj = out / (str(rel).replace(os.sep, "_").replace("/", "_") + ".o")
        return src, obj, _run([cc, *flags, "-c", src, "-o", obj])

    out.mkdir(parents=True, exist_ok=True)
    objects, problems = {}, []
    with ThreadPoolExecutor(JOBS) as pool:
        for src, obj, r in pool.map(one, sources):
            objects[src] = obj
            if r.returncode != 0 or r.stderr.strip():
                problems.append(f"{Path(cc).name} {src.relative_to(ROOT)}:\n{r.stderr.strip()}")
    assert not problems, "\n\n".join(problems)
    return objects


def _link(cc: str, objects, out: Path, flags: list[str]) -> Path:
    r = _run([cc, *objects, "-o", out, *flags])
    assert r.returncode == 0 and not r.stderr.strip(), f"{Path(cc).name} link {out.name}:\n{r.stderr}"
    return out


# ----- native gcc / clang, loaded by lantern ------------------------------------------------------

# Random Q4_0 blocks (gguf's own quantizer) times random x through the library at every level
# this CPU runs, on 1 and 2 threads, against lantern's float32 dequantize in float64. Tolerance:
# bfloat16 rounding of x (avx512) is 2^-9 of sum |w x|; a decoding mistake is of order 1.
CHECK = textwrap.dedent("""
    import numpy as np, torch
    from gguf import GGMLQuantizationType as QT
    from gguf.quants import quantize
    from lantern.weights.kernels import native
    from lantern.weights.quants import dequantize
    assert native.available(), "the library did not load"
    rows, cols = 96, 512  # above the one-task size: the pool runs
    rng = np.random.default_rng(0)
    raw = torch.from_numpy(quantize(rng.standard_normal((rows, cols)).astype(np.float32), QT.Q4_0))
    w = dequantize(raw, QT.Q4_0, (rows, cols)).double()
    levels = native.supported_isas()
    for level in levels:
        assert native.set_isa(level) == level
        for threads in (1, 2):
            for rep in range(30):
                x = torch.from_numpy(rng.standard_normal((1 + rep % 5, cols)).astype(np.float32))
                y = native.gguf_matmul(raw, QT.Q4_0, x, rows, cols, threads=threads).double()
                err = ((y - x.double() @ w.T).abs() / (x.double().abs() @ w.abs().T)).max().item()
                assert err < 2 ** -8, f"{level} on {threads} threads: relative error {err:.3g}"
    print("levels:", " ".join(levels))
""")


def _check_in_lantern(lib: Path, **env: str) -> str:
    r = _run([sys.executable, "-c", CHECK], timeout=120, cwd=ROOT,
             env={**os.environ, "LANTERN_NATIVE_LIB": str(lib), "LANTERN_ISA": "", **env})
    assert r.returncode == 0, f"{lib.name}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.parametrize("compiler,package", [("gcc", "gcc"), ("clang", "clang")])
def test_native_build_is_warning_free_and_runs(compiler, package, tmp_path):
    cc = _need(compiler, package)
    flags = ["-O3", "-std=c11", "-fPIC", "-pthread", *STRICT]
    sources = _library_sources()
    objects = _compile(cc, flags, sources, tmp_path)
    lib = _link(cc, objects.values(), tmp_path / f"lantern-{compiler}.so", ["-shared", "-pthread", "-lm"])
    out = _check_in_lantern(lib)
    assert "portable" in out
    if compiler == "gcc":
        # a build whose row-kernel limit differs from lantern's (a -D): refused at load, in one line
        changed = [CSRC / "dispatch.c", CSRC / "matmul.c"]
        rows8 = _compile(cc, [*flags, "-DLT_ROWS_MAX_M=8"], changed, tmp_path / "rows8")
        lib = _link(cc, [*rows8.values(), *(o for s, o in objects.items() if s not in changed)],
                    tmp_path / "lantern-rows8.so", ["-shared", "-pthread", "-lm"])
        r = _run([sys.executable, "-c", "from lantern.weights.kernels import native; native.library()"], timeout=120, cwd=ROOT,
                 env={**os.environ, "LANTERN_NATIVE_LIB": str(lib)})
        assert r.returncode != 0 and "built with LT_ROWS_MAX_M=8, but lantern expects 12" in r.stderr, r.stderr
    if compiler == "clang":
        # macOS's pool: the condition variable where Linux has a futex; workers asleep between calls
        pool = CSRC / "pool.c"
        cv = _compile(cc, [*flags, "-DLT_POOL_NO_FUTEX"], [pool], tmp_path / "cv")
        lib = _link(cc, [cv[pool], *(o for s, o in objects.items() if s != pool)], tmp_path / "lantern-cv.so",
                    ["-shared", "-pthread", "-lm"])
        _check_in_lantern(lib, LANTERN_SPIN_US="0")


# ----- Windows x86-64: MinGW-w64, run under wine ----------------------------------------------------

# Loads the DLL as ctypes does (LoadLibrary, GetProcAddress) and multiplies random Q4_0 blocks
# at every level the CPU runs, on 1, 2 and 4 threads, against a float64 reference.
LOADER = r"""
#include <windows.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef int (*int_fn)(void);
typedef int (*set_fn)(int);
typedef const char *(*name_fn)(int);
typedef int (*matmul_fn)(const uint8_t *, int, const float *, float *, int64_t, int64_t, int64_t, int, int);

static uint64_t g_s = 42;
static uint32_t rnd(void) { g_s = g_s * 6364136223846793005ull + 1442695040888963407ull; return (uint32_t)(g_s >> 33); }
static float unif(void) { return (float)rnd() / 1073741824.0f - 1.0f; }
static FARPROC need(HMODULE lib, const char *name) {
    FARPROC f = GetProcAddress(lib, name);
    if (!f) { printf("FAIL %s is not exported\n", name); exit(1); }
    return f;
}

enum { N = 96, K = 512, M = 5, NB = K / 32 };
static uint8_t w[N * NB * 18];
static double wd[N][K];
static float x[M * K], y[M * N];

int main(int argc, char **argv) {
    HMODULE lib = LoadLibraryA(argc > 1 ? argv[1] : "lantern.dll");
    if (!lib) { printf("FAIL LoadLibrary: error %lu\n", (unsigned long)GetLastError()); return 1; }
    int_fn abi = (int_fn)(void (*)(void))need(lib, "lantern_abi_version");
    int_fn mask_of = (int_fn)(void (*)(void))need(lib, "lantern_isa_mask");
    set_fn set_isa = (set_fn)(void (*)(void))need(lib, "lantern_set_isa");
    name_fn isa_name = (name_fn)(void (*)(void))need(lib, "lantern_isa_name");
    matmul_fn matmul = (matmul_fn)(void (*)(void))need(lib, "lantern_gguf_matmul");
    printf("INFO abi %d\n", abi());
    for (int n = 0; n < N; n++)  /* Q4_0: float16 d (a power of two here), 16 bytes of nibbles */
        for (int b = 0; b < NB; b++) {
            uint8_t *blk = w + (n * NB + b) * 18;
            const int e = 7 + (int)(rnd() % 3);
            const uint16_t h = (uint16_t)(e << 10);
            memcpy(blk, &h, 2);
            for (int j = 0; j < 16; j++) {
                blk[2 + j] = (uint8_t)(rnd() & 0xFF);
                wd[n][32 * b + j] = ldexp(1.0, e - 15) * ((blk[2 + j] & 15) - 8);
                wd[n][32 * b + j + 16] = ldexp(1.0, e - 15) * ((blk[2 + j] >> 4) - 8);
            }
        }
    for (int i = 0; i < M * K; i++) x[i] = unif();
    int passed = 0, failed = 0;
    const int mask = mask_of();
    for (int isa = 0; isa < 8; isa++) {
        if (!(mask >> isa & 1)) continue;
        if (set_isa(isa) != isa) { printf("FAIL set_isa %d\n", isa); failed++; continue; }
        static const int threads[] = {1, 2, 4};
        for (int t = 0; t < 3; t++) {
            double worst = 0;
            int rc = 0;
            for (int rep = 0; rep < 40 && !rc; rep++) {
                const int m = 1 + rep % M;
                rc = matmul(w, 2, x, y, N, K, m, 0, threads[t]);
                for (int i = 0; i < m && !rc; i++)
                    for (int n = 0; n < N; n++) {
                        double ref = 0, mag = 0;
                        for (int k = 0; k < K; k++) { ref += wd[n][k] * x[i * K + k]; mag += fabs(wd[n][k] * x[i * K + k]); }
                        const double err = fabs(y[i * N + n] - ref) / mag;
                        if (err > worst) worst = err;
                    }
                if (rep % 8 == 7) Sleep(2); /* the workers go to sleep: the next call wakes them */
            }
            const int ok = rc == 0 && worst < 1.0 / 256;
            printf("%s %s threads=%d rc=%d worst=%.3g\n", ok ? "PASS" : "FAIL", isa_name(isa), threads[t], rc, worst);
            if (ok) passed++; else failed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
"""


def _wine(wine: str, exe: Path, prefix: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WINEPREFIX": str(prefix), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml=",
           "LANTERN_SPIN_US": "0"}
    env.pop("DISPLAY", None)
    return _run([wine, exe, *args], timeout=150, cwd=exe.parent, env=env)


def _summary(out: str) -> tuple[int, int]:
    m = re.findall(r"^(\d+) passed, (\d+) failed\s*$", out, re.M)
    assert m, f"no 'N passed, M failed' line:\n{out[-3000:]}"
    return int(m[-1][0]), int(m[-1][1])


def test_windows_mingw_build_runs_under_wine(tmp_path):
    cc = _need("x86_64-w64-mingw32-gcc", "gcc-mingw-w64-x86-64")
    wine = _need("wine64", "wine64", ("/usr/lib/wine/wine64", "/usr/bin/wine"))
    if not HARNESS.exists():
        pytest.fail(f"{HARNESS.relative_to(ROOT)} is missing")
    flags = ["-O2", "-std=c11", f"-I{CSRC}"]
    static = ["-static", "-static-libgcc"]  # nothing for wine to find but Windows' own DLLs
    sources = _library_sources()
    pool = CSRC / "pool.c"
    objects = _compile(cc, [*flags, *STRICT], sources, tmp_path / "lib")
    # the pool as MSVC builds it (Interlocked atomics) for the harness; MinGW's own (C11) for the DLL
    msvc_pool = _compile(cc, [*flags, *STRICT, "-DLT_POOL_INTERLOCKED"], [pool], tmp_path / "msvc")[pool]
    dll = _link(cc, objects.values(), tmp_path / "lantern.dll", ["-shared", *static])
    loader_c = tmp_path / "load_dll.c"
    loader_c.write_text(LOADER)
    loader_o = _compile(cc, ["-O2", "-std=c11", "-Wall"], [loader_c], tmp_path)[loader_c]
    loader = _link(cc, [loader_o], tmp_path / "load_dll.exe", static)
    harness_o = _compile(cc, flags, [HARNESS], tmp_path / "harness")[HARNESS]
    harness = _link(cc, [harness_o, msvc_pool, *(o for s, o in objects.items() if s != pool)],
                    tmp_path / "check_kernels.exe", [*static, "-lm"])
    wake = _wake_program(cc, tmp_path / "wake.exe", ["-DLT_POOL_INTERLOCKED", "-static"])
    imports = _run(["x86_64-w64-mingw32-objdump", "-p", dll]).stdout if shutil.which("x86_64-w64-mingw32-objdump") else ""
    assert "pthread" not in imports.lower(), "the DLL needs a pthreads DLL:\n" + imports

    prefix = tmp_path / "wineprefix"
    r = _wine(wine, loader, prefix, dll.name)
    out = r.stdout + r.stderr
    passed, failed = _summary(out)
    assert r.returncode == 0 and failed == 0 and passed >= 3, out[-3000:]
    r = _wine(wine, harness, prefix)
    out = r.stdout + r.stderr
    passed, failed = _summary(out)
    assert r.returncode == 0 and failed == 0 and passed > 0, "\n".join(
        line for line in out.splitlines() if not line.startswith("PASS"))[-4000:]
    r = _wine(wine, wake, prefix, "400")
    assert r.returncode == 0 and " 0 timeouts" in r.stdout, r.stdout + r.stderr


# ----- the pool's sleep and wake-up ------------------------------------------------------------------

# Two tasks on two threads, each waiting until both have started: the caller can finish only if
# a worker wakes for the job. Between calls the workers spin, or sleep (LANTERN_SPIN_US=0 and
# naps of up to 1.5 ms); a worker that sleeps through a job leaves the caller waiting until the
# 5 s timeout. pool.c is included for P: the backoff after a slow call (the caller alone for the
# next calls, by design) is switched off before each call.
WAKE = r"""
#include "pool.c"
#include <stdio.h>
#ifdef _WIN32
static void nap(int us) { if (us) Sleep(us >= 1000 ? us / 1000 : 1); }
#else
static void nap(int us) { struct timespec t = {0, us * 1000L}; if (us) nanosleep(&t, NULL); }
#endif
static a32 started, timeouts;
static void task(void *a, int64_t t) {
    (void)a; (void)t;
    ADD32(&started, 1);
    const int64_t t0 = now_ns();
    while (LOAD32(&started) < 2)
        if (now_ns() - t0 > 5000000000LL) { ADD32(&timeouts, 1); return; }
}
int main(int argc, char **argv) {
    const int calls = argc > 1 ? atoi(argv[1]) : 500;
    int64_t worst = 0;
    for (int i = 0; i < calls; i++) {
        nap((int[]){0, 50, 300, 1500}[i % 4]);
        STORE32(&started, 0);
        P.solo_left = 0;
        const int64_t t0 = now_ns();
        lt_pool_run(task, NULL, 2, 2);
        if (now_ns() - t0 > worst) worst = now_ns() - t0;
    }
    printf("%d calls, %u timeouts, slowest %.1f ms\n", calls, (unsigned)LOAD32(&timeouts), worst * 1e-6);
    return LOAD32(&timeouts) != 0;
}
"""


def _wake_program(cc: str, out: Path, flags: list[str]) -> Path:
    src = out.with_suffix(".c")
    src.write_text(WAKE)
    r = _run([cc, "-O2", "-std=c11", f"-I{CSRC}", *flags, src, "-o", out])
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("path", ["futex", "condition-variable"])
def test_pool_wakes_for_every_job(path, tmp_path):
    cc = _need("gcc", "gcc")
    extra = ["-DLT_POOL_NO_FUTEX"] if path == "condition-variable" else []
    exe = _wake_program(cc, tmp_path / "wake", ["-pthread", *extra])
    for spin in ("0", "100"):
        r = _run([exe], timeout=120, env={**os.environ, "LANTERN_SPIN_US": spin})
        assert r.returncode == 0 and " 0 timeouts" in r.stdout, f"LANTERN_SPIN_US={spin}: {r.stdout}{r.stderr}"


# ----- setup.py without a compiler ----------------------------------------------------------------

@pytest.mark.parametrize("require", [False, True], ids=["fallback", "required"])
def test_setup_py_says_when_the_kernels_are_not_built(require, tmp_path):
    """No working compiler: setup.py still succeeds (lantern falls back to pure PyTorch) and says
    so on stderr; under LANTERN_REQUIRE_NATIVE=1 it fails instead. Builds into tmp_path only."""
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc"), "LANTERN_REQUIRE_NATIVE": "1" if require else "0"}
    r = _run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", tmp_path / "lib", "--build-temp",
              tmp_path / "tmp"], timeout=120, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
             start_new_session=True)  # no terminal: setup.py would also write to it
    assert "native C kernels were NOT built" in r.stderr, r.stderr
    assert (r.returncode != 0) == require, r.stderr
    assert not list((tmp_path / "lib").rglob("_native*"))

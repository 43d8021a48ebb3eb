"""lantern's decode matmul (1-12 rows of x: `lt_gguf_matmul` on one thread, its row kernels and,
from 5 rows, the 8-row tile where the level has one) against llama.cpp's own vec_dot, one core, the
weights in the last-level cache: how many weights per second each kernel multiplies, and the
ratio, measured in one process alternating rep by rep (bench/native/rows_vs_ggml.c). End-to-end
decode (`lantern bench --compare`) mixes this with the memory's speed and the machine's drift;
this is the figure to move when a kernel is the bottleneck.

    python bench/rows_vs_ggml.py                                   # Q4_K, Q5_K, Q6_K at M=1, 2, 4, 8, every level
    python bench/rows_vs_ggml.py --types Q4_1,Q8_0 --m 1,8 --levels avx512
    PYTHONPATH=/path/to/llama-avx2 python bench/rows_vs_ggml.py --levels avx2   # against an AVX2-only llama.cpp

llama.cpp's library is llama-cpp-python's (`llama_cpp/lib/libggml-cpu.so`), from whichever
`llama_cpp` Python imports; `--ggml PATH` names another. It quantizes x to its vec_dot type (Q8_K
for the K-quants) and multiplies one row of x at a time; lantern's level is switched in the C
library (LANTERN_ISA's levels). Needs a C compiler (cc).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gguf import GGMLQuantizationType as QT

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "lantern" / "weights" / "csrc"
LEVELS = {"portable": 0, "avx2": 1, "avx512": 2, "neon": 3}


def ggml_library() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("rows_vs_ggml: llama-cpp-python is not installed (pip install -e '.[test]'), or give --ggml PATH")
    for name in ("libggml-cpu.so", "libggml-cpu.dylib", "ggml-cpu.dll"):
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "lib" / name
            if path.exists():
                return path
    sys.exit("rows_vs_ggml: llama_cpp has no libggml-cpu library (an older llama-cpp-python?); give --ggml PATH")


def build(out: Path) -> Path:
    sources = [p for p in sorted(CSRC.rglob("*.c")) if p.name != "module.c"]
    exe = out / "rows_vs_ggml"
    subprocess.run(["cc", "-O3", "-std=c11", "-pthread", f"-I{CSRC}", str(ROOT / "bench" / "native" / "rows_vs_ggml.c"),
                    *map(str, sources), "-lm", "-ldl", "-o", str(exe)], check=True)
    return exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default="Q4_K,Q5_K,Q6_K", help="GGUF types, comma-separated (default: Q4_K,Q5_K,Q6_K)")
    ap.add_argument("--m", default="1,2,4,8", help="rows of x, each 1 to 12 (default: 1,2,4,8)")
    ap.add_argument("--levels", default=None, help="lantern's levels (default: every x86 level this CPU runs)")
    ap.add_argument("--shape", default="2048x3072", help="rows x columns of the weight matrix (default: 2048x3072)")
    ap.add_argument("--reps", type=int, default=41, help="alternating reps; the fastest of each counts (default: 41)")
    ap.add_argument("--ggml", default=None, help="llama.cpp's libggml-cpu (default: llama-cpp-python's)")
    args = ap.parse_args()
    lib = Path(args.ggml) if args.ggml else ggml_library()
    n, k = (int(v) for v in args.shape.lower().split("x"))
    levels = args.levels.split(",") if args.levels else ["avx2", "avx512"]
    print(f"# llama.cpp: {lib}")
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        for level in levels:
            for name in args.types.split(","):
                for m in args.m.split(","):
                    run = subprocess.run([str(exe), str(lib), str(LEVELS[level]), str(int(QT[name])), m, str(n), str(k),
                                          str(args.reps)], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                    print(run.stdout.strip() or f"{level} {name} M={m}: {run.stderr.strip()}", flush=True)


if __name__ == "__main__":
    main()

"""What can be known of the neon level's speed without ARM hardware: executed instructions per
weight and row of x, counted under qemu-user (bench/native/qemu_insn_plugin.c) for one
`lt_gguf_matmul` on one thread (bench/native/matmul_insns.c), per route:

- exact: 15-bit x on the row kernels (decode steps; the only in-place route without dotprod);
- int8:  8-bit x on the level's 8-bit tile (prompt rows and batched passes of 5+ decoding sequences);
- expand: the weights expanded to float32, per weight (divide by the rows of x it serves): the
  first half of the route torch's float32 GEMM takes, whose own floor is 1/4 instruction per
  weight and row (one 4-lane FMA), before any loads.

as a CPU with dotprod (`-cpu max`) and one without (`-cpu cortex-a72`). Each count is (R reps - 0
reps) / R, so setup is not in it. An instruction count is not a speed: an SDOT and a load cost
differently, and so do cores; this says which route does less work, not by how much it is faster.

    python bench/arm_instructions.py                      # Q4_K, Q5_K, Q6_K, K 3072, N 64, M 1, 8, 64
    python bench/arm_instructions.py --types Q4_K --m 8 --cc clang

Needs aarch64-linux-gnu-gcc (or clang with --cc clang), the ARM64 C library and qemu-aarch64
(Debian: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user), and a host C compiler (cc).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from gguf import GGMLQuantizationType as QT

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "lantern" / "weights" / "csrc"
SYSROOT = "/usr/aarch64-linux-gnu"
CPUS = {"max": "dotprod", "cortex-a72": "plain NEON"}


def build(cc: str, out: Path) -> tuple[Path, Path]:
    plugin = out / "insn.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", ROOT / "bench" / "native" / "qemu_insn_plugin.c", "-o", plugin],
                   check=True)
    sources = [p for p in CSRC.rglob("*.c") if p.name != "module.c"]
    target = ["--target=aarch64-linux-gnu"] if cc == "clang" else []
    driver = out / "matmul_insns"
    subprocess.run([cc, *target, "-O3", "-std=c11", "-pthread", f"-I{CSRC}", ROOT / "bench" / "native" / "matmul_insns.c",
                    *sources, "-lm", "-o", driver], check=True)
    return plugin, driver


def count(plugin: Path, driver: Path, cpu: str, args: list) -> tuple[int | None, str]:
    r = subprocess.run(["qemu-aarch64", "-plugin", plugin, "-L", SYSROOT, "-cpu", cpu, driver, *map(str, args)],
                       capture_output=True, text=True)
    found = re.search(r"^insns (\d+)$", r.stderr, re.M)
    return (int(found.group(1)) if r.returncode == 0 and found else None), r.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default="Q4_K,Q5_K,Q6_K")
    ap.add_argument("--m", default="1,8,64", help="rows of x")
    ap.add_argument("--k", type=int, default=3072)
    ap.add_argument("--n", type=int, default=64, help="rows of W")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cc", default="aarch64-linux-gnu-gcc")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plugin, driver = build(args.cc, Path(tmp))
        print(f"instructions per weight and row of x (expand: per weight), K {args.k}, N {args.n}, one thread, "
              f"{args.reps} reps, {args.cc}")
        print(f"{'cpu':<11} {'type':<5} {'M':>3}  {'exact':>7} {'int8':>7} {'expand':>7}  kernels")
        for cpu in CPUS:
            for name in args.types.split(","):
                qt = int(QT[name])
                for m in map(int, args.m.split(",")):
                    base, _ = count(plugin, driver, cpu, [qt, args.k, args.n, m, "exact", 0])
                    if base is None:
                        sys.exit(f"arm_instructions: the driver failed on {cpu} {name} M {m}")
                    cells, kernels = [], ""
                    for route in ("exact", "int8", "expand"):
                        total, said = count(plugin, driver, cpu, [qt, args.k, args.n, m, route, args.reps])
                        kernels = said or kernels
                        per = 1 if route == "expand" else m
                        cells.append("-" if total is None else f"{(total - base) / args.reps / (args.n * args.k * per):.3f}")
                    print(f"{cpu:<11} {name:<5} {m:>3}  {cells[0]:>7} {cells[1]:>7} {cells[2]:>7}  "
                          f"{kernels.removeprefix('level neon, ')}")


if __name__ == "__main__":
    main()

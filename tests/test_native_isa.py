"""Every instruction-set level's C kernels against the portable C, with the C test harness
tests/native/check_kernels.c (x_prepare, the row kernels of the 10 in-place types, IQ4_NL and
IQ4_XS included, at every row count, expansion, attention spans, exp / SiLU / float16 stores: see
its header).

- natively: built with gcc into a temporary folder, run over every level this CPU has (and, on
  a CPU with AVX-512 VNNI, the avx2 level once more without its vnni tile: LANTERN_AVX2_VNNI=0);
- ARM64: cross-built with aarch64-linux-gnu-gcc and run under qemu-user, once as a CPU with
  dotprod and i8mm (`-cpu max`) and once as one without (`-cpu cortex-a72`); the NEON level
  must pass on both and choose its dotprod variant on the first only. (qemu says nothing about
  speed: this is a correctness check.)

`--require-isa-kernels` (row kernels still named "*_generic" fail) is passed for the levels in
REQUIRED_ISA_KERNELS, or in LANTERN_REQUIRE_ISA_KERNELS (comma-separated; it replaces the list).
A missing compiler or qemu fails the test under CI=true and skips it elsewhere, naming the
Debian packages. Builds go to temporary folders, never to the installed extension.

Budget: 3 minutes on the 2-core machines (under qemu the harness runs about 12 s per CPU).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lantern.testing.cpu import has_avx512_vnni

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "lantern" / "weights" / "csrc"
HARNESS = ROOT / "tests" / "native" / "check_kernels.c"

# Levels whose own row kernels have landed (the lead updates this): for them a row kernel that
# is still the generic one is a failure. LANTERN_REQUIRE_ISA_KERNELS="avx2,neon" overrides.
REQUIRED_ISA_KERNELS: tuple[str, ...] = ("avx2", "neon")

CFLAGS = ["-O3", "-std=c11", "-pthread", "-Wall", "-Wextra", "-Werror"]
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")
ROW_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs")
ARM_SYSROOT = Path("/usr/aarch64-linux-gnu")
BUILD_TIMEOUT = 240
RUN_TIMEOUT = 240


def _required() -> tuple[str, ...]:
    env = os.environ.get("LANTERN_REQUIRE_ISA_KERNELS")
    if env is not None:
        return tuple(level for level in (s.strip() for s in env.split(",")) if level)
    return REQUIRED_ISA_KERNELS


def _require_args(levels: tuple[str, ...]) -> list[str]:
    return [f"--require-isa-kernels={','.join(levels)}"] if levels else []


def _missing(what: str, packages: str) -> None:
    why = f"{what} (Debian: apt-get install {packages})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}: CI must have it")
    pytest.skip(why)


def _need(tool: str, packages: str) -> str:
    path = shutil.which(tool)
    if not path:
        _missing(f"{tool} is not installed", packages)
    return path


def _library_sources() -> list[str]:
    return [str(p) for p in sorted(CSRC.rglob("*.c")) if p.name != "module.c"]


def _compile(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"


def _build(cc: str, out: Path) -> Path:
    """The harness and the library, one object per source file (in parallel), linked to `out`."""
    sources = [str(HARNESS), *_library_sources()]
    objects = [str(out.parent / f"{i}_{Path(src).stem}.o") for i, src in enumerate(sources)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(_compile, [[cc, *CFLAGS, f"-I{CSRC}", "-c", src, "-o", obj]
                                 for src, obj in zip(sources, objects)]))
    _compile([cc, "-pthread", "-o", str(out), *objects, "-lm"])
    return out


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """Run the harness; assert it passed (exit 0, the summary line with 0 failed). Its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env)
    out = proc.stdout
    lines = out.strip().splitlines()
    failed = "\n".join(line for line in lines if line.startswith("FAIL"))
    assert lines, f"{' '.join(cmd)}: no output\n{proc.stderr}"
    m = SUMMARY.match(lines[-1])
    assert m, f"{' '.join(cmd)}: no summary line (exit {proc.returncode})\n{out[-3000:]}\n{proc.stderr}"
    assert int(m.group(1)) > 0, out
    assert m.group(2) == "0" and proc.returncode == 0, f"{' '.join(cmd)}: {lines[-1]}\n{failed}\n{proc.stderr}"
    assert not failed
    return out


def _row_names(out: str, level: str) -> dict[str, str]:
    """The row kernels the harness reported for `level` ("INFO <level> row <type> <name>")."""
    names = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[:3] == ["INFO", level, "row"]:
            names[parts[3]] = parts[4]
    return names


def _tile(out: str, level: str) -> str | None:
    """The 8-row tile the harness reported for `level` ("INFO <level> rows8 <name>")."""
    return next((line.split()[3] for line in out.splitlines() if line.startswith(f"INFO {level} rows8 ")), None)


def _int8_tiles(out: str, level: str) -> set[str]:
    """The 8-bit prompt tiles the harness reported for `level` ("INFO <level> prompt_q8 <type> <name>")."""
    return {line.split()[4] for line in out.splitlines() if line.startswith(f"INFO {level} prompt_q8 ")}


def test_native_levels(tmp_path):
    """Every level this CPU runs; where it has AVX-512 VNNI, twice: the avx2 level with its vnni
    tiles (8-row and 8-bit), then (LANTERN_AVX2_VNNI=0) with the plain ones, so that both variants
    are checked here."""
    cc = _need("gcc", "gcc")
    exe = _build(cc, tmp_path / "check_kernels")
    env = {k: v for k, v in os.environ.items() if k != "LANTERN_AVX2_VNNI"}
    out = _run([str(exe), *_require_args(_required())], env)
    levels = next(line for line in out.splitlines() if line.startswith("INFO levels:")).split()[2:]
    assert "portable" in levels
    for level in levels:
        assert any(line.startswith(f"PASS {level} ") for line in out.splitlines()), f"{level} did not run"
    print(out)
    if "avx2" in levels:
        vnni = has_avx512_vnni()
        if vnni is not None:  # else no /proc/cpuinfo to say which tile is right
            assert _tile(out, "avx2") == ("rows8_avx2_vnni" if vnni else "rows8_avx2"), out
            assert _int8_tiles(out, "avx2") == {"gemm_q8_avx2_vnni" if vnni else "gemm_q8_avx2"}, out
        if vnni:
            plain = _run([str(exe), "--level=avx2", *_require_args(_required())], {**env, "LANTERN_AVX2_VNNI": "0"})
            assert _tile(plain, "avx2") == "rows8_avx2", plain
            assert _int8_tiles(plain, "avx2") == {"gemm_q8_avx2"}, plain
            print(plain)


@pytest.fixture(scope="module")
def arm64_harness(tmp_path_factory) -> tuple[str, Path]:
    packages = "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"
    cc = _need("aarch64-linux-gnu-gcc", packages)
    qemu = _need("qemu-aarch64", packages)
    if not (ARM_SYSROOT / "include" / "stdio.h").exists():
        _missing(f"no ARM64 C library in {ARM_SYSROOT}", packages)
    return qemu, _build(cc, tmp_path_factory.mktemp("arm64") / "check_kernels")


@pytest.mark.parametrize("cpu, dotprod", [("max", True), ("cortex-a72", False)])
def test_arm64_neon_under_qemu(arm64_harness, cpu, dotprod):
    qemu, exe = arm64_harness
    required = tuple(level for level in _required() if level == "neon")
    out = _run([qemu, "-L", str(ARM_SYSROOT), "-cpu", cpu, str(exe), "--level=neon", *_require_args(required)])
    names = _row_names(out, "neon")
    assert set(names) == set(ROW_TYPES), out
    for qtype, name in names.items():
        if dotprod:
            assert name == f"{qtype}_neon_dotprod", f"-cpu {cpu} has dotprod: {qtype} ran {name}"
        else:
            assert name == f"{qtype}_neon", f"-cpu {cpu} has no dotprod: {qtype} ran {name}"
    print(out)

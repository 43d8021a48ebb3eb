"""Every instruction-set level's C kernels against the portable C, with the C test harness
tests/native/check_kernels.c (x_prepare, the row kernels of the 10 in-place types, IQ4_NL and
IQ4_XS included, at every row count, expansion, attention spans, exp / SiLU / float16 stores: see
its header).

- natively: built with gcc into a temporary folder, run over every level this CPU has (and, on
  a CPU with AVX-512 VNNI, the avx2 level once more without its vnni tile: LANTERN_AVX2_VNNI=0);
- ARM64: cross-built with aarch64-linux-gnu-gcc and run under qemu-user, once as a CPU with
  dotprod and i8mm (`-cpu max`) and once as one without (`-cpu cortex-a72`); the NEON level
  must pass on both and choose its dotprod variant (row kernels, 8-bit tile) on the first only;
  and built with clang (--target=aarch64-linux-gnu), as a CPU with dotprod. (qemu says nothing
  about speed: this is a correctness check; bench/arm_instructions.py counts instructions.)

`--require-isa-kernels` (row kernels still named "*_generic" fail) is passed for the levels in
REQUIRED_ISA_KERNELS, or in LANTERN_REQUIRE_ISA_KERNELS (comma-separated; it replaces the list).
A missing compiler or qemu fails the test under CI=true and skips it elsewhere, naming the
Debian packages. Builds go to temporary folders, never to the installed extension.

Budget: 4 minutes on the 2-core machines (under qemu the harness runs about 12 s per CPU; the clang
build about 40 s).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lantern.testing.cpu import avx2_variant, cpu_flags, has_avx512_vnni

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


def _build(cc: str, out: Path, defines: tuple[str, ...] = (), target: tuple[str, ...] = ()) -> Path:
    """The harness and the library, one object per source file (in parallel), linked to `out`
    (`target`: flags naming another machine, for every step)."""
    sources = [str(HARNESS), *_library_sources()]
    objects = [str(out.parent / f"{i}_{Path(src).stem}.o") for i, src in enumerate(sources)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(_compile, [[cc, *target, *CFLAGS, *defines, f"-I{CSRC}", "-c", src, "-o", obj]
                                 for src, obj in zip(sources, objects)]))
    _compile([cc, *target, "-pthread", "-o", str(out), *objects, "-lm"])
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


@pytest.fixture(scope="module")
def native_harness(tmp_path_factory) -> Path:
    """The harness built with gcc, as the library is built."""
    cc = _need("gcc", "gcc")
    return _build(cc, tmp_path_factory.mktemp("native") / "check_kernels")


def test_native_levels(native_harness):
    """Every level this CPU runs; where it has a VNNI variant of the avx2 level's tiles (8-row and
    8-bit), twice: with it, then (LANTERN_AVX2_VNNI=0) with the plain ones, so that both are
    checked here."""
    exe = native_harness
    env = {k: v for k, v in os.environ.items() if k != "LANTERN_AVX2_VNNI"}
    out = _run([str(exe), *_require_args(_required())], env)
    levels = next(line for line in out.splitlines() if line.startswith("INFO levels:")).split()[2:]
    assert "portable" in levels
    for level in levels:
        assert any(line.startswith(f"PASS {level} ") for line in out.splitlines()), f"{level} did not run"
    print(out)
    if "avx2" in levels:
        variant = avx2_variant()
        if variant is not None:  # else no /proc/cpuinfo to say which tile is right
            assert _tile(out, "avx2") == "rows8_avx2" + variant, out
            assert _int8_tiles(out, "avx2") == {"gemm_q8_avx2" + variant}, out
            assert set(_row_names(out, "avx2").values()) == {f"{t}_avx2{variant}" for t in ROW_TYPES}, out
        if variant:
            plain = _run([str(exe), "--level=avx2", *_require_args(_required())], {**env, "LANTERN_AVX2_VNNI": "0"})
            assert _tile(plain, "avx2") == "rows8_avx2", plain
            assert _int8_tiles(plain, "avx2") == {"gemm_q8_avx2"}, plain
            assert set(_row_names(plain, "avx2").values()) == {f"{t}_avx2" for t in ROW_TYPES}, plain
            print(plain)


def test_avxvnni_variant_on_avx512_vnni_instructions(tmp_path):
    """The avx2 level's avxvnni variant (AVX-VNNI: Alder Lake and later, no AVX-512), which no CPU
    of the test machines has: its code built with LT_AVXVNNI_ON_AVX512, which makes its products
    with AVX-512 VNNI's instructions (the same operations, EVEX-encoded), and run in the vnni
    variant's place on a CPU with AVX-512 VNNI (gcc may then fold it into the vnni variant's
    identical code). Checked bit for bit as every level is: the variant's source, its table entries
    and names. What this does not check, the encoding, test_avxvnni_variant_is_vex_only does."""
    if "avx_vnni" in (cpu_flags() or set()):
        pytest.skip("this CPU has AVX-VNNI: test_native_levels runs the avxvnni variant itself")
    if not has_avx512_vnni():
        pytest.skip("this CPU has neither AVX-VNNI nor AVX-512 VNNI (or no /proc/cpuinfo says so): "
                    "the avxvnni variant's code cannot run here")
    exe = _build(_need("gcc", "gcc"), tmp_path / "check_kernels", ("-DLT_AVXVNNI_ON_AVX512",))
    env = {k: v for k, v in os.environ.items() if k != "LANTERN_AVX2_VNNI"}
    out = _run([str(exe), "--level=avx2", *_require_args(_required())], env)
    assert _tile(out, "avx2") == "rows8_avx2_avxvnni", out
    assert _int8_tiles(out, "avx2") == {"gemm_q8_avx2_avxvnni"}, out
    assert set(_row_names(out, "avx2").values()) == {f"{t}_avx2_avxvnni" for t in ROW_TYPES}, out


def test_avxvnni_variant_is_vex_only(native_harness):
    """The real build's avxvnni functions (the harness is built as the library) make their products
    with VEX-encoded vpdpbusd and vpdpwssd, and hold no EVEX-encoded instruction (first byte 0x62):
    on a CPU with AVX-VNNI but no AVX-512 they run, where one EVEX instruction would fault."""
    objdump = _need("objdump", "binutils")
    proc = subprocess.run([objdump, "-d", str(native_harness)], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    functions: dict[str, list[tuple[list[str], str]]] = {}
    name = None
    for line in proc.stdout.splitlines():
        head = re.match(r"^[0-9a-f]+ <(\w+)>:$", line)
        if head:
            name = head.group(1) if head.group(1).endswith("_avxvnni") else None
            if name:
                functions[name] = []
            continue
        parts = line.split("\t")
        if name and len(parts) >= 3:
            functions[name].append((parts[1].split(), parts[2]))
    assert {"gemm_q8_avxvnni", "rows8_q4_k_avxvnni", "rq4k_1_avxvnni", "rq6k_1_avxvnni"} <= set(functions), sorted(functions)
    text = "\n".join(ins for body in functions.values() for _, ins in body)
    assert "{vex} vpdpbusd" in text and "{vex} vpdpwssd" in text
    evex = [(f, ins) for f, body in functions.items() for raw, ins in body if raw and (raw[0] == "62" or raw[:2] == ["67", "62"])]
    assert not evex, f"EVEX-encoded instructions in the avxvnni variant: {evex[:5]}"


ARM_PACKAGES = "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user"


def _arm64_tools(cc: str, packages: str) -> tuple[str, str]:
    compiler, qemu = _need(cc, packages), _need("qemu-aarch64", packages)
    if not (ARM_SYSROOT / "include" / "stdio.h").exists():
        _missing(f"no ARM64 C library in {ARM_SYSROOT}", packages)
    return compiler, qemu


@pytest.fixture(scope="module")
def arm64_harness(tmp_path_factory) -> tuple[str, Path]:
    cc, qemu = _arm64_tools("aarch64-linux-gnu-gcc", ARM_PACKAGES)
    return qemu, _build(cc, tmp_path_factory.mktemp("arm64") / "check_kernels")


def _check_neon(qemu: str, exe: Path, cpu: str, dotprod: bool) -> str:
    """The harness's neon level as `cpu`: every check passes, and the variant is the one the CPU
    has: with dotprod its row kernels and the K-quants' 8-bit tile (prompt rows, batched decode
    rows); without, the plain row kernels and no 8-bit tile (those rows keep 15 bits)."""
    required = tuple(level for level in _required() if level == "neon")
    out = _run([qemu, "-L", str(ARM_SYSROOT), "-cpu", cpu, str(exe), "--level=neon", *_require_args(required)])
    names = _row_names(out, "neon")
    assert set(names) == set(ROW_TYPES), out
    for qtype, name in names.items():
        if dotprod:
            assert name == f"{qtype}_neon_dotprod", f"-cpu {cpu} has dotprod: {qtype} ran {name}"
        else:
            assert name == f"{qtype}_neon", f"-cpu {cpu} has no dotprod: {qtype} ran {name}"
    int8 = {line.split()[3] for line in out.splitlines() if line.startswith("INFO neon prompt_q8 ")}
    assert int8 == ({"q4_k", "q5_k", "q6_k"} if dotprod else set()), out
    assert _int8_tiles(out, "neon") == ({"gemm_q8_neon_dotprod"} if dotprod else set()), out
    if dotprod:  # bit for bit against the generic tile, both routes (one record; prompt tiles)
        assert all(f"PASS neon prompt_q8_{t} 0" in out for t in int8), out
    return out


@pytest.mark.parametrize("cpu, dotprod", [("max", True), ("cortex-a72", False)])
def test_arm64_neon_under_qemu(arm64_harness, cpu, dotprod):
    print(_check_neon(*arm64_harness, cpu, dotprod))


def test_arm64_clang_build_under_qemu(tmp_path):
    """The same harness built by clang for ARM64, the compiler family of macOS and of Windows on
    ARM: clang before 16 declares the SDOT intrinsics only where the whole build targets dotprod,
    so its dotprod variant takes the inline-assembly SDOTs (neon.c's sdot, sdot_lane), which only
    this build runs. As a CPU with dotprod (the other variant is gcc's code path too)."""
    clang, qemu = _arm64_tools("clang", f"clang {ARM_PACKAGES}")
    exe = _build(clang, tmp_path / "check_kernels", target=("--target=aarch64-linux-gnu",))
    print(_check_neon(qemu, exe, "max", True))

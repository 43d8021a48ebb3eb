"""What this CPU has, by the operating system's own list (Linux's /proc/cpuinfo): the tests'
oracle for the kernels lantern's cpuid code chooses, independent of that code."""

from __future__ import annotations

import os

AVX512_VNNI = {"avx512f", "avx512vl", "avx512_vnni"}  # the avx2 level's vnni variant needs all three


def cpu_flags() -> set[str] | None:
    """The feature flags of the first CPU in /proc/cpuinfo, or None where there is no such list."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def has_avx512_vnni() -> bool | None:
    """AVX-512 F and VL with VNNI (the avx2 level's vnni tile), or None where it cannot be known."""
    flags = cpu_flags()
    return None if flags is None else AVX512_VNNI <= flags


def avx2_variant() -> str | None:
    """The variant of the avx2 level's tiles this CPU must run, as the suffix of their names:
    "_vnni" (AVX-512 VNNI with VL), "_avxvnni" (AVX-VNNI, where the C compiler knows it), "" (plain),
    or None where it cannot be known. LANTERN_AVX2_VNNI=0 asks for the plain ones."""
    flags = cpu_flags()
    if flags is None:
        return None
    if os.environ.get("LANTERN_AVX2_VNNI", "1")[:1] == "0":
        return ""
    if AVX512_VNNI <= flags:
        return "_vnni"
    return "_avxvnni" if "avx_vnni" in flags else ""

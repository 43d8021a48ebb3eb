"""The kernel, native-step, attention and fidelity tests again at every other instruction-set level
this CPU runs, each level in its own process (LANTERN_ISA picks lantern's level; torch reads
ATEN_CPU_CAPABILITY once, at import, so its own kernels match the level too).

The main run covers the level lantern picks by default (the best the CPU has); this file repeats
the level-dependent suites below it: portable on an AVX2 machine, avx2 and portable on an
AVX-512 one. ARM64's NEON level is tested under qemu by tests/test_native_isa.py.

Budget: about 5 minutes per extra level on the 2-core Zen 2 (the fidelity suite is most of it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lantern.weights.kernels import native

ROOT = Path(__file__).resolve().parent.parent
SUITES = ["tests/test_kernels.py", "tests/test_native_step.py", "tests/test_attention.py", "tests/test_fidelity.py"]
TORCH_CAPABILITY = {"portable": "default", "avx2": "avx2", "avx512": "avx512"}


@pytest.mark.slow
@pytest.mark.parametrize("level", ["portable", "avx2", "avx512"])
def test_level_dependent_suites_pass_at_every_level_the_cpu_runs(level):
    if not native.available():
        pytest.fail("lantern's native library is not built: pip install -e . builds it")
    if level not in native.supported_isas():
        pytest.skip(f"this CPU does not run the {level} level (it runs {', '.join(native.supported_isas())})")
    if level == native.isa():
        pytest.skip(f"{level} is the level in use: the main run covers it")
    env = {**os.environ, "LANTERN_ISA": level, "ATEN_CPU_CAPABILITY": TORCH_CAPABILITY[level]}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=1800)
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr[-2000:]
    print(f"LANTERN_ISA={level}: {summary}")
    assert run.returncode == 0, f"at {level}:\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    assert "passed" in summary and "failed" not in summary

"""Mutation fuzzing of GGUF files, in CI: about 500 fixed-seed cases over every architecture in
the registry and three quant types, each a fork of this (torch-importing) process under a memory
cap and a timeout (lantern/testing/fuzz.py). Long campaigns: python -m lantern.testing.fuzz;
their counts are in docs/RELIABILITY.md."""

from __future__ import annotations

import struct
import time
from collections import Counter

import pytest

from lantern.models import ARCHITECTURES
from lantern.testing import fuzz

CI_SEED = 20261202  # fixed: CI runs the same cases every time
CI_CASES = 500


@pytest.fixture(scope="module")
def bases():
    return fuzz.base_files()


def test_mutated_files_give_a_clean_error_or_finite_logits_never_anything_else(bases):
    started = time.monotonic()
    results = fuzz.campaign(CI_CASES, CI_SEED, families=fuzz.FAMILIES, bases=bases, jobs=2)
    elapsed = time.monotonic() - started
    counts = Counter(r.outcome for r in results)
    bad = [f"case {r.case} [{r.base}] {r.mutation}: {r.outcome}: {r.detail}" for r in results if r.outcome in fuzz.BAD]
    assert not bad, f"{len(bad)} bad outcomes:\n" + "\n".join(bad[:30]) + "\n" + fuzz.table(results)
    assert len(results) == CI_CASES
    # The fuzzer reaches both sides: files refused, and files that still load and run.
    assert counts["error"] > CI_CASES // 4 and counts["ran"] > CI_CASES // 20, counts
    assert {r.base.split("-")[0] for r in results} == set(ARCHITECTURES)
    assert {r.mutation.split(":")[0] for r in results} == set(fuzz.FAMILIES)
    unnamed = [r for r in results if r.outcome == "error" and r.detail.startswith("[no file name]")]
    assert not unnamed, [r.detail for r in unnamed[:5]]
    print(f"\n{CI_CASES} cases in {elapsed:.0f} s\n{fuzz.table(results)}")


def test_the_harness_classifies_crashes_hangs_and_memory_blowups(tmp_path):
    """The outcome classes the CI test asserts to be zero are really detected (a fuzzer that
    cannot see a crash would report none)."""
    import os
    import signal

    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGUF")
    original = fuzz._child
    try:
        fuzz._child = lambda p, cap: os.kill(os.getpid(), signal.SIGSEGV)
        assert fuzz.run_case(path)["outcome"] == "crash"
        fuzz._child = lambda p, cap: time.sleep(60)
        assert fuzz.run_case(path, timeout=1.0)["outcome"] == "hang"
    finally:
        fuzz._child = original

    def allocate(p, cap):
        import resource

        limit = fuzz._vm_size() + (256 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            bytearray(1 << 30)
        except MemoryError:
            return {"outcome": "memory", "detail": "MemoryError"}
        return {"outcome": "ran", "detail": ""}

    fuzz._child = allocate
    try:
        assert fuzz.run_case(path)["outcome"] == "memory"
    finally:
        fuzz._child = original


def test_a_nan_weight_stops_with_an_error_naming_the_layer(bases, tmp_path):
    """A valid file whose blk.0.ffn_norm.weight holds a NaN: it loads (the values are not
    scanned at load), and the first forward pass stops with a LanternError naming the layer
    (lantern.model's NonFiniteError), never returns NaN logits."""
    base = next(b for b in bases if b.name == "llama-Q8_0")
    data = bytearray(base.data)
    import gguf

    reader = gguf.GGUFReader(str(base.path))
    norm = next(t for t in reader.tensors if t.name == "blk.0.ffn_norm.weight")
    struct.pack_into("<f", data, norm.data_offset, float("nan"))
    path = tmp_path / "nan-norm.gguf"
    path.write_bytes(bytes(data))
    outcome = fuzz.run_case(path)
    assert outcome["outcome"] == "error" and "first in layer 0" in outcome["detail"], outcome

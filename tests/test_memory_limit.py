"""A sequence whose KV cache would outgrow the memory available ends with a clean error before
the out-of-memory killer can act; the context length itself is never refused. Budget: ~20 s."""

from __future__ import annotations

import os

import pytest

import lantern
from lantern.errors import MemoryLimitError
from lantern.models.memory import _resident_bytes, available_bytes


@pytest.fixture(scope="module")
def model(smollm2_path):
    return lantern.load(smollm2_path)


def test_memory_available_is_known_on_linux():
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("reads /proc/meminfo: Linux only (Windows reads GlobalMemoryStatusEx)")
    room = available_bytes()
    assert room is not None and room > 0


def test_a_growing_cache_stops_at_the_memory_limit(model, english_text, monkeypatch):
    cache = model.new_cache()
    assert cache.capacity == 256  # grows as used: a long context costs nothing up front
    monkeypatch.setenv("LANTERN_MEMORY_LIMIT", str(_resident_bytes() + (2 << 20)))
    with pytest.raises(MemoryLimitError, match=r"KV cache for \d+ tokens needs \d+ MiB more memory but only \d+ MiB"):
        model.complete(english_text[:3000], chat=False, max_tokens=1)  # ~600 tokens: past 256
    monkeypatch.delenv("LANTERN_MEMORY_LIMIT")
    assert model.complete("Say hi.", max_tokens=4, temperature=0).finish_reason in ("stop", "length")


def test_the_cache_grows_to_exactly_what_is_needed_when_doubling_does_not_fit(model, monkeypatch):
    cache = model.new_cache()
    model.forward(list(range(1, 256)), cache)
    per_token = cache._bytes(1)
    monkeypatch.setenv("LANTERN_MEMORY_LIMIT", str(_resident_bytes() + 100 * per_token))
    model.forward(list(range(1, 11)), cache)  # 265 tokens: doubling to 512 needs 256 more tokens
    assert cache.capacity == 265

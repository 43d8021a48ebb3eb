"""Decode steps replayed from CUDA graphs (lantern/models/cuda_graph.py).

The captured step (`StaticDecode`: device-side position, a fixed span of the cache with the rest
masked) runs on any device, so its math is checked against the eager step here on the CPU: across
a span boundary, with sliding windows and Gemma 3's per-layer rotary tables. The graphs
themselves need a CUDA GPU and skip, saying why, elsewhere. Time: about 15 s on the CPU.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

import lantern
from lantern.models import cuda_graph
from lantern.models.cuda_graph import SPAN, StaticDecode
from lantern.testing.synthetic import GEMMA3_270M, Spec, cached_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU visible to PyTorch on this machine")

MODELS = {
    # Phi-3 with a window shorter than the prompt, so the mask's window side is exercised.
    "phi3-window": (Spec(arch="phi3", vocab_size=512, sliding_window=200), "Q8_0"),
    "llama-gqa": (Spec(arch="llama", n_heads=4, n_kv_heads=2, tied_output=True, vocab_size=1024), "Q4_K_M"),
    "gemma3": (GEMMA3_270M, "Q4_K_M"),  # local layers (window 32, own rope base) and a global one
}


def ids_for(vocab: int, n: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(7).integers(3, vocab, n)]


@pytest.mark.parametrize("name", list(MODELS))
def test_static_step_is_the_eager_step(name):
    spec, qtype = MODELS[name]
    model = lantern.load(cached_model(spec, qtype), kernels="reference")
    ids = ids_for(spec.vocab_size, SPAN + 12)
    start = SPAN - 6  # six steps in the first span, six past its end
    eager_cache, static_cache = model.new_cache(), model.new_cache()
    model.forward(ids[:start], eager_cache)
    model.forward(ids[:start], static_cache)
    step = StaticDecode(model.transformer, torch.device("cpu"))
    spans = set()
    for token in ids[start:]:
        eager = model.forward([token], eager_cache)
        pos = static_cache.length
        span = step.prepare(torch.tensor([token]), static_cache)
        step.clear_unwritten(static_cache, pos, span)
        static = step(static_cache, span)
        static_cache.length = pos + 1
        spans.add(span)
        scale = float(eager.std())
        assert float((static - eager).abs().max()) <= 1e-5 * scale, (name, pos)
    assert spans == {SPAN, 2 * SPAN}


def test_no_graphs_off_cuda():
    model = lantern.load(cached_model(*MODELS["llama-gqa"]))
    assert model.transformer.graphed is None


@needs_cuda
@pytest.mark.parametrize("name", list(MODELS))
def test_graphed_decode_matches_eager_on_cuda(name, monkeypatch):
    spec, qtype = MODELS[name]
    path = cached_model(spec, qtype)
    ids = ids_for(spec.vocab_size, SPAN + 12)
    start = SPAN - 6
    runs = {}
    for graphs in ("1", "0"):
        monkeypatch.setenv("LANTERN_CUDA_GRAPHS", graphs)
        model = lantern.load(path, device="cuda")
        assert (model.transformer.graphed is not None) == (graphs == "1")
        cache = model.new_cache()
        model.forward(ids[:start], cache)
        runs[graphs] = torch.cat([model.forward([t], cache) for t in ids[start:]])
        if graphs == "1":
            graphed = model.transformer.graphed
            assert graphed.disabled is None, graphed.disabled
            assert len(graphed.graphs) == 1
            # A second sequence beside the first: each keeps its own graph, and a rollback
            # (truncate) replays the same graph at the earlier position.
            other = model.new_cache()
            model.forward(ids[:start], other)
            again = model.forward([ids[start]], other)
            assert len(graphed.graphs) == 2
            torch.testing.assert_close(again, runs["1"][:1], atol=1e-4, rtol=0)
            other.truncate(start)
            torch.testing.assert_close(model.forward([ids[start]], other), again, atol=0, rtol=0)
    torch.testing.assert_close(runs["1"], runs["0"], atol=1e-4 * float(runs["0"].std()), rtol=0)


@needs_cuda
def test_a_capture_that_fails_falls_back_to_eager(monkeypatch):
    model = lantern.load(cached_model(*MODELS["llama-gqa"]), device="cuda")
    graphed = model.transformer.graphed

    def broken(*args):
        raise RuntimeError("planted")

    monkeypatch.setattr(graphed, "_capture", broken)
    cache = model.new_cache()
    model.forward(list(range(10, 20)), cache)
    logits = model.forward([21], cache)
    assert graphed.disabled and "planted" in graphed.disabled
    assert logits.shape == (1, 1024) and cache.length == 11
    assert cuda_graph.GraphedDecode.KEEP >= 8


class ReplayedEagerly:
    """Stands in for a CUDA graph on the CPU: replay() runs the static step again into the
    captured logits, so GraphedDecode's bookkeeping runs here exactly as on a GPU."""

    def __init__(self, step, cache, span):
        self.step, self.cache, self.span = step, weakref.ref(cache), span  # a graph holds no cache
        self.logits = step(cache, span)

    def replay(self):
        self.logits.copy_(self.step(self.cache(), self.span))


def test_one_graph_per_sequence_recaptured_on_a_new_span_or_growth(monkeypatch):
    """GraphedDecode's bookkeeping, with graphs replayed eagerly on the CPU: a sequence keeps one
    graph, captured anew when it crosses into the next span or its cache grows; a second
    sequence gets its own; a rollback replays the same graph; a dead cache's graph goes."""
    spec, qtype = MODELS["llama-gqa"]
    model = lantern.load(cached_model(spec, qtype), kernels="reference")
    graphed = cuda_graph.GraphedDecode(model.transformer, torch.device("cpu"))
    captures = []

    def capture(cache, span, pos):
        graphed.step.clear_unwritten(cache, pos, span)
        captures.append((cache.graph_mark, span, cache.keys[0].data_ptr()))
        fake = ReplayedEagerly(graphed.step, cache, span)
        return fake, fake.logits

    monkeypatch.setattr(graphed, "_capture", capture)
    ids = ids_for(spec.vocab_size, SPAN + 12)
    start = SPAN - 6
    eager_cache, cache = model.new_cache(), model.new_cache()
    model.forward(ids[:start], eager_cache)
    model.forward(ids[:start], cache)
    assert cache.capacity == SPAN
    for token in ids[start:]:
        eager = model.forward([token], eager_cache)
        logits = graphed(torch.tensor([token]), cache)
        torch.testing.assert_close(logits, eager, atol=1e-5 * float(eager.std()), rtol=0)
    assert cache.length == SPAN + 12 and len(graphed.graphs) == 1
    # Crossing into the second span grew the cache: one capture for the first span, one after.
    assert [span for _, span, _ in captures] == [SPAN, 2 * SPAN]
    assert captures[0][2] != captures[1][2] and captures[0][0] == captures[1][0]

    other = model.new_cache()
    model.forward(ids[:start], other)
    first = graphed(torch.tensor([ids[start]]), other)
    assert len(graphed.graphs) == 2 and len(captures) == 3
    other.truncate(start)
    assert torch.equal(graphed(torch.tensor([ids[start]]), other), first)
    assert len(captures) == 3  # the rollback replayed the same graph

    del other
    gc.collect()
    assert len(graphed.graphs) == 1

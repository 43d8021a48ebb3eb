"""One-token decode steps on CUDA, replayed from a captured CUDA graph.

An eager decode step issues about 20 kernels per layer, and each costs the CPU tens of
microseconds to launch: Phi-3-mini on an H200 took 27 ms a token, of which the GPU was busy 6.6.
A CUDA graph launches the whole step at once: 7.3 ms a token there, 2.3-2.8x the eager steps in
the same process, with the same greedy tokens (docs/PERFORMANCE.md).

A graph replays fixed shapes and addresses, so the captured step (`StaticDecode`) takes the token
and its position from device tensors: the rotary tables are indexed there, the new key and value
are written there (`index_copy_`), and attention reads a fixed span of the cache, a multiple of
SPAN positions, with the positions after the token masked. The part of the span not yet written
is zeroed before capture (a masked score is -inf only if the key is finite). A sequence's graph
is captured again when it crosses into the next span, or when its cache or a rotary table has
moved (growth). LANTERN_CUDA_GRAPHS=0 turns graphs off; a
capture that fails turns them off for the model and says why under --verbose (`disabled`).
"""

from __future__ import annotations

import itertools
import os
import weakref
from collections import OrderedDict

import torch

SPAN = 256


class StaticCache:
    """A KVCache as Attention sees it in a captured step: writes at a device position, reads a
    fixed span."""

    def __init__(self, cache, pos: torch.Tensor, span: int):
        self.cache, self.pos, self.span = cache, pos, span

    @property
    def length(self) -> int:
        return self.cache.length

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys.index_copy_(1, self.pos, k.transpose(0, 1))
        values.index_copy_(1, self.pos, v.transpose(0, 1))
        return keys[:, : self.span], values[:, : self.span]


class StaticDecode:
    """A decode step whose token and position are device tensors and whose shapes depend only on
    the span: the same math as the eager step, with the keys after the position masked. Runs on
    any device (the CPU tests compare it with the eager step); GraphedDecode captures it."""

    def __init__(self, transformer, device: torch.device):
        self.transformer = transformer
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)

    def prepare(self, tokens: torch.Tensor, cache) -> int:
        """Room for the token, the span it falls in, and the inputs set; returns the span."""
        t = self.transformer
        pos = cache.length
        cache.reserve(1)  # a full context raises here, as the eager step would
        span = min(-(-(pos + 1) // SPAN) * SPAN, cache.max_length)
        cache.reserve(span - pos)
        for rotary in t._rotaries:
            rotary.tables(0, span)  # grown now, not inside a capture
        self.token.copy_(tokens.reshape(1))
        self.pos.fill_(pos)
        return span

    @staticmethod
    def clear_unwritten(cache, pos: int, span: int) -> None:
        """Zero the cache from `pos` to the end of the span: whatever lies there (fresh memory,
        keys of a rolled-back draft) must be finite for the mask to hide it."""
        for store in (cache.keys, cache.values):
            for t in store:
                t[:, pos:span].zero_()

    def __call__(self, cache, span: int) -> torch.Tensor:
        """Logits [1, vocab] of the token at self.pos; writes its key and value. Does not move
        cache.length."""
        t = self.transformer
        x = t.embed(self.token)
        tables = {id(r): (r._cos.index_select(0, self.pos), r._sin.index_select(0, self.pos))
                  for r in t._rotaries}
        k = torch.arange(span, device=self.pos.device)
        biases = {}
        for window in t._windows:
            visible = k <= self.pos
            if window:
                visible &= (self.pos - k) < window
            biases[window] = torch.zeros(1, span, device=k.device).masked_fill_(~visible, float("-inf"))
        return t.head(t.run_blocks(x, tables, biases, StaticCache(cache, self.pos, span)))


class GraphedDecode:
    """StaticDecode captured in CUDA graphs and replayed for every one-token step: one graph per
    sequence (its cache) for the last few sequences, so a batch of sequences stepped one after
    the other (the server on a GPU) does not capture at every step."""

    KEEP = 16  # graphs kept, least recently used dropped first

    @classmethod
    def build(cls, transformer) -> "GraphedDecode | None":
        device = transformer.embedding.raw.device
        if device.type != "cuda" or os.environ.get("LANTERN_CUDA_GRAPHS", "1") == "0":
            return None
        return cls(transformer, device)

    def __init__(self, transformer, device: torch.device):
        self.step = StaticDecode(transformer, device)
        self.graphs: OrderedDict[int, tuple[tuple, torch.cuda.CUDAGraph, torch.Tensor]] = OrderedDict()
        self.pool = None  # the graphs run one at a time: one memory pool, made at the first capture
        self.disabled: str | None = None  # why graphs are off for this model

    def __call__(self, tokens: torch.Tensor, cache) -> torch.Tensor | None:
        """Logits [1, vocab] of the one token in `tokens` after `cache`, or None where the eager
        step must run (graphs turned off)."""
        if self.disabled:
            return None
        pos = cache.length
        span = self.step.prepare(tokens, cache)
        # A cache is known by a mark it carries (never by id(): a new cache can reuse an old one's
        # id and memory, whose unwritten span would then not be zeroed). Its graph is replaced
        # when the span, its storage (growth) or a rotary table changes.
        if cache.graph_mark is None:
            cache.graph_mark = next(_marks)
            weakref.finalize(cache, self.graphs.pop, cache.graph_mark, None)  # its graph goes with it
        mark = cache.graph_mark
        key = (span, cache.keys[0].data_ptr(), cache.values[0].data_ptr(),
               tuple(r._cos.data_ptr() for r in self.step.transformer._rotaries))
        held = self.graphs.pop(mark, None)
        if held is None or held[0] != key:
            held = None  # dropped before capturing anew: its memory goes back to the pool
            try:
                held = (key, *self._capture(cache, span, pos))
            except Exception as exc:  # noqa: BLE001  (any capture failure: run eagerly from now on)
                self.graphs.clear()
                self.disabled = f"CUDA graph capture failed ({type(exc).__name__}: {exc}); decode runs eagerly"
                return None
        self.graphs[mark] = held
        while len(self.graphs) > self.KEEP:
            self.graphs.popitem(last=False)
        _, graph, logits = held
        graph.replay()
        cache.length = pos + 1
        return logits.clone()

    def _capture(self, cache, span: int, pos: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        self.step.clear_unwritten(cache, pos, span)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: kernels compiled, libraries initialised
            for _ in range(2):
                self.step(cache, span)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self.step(cache, span)
        return graph, logits


_marks = itertools.count(1)

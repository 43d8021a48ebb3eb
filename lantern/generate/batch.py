"""Continuous batching: many sequences decoded together, one pass per step.

One engine thread owns the model. Each step it joins the next token of every decoding sequence,
and a chunk of one prompt still being read, into one pass (`Model.forward_batch`), so the
weights are read once for all of them; each sequence keeps its own KV cache and sampler. A new
request joins at the next step, and one whose handle is cancelled (a client that went away) is
dropped at the next step.

The KV budget (`ctx_size`, in tokens) is shared by all sequences. A request reserves its prompt
plus `max_tokens` when it is admitted, and waits in the queue, first come first served, until
its reservation fits: sequences are never preempted and prompts never truncated. A request
without `max_tokens` reserves its fair share, `ctx_size / parallel` (or its prompt plus
UNBOUNDED_ROOM tokens, if that is more), so that `parallel` such requests run at once; it ends
with finish reason "context" when the reservation is used up. No reservation exceeds the
per-request limit, the smaller of the model's context and `ctx_size`; a prompt that leaves no
room under it is refused at submission (`ContextOverflowError`, naming both counts). A queue of
more than `queue_size` waiting requests refuses new ones (`QueueFull`).

Finished sequences leave their caches to idle slots (`parallel` slots in all): a request whose
prompt shares a prefix with what a slot holds (the next turn of a chat, a common system prompt)
reuses it and runs only the rest.

`BatchEngine.generate(...)` is the Python API over it (a `Generation`, as `lantern.generate`
returns); `submit` is the layer below, a `Handle` of token ids.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence as Seq

from ..errors import ContextOverflowError, LanternError
from ..model import PREFILL_CHUNK
from .decode import Sequence, common_prefix_length
from .sampling import Sampler, SamplerSettings

# Tokens reserved for the answer of a request without max_tokens, at least.
UNBOUNDED_ROOM = 256

# Sequences per pass the engine reports to observers by: the histogram buckets of /metrics.
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)


class QueueFull(LanternError):
    """The engine's queue holds as many waiting requests as it may: try again later."""


class EngineClosed(LanternError):
    """The engine has shut down."""


@dataclass
class StepStats:
    """One pass of the engine, for observers (metrics): sequences and tokens in it, how many of
    them were decode tokens, and its seconds."""

    sequences: int
    tokens: int
    decode_tokens: int
    seconds: float


class Handle:
    """A submitted request. `tokens()` yields its token ids as the engine samples them (blocking)
    and ends when the engine finishes it; `finish_reason` then says why: "stop" (an
    end-of-generation token, which is not yielded), "length" (its max_tokens), "context" (its
    reservation of the context is used up), "cancelled". `cancel()` (any thread) drops it at the
    engine's next step; leaving `tokens()` early cancels it too."""

    def __init__(self, prompt_ids: list[int], max_tokens: int | None, reserve: int, ignore_eos: bool = False):
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.ignore_eos = ignore_eos
        self.reserve = reserve
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.prompt_tokens_run = 0  # prompt tokens actually run (a reused prefix is not)
        self.submitted = time.perf_counter()
        self.first_token_at: float | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def tokens(self) -> Iterator[int]:
        try:
            while True:
                kind, value = self._events.get()
                if kind == "token":
                    yield value
                    continue
                if self.error is not None:
                    raise self.error
                return
        finally:
            self.cancel()

    # ----- called by the engine thread -----

    def _token(self, token: int) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self._events.put(("token", token))

    def _end(self, reason: str, error: BaseException | None = None) -> None:
        if self.finish_reason is None:
            self.finish_reason, self.error = reason, error
            self._events.put(("end", reason))


@dataclass
class _Slot:
    """A KV cache and the tokens it holds; `handle` and `seq` are set while a request runs on it."""

    cache: object
    tokens: list[int] = field(default_factory=list)
    handle: Handle | None = None
    seq: Sequence | None = None


class BatchEngine:
    """Runs requests on `model` in batches, from its own thread (see the module's docstring).

    parallel: sequences decoded at once (and KV caches kept). ctx_size: the KV budget in tokens
    shared by them (default `parallel` x min(model context, 4096)). queue_size: requests that
    may wait. step_tokens: tokens per pass at most (decode tokens plus a prompt chunk), where the
    model runs passes natively; a prompt read with nothing decoding takes whole prefill chunks.
    exact_batches: decode tokens keep 15-bit x however many share a pass (`Model.forward_batch`'s
    exact): outputs the same as alone but for last-bit near-ties, at the 15-bit route's speed.
    on_step(StepStats): called from the engine thread after every pass (metrics).
    """

    def __init__(self, model, parallel: int = 4, ctx_size: int | None = None, queue_size: int = 64,
                 step_tokens: int | None = None, on_step: Callable[[StepStats], None] | None = None,
                 exact_batches: bool = False):
        if parallel < 1:
            raise LanternError(f"parallel must be at least 1, got {parallel}")
        if queue_size < 0:
            raise LanternError(f"the queue size must be 0 or more, got {queue_size}")
        self.model = model
        self.parallel = parallel
        self.exact_batches = exact_batches
        self.ctx_size = int(ctx_size) if ctx_size else parallel * min(model.context_length, 4096)
        if self.ctx_size < 2:
            raise LanternError(f"ctx-size must be at least 2 tokens, got {self.ctx_size}")
        self.request_limit = min(model.context_length, self.ctx_size)
        self.queue_size = queue_size
        native_limit = getattr(getattr(model, "transformer", None), "native_step", None)
        self.step_tokens = step_tokens or (native_limit.max_batch_tokens if native_limit else PREFILL_CHUNK)
        self.on_step = on_step
        self.stop_ids = frozenset(model.tokenizer.stop_ids)
        self._slots = [_Slot(cache=None) for _ in range(parallel)]
        self._waiting: collections.deque[tuple[Handle, Sampler]] = collections.deque()
        self._lock = threading.Condition()
        self._closed = False
        self.reserved = 0  # tokens of the KV budget held by running sequences
        self._thread = threading.Thread(target=self._loop, name="lantern-engine", daemon=True)
        self._thread.start()

    # ----- submitting -----

    def submit(self, prompt_ids: Seq[int], sampling: Sampler | SamplerSettings | None = None,
               max_tokens: int | None = None, ignore_eos: bool = False) -> Handle:
        """Queue a request; raises ContextOverflowError (prompt over the per-request limit),
        QueueFull or EngineClosed at once, before it waits. `sampling`: settings, or a Sampler
        the engine thread then owns. `ignore_eos`: end-of-generation tokens do not end it
        (benchmarks of a fixed length)."""
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise LanternError("the prompt is empty; give some text")
        vocab = self.model.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise LanternError(f"token ids must be in [0, {vocab}); got {min(ids)}..{max(ids)}")
        if len(ids) >= self.request_limit:
            raise ContextOverflowError(
                f"the prompt is {len(ids)} tokens but a request may hold {self.request_limit} (prompt and "
                f"answer together); shorten the prompt")
        if max_tokens is not None and max_tokens < 0:
            max_tokens = None
        room = self.request_limit - len(ids)
        if max_tokens is None:  # its share of the budget, so that `parallel` such requests run at once
            max_tokens_reserved = max(self.ctx_size // self.parallel - len(ids), UNBOUNDED_ROOM)
        else:
            max_tokens_reserved = max_tokens
        reserve = len(ids) + min(max_tokens_reserved, room)
        handle = Handle(ids, max_tokens, reserve, ignore_eos)
        sampler = sampling if isinstance(sampling, Sampler) else Sampler(sampling or SamplerSettings())
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine has shut down")
            if len(self._waiting) >= self.queue_size and not self._admissible_now(reserve):
                raise QueueFull(f"{len(self._waiting)} requests are already waiting; try again later")
            self._waiting.append((handle, sampler))
            self._lock.notify()
        return handle

    def generate(self, prompt_or_messages, *, max_tokens: int | None = 256, stop: Seq[str] | str = (),
                 chat: bool = True, system: str | None = None, **sampling):
        """A `Generation` (as `lantern.generate` returns) served by this engine: iterate it for
        text. `sampling` takes SamplerSettings' keywords (temperature, top_k, seed, ...)."""
        from .prompts import prompt_ids_for
        from .stream import Generation, normalize_max_tokens, normalize_stop

        started = time.perf_counter()
        settings = SamplerSettings(**sampling)
        max_tokens = normalize_max_tokens(max_tokens)
        stop = normalize_stop(stop)
        ids = prompt_ids_for(self.model, prompt_or_messages, chat=chat, system=system)
        sampler = Sampler(settings)
        handle = self.submit(ids, sampler, max_tokens)
        return Generation(self.model, ids, sampler, max_tokens=max_tokens, stop=stop,
                          build_seconds=time.perf_counter() - started, continuation=not chat, source=handle)

    # ----- state, for metrics -----

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return sum(slot.handle is not None for slot in self._slots)

    @property
    def kv_tokens(self) -> int:
        """Tokens held in the KV caches (running sequences and idle slots kept for reuse)."""
        return sum(slot.cache.length for slot in self._slots if slot.cache is not None)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop: cancel waiting and running requests (they end "cancelled") and join the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout)

    def __enter__(self) -> "BatchEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- the engine thread -----

    def _admissible_now(self, reserve: int) -> bool:
        return (not self._waiting and self.reserved + reserve <= self.ctx_size
                and any(slot.handle is None for slot in self._slots))

    def _admit(self) -> None:
        """Start waiting requests, first come first served, while a slot and budget are free."""
        while self._waiting:
            handle, sampler = self._waiting[0]
            if handle.cancelled:
                self._waiting.popleft()
                handle._end("cancelled")
                continue
            free = [slot for slot in self._slots if slot.handle is None]
            if not free or self.reserved + handle.reserve > self.ctx_size:
                return
            self._waiting.popleft()
            slot = max(free, key=lambda s: common_prefix_length(s.tokens, handle.prompt_ids))
            if slot.cache is None:
                slot.cache = self.model.new_cache(self.request_limit)
            slot.cache.truncate(common_prefix_length(slot.tokens, handle.prompt_ids))
            try:
                slot.seq = Sequence(self.model, handle.prompt_ids, sampler, slot.cache)
            except LanternError as exc:
                handle._end("error", exc)
                continue
            handle.prompt_tokens_run = len(handle.prompt_ids) - slot.seq.cached_prompt
            slot.handle = handle
            self.reserved += handle.reserve

    def _release(self, slot: _Slot, reason: str, error: BaseException | None = None) -> None:
        slot.handle._end(reason, error)
        self.reserved -= slot.handle.reserve
        slot.tokens = slot.seq.tokens[: slot.cache.length]
        slot.handle = slot.seq = None

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not self._waiting and not any(s.handle for s in self._slots):
                    self._lock.wait()
                if self._closed:
                    break
                self._admit()
            for slot in self._slots:
                if slot.handle is not None and slot.handle.cancelled:
                    self._release(slot, "cancelled")
            # With nothing running every slot and the whole budget are free, and no reservation
            # exceeds the budget: whatever waits was admitted above, so an empty pass never spins.
            running = [slot for slot in self._slots if slot.handle is not None]
            if running:
                self._step(running)
        for slot in self._slots:
            if slot.handle is not None:
                self._release(slot, "cancelled")
        while self._waiting:
            self._waiting.popleft()[0]._end("cancelled")

    def _step(self, running: list[_Slot]) -> None:
        decoding = [slot for slot in running if not slot.seq.prefilling]
        reading = [slot for slot in running if slot.seq.prefilling]
        batch = [(slot, slot.seq.pending(1)) for slot in decoding]
        # Prompts being read ride along, oldest first, in the room the decoders leave (a prompt
        # read with nothing decoding takes a whole prefill chunk).
        room = self.step_tokens - len(batch) if batch else PREFILL_CHUNK
        for slot in reading:
            if room <= 0:
                break
            chunk = slot.seq.pending(room)
            batch.append((slot, chunk))
            room -= len(chunk)
        started = time.perf_counter()
        try:
            with self.model.decode_threads():
                logits = self.model.forward_batch([(tokens, slot.cache) for slot, tokens in batch],
                                                  [slot.seq.prefilling for slot, _ in batch], exact=self.exact_batches)
                tokens = [slot.seq.advance(row) for (slot, _), row in zip(batch, logits)]
        except Exception as exc:  # noqa: BLE001  (the pass failed: its requests get the error, the engine lives)
            for slot, _ in batch:
                slot.cache.truncate(0)  # what the failed pass left in it is unknown
                self._release(slot, "error", exc)
            return
        if self.on_step is not None:
            self.on_step(StepStats(len(batch), sum(len(t) for _, t in batch), len(decoding),
                                   time.perf_counter() - started))
        for (slot, _), token in zip(batch, tokens):
            if token is None:
                continue
            handle, seq = slot.handle, slot.seq
            if token in self.stop_ids and not handle.ignore_eos:
                self._release(slot, "stop")
                continue
            handle._token(token)
            generated = len(seq.tokens) - len(seq.prompt_ids)
            if handle.max_tokens is not None and generated >= handle.max_tokens:
                self._release(slot, "length")
            elif len(seq.tokens) >= handle.reserve or seq.full:
                self._release(slot, "context")

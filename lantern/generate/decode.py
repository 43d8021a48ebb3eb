"""The token loop: prefill, step and the context limit, in one place.

Single-sequence generation (`generate_tokens`), speculative decoding (`speculative.py`) and the
batch engine (`batch.py`) are all users of what is here:

- `Sequence`: one sequence's place in the loop. `pending` is what the next pass must run for it
  (the part of the prompt its cache lacks, then the latest sampled token); after a pass,
  `advance(logits)` samples the next token once the prompt is complete. Whoever runs the pass
  decides how to group sequences: one at a time (`generate_tokens`) or many in one pass (the
  batch engine).
- `prefill`: the prompt in chunks, for a caller that feeds the last token itself (speculation).
- `context_limit` / `check_fits`: the rule, as llama-cpp-python's: prompt plus generated tokens
  never exceed the context. A prompt that leaves no room for one token raises
  `ContextOverflowError` before any compute.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Sequence as Seq

from ..errors import ContextOverflowError, LanternError
from ..model import PREFILL_CHUNK  # one model chunk per pass: cancellable (and batchable) between them
from .sampling import Sampler


def context_limit(model, cache=None) -> int:
    """The most tokens a sequence may hold: the model's context, or a smaller cache's."""
    limit = int(model.context_length)
    cache_max = getattr(cache, "max_length", None)
    return min(limit, int(cache_max)) if cache_max else limit


def check_fits(model, n_prompt: int, cache=None) -> None:
    """Raise ContextOverflowError unless a prompt of `n_prompt` tokens leaves room for one more."""
    limit = context_limit(model, cache)
    if n_prompt >= limit:
        raise ContextOverflowError(
            f"the prompt is {n_prompt} tokens but the context holds {limit} (prompt and answer "
            f"together); shorten the prompt"
        )


def common_prefix_length(a: Seq[int], b: Seq[int]) -> int:
    """How many leading tokens two sequences share: what a cache holding `a` can keep for `b`."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _start_cache(model, prompt_ids: list[int], cache):
    """A cache that holds a prefix of `prompt_ids` and at least one token less than all of it
    (the last prompt token is run again when the whole prompt is cached: its logits are what
    comes next)."""
    if not prompt_ids:
        raise LanternError("the prompt is empty; give some text")
    if cache is None:
        cache = model.new_cache()
    check_fits(model, len(prompt_ids), cache)
    if cache.length > len(prompt_ids):
        raise ValueError(f"cache holds {cache.length} tokens, more than the {len(prompt_ids)}-token prompt")
    if cache.length == len(prompt_ids):
        cache.truncate(len(prompt_ids) - 1)
    return cache


class Sequence:
    """One sequence in the token loop: its tokens (prompt, then sampled), its KV cache and its
    sampler.

    `cache` (default: a new one) must hold a prefix of `prompt_ids` (the caller guarantees it,
    e.g. a chat session after `cache.truncate(common_prefix)`); only the rest is run. When
    `advance` returns token t, the cache holds the prompt and every token before t: t itself is
    the next pass's input, so stopping after t costs nothing.
    """

    def __init__(self, model, prompt_ids: Seq[int], sampler: Sampler, cache=None):
        self.prompt_ids = [int(t) for t in prompt_ids]
        self.cache = _start_cache(model, self.prompt_ids, cache)
        self.cached_prompt = self.cache.length  # prompt tokens reused from the cache
        self.tokens = list(self.prompt_ids)
        self.sampler = sampler
        self.limit = context_limit(model, self.cache)
        sampler.reset(self.prompt_ids)

    @property
    def prefilling(self) -> bool:
        """Prompt tokens remain to be run before the first token can be sampled."""
        return self.cache.length < len(self.prompt_ids)

    def pending(self, max_tokens: int = PREFILL_CHUNK) -> list[int]:
        """The next pass's input: up to `max_tokens` tokens the cache lacks."""
        return self.tokens[self.cache.length : self.cache.length + max_tokens]

    @property
    def full(self) -> bool:
        """The sequence holds as many tokens as the context allows: nothing more is sampled."""
        return len(self.tokens) >= self.limit

    def advance(self, logits) -> int | None:
        """After a pass ran `pending(...)`: the next token sampled from the logits of the last
        token fed, or None while the prompt is still being read."""
        if self.cache.length < len(self.tokens):
            return None
        token = self.sampler(logits)
        self.sampler.accept(token)
        self.tokens.append(token)
        return token


def prefill(model, prompt_ids: list[int], cache, *,
            should_stop: Callable[[], bool] | None = None,
            on_prefill: Callable[[int, float], None] | None = None):
    """Run the part of `prompt_ids` that `cache` lacks, in chunks; `(completed, logits)`.

    The cache must hold a prefix of the prompt. If it holds the whole prompt, the last token is
    run again: its logits are what comes next. The tokens are read as a prompt (`Model.forward`'s
    prompt: at avx2 the K-quants' products on x rounded to int8 per 32). `should_stop()` is polled
    between chunks: a cancelled prefill returns (False, None). `on_prefill(n_tokens, seconds)`
    is called once the prompt is processed.
    """
    _start_cache(model, prompt_ids, cache)
    started = time.perf_counter()
    todo = prompt_ids[cache.length :]
    logits = None
    for i in range(0, len(todo), PREFILL_CHUNK):
        if should_stop is not None and should_stop():
            return False, None
        logits = model.forward(todo[i : i + PREFILL_CHUNK], cache, last_only=True, prompt=True)
    if on_prefill is not None:
        on_prefill(len(todo), time.perf_counter() - started)
    return True, logits


def generate_tokens(
    model,
    prompt_ids: Seq[int],
    sampler: Sampler,
    cache=None,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_prefill: Callable[[int, float], None] | None = None,
) -> Iterator[int]:
    """Yield sampled token ids continuing `prompt_ids`, one sequence alone, until the context is
    full (see `Sequence` for the cache contract).

    The sampler's penalty window is reset to the prompt; each yielded token is accepted.
    `should_stop()` is polled between prefill chunks (a cancelled prefill returns early);
    `on_prefill(n_tokens_run, seconds)` is called once the prompt is processed.
    """
    seq = Sequence(model, prompt_ids, sampler, cache)
    done, logits = prefill(model, seq.prompt_ids, seq.cache, should_stop=should_stop, on_prefill=on_prefill)
    if not done:
        return
    threads = getattr(model, "decode_threads", contextlib.nullcontext)
    with threads():
        token = seq.advance(logits)
    while True:
        yield token
        if seq.full:
            return
        with threads():  # the step and its sampling
            logits = model.forward(seq.pending(1), seq.cache, last_only=True)
            token = seq.advance(logits)

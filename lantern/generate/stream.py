"""Generation: text streamed and stopped on top of the token loop (`decode.py`).

`Generation` drives `decode.generate_tokens` (or speculation's greedy tokens), stops at
end-of-generation ids, `max_tokens`, the context limit and user stop strings, and streams text
through the tokenizer's `StreamDecoder` (each token is decoded once; the output is never
re-decoded as a whole). `generate(model, prompt_or_messages, ...)` / `complete(...)` are the
public API (also `Model.generate` / `Model.complete`): they build the prompt, check it fits, and
return a `Generation`.

Finish reasons: "stop" (end-of-generation token or stop string), "length" (max_tokens),
"context" (context full), "cancelled" (`Generation.cancel()`/`close()` or an exception).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..errors import LanternError
from .decode import check_fits, generate_tokens
from .prompts import prompt_ids_for
from .sampling import Sampler, SamplerSettings
from .speculative import SpeculationStats, make_proposer, speculative_greedy_tokens

STOP, LENGTH, CONTEXT, CANCELLED = "stop", "length", "context", "cancelled"


class SpeculationWarning(UserWarning):
    """Speculative decoding was asked for but cannot apply (sampled decoding)."""


_DEFAULTS = SamplerSettings()


@dataclass
class Timings:
    """Where the time went (model loading not included).

    prompt: the prompt tokens actually run (a chat turn reuses its cached prefix) and the time
    from the start of prefill to the first sampled token. generation: every token sampled after
    the first, one forward pass each, and the time they took. first_token_seconds: from the
    start (prompt building included) to the first sampled token.
    """

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    first_token_seconds: float | None = None
    build_seconds: float = 0.0

    @property
    def prompt_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def decode_steps(self) -> int:
        return max(self.generated_tokens - 1, 0)

    @property
    def generation_tokens_per_second(self) -> float:
        return self.decode_steps / self.generation_seconds if self.generation_seconds > 0 else 0.0

    def summary(self) -> str:
        ttft = f"{self.first_token_seconds:.2f} s" if self.first_token_seconds is not None else "-"
        return (
            f"prompt {self.prompt_tokens} tok in {self.prompt_seconds:.2f} s "
            f"({self.prompt_tokens_per_second:.1f} tok/s), generation {self.generated_tokens} tok in "
            f"{self.generation_seconds:.2f} s ({self.generation_tokens_per_second:.1f} tok/s), "
            f"first token after {ttft}"
        )


class StopStrings:
    """Streams text through, holding back what could be the start of a stop string.

    `push(text)` returns (text safe to emit, stopped). When a stop string is complete, the text
    before it is returned and the stop string itself never is. `flush()` returns what is held.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.matched: str | None = None  # the stop string that ended the text

    def push(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        hits = [(i, s) for i, s in ((self.pending.find(s), s) for s in self.stops) if i >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda h: h[0])
            out, self.pending = self.pending[:at], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:k]):
                    hold = k
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _stream_decoder(tokenizer, continuation: bool):
    from ..tokenizer import StreamDecoder

    return StreamDecoder(tokenizer, continuation=continuation)


class Generation:
    """A completion in progress. Iterate it for text pieces as they are produced; afterwards (or
    at any time, for what has been produced so far) read:

    text, token_ids (generated, without the end-of-generation token), prompt_ids, prompt_tokens,
    finish_reason (None while running), timings, seed.

    `complete()` runs it to the end; `cancel()` (safe from a signal handler or another thread)
    makes it stop before the next token; `close()` stops it now.

    `continuation=True` (raw text): the text continues the prompt exactly, a leading space
    included. `continuation=False` (chat answers): the answer is decoded on its own, so the
    space a SentencePiece model puts before its first word is dropped (as HF's decode does).
    """

    def __init__(
        self,
        model,
        prompt_ids: Sequence[int],
        sampler: Sampler,
        *,
        max_tokens: int | None = 256,
        stop: Sequence[str] | str = (),
        cache=None,
        on_finish: Callable[["Generation"], None] | None = None,
        build_seconds: float = 0.0,
        continuation: bool = True,
        proposer=None,
        source=None,
    ):
        self.model = model
        self.prompt_ids = [int(t) for t in prompt_ids]
        self.sampler = sampler
        self.max_tokens = normalize_max_tokens(max_tokens)
        self.stop = normalize_stop(stop)
        # `source`: where the tokens come from when another loop samples them (the batch
        # engine's Handle: .tokens(), .finish_reason, .prompt_tokens_run); the cache is its own.
        self.source = source
        self.cache = cache if cache is not None or source is not None else model.new_cache()
        self.on_finish = on_finish
        self.continuation = continuation
        self.text = ""
        self.token_ids: list[int] = []
        self.sampled_ids: list[int] = []  # every sampled id, the end-of-generation one included
        self.finish_reason: str | None = None
        self.stop_string: str | None = None  # the stop string that ended it, if one did
        self.timings = Timings(build_seconds=build_seconds)
        self.proposer = proposer if proposer is not None and sampler.settings.plain_greedy else None
        if proposer is not None and self.proposer is None:
            warnings.warn("speculative decoding needs greedy decoding (temperature 0, no penalties); "
                          "decoding without it", SpeculationWarning, stacklevel=3)
        self.speculation = SpeculationStats() if self.proposer is not None else None
        self._cancel = False
        self._finished = False
        self._iterator = self._run()

    # ----- public -----

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def done(self) -> bool:
        return self._finished

    def __iter__(self) -> Iterator[str]:
        return self._iterator

    def __next__(self) -> str:
        return next(self._iterator)

    def complete(self) -> "Generation":
        for _ in self._iterator:
            pass
        return self

    def cancel(self) -> None:
        self._cancel = True

    def close(self) -> None:
        self._iterator.close()
        self._finish(CANCELLED)

    def __repr__(self) -> str:
        return (f"Generation(finish_reason={self.finish_reason!r}, prompt_tokens={self.prompt_tokens}, "
                f"generated={len(self.token_ids)}, text={self.text[:40]!r})")

    # ----- the loop -----

    def _run(self) -> Iterator[str]:
        started = time.perf_counter()
        timings = self.timings
        eog = self.model.tokenizer.stop_ids
        decoder = _stream_decoder(self.model.tokenizer, self.continuation)
        stops = StopStrings(self.stop)
        reason = None  # stays None if an exception or close() ends the loop: "cancelled"
        tokens = None

        def on_prefill(n: int, seconds: float) -> None:
            timings.prompt_tokens = n

        try:
            if self.max_tokens == 0:
                reason = LENGTH
                return
            if self.source is not None:
                tokens = self.source.tokens()
            elif self.proposer is not None:
                tokens = speculative_greedy_tokens(
                    self.model, self.prompt_ids, self.proposer, self.cache, stats=self.speculation,
                    should_stop=lambda: self._cancel, on_prefill=on_prefill,
                )
            else:
                tokens = generate_tokens(
                    self.model, self.prompt_ids, self.sampler, self.cache,
                    should_stop=lambda: self._cancel, on_prefill=on_prefill,
                )
            first_at = None
            stop_hit = False
            for token in tokens:
                now = time.perf_counter()
                self.sampled_ids.append(token)
                timings.generated_tokens += 1
                if first_at is None:
                    first_at = now
                    if self.source is not None:
                        timings.prompt_tokens = self.source.prompt_tokens_run
                    timings.prompt_seconds = now - started
                    timings.first_token_seconds = timings.build_seconds + (now - started)
                else:
                    timings.generation_seconds = now - first_at
                if token in eog:
                    reason = STOP
                    break
                self.token_ids.append(token)
                piece, stop_hit = stops.push(decoder.push(token))
                if piece:
                    self.text += piece
                    yield piece
                if stop_hit:
                    reason = STOP
                    break
                if self.max_tokens is not None and len(self.token_ids) >= self.max_tokens:
                    reason = LENGTH
                    break
                if self._cancel:
                    reason = CANCELLED
                    break
            else:
                reason = CANCELLED if self._cancel else self._source_reason()
            if not stop_hit:
                # Bytes the decoder still holds (an incomplete character) and held-back text.
                tail, stop_hit = stops.push(decoder.flush())
                if stop_hit:
                    reason = STOP
                else:
                    tail += stops.flush()
                if tail:
                    self.text += tail
                    yield tail
        finally:
            self.stop_string = stops.matched
            if tokens is not None:
                tokens.close()
            self._finish(reason or CANCELLED)

    def _source_reason(self) -> str:
        """Why the tokens ran out: the context filled, or the source's own finish reason."""
        if self.source is None:
            return CONTEXT
        return {"stop": STOP, "length": LENGTH, "context": CONTEXT}.get(self.source.finish_reason, CANCELLED)

    def _finish(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        self.finish_reason = reason
        if self.on_finish is not None:
            self.on_finish(self)


def normalize_max_tokens(max_tokens: int | None) -> int | None:
    """None or a negative number: no limit (until end of generation or the context fills)."""
    if max_tokens is None:
        return None
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise LanternError(f"max-tokens must be an integer (-1 for no limit), got {max_tokens!r}")
    return None if max_tokens < 0 else max_tokens


def normalize_stop(stop: Sequence[str] | str | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    for s in stop:
        if not isinstance(s, str):
            raise LanternError(f"stop strings must be strings, got {s!r}")
    return tuple(s for s in stop if s)


def generate(
    model,
    prompt_or_messages,
    max_tokens: int | None = 256,
    temperature: float = _DEFAULTS.temperature,
    top_k: int = _DEFAULTS.top_k,
    top_p: float = _DEFAULTS.top_p,
    min_p: float = _DEFAULTS.min_p,
    repeat_penalty: float = _DEFAULTS.repeat_penalty,
    repeat_last_n: int = _DEFAULTS.repeat_last_n,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    seed: int | None = None,
    stop: Sequence[str] | str = (),
    chat: bool = True,
    system: str | None = None,
    speculate=None,
    json_schema=None,
    regex: str | None = None,
    grammar: str | None = None,
    logprobs: int | None = None,
    template_options: Mapping[str, Any] | None = None,
) -> Generation:
    """Start a completion; iterate the returned Generation for text as it is produced.

    `prompt_or_messages`: a string (chat=True: one user message, with `system` as the system
    message, rendered with the model's chat template; chat=False: raw text) or a list of
    {"role", "content"} dicts. Sampling defaults are llama.cpp's (see SamplerSettings);
    temperature 0 is greedy. `max_tokens` None or -1: until the model stops or the context
    fills. `stop`: strings that end the completion (not included in the text).

    Raises LanternError (bad settings, template failure, empty prompt) and
    ContextOverflowError (prompt too long) before any model compute.

    `speculate`: None, "lookup" (drafts looked up in the prompt and output), a draft Model of the
    same vocabulary, or any proposer (see lantern.generate.speculative). Applies to greedy decoding.

    Structured output (lantern.generate.constrained), at most one of: `json_schema` (a dict or
    JSON text; {"type": "object"} for any JSON object), `regex`, `grammar` (Lark, or GBNF with a
    `root ::=` rule). Every completion that finishes "stop" then parses; a "length" one may be
    cut. Speculation is not combined with it (a SpeculationWarning says so).
    `logprobs`: None, or K >= 0 to record each token's log-probability and its K most likely
    alternatives in `generation.sampler.logprobs`.
    `template_options`: variables for the chat template besides the messages, e.g.
    {"enable_thinking": False} for Qwen3 (an empty think block: the answer without reasoning).
    """
    started = time.perf_counter()
    settings = SamplerSettings(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, seed=seed,
    )
    max_tokens = normalize_max_tokens(max_tokens)
    stop = normalize_stop(stop)
    ids = prompt_ids_for(model, prompt_or_messages, chat=chat, system=system, template_options=template_options)
    check_fits(model, len(ids))
    from .constrained import make_constraint

    constraint = make_constraint(model, json_schema=json_schema, regex=regex, grammar=grammar)
    if constraint is not None and speculate is not None:
        warnings.warn("speculative decoding does not apply to constrained output; decoding without it",
                      SpeculationWarning, stacklevel=2)
        speculate = None
    return Generation(model, ids, Sampler(settings, constraint, logprobs=logprobs), max_tokens=max_tokens,
                      stop=stop, build_seconds=time.perf_counter() - started, continuation=not chat,
                      proposer=make_proposer(model, speculate))


def complete(model, prompt_or_messages, **options) -> Generation:
    """`generate(...)` run to the end (non-streaming): read .text, .finish_reason, .timings."""
    return generate(model, prompt_or_messages, **options).complete()

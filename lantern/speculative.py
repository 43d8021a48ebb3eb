"""Speculative decoding: guess several tokens cheaply, check them with one forward pass.

On a CPU, one forward pass over k+1 tokens costs about as much as over one: the time goes into
reading the weights, not into arithmetic. So a guess of k tokens that the model would have chosen
anyway is verified at the price of a single decode step, and every accepted token is free.

Proposers (anything with `propose(tokens) -> list[int]`):
- `PromptLookup`: n-gram lookup in the sequence itself (prompt and output). Rewriting,
  summarising, code editing and question answering over a given text repeat long spans of it.
- `DraftModel`: a small model with the same vocabulary drafts greedily on its own KV cache.

Verification is greedy: drafts are accepted while they equal the arg-max of the target model's
logits, and the first mismatch is replaced by that arg-max. The output is therefore the target
model's own greedy output; it can differ from one-token-at-a-time decoding only where the top two
logits are so close that a batched matmul's different summation order decides between them.
Sampled decoding (temperature > 0) is not speculated.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from .errors import LanternError


@dataclass
class SpeculationStats:
    drafted: int = 0
    accepted: int = 0
    verify_passes: int = 0
    tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / self.verify_passes if self.verify_passes else 0.0

    def summary(self) -> str:
        return (f"speculation: {self.accepted}/{self.drafted} drafted tokens accepted "
                f"({100 * self.acceptance_rate:.0f}%), {self.tokens_per_pass:.2f} tokens per pass")


class PromptLookup:
    """Propose the tokens that followed the latest earlier occurrence of the sequence's last n
    tokens (n from `max_ngram` down to `min_ngram`), up to `max_draft` of them.

    Proposals cost nothing (an index of every n-gram's latest position, updated as tokens are
    appended), so the caller asks for as many as it could use and `DraftLength` decides how
    many are worth verifying. Unigram matches are off by default: measured on SmolLM2
    rewriting, they mostly propose wrong tokens.
    """

    free = True  # proposing costs no model steps: unverified proposals are evidence too

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2, max_draft: int = 16):
        if min_ngram < 1 or max_ngram < min_ngram or max_draft < 1:
            raise LanternError("prompt lookup needs 1 <= min_ngram <= max_ngram and max_draft >= 1")
        self.max_ngram, self.min_ngram, self.max_draft = max_ngram, min_ngram, max_draft
        self.reset()

    def reset(self) -> None:
        self._tokens: list[int] = []
        # n -> n-gram -> latest start i with a continuation (i + n < len(tokens))
        self._latest: dict[int, dict[tuple, int]] = {n: {} for n in range(self.min_ngram, self.max_ngram + 1)}

    def _index(self, tokens: Sequence[int]) -> None:
        seen = self._tokens
        if len(tokens) < len(seen) or (seen and tokens[len(seen) - 1] != seen[-1]):
            self.reset()  # another sequence
            seen = self._tokens
        for end in range(len(seen), len(tokens)):  # each new token completes n-grams ending before it
            seen.append(int(tokens[end]))
            for n, latest in self._latest.items():
                if end >= n:
                    latest[tuple(seen[end - n:end])] = end - n

    def propose(self, tokens: Sequence[int], limit: int | None = None) -> list[int]:
        k = min(self.max_draft, limit if limit is not None else self.max_draft)
        if k <= 0:
            return []
        self._index(tokens)
        seq = self._tokens
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            start = self._latest[n].get(tuple(seq[len(seq) - n:]))
            if start is not None:
                return seq[start + n : start + n + k]
        return []


class DraftModel:
    """Greedy drafts from a smaller model of the same vocabulary, on its own KV cache."""

    def __init__(self, draft, max_draft: int = 4):
        if max_draft < 1:
            raise LanternError("a draft model needs max_draft >= 1")
        self.draft = draft
        self.max_draft = max_draft
        self.cache = draft.new_cache()
        self.cached: list[int] = []  # the tokens whose keys/values self.cache holds

    def check_compatible(self, target) -> None:
        if self.draft.vocab_size != target.vocab_size:
            raise LanternError(
                f"the draft model's vocabulary ({self.draft.vocab_size} tokens) differs from the "
                f"model's ({target.vocab_size}); use a draft model of the same family"
            )

    def propose(self, tokens: Sequence[int], limit: int | None = None) -> list[int]:
        k = min(self.max_draft, limit if limit is not None else self.max_draft)
        room = self.draft.context_length - len(tokens)
        k = min(k, room)
        if k <= 0:
            return []
        common = 0
        for a, b in zip(self.cached, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # the last token is fed again for its logits
        self.cache.truncate(common)
        self.cached = list(tokens[:common])
        logits = self.draft.forward(list(tokens[common:]), self.cache, last_only=True)
        self.cached += list(tokens[common:])
        drafts = []
        for i in range(k):
            token = int(logits[-1].argmax())
            drafts.append(token)
            if i == k - 1:
                break
            logits = self.draft.forward([token], self.cache, last_only=True)
            self.cached.append(token)
        return drafts

    def reset(self) -> None:
        self.cache.truncate(0)
        self.cached = []


class DraftLength:
    """How many of the proposed tokens to verify: the length k that maximises the expected tokens
    per second of a pass, from costs and an acceptance rate measured as generation runs.

    A pass over k drafts costs `seconds(k + 1)`; if each draft is right with probability a (given
    the ones before it were), it yields (1 - a^(k+1)) / (1 - a) tokens. Verify passes are not
    free on a CPU (SmolLM2-135M: 1.3x a single step for 2 tokens, 2x for 4), so drafts that are
    rarely right make decoding slower than plain decoding; this picks k = 0, a plain step, when
    no k pays. Costs are per pass length, smoothed, with proposal time included (a draft model's
    steps); unmeasured lengths are interpolated. Evidence about a decays, so a stretch of copied
    text lifts it quickly, and proposals that were not verified still count when they are free
    (prompt lookup): their first token is compared with the token the plain step produced.
    """

    def __init__(self, max_draft: int = 16, decay: float = 0.9):
        self.max_draft, self.decay = max_draft, decay
        self.right, self.wrong = 1.0, 1.0  # a prior acceptance of one half
        self.seconds: dict[int, float] = {}  # pass length -> smoothed seconds

    @property
    def acceptance(self) -> float:
        return self.right / (self.right + self.wrong)

    def observe(self, drafted: int, accepted: int) -> None:
        """A pass verified `drafted` tokens of which the first `accepted` were right."""
        if drafted:
            self.right = self.decay * self.right + accepted
            self.wrong = self.decay * self.wrong + (accepted < drafted)

    def time(self, length: int, seconds: float) -> None:
        old = self.seconds.get(length)
        self.seconds[length] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def cost(self, length: int) -> float:
        """Seconds of a pass over `length` tokens: measured, interpolated, or extrapolated."""
        if length in self.seconds:
            return self.seconds[length]
        known = sorted(self.seconds)
        if not known:
            return float(length)
        below = [n for n in known if n < length]
        above = [n for n in known if n > length]
        if below and above:
            lo, hi = below[-1], above[0]
            return self.seconds[lo] + (self.seconds[hi] - self.seconds[lo]) * (length - lo) / (hi - lo)
        # outside what was measured: an optimistic 0.3 step per extra token, so it gets tried
        edge = below[-1] if below else above[0]
        return max(1e-9, self.seconds[edge] * (1 + 0.3 * (length - edge) / edge))

    def choose(self, available: int) -> int:
        a = min(self.acceptance, 0.999)
        best, best_rate = 0, 1.0 / self.cost(1)
        for k in range(1, min(available, self.max_draft) + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / self.cost(k + 1)
            if rate > best_rate:
                best, best_rate = k, rate
        return best


def make_proposer(model, speculate):
    """A proposer for `speculate`: None, "lookup", a draft Model, or a proposer (returned as is)."""
    if speculate is None or speculate is False:
        return None
    if speculate is True or speculate == "lookup":
        return PromptLookup()
    if hasattr(speculate, "propose"):
        return speculate
    if hasattr(speculate, "forward") and hasattr(speculate, "new_cache"):
        proposer = DraftModel(speculate)
        proposer.check_compatible(model)
        return proposer
    raise LanternError(f"unknown speculation {speculate!r}; use 'lookup' or a draft model")


def speculative_greedy_tokens(
    model,
    prompt_ids: Sequence[int],
    proposer,
    cache=None,
    *,
    stats: SpeculationStats | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_prefill: Callable[[int, float], None] | None = None,
) -> Iterator[int]:
    """Greedy token ids continuing `prompt_ids`, with the contract of
    `lantern.generation.generate_tokens`: when token t is yielded the cache holds the prompt and
    every token before t (drafts verified beyond that are dropped when the consumer stops)."""
    from .generation import context_limit, prefill

    tokens = [int(t) for t in prompt_ids]
    stats = stats if stats is not None else SpeculationStats()
    cache = cache if cache is not None else model.new_cache()
    limit = context_limit(model, cache)
    # The last prompt token is fed with the first drafts: its logits give the first new token.
    done, _ = prefill(model, tokens, cache, hold_last=True, should_stop=should_stop, on_prefill=on_prefill)
    if not done:
        return

    yielded = 0
    threads = getattr(model, "decode_threads", contextlib.nullcontext)
    length = DraftLength(getattr(proposer, "max_draft", 16))
    free_proposals = getattr(proposer, "free", False)
    try:
        while len(tokens) < limit:
            room = limit - len(tokens) - 1
            with threads():  # drafting, the verify pass and its arg-max
                started = time.perf_counter()
                if free_proposals:
                    proposal = proposer.propose(tokens, limit=room) if room > 0 else []
                    drafts = proposal[: length.choose(len(proposal))]
                else:  # a draft model's proposals cost steps: ask only for what will be verified
                    k = length.choose(room)
                    proposal = drafts = proposer.propose(tokens, limit=k) if k > 0 else []
                logits = model.forward([tokens[-1]] + drafts, cache)
                predicted = logits.cpu().numpy().argmax(axis=-1).tolist()  # numpy: ~20x torch's CPU arg-max
                length.time(len(drafts) + 1, time.perf_counter() - started)
            accepted = 0
            while accepted < len(drafts) and drafts[accepted] == predicted[accepted]:
                accepted += 1
            length.observe(len(drafts), accepted)
            if not drafts and proposal and free_proposals:  # what the unverified proposal was worth
                length.observe(1, int(proposal[0] == predicted[0]))
            new = drafts[:accepted] + [predicted[accepted]]
            # Keep keys/values for tokens[-1] and the accepted drafts; the rest were wrong.
            cache.truncate(cache.length - (len(drafts) - accepted))
            stats.drafted += len(drafts)
            stats.accepted += accepted
            stats.verify_passes += 1
            for token in new:
                tokens.append(token)
                stats.tokens += 1
                yielded += 1
                yield token
                if len(tokens) >= limit:
                    return
    finally:
        # Honour the contract for whoever reuses the cache (chat sessions): it holds the prompt
        # and the yielded tokens except the last one.
        cache.truncate(len(prompt_ids) + max(yielded, 1) - 1)

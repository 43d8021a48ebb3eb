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

from ..errors import LanternError
from .decode import context_limit, prefill


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
    many are worth verifying, judging each match length apart (`match`): a lone repeated token
    is a weak hint, verified only while such hints keep paying (SmolLM2 rewriting, 128 tokens:
    1-3-gram matches 191-197 tok/s, 2-3-gram ones 187-190, plain decoding 157-160).
    """

    free = True  # proposing costs no model steps: unverified proposals are evidence too
    match = 0  # the n-gram length behind the latest proposal: drafts are judged by it

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1, max_draft: int = 16):
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
        self.match = 0
        if k <= 0:
            return []
        self._index(tokens)
        seq = self._tokens
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            start = self._latest[n].get(tuple(seq[len(seq) - n:]))
            if start is not None:
                self.match = n
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


class _Rate:
    """A success rate from decaying counts (recent evidence weighs most), prior one half."""

    def __init__(self, decay: float):
        self.decay, self.right, self.wrong = decay, 1.0, 1.0

    def add(self, right: float, wrong: float) -> None:
        self.right = self.decay * self.right + right
        self.wrong = self.decay * self.wrong + wrong

    @property
    def value(self) -> float:
        return self.right / (self.right + self.wrong)


class DraftLength:
    """How many of the proposed tokens to verify: the length k that maximises the expected tokens
    per second of a pass, from costs and acceptance rates measured as generation runs.

    A pass over k drafts costs `seconds(k + 1)` and yields 1 + p (1 + q + ... + q^(k-1)) tokens,
    p the chance that the first draft is right and q that a draft is right after a right one.
    Two rates, because drafts from the text come in runs: either the first token is wrong or
    the model copies a span (SmolLM2 rewriting: first right 74%, mean run 4.3 tokens), which
    one rate for every draft would miss. Verify passes are not free on a CPU (SmolLM2-135M:
    1.3x a single step for 2 tokens, 2x for 4), so drafts that are rarely right make decoding
    slower than plain decoding; this picks k = 0, a plain step, when no k pays. Costs are per
    pass length, smoothed, proposal time included (a draft model's steps). Evidence decays, so a
    stretch of copied text lifts the rates quickly, and proposals that were not verified still
    count when they are free (prompt lookup): their first token is compared with the token the
    plain step produced.
    """

    def __init__(self, max_draft: int = 16, decay: float = 0.9):
        self.max_draft, self.decay = max_draft, decay
        self._rates: dict[object, tuple[_Rate, _Rate]] = {}  # kind of proposal -> (first, next)
        self.seconds: dict[int, float] = {}  # pass length -> smoothed seconds
        self._samples: dict[int, int] = {}

    def rates(self, kind=None) -> tuple[_Rate, _Rate]:
        """(first, next) for proposals of `kind`: prompt lookup's match length (SmolLM2
        rewriting, at the start of a run: 3-gram matches first right 89%, mean run 8.3 tokens;
        2-gram ones 47%, 2.2), or None."""
        if kind not in self._rates:
            self._rates[kind] = (_Rate(self.decay), _Rate(self.decay))
        return self._rates[kind]

    def observe(self, drafted: int, accepted: int, kind=None) -> None:
        """A pass verified `drafted` tokens of which the first `accepted` were right."""
        first, then = self.rates(kind)
        if drafted:
            first.add(accepted > 0, accepted == 0)
        if drafted > 1 and accepted > 0:
            then.add(accepted - 1, accepted < drafted)

    def expected_tokens(self, k: int, kind=None) -> float:
        first, then = self.rates(kind)
        p, q = first.value, min(then.value, 0.999)
        return 1 + p * (1 - q ** k) / (1 - q)

    def time(self, length: int, seconds: float) -> None:
        """A pass over `length` tokens took `seconds`. The first pass of a length can pay one-time
        costs (scratch memory, a cold cache, another process's burst: 97 ms among 12-33 ms passes
        were seen), and a length that looks slow is never chosen again to be re-measured; so the
        second measurement replaces the first when it is faster, and only then smoothing starts."""
        old, count = self.seconds.get(length), self._samples.get(length, 0)
        if old is None:
            self.seconds[length] = seconds
        elif count == 1:
            self.seconds[length] = min(old, seconds)
        else:
            self.seconds[length] = 0.8 * old + 0.2 * seconds
        self._samples[length] = count + 1

    def cost(self, length: int) -> float:
        """Seconds of a pass over `length` tokens: measured; between measured lengths,
        interpolated; one past the longest measured, an optimistic guess (0.3 of its per-token
        cost for the extra token) so that longer passes get tried one length at a time; further
        out, proportional to the longest measured. A pass never costs more than a longer one
        measured, and a length measured once no more than its neighbours suggest: one slow pass
        must not rule a length out for good."""
        others = {n: s for n, s in self.seconds.items() if n != length}
        estimate = self.seconds.get(length)
        if estimate is None:
            estimate = _interpolate(others, length)
        elif self._samples[length] < 2 and any(n < length for n in others):
            estimate = min(estimate, _interpolate(others, length))
        return min([estimate] + [s for n, s in others.items() if n > length])

    def choose(self, available: int, kind=None) -> int:
        best, best_rate = 0, 1.0 / self.cost(1)
        for k in range(1, min(available, self.max_draft) + 1):
            rate = self.expected_tokens(k, kind) / self.cost(k + 1)
            if rate > best_rate:
                best, best_rate = k, rate
        return best


def _interpolate(seconds: dict[int, float], length: int) -> float:
    """DraftLength.cost's guess for an unmeasured length from the measured ones."""
    if not seconds:
        return float(length)
    known = sorted(seconds)
    top = known[-1]
    if length > top:
        per_token = seconds[top] / top
        return seconds[top] + (0.3 if length == top + 1 else 1.0) * per_token * (length - top)
    lo = max((n for n in known if n < length), default=None)
    hi = min(n for n in known if n > length)
    if lo is None:
        return seconds[hi] * length / hi
    return seconds[lo] + (seconds[hi] - seconds[lo]) * (length - lo) / (hi - lo)


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
    `decode.generate_tokens`: when token t is yielded the cache holds the prompt and
    every token before t (drafts verified beyond that are dropped when the consumer stops)."""
    tokens = [int(t) for t in prompt_ids]
    stats = stats if stats is not None else SpeculationStats()
    cache = cache if cache is not None else model.new_cache()
    limit = context_limit(model, cache)
    # The whole prompt is read as plain decoding reads it (prompt rows: Model.forward's prompt),
    # so that the cache, and with it every greedy token, is the same with speculation as without.
    done, logits = prefill(model, tokens, cache, should_stop=should_stop, on_prefill=on_prefill)
    if not done:
        return

    yielded = 0
    threads = getattr(model, "decode_threads", contextlib.nullcontext)
    # A verify pass longer than the native step takes the PyTorch blocks: several times slower.
    step = getattr(getattr(model, "transformer", None), "native_step", None)
    longest = step.max_tokens - 1 if step is not None else 16
    length = DraftLength(min(getattr(proposer, "max_draft", 16), longest))
    free_proposals = getattr(proposer, "free", False)
    try:
        tokens.append(int(logits[-1].cpu().numpy().argmax()))
        stats.tokens += 1
        yielded += 1
        yield tokens[-1]
        while len(tokens) < limit:
            room = limit - len(tokens) - 1
            with threads():  # drafting, the verify pass and its arg-max
                started = time.perf_counter()
                if free_proposals:
                    proposal = proposer.propose(tokens, limit=room) if room > 0 else []
                    kind = getattr(proposer, "match", None)
                    drafts = proposal[: length.choose(len(proposal), kind)]
                else:  # a draft model's proposals cost steps: ask only for what will be verified
                    kind = None
                    k = length.choose(room)
                    proposal = drafts = proposer.propose(tokens, limit=k) if k > 0 else []
                logits = model.forward([tokens[-1]] + drafts, cache)
                predicted = logits.cpu().numpy().argmax(axis=-1).tolist()  # numpy: ~20x torch's CPU arg-max
                length.time(len(drafts) + 1, time.perf_counter() - started)
            accepted = 0
            while accepted < len(drafts) and drafts[accepted] == predicted[accepted]:
                accepted += 1
            length.observe(len(drafts), accepted, kind)
            if not drafts and proposal and free_proposals:  # what the unverified proposal was worth
                length.observe(1, int(proposal[0] == predicted[0]), kind)
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

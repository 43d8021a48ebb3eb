"""Sampling: small composable functions on a logits vector, and the `Sampler` that chains them.

Every function takes a 1-D float32 logits tensor and returns a new one (the input is never
modified). Filters (`top_k`, `top_p`, `min_p`) remove tokens by setting their logit to -inf,
so the functions compose in any order and `torch.softmax` of the result is the distribution
that is sampled.

`Sampler` chains them in llama.cpp's default order (common/sampling.cpp):

    penalties -> top_k -> top_p -> min_p -> temperature -> draw

Note that, as in llama.cpp, temperature comes *after* the truncation filters: top-p and min-p
see the temperature-1 distribution, temperature only reshapes what they kept.
Temperature 0 is greedy decoding: the arg-max of the (penalised) logits, lowest id on ties.

Sampling always runs on the CPU in float32, with a `torch.Generator` seeded from the settings,
so a seed gives the same tokens whatever device computed the logits.

Two optional parts of a `Sampler`:

- `constraint` (a `lantern.generate.constrained.Constraint`): its mask is applied first, before
  penalties and filters, so only tokens that keep the output valid can be drawn; each accepted
  token advances it.
- `logprobs=K` (an int >= 0): for every token drawn, its log-probability under the model's own
  distribution (log-softmax of the raw logits: before the constraint, penalties and temperature,
  as OpenAI reports it) and the K most likely tokens, appended to `sampler.logprobs` as a
  `TokenLogprob` before the token is returned.
"""

from __future__ import annotations

import math
import secrets
from collections import deque
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import torch

from .settings import SETTING_NAMES, SamplerSettings, check_top_logprobs  # noqa: F401  (public here too)

NEG_INF = float("-inf")


# ----- penalties ---------------------------------------------------------------------------


def _ids_tensor(ids: Iterable[int] | torch.Tensor, vocab: int) -> torch.Tensor:
    t = ids if isinstance(ids, torch.Tensor) else torch.tensor(list(ids), dtype=torch.long)
    t = t.to(torch.long).flatten()
    # Ids outside the vocabulary (never produced by a real tokenizer) are ignored, not an error.
    return t[(t >= 0) & (t < vocab)]


def apply_repeat_penalty(
    logits: torch.Tensor, recent_ids: Iterable[int] | torch.Tensor, penalty: float
) -> torch.Tensor:
    """Penalise every distinct token of `recent_ids` once, sign-aware (llama.cpp, candle, HF).

    A positive logit is divided by `penalty`, a negative one multiplied, so a penalty > 1
    always makes the token less likely. penalty == 1 is a no-op.
    """
    if penalty == 1.0:
        return logits
    ids = torch.unique(_ids_tensor(recent_ids, logits.shape[-1]))
    out = logits.clone()
    if ids.numel() == 0:
        return out
    vals = out[ids]
    out[ids] = torch.where(vals > 0, vals / penalty, vals * penalty)
    return out


def apply_frequency_presence(
    logits: torch.Tensor, recent_ids: Iterable[int] | torch.Tensor, freq: float, presence: float
) -> torch.Tensor:
    """OpenAI/llama.cpp penalties: logit -= count * freq + (count > 0) * presence."""
    if freq == 0.0 and presence == 0.0:
        return logits
    vocab = logits.shape[-1]
    ids = _ids_tensor(recent_ids, vocab)
    out = logits.clone()
    if ids.numel() == 0:
        return out
    counts = torch.bincount(ids, minlength=vocab).to(out.dtype)
    return out - counts * freq - (counts > 0).to(out.dtype) * presence


# ----- reshaping and truncation --------------------------------------------------------------


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature. Temperature 0 keeps only the arg-max (lowest id on ties)."""
    if temperature <= 0.0:
        out = torch.full_like(logits, NEG_INF)
        best = int(torch.argmax(logits))
        out[best] = 0.0
        return out
    if temperature == 1.0:
        return logits
    return logits / temperature


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` highest logits (k <= 0 or k >= vocab: keep all).

    Exactly k tokens survive: ties at the boundary are broken towards the lowest id.
    """
    n = logits.shape[-1]
    if k <= 0 or k >= n:
        return logits
    kth = torch.topk(logits, k).values[-1]
    keep = logits > kth
    missing = k - int(keep.sum())
    if missing > 0:
        ties = torch.nonzero(logits == kth).flatten()[:missing]
        keep[ties] = True
    return logits.masked_fill(~keep, NEG_INF)


def top_k_ids(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Ids of the tokens `top_k(logits, k)` keeps (0 < k < vocab), ascending: the same set, found
    with one `torch.topk` pass instead of `top_k`'s several over the vocabulary (sampling's
    largest cost per token). The (k+1)-th value tells whether a tie crosses the k-th place;
    only then does `top_k` settle it (lowest ids first)."""
    values, ids = torch.topk(logits, k + 1)
    if values[k] == values[k - 1]:
        return torch.nonzero(top_k(logits, k) != NEG_INF).flatten()
    return ids[:k].sort().values


def greedy(logits: torch.Tensor) -> int:
    """The arg-max of a 1-D CPU logits vector, lowest id on ties. numpy's arg-max (first
    occurrence, documented) takes ~4 us for 50k logits, torch.argmax on the CPU ~45 us."""
    return int(logits.numpy().argmax())


def _sorted_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities sorted descending (stable: lower id first among equal logits), and the order."""
    order = torch.sort(logits, descending=True, stable=True).indices
    probs = torch.softmax(logits[order].to(torch.float64), dim=-1)
    return probs, order


def top_p(logits: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability sums to >= p.

    At least `min_keep` tokens are always kept; p >= 1 keeps everything (llama.cpp semantics).
    """
    if p >= 1.0:
        return logits
    probs, order = _sorted_probs(logits)
    cum = torch.cumsum(probs, dim=-1)
    # First position where the running sum reaches p; keep up to and including it.
    reached = torch.nonzero(cum >= p).flatten()
    n_keep = int(reached[0]) + 1 if reached.numel() else logits.shape[-1]
    n_keep = max(n_keep, min_keep)
    out = torch.full_like(logits, NEG_INF)
    kept = order[:n_keep]
    out[kept] = logits[kept]
    return out


def min_p(logits: torch.Tensor, p: float, min_keep: int = 1) -> torch.Tensor:
    """Keep the tokens whose probability is at least `p` times that of the most likely one."""
    if p <= 0.0:
        return logits
    # p_i >= p * p_max  <=>  logit_i >= logit_max + log(p); no softmax needed.
    threshold = logits.max() + math.log(p)
    keep = logits >= threshold
    if int(keep.sum()) < min_keep:
        return top_k(logits, min_keep)
    return logits.masked_fill(~keep, NEG_INF)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities of a (possibly filtered) logits vector, float32."""
    return torch.softmax(logits.to(torch.float32), dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """Draw one token id from the distribution `probs` (need not be normalised)."""
    return int(torch.multinomial(probs.to(torch.float32), 1, generator=generator))


# ----- log-probabilities ----------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLogprob:
    """A drawn token's log-probability and the `top` most likely tokens, as (id, logprob) pairs,
    most likely first (lowest id first among equal ones)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits: torch.Tensor, token: int, k: int = 0) -> TokenLogprob:
    """`token`'s log-probability under softmax(logits), and the `k` most likely tokens."""
    lp = torch.log_softmax(logits.detach().reshape(-1).to("cpu", torch.float32), dim=-1)
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, lp.shape[-1])
        order = torch.sort(lp, descending=True, stable=True)
        top = tuple((int(i), float(v)) for v, i in zip(order.values[:k], order.indices[:k]))
    return TokenLogprob(int(token), float(lp[int(token)]), top)


# ----- settings and the chain ----------------------------------------------------------------


class Sampler:
    """Picks next tokens from logits with `settings`; remembers the recent tokens for penalties.

    Usage: `sampler.reset(prompt_ids)`, then per step `tok = sampler(logits)` and
    `sampler.accept(tok)`. The random generator is seeded once, at construction (or `reseed`),
    so one seed reproduces one sequence of draws.

    `constraint`: a `Constraint` whose mask comes before everything else (see the module doc).
    `logprobs`: None (off) or K >= 0: `sampler.logprobs` gets one `TokenLogprob` per drawn token,
    with the K most likely alternatives. `reset` restarts both.
    """

    def __init__(self, settings: SamplerSettings | None = None, constraint=None, *,
                 logprobs: int | None = None, **overrides):
        settings = settings or SamplerSettings()
        if overrides:
            unknown = set(overrides) - set(SETTING_NAMES)
            if unknown:
                raise TypeError(f"unknown sampler settings: {', '.join(sorted(unknown))}")
            settings = replace(settings, **overrides)
        self.settings = settings
        self.generator = torch.Generator(device="cpu")
        self.seed = 0
        self.reseed(settings.seed)
        self._window = settings.repeat_last_n if settings.repeat_last_n >= 0 else None
        self._recent: deque[int] = deque(maxlen=self._window)
        self.constraint = constraint
        self.top_logprobs = None if logprobs is None else check_top_logprobs(logprobs)
        self.logprobs: list[TokenLogprob] = []

    def reseed(self, seed: int | None = None) -> None:
        """Restart the random stream; None draws a fresh random seed (kept in `self.seed`)."""
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        self.generator.manual_seed(self.seed)

    def reset(self, history: Sequence[int] = ()) -> None:
        """Forget the recent tokens and start from `history` (e.g. the prompt ids)."""
        self._recent.clear()
        if self._window != 0:
            self._recent.extend(int(t) for t in history)
        if self.constraint is not None:
            self.constraint.reset()
        self.logprobs = []

    def accept(self, token_id: int) -> None:
        if self._window != 0:
            self._recent.append(int(token_id))
        if self.constraint is not None:
            self.constraint.accept(token_id)

    @property
    def recent(self) -> list[int]:
        return list(self._recent)

    def _candidates(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Penalised, truncated logits before temperature: (values, ids or None for all ids).

        After top-k only k candidates are left; the later filters and the draw work on that
        short vector (ids ascending, so ties still resolve to the lowest id) instead of the
        whole vocabulary.
        """
        s = self.settings
        x = logits.detach().reshape(-1).to("cpu", torch.float32)
        if self.constraint is not None:
            x = self.constraint.mask(x)
        if s.penalties_on and self._recent:
            recent = torch.tensor(list(self._recent), dtype=torch.long)
            x = apply_repeat_penalty(x, recent, s.repeat_penalty)
            x = apply_frequency_presence(x, recent, s.frequency_penalty, s.presence_penalty)
        if s.greedy:
            return x, None
        ids = None
        if 0 < s.top_k < x.shape[-1]:
            ids = top_k_ids(x, s.top_k)
            x = x[ids]
        x = top_p(x, s.top_p)
        x = min_p(x, s.min_p)
        return x, ids

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The full-vocabulary distribution the next token is drawn from (one-hot for greedy)."""
        x, ids = self._candidates(logits)
        p = softmax(apply_temperature(x, self.settings.temperature))
        if ids is None:
            return p
        full = torch.zeros(logits.reshape(-1).shape[-1], dtype=torch.float32)
        full[ids] = p
        return full

    def __call__(self, logits: torch.Tensor) -> int:
        """The next token id for `logits` ([vocab] or [1, vocab]). Does not `accept` it."""
        token = self._draw(logits)
        if self.top_logprobs is not None:
            self.logprobs.append(token_logprob(logits, token, self.top_logprobs))
        return token

    def _draw(self, logits: torch.Tensor) -> int:
        x, ids = self._candidates(logits)
        if self.settings.greedy:
            return greedy(x)
        j = sample(softmax(apply_temperature(x, self.settings.temperature)), self.generator)
        return j if ids is None else int(ids[j])

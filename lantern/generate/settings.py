"""`SamplerSettings`: how to pick the next token, validated; no torch needed.

Kept apart from `lantern.generate.sampling` (which re-exports it) so that the command line can build its
parser, with these defaults in the help, without importing torch: `lantern --help` and
`lantern --version` answer at once.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

from ..errors import LanternError


#: The smallest non-zero temperature or repeat penalty: logits are float32 (see validate).
SMALLEST_SCALE = 1e-6


@dataclass(frozen=True)
class SamplerSettings:
    """How to pick the next token. Defaults are llama.cpp's (common/common.h):

    temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0 (off),
    repeat_last_n 64, frequency/presence penalties 0, seed None (a fresh random seed).

    The repeat penalty is off by default, as in llama.cpp and llama-cpp-python: it distorts
    answers that must repeat words (code, lists, names) and makes greedy output differ from
    every reference. Turn it on with 1.1 for small models that loop.

    `top_k` 0 disables top-k; `repeat_last_n` 0 disables the penalties and -1 means the
    whole sequence; `seed` is any integer >= 0.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def plain_greedy(self) -> bool:
        """Arg-max of the raw logits: temperature 0 with no penalty reshaping them."""
        return (self.temperature == 0 and self.repeat_penalty == 1.0
                and self.frequency_penalty == 0 and self.presence_penalty == 0)

    def validate(self) -> None:
        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise LanternError(f"{name.replace('_', '-')} must be a finite number, got {value!r}")
            return float(value)

        def integer(name: str) -> int:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise LanternError(f"{name.replace('_', '-')} must be an integer, got {value!r}")
            return int(value)

        if number("temperature") < 0 or 0 < self.temperature < SMALLEST_SCALE:
            # logits are float32: dividing them by less makes them infinite, every probability NaN
            raise LanternError(f"temperature must be 0 (greedy) or at least {SMALLEST_SCALE:g}, got {self.temperature}")
        if integer("top_k") < 0:
            raise LanternError(f"top-k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 <= number("top_p") <= 1.0:
            raise LanternError(f"top-p must be between 0 and 1 (1 = off), got {self.top_p}")
        if not 0.0 <= number("min_p") <= 1.0:
            raise LanternError(f"min-p must be between 0 and 1 (0 = off), got {self.min_p}")
        if number("repeat_penalty") < SMALLEST_SCALE:
            raise LanternError(f"repeat-penalty must be at least {SMALLEST_SCALE:g} (1 = off), got {self.repeat_penalty}")
        if not -1 <= integer("repeat_last_n") < 2**31:
            raise LanternError(
                f"repeat-last-n must be between 0 and 2**31-1, or -1 for the whole sequence, got {self.repeat_last_n}"
            )
        number("frequency_penalty")
        number("presence_penalty")
        if self.seed is not None and (integer("seed") < 0 or self.seed >= 2**64):
            raise LanternError(f"seed must be an integer between 0 and 2**64-1, got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalties_on(self) -> bool:
        return self.repeat_last_n != 0 and (
            self.repeat_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
        )


SETTING_NAMES = tuple(f.name for f in fields(SamplerSettings))


#: The most alternatives a token's log-probability record may list (OpenAI's `top_logprobs` limit).
MAX_TOP_LOGPROBS = 20


def check_top_logprobs(k) -> int:
    """`k` as the number of alternatives per token's log-probability record (0..20)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k <= MAX_TOP_LOGPROBS:
        raise LanternError(f"top-logprobs must be an integer between 0 and {MAX_TOP_LOGPROBS}, got {k!r}")
    return int(k)

"""Multi-turn chat that keeps the conversation in the KV cache.

Each turn renders the whole conversation with the model's chat template, finds the longest
common prefix between the new prompt ids and the ids already in the cache, truncates the cache
to it and runs only the new suffix: earlier turns are not processed again. (The prefix usually
ends inside the previous answer's last tokens or its end-of-turn marker, because the template
renders the answer text, which may tokenize differently from the sampled ids.)

When the conversation no longer fits (prompt plus room for an answer), the oldest turns are
dropped (the system message is kept), the prompt is run again, and a `ChatContextWarning` says so.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

from ..errors import ContextOverflowError, LanternError
from .decode import common_prefix_length, context_limit
from .prompts import checked_template_options, encode_chat
from .stream import CANCELLED, Generation, normalize_max_tokens, normalize_stop
from .sampling import Sampler, SamplerSettings
from .speculative import make_proposer

#: Tokens per answer unless told otherwise (None would let a looping model fill the context).
DEFAULT_MAX_TOKENS = 1024


class ChatContextWarning(UserWarning):
    """Old turns were dropped from a chat because the context was full."""


class ChatSession:
    """A conversation with one model: `send(text)` returns a streaming `Generation`.

    `sampling` takes the keyword arguments of `SamplerSettings` (temperature, top_k, top_p,
    min_p, repeat_penalty, repeat_last_n, frequency_penalty, presence_penalty, seed). One seeded
    sampler serves the whole session, so a seed reproduces a whole conversation.
    `template_options`: more variables for the chat template at every turn, e.g.
    `{"enable_thinking": False}` for Qwen3.
    """

    def __init__(
        self,
        model,
        system: str | None = None,
        *,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        stop: Sequence[str] | str = (),
        speculate=None,
        template_options: Mapping[str, Any] | None = None,
        **sampling: Any,
    ):
        self.model = model
        self.system = system or None
        self.max_tokens = normalize_max_tokens(max_tokens)
        self.stop = normalize_stop(stop)
        self.template_options = checked_template_options(template_options)
        self.sampler = Sampler(SamplerSettings(**sampling))
        self.proposer = make_proposer(model, speculate)
        self.cache = model.new_cache()
        self.turns: list[dict[str, str]] = []  # user/assistant messages, without the system one
        self.dropped_turns = 0  # user messages dropped so far to make room
        self.current: Generation | None = None
        self._cache_ids: list[int] = []  # the ids whose keys/values the cache holds

    # ----- public -----

    @property
    def messages(self) -> list[dict[str, str]]:
        """The conversation as the template sees it (system message first, if any)."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [dict(m) for m in self.turns]

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def cached_tokens(self) -> int:
        return self.cache.length

    def send(self, text: str, *, max_tokens: int | None | str = "session",
             stop: Sequence[str] | str | None = None) -> Generation:
        """Add a user message and start the answer; iterate the result for text pieces.

        The answer is added to the conversation when it finishes (or is cancelled/closed).
        """
        self._settle()
        if not isinstance(text, str) or not text.strip():
            raise LanternError("the message is empty; type some text")
        max_tokens = self.max_tokens if max_tokens == "session" else normalize_max_tokens(max_tokens)
        stop = self.stop if stop is None else normalize_stop(stop)
        self.turns.append({"role": "user", "content": text})
        try:
            ids = self._fitting_prompt(max_tokens)
        except BaseException:
            self.turns.pop()
            raise
        common = common_prefix_length(self._cache_ids, ids)
        self.cache.truncate(common)
        self._cache_ids = ids[: self.cache.length]
        self.current = Generation(self.model, ids, self.sampler, max_tokens=max_tokens, stop=stop,
                                  cache=self.cache, on_finish=self._on_finish, continuation=False,
                                  proposer=self.proposer)
        return self.current

    def reset(self) -> None:
        """Forget the conversation (the system message stays; its cached tokens are reused)."""
        self._settle()
        self.turns.clear()
        self.dropped_turns = 0

    # ----- internals -----

    def _settle(self) -> None:
        """Finish the bookkeeping of an answer that was abandoned part-way."""
        if self.current is not None and not self.current.done:
            self.current.close()
        self.current = None

    def _on_finish(self, gen: Generation) -> None:
        # The cache holds the prompt and every sampled token but the last (see generate_tokens),
        # or less if the run was interrupted; in every case a prefix of prompt + sampled.
        self._cache_ids = (gen.prompt_ids + gen.sampled_ids)[: self.cache.length]
        if gen.finish_reason == CANCELLED and not gen.text:
            self.turns.pop()  # nothing was answered: as if the message was never sent
        else:
            self.turns.append({"role": "assistant", "content": gen.text})

    def _fitting_prompt(self, max_tokens: int | None) -> list[int]:
        limit = context_limit(self.model, self.cache)
        reserve = max(1, min(max_tokens if max_tokens else limit, limit // 4))
        ids = encode_chat(self.model, self.messages, **self.template_options)
        dropped = 0
        while len(ids) + reserve > limit and len(self.turns) > 1:
            # Drop the oldest exchange: the first user message and everything up to the next one.
            nxt = next((i for i in range(1, len(self.turns)) if self.turns[i]["role"] == "user"), None)
            if nxt is None:
                break
            del self.turns[:nxt]
            dropped += 1
            ids = encode_chat(self.model, self.messages, **self.template_options)
        if dropped:
            self.dropped_turns += dropped
            warnings.warn(
                f"the conversation no longer fits the context of {limit} tokens: dropped the "
                f"{dropped} oldest exchange{'s' if dropped > 1 else ''} (the system message is kept); "
                f"use /reset to start afresh",
                ChatContextWarning,
                stacklevel=3,
            )
        if len(ids) >= limit:
            raise ContextOverflowError(
                f"the message is too long: the prompt is {len(ids)} tokens but the context holds "
                f"{limit}; shorten the message or the system prompt"
            )
        return ids

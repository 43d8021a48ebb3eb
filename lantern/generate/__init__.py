"""Generation, over the model contract (`lantern.model.Model`), in layers:

- `settings` / `sampling`: sampler settings (importable without torch) and sampling as small
  composable functions;
- `decode`: the token loop (prefill, step, context limits) and `Sequence`, its unit;
- `speculative`: drafts verified in one pass, on top of `decode`;
- `stream`: `Generation` (text streaming, stop strings, finish reasons, timings), `generate`,
  `complete`;
- `prompts`: messages and raw text to token ids; `chat`: multi-turn sessions over one cache;
- `batch`: many sequences decoded together, one pass per step (the server's engine).

Names are imported lazily, so `lantern.generate.settings` stays free of torch (the CLI's
argument parser uses it).
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "generate": "stream", "complete": "stream", "Generation": "stream", "StopStrings": "stream",
    "generate_tokens": "decode", "Sequence": "decode",
    "SamplerSettings": "settings", "Sampler": "sampling",
    "ChatSession": "chat",
}


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

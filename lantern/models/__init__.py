"""Architectures lantern runs: one module per GGUF `general.architecture`.

Each module exposes `Params` (a ModelParams dataclass with `from_gguf(file, **overrides)`) and
`build(TensorSource) -> Transformer`. Adding an architecture is one new module and one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import UnsupportedModelError

ARCHITECTURES = {"gemma3": "gemma3", "llama": "llama", "phi3": "phi3", "qwen2": "qwen2", "qwen3": "qwen3"}


def architecture(name: str, path="model") -> ModuleType:
    module = ARCHITECTURES.get(name)
    if module is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModelError(
            f"{path}: architecture {name!r} is not supported (supported: {supported})"
        )
    return importlib.import_module(f"{__name__}.{module}")

"""Qwen2 family (arch `qwen2`): the llama layout with biases on q/k/v and NEOX rope."""

from __future__ import annotations

from dataclasses import dataclass

from ..weights.gguf_file import GGUFFile
from . import llama
from .layers import ModelParams, TensorSource, Transformer


@dataclass
class Qwen2Params(ModelParams):
    @classmethod
    def from_gguf(cls, f: GGUFFile, **overrides) -> "Qwen2Params":
        # llama.cpp's default rope base for qwen2 files without the key is still 10000.
        return cls(**cls.read_common(f, **overrides))


def build(src: TensorSource) -> Transformer:
    return llama.build(src, neox=True, qkv_bias=True)


Params = Qwen2Params

"""Qwen3 dense family (arch `qwen3`): the llama layout with NEOX rope, no q/k/v biases, and an
RMSNorm over each query and key head (`attn_q_norm` / `attn_k_norm`) before rotary.

The head size is `attention.key_length` (Qwen3-0.6B: 16 heads of 128 on a width of 1024), so
heads * head_dim need not equal the width. The output head is tied when `output.weight` is absent.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..weights.gguf_file import GGUFFile
from . import llama
from .layers import ModelParams, TensorSource, Transformer


@dataclass
class Qwen3Params(ModelParams):
    @classmethod
    def from_gguf(cls, f: GGUFFile, **overrides) -> "Qwen3Params":
        return cls(**cls.read_common(f, **overrides))


def build(src: TensorSource) -> Transformer:
    return llama.build(src, neox=True, qk_norm=True)


Params = Qwen3Params

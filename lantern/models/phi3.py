"""Phi-3 family (arch `phi3`: Phi-3-mini/medium 4k and 128k, Phi-3.5-mini).

Differences from llama: q|k|v fused in `attn_qkv`, gate|up fused in `ffn_up`, NEOX rope, a
sliding attention window, and for the 128k variants LongRoPE: per-frequency divisors
(`rope_factors_short` / `rope_factors_long`) and an attention factor on cos/sin.

Sliding window: HF transformers' Phi3 (the model authors' reference) masks keys with
`q - k >= sliding_window`. llama.cpp disabled Phi's window (PR #13676), so the two differ on
prompts longer than the window (2047 for Phi-3-mini). lantern follows HF by default;
`sliding_window=False` at load time gives llama.cpp's behaviour.

LongRoPE factors are chosen once per context as llama.cpp does (long when the context is longer
than `rope.scaling.original_context_length`), rather than per sequence length as HF does, so
the KV cache never has to be recomputed when a sequence crosses the original context.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..weights.gguf_file import GGUFFile
from .layers import (Attention, Block, GatedMLP, ModelParams, Projection, Rotary, TensorSource,
                     Transformer)


@dataclass
class Phi3Params(ModelParams):
    @classmethod
    def from_gguf(cls, f: GGUFFile, **overrides) -> "Phi3Params":
        common = cls.read_common(f)
        common["sliding_window"] = int(f.get("phi3.attention.sliding_window", 0) or 0)
        common.update(overrides)
        return cls(**common)


def build(src: TensorSource) -> Transformer:
    p = src.params
    q_dim, kv_dim = p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim
    freq_factors = None
    if src.file.has("rope_factors_long.weight"):
        which = "long" if p.context_length > p.rope_original_context else "short"
        freq_factors = src.vector(f"rope_factors_{which}.weight", p.rope_dims // 2)
    rotary = Rotary(p.rope_dims, p.rope_base, neox=True, position_scale=p.rope_scale,
                    freq_factors=freq_factors, attn_factor=p.rope_attn_factor, device=src.device)
    blocks = []
    for i in range(p.n_layers):
        qkv = Projection([src.linear(f"blk.{i}.attn_qkv.weight", q_dim + 2 * kv_dim, p.dim)],
                         sizes=[q_dim, kv_dim, kv_dim])
        attention = Attention(qkv, src.linear(f"blk.{i}.attn_output.weight", p.dim, q_dim), p, i)
        gate_up = Projection([src.linear(f"blk.{i}.ffn_up.weight", 2 * p.ffn_dim, p.dim)],
                             sizes=[p.ffn_dim, p.ffn_dim])
        mlp = GatedMLP(gate_up, src.linear(f"blk.{i}.ffn_down.weight", p.dim, p.ffn_dim))
        blocks.append(Block(src.norm(f"blk.{i}.attn_norm.weight"), attention,
                            src.norm(f"blk.{i}.ffn_norm.weight"), mlp))
    return Transformer(p, src.embedding(), blocks, src.norm("output_norm.weight"), src.output(), rotary)


Params = Phi3Params

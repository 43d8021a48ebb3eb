"""Llama family (arch `llama`: Llama 2/3, SmolLM2, Mistral, TinyLlama).

GGUF differences from the HF checkpoints: the converter permutes Q and K rows so rotary runs on
adjacent pairs (NORM rope, not NEOX); the output head is tied to the embedding when
`output.weight` is absent; Llama 3.1 ships `rope_freqs.weight`, per-frequency divisors.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..weights.gguf_file import GGUFFile
from .layers import (Attention, Block, GatedMLP, ModelParams, Rotary, TensorSource,
                     Transformer)


@dataclass
class LlamaParams(ModelParams):
    @classmethod
    def from_gguf(cls, f: GGUFFile, **overrides) -> "LlamaParams":
        return cls(**cls.read_common(f, **overrides))


def attention(src: TensorSource, i: int, bias: bool = False, qk_norm: bool = False, **variants) -> Attention:
    """blk.i.attn_{q,k,v,output} (and their biases); `qk_norm`: attn_{q,k}_norm over each head."""
    p = src.params
    q_dim, kv_dim = p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim
    prefix = f"blk.{i}.attn_"
    qkv = src.projection([(prefix + f"{x}.weight", rows, prefix + f"{x}.bias" if bias else None)
                          for x, rows in (("q", q_dim), ("k", kv_dim), ("v", kv_dim))], p.dim)
    if qk_norm:
        variants.update(q_norm=src.norm(prefix + "q_norm.weight", p.head_dim),
                        k_norm=src.norm(prefix + "k_norm.weight", p.head_dim))
    return Attention(qkv, src.linear(prefix + "output.weight", p.dim, q_dim), p, i, **variants)


def mlp(src: TensorSource, i: int) -> GatedMLP:
    p = src.params
    gate_up = src.projection([(f"blk.{i}.ffn_{x}.weight", p.ffn_dim, None) for x in ("gate", "up")], p.dim)
    return GatedMLP(gate_up, src.linear(f"blk.{i}.ffn_down.weight", p.dim, p.ffn_dim), p.activation)


def build(src: TensorSource, *, neox: bool = False, qkv_bias: bool = False, qk_norm: bool = False) -> Transformer:
    p = src.params
    freq_factors = src.vector("rope_freqs.weight", p.rope_dims // 2) if src.file.has("rope_freqs.weight") else None
    rotary = Rotary(p.rope_dims, p.rope_base, neox=neox, position_scale=p.rope_scale,
                    freq_factors=freq_factors, attn_factor=p.rope_attn_factor, device=src.device)
    blocks = [
        Block(src.norm(f"blk.{i}.attn_norm.weight"), attention(src, i, qkv_bias, qk_norm),
              src.norm(f"blk.{i}.ffn_norm.weight"), mlp(src, i))
        for i in range(p.n_layers)
    ]
    return Transformer(p, src.embedding(), blocks, src.norm("output_norm.weight"), src.output(), rotary)


Params = LlamaParams

"""Gemma 3 text models (arch `gemma3`: 270M to 27B).

Differences from llama, where llama.cpp's gemma3 graph and HF transformers' Gemma3 agree:
- token embeddings multiplied by sqrt(width); the output head tied to them;
- RMSNorm before and after both attention and the feed-forward (`post_attention_norm`,
  `post_ffw_norm`). Gemma computes x * (1 + w); llama.cpp's converter stores 1 + w in the GGUF
  (`norm_shift`), so these are plain RMSNorms of the stored weights;
- per-head RMSNorm of queries and keys (`attn_q_norm` / `attn_k_norm`) before rotary;
- GeGLU feed-forward with tanh-approximated GELU;
- head size `attention.key_length` (256 up to 12B); scores scaled by 1 / sqrt(head size), except
  the 27B (62 layers): 1 / sqrt(width / heads), as llama.cpp and HF's query_pre_attn_scalar;
- local (windowed) and global layers: five local for each global one (layers 5, 11, ... are
  global; `attention.sliding_window_pattern`, a count or a per-layer array, overrides), window
  `attention.sliding_window` (q - window < k <= q). Local layers rotate with base
  `rope.freq_base_swa` (default 10000) unscaled, global ones with `rope.freq_base` and
  `rope.scaling.factor`. NEOX rope over the whole head. Without a window (key absent or 0)
  every layer is global, as llama.cpp runs such a file;
- `final_logit_softcapping` when the file sets it (Gemma 3 checkpoints do not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ModelFileError
from ..weights.gguf_file import GGUFFile
from . import llama
from .layers import Block, ModelParams, Rotary, TensorSource, Transformer

SWA_PATTERN = 6  # llama.cpp: load_swa_pattern(ml, 6)
LOCAL_ROPE_BASE = 10000.0  # llama.cpp: rope_freq_base_train_swa's default; HF: rope_local_base_freq
LAYERS_27B = 62


@dataclass
class Gemma3Params(ModelParams):
    @classmethod
    def from_gguf(cls, f: GGUFFile, **overrides) -> "Gemma3Params":
        common = cls.read_common(f)
        arch, n_layers = f.architecture, common["n_layers"]
        window = int(f.get(f"{arch}.attention.sliding_window", 0) or 0)
        local: tuple[bool, ...] = ()
        if window > 0:
            pattern = f.get(f"{arch}.attention.sliding_window_pattern", SWA_PATTERN)
            if isinstance(pattern, (list, tuple)):
                if len(pattern) != n_layers:
                    raise ModelFileError(f"{f.path}: metadata {arch}.attention.sliding_window_pattern has "
                                         f"{len(pattern)} entries for {n_layers} layers; the file is corrupt")
                local = tuple(bool(x) for x in pattern)
            else:
                n = int(pattern)
                local = tuple(n == 0 or i % n < n - 1 for i in range(n_layers))
        head_scale = common["dim"] / common["n_heads"] if n_layers == LAYERS_27B else common["head_dim"]
        common.update(
            sliding_window=max(window, 0),
            local_layers=local,
            rope_base_local=float(f.get(f"{arch}.rope.freq_base_swa", LOCAL_ROPE_BASE)),
            attention_scale=1.0 / math.sqrt(head_scale),
            embedding_scale=math.sqrt(common["dim"]),
            activation="gelu_tanh",
            logit_softcap=float(f.get(f"{arch}.final_logit_softcapping", 0.0) or 0.0),
        )
        if not (math.isfinite(common["rope_base_local"]) and common["rope_base_local"] > 0):
            raise ModelFileError(f"{f.path}: metadata {arch}.rope.freq_base_swa = {common['rope_base_local']} is not "
                                 "a finite positive number; the file is corrupt or not a model lantern runs")
        common.update(overrides)
        return cls(**common)


def build(src: TensorSource) -> Transformer:
    p = src.params
    rotary = Rotary(p.rope_dims, p.rope_base, neox=True, position_scale=p.rope_scale, device=src.device)
    local = Rotary(p.rope_dims, p.rope_base_local, neox=True, device=src.device)
    blocks = []
    for i in range(p.n_layers):
        attention = llama.attention(src, i, qk_norm=True, rotary=local if p.layer_is_local(i) else None)
        blocks.append(Block(src.norm(f"blk.{i}.attn_norm.weight"), attention,
                            src.norm(f"blk.{i}.ffn_norm.weight"), llama.mlp(src, i),
                            post_attn_norm=src.norm(f"blk.{i}.post_attention_norm.weight"),
                            post_ffn_norm=src.norm(f"blk.{i}.post_ffw_norm.weight")))
    return Transformer(p, src.embedding(), blocks, src.norm("output_norm.weight"), src.output(), rotary)


Params = Gemma3Params

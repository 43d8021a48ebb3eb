"""Building blocks shared by every decoder architecture.

An architecture file (llama.py, phi3.py, ...) reads its hyper-parameters from GGUF metadata into
a `ModelParams` subclass and maps its tensors onto these blocks; the blocks never look at GGUF
names. Activations are float32 [tokens, features] for one sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ContextOverflowError, ModelFileError, UnsupportedModelError
from ..weights.gguf_file import GGUFFile
from ..weights.linear import QuantizedEmbedding, QuantizedLinear, dense_vector


# ----- hyper-parameters ---------------------------------------------------------------------


@dataclass
class ModelParams:
    """Hyper-parameters every decoder needs, read from `{arch}.*` metadata with llama.cpp's defaults."""

    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    norm_eps: float
    context_length: int
    rope_dims: int
    rope_base: float
    rope_scale: float = 1.0  # linear position scaling: positions are multiplied by this
    rope_attn_factor: float = 1.0  # cos/sin are multiplied by this (LongRoPE's attention factor)
    rope_original_context: int = 0  # LongRoPE: contexts above this use the long factors
    sliding_window: int = 0  # 0 = full causal attention

    @classmethod
    def read_common(cls, f: GGUFFile, **overrides) -> dict:
        """The keys shared by all llama-like architectures, as constructor arguments."""
        arch = f.architecture

        def key(name, default=None, required=False):
            value = f.get(f"{arch}.{name}", default)
            if value is None and required:
                raise ModelFileError(f"{f.path}: metadata key {arch}.{name} is missing; the file is incomplete")
            return value

        dim = int(key("embedding_length", required=True))
        n_heads = int(key("attention.head_count", required=True))
        n_kv_heads = int(key("attention.head_count_kv", n_heads))
        head_dim = int(key("attention.key_length", dim // n_heads))
        tokens = f.get("tokenizer.ggml.tokens")
        vocab_size = int(key("vocab_size", len(tokens) if tokens is not None else 0))
        if vocab_size == 0 and f.has("token_embd.weight"):
            vocab_size = int(f.tensors["token_embd.weight"].shape[1])
        context_length = int(key("context_length", 2048))
        scaling_type = key("rope.scaling.type", "linear")
        if scaling_type not in ("none", "linear"):
            raise UnsupportedModelError(
                f"{f.path}: rope scaling type {scaling_type!r} is not supported (supported: none, linear)"
            )
        scaling_factor = float(key("rope.scaling.factor", 0.0) or 0.0)
        params = dict(
            arch=arch,
            vocab_size=vocab_size,
            dim=dim,
            n_layers=int(key("block_count", required=True)),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            ffn_dim=int(key("feed_forward_length", required=True)),
            norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
            context_length=context_length,
            rope_dims=int(key("rope.dimension_count", head_dim)),
            rope_base=float(key("rope.freq_base", 10000.0)),
            rope_scale=1.0 / scaling_factor if scaling_factor else 1.0,
            rope_attn_factor=float(key("rope.scaling.attn_factor", 1.0)),
            rope_original_context=int(key("rope.scaling.original_context_length", context_length)),
        )
        params.update(overrides)
        if params["n_heads"] % params["n_kv_heads"]:
            raise ModelFileError(
                f"{f.path}: {n_heads} attention heads cannot share {n_kv_heads} KV heads evenly"
            )
        return params


# ----- normalisation and rotary embeddings --------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = weight
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Rotary:
    """Rotary position embedding tables and their application.

    `neox=True` rotates element i with i + dims/2 (GPT-NeoX, Phi-3, Qwen2); `neox=False` rotates
    adjacent pairs (2i, 2i+1), the layout llama's GGUF converter produces by permuting Q and K.
    `freq_factors` divide each frequency (Llama 3.1's rope_freqs, Phi-3's LongRoPE factors).
    Angles are computed in float64 and tables kept in float32: low-precision tables corrupt
    long prompts.
    """

    def __init__(self, dims: int, base: float, *, neox: bool, position_scale: float = 1.0,
                 freq_factors: torch.Tensor | None = None, attn_factor: float = 1.0, device="cpu"):
        self.dims = dims
        self.neox = neox
        self.position_scale = position_scale
        self.attn_factor = attn_factor
        inv_freq = base ** (-torch.arange(0, dims, 2, dtype=torch.float64) / dims)
        if freq_factors is not None:
            inv_freq = inv_freq / freq_factors.to(torch.float64).cpu()
        self.inv_freq = inv_freq.to(device)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = (positions.to(torch.float64) * self.position_scale)[:, None] * self.inv_freq[None, :]
        cos = (torch.cos(angles) * self.attn_factor).to(torch.float32)
        sin = (torch.sin(angles) * self.attn_factor).to(torch.float32)
        return cos[:, None, :], sin[:, None, :]  # [T, 1, dims/2], broadcast over heads

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [T, heads, head_dim]; the first `dims` features are rotated, the rest pass through."""
        rot, rest = x[..., : self.dims], x[..., self.dims :]
        if self.neox:
            a, b = rot.chunk(2, dim=-1)
            rotated = torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
        else:
            a, b = rot[..., 0::2], rot[..., 1::2]
            rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
        return torch.cat((rotated, rest), dim=-1) if rest.numel() else rotated


# ----- KV cache -------------------------------------------------------------------------------


class KVCache:
    """Keys and values of every layer for one sequence; grows by doubling up to `max_length`."""

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_length: int,
                 device="cpu", dtype=torch.float32, initial: int = 256):
        self.max_length = max_length
        self.length = 0
        self._shape = (n_kv_heads, head_dim)
        self._device, self._dtype = device, dtype
        capacity = min(initial, max_length)
        self.keys = [self._empty(capacity) for _ in range(n_layers)]
        self.values = [self._empty(capacity) for _ in range(n_layers)]

    def _empty(self, capacity: int) -> torch.Tensor:
        heads, dim = self._shape
        return torch.empty(capacity, heads, dim, device=self._device, dtype=self._dtype)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[0]

    def reserve(self, new_tokens: int) -> None:
        needed = self.length + new_tokens
        if needed > self.max_length:
            raise ContextOverflowError(
                f"{needed} tokens do not fit the context of {self.max_length}; "
                f"shorten the prompt or ask for fewer tokens"
            )
        if needed <= self.capacity:
            return
        capacity = min(max(needed, 2 * self.capacity), self.max_length)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                grown = self._empty(capacity)
                grown[: self.length] = old[: self.length]
                store[i] = grown

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [T, kv_heads, head_dim] after the current length; return all keys/values so far."""
        end = self.length + k.shape[0]
        self.keys[layer][self.length : end] = k
        self.values[layer][self.length : end] = v
        return self.keys[layer][:end], self.values[layer][:end]

    def truncate(self, length: int) -> None:
        """Forget every token from `length` on (reuse a shared prefix, roll back a draft)."""
        self.length = max(0, min(length, self.length))


def attention_mask(start: int, n_new: int, window: int, device) -> torch.Tensor | None:
    """Boolean [n_new, start + n_new] mask: query at position q sees key k when k <= q and,
    with a sliding window, q - k < window (HF Phi-3's rule). None when nothing is masked."""
    total = start + n_new
    if n_new == 1 and (not window or total <= window):
        return None
    q = torch.arange(start, total, device=device)[:, None]
    k = torch.arange(total, device=device)[None, :]
    mask = k <= q
    if window:
        mask &= (q - k) < window
    return mask


# ----- blocks ---------------------------------------------------------------------------------


class Projection(nn.Module):
    """Linear maps applied to one input whose outputs are used separately (q|k|v, gate|up).

    Either one fused weight whose output rows are split (`sizes`), or one weight per output:
    architecture files pick whichever their GGUF tensors are, the blocks never know.
    """

    def __init__(self, linears: Sequence[QuantizedLinear], sizes: Sequence[int] | None = None):
        super().__init__()
        self.linears = nn.ModuleList(linears)
        self.sizes = list(sizes) if sizes is not None else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.sizes is not None:
            return tuple(self.linears[0](x).split(self.sizes, dim=-1))
        return tuple(linear(x) for linear in self.linears)


class Attention(nn.Module):
    def __init__(self, qkv: Projection, wo: QuantizedLinear, p: ModelParams, layer: int):
        super().__init__()
        self.qkv, self.wo = qkv, wo
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = p.n_heads, p.n_kv_heads, p.head_dim
        self.scale = 1.0 / math.sqrt(p.head_dim)

    def forward(self, x, rotary: Rotary, cos, sin, cache: KVCache, mask) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x)
        q = rotary.apply(q.view(n, self.n_heads, self.head_dim), cos, sin)
        k = rotary.apply(k.view(n, self.n_kv_heads, self.head_dim), cos, sin)
        keys, values = cache.write(self.layer, k, v.view(n, self.n_kv_heads, self.head_dim))
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
            attn_mask=mask, scale=self.scale, enable_gqa=self.n_heads != self.n_kv_heads,
        )
        return self.wo(out.transpose(0, 1).reshape(n, self.n_heads * self.head_dim))


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, gate_up: Projection, down: QuantizedLinear):
        super().__init__()
        self.gate_up, self.down = gate_up, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, attn_norm: RMSNorm, attn: Attention, ffn_norm: RMSNorm, mlp: GatedMLP):
        super().__init__()
        self.attn_norm, self.attn, self.ffn_norm, self.mlp = attn_norm, attn, ffn_norm, mlp

    def forward(self, x, rotary, cos, sin, cache, mask):
        h = x + self.attn(self.attn_norm(x), rotary, cos, sin, cache, mask)
        return h + self.mlp(self.ffn_norm(h))


class Transformer(nn.Module):
    """Embedding, decoder blocks, final norm and output head over one sequence and its KV cache."""

    def __init__(self, params: ModelParams, embedding: QuantizedEmbedding, blocks: list[Block],
                 norm: RMSNorm, output: QuantizedLinear, rotary: Rotary):
        super().__init__()
        self.params = params
        self.embedding = embedding
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm
        self.output = output
        self.rotary = rotary

    def new_cache(self, max_length: int, device="cpu") -> KVCache:
        p = self.params
        return KVCache(p.n_layers, p.n_kv_heads, p.head_dim, max_length, device=device)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache: KVCache, outputs: str = "all") -> torch.Tensor | None:
        """Run `tokens` (1-D ids) after what `cache` holds. Returns float32 logits for every token
        (`outputs="all"`), for the last one only ("last"), or nothing ("none": prefill only)."""
        n = tokens.shape[0]
        cache.reserve(n)
        start = cache.length
        positions = torch.arange(start, start + n, device=tokens.device)
        cos, sin = self.rotary.tables(positions)
        mask = attention_mask(start, n, self.params.sliding_window, tokens.device)
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x, self.rotary, cos, sin, cache, mask)
        cache.length = start + n
        if outputs == "none":
            return None
        if outputs == "last":
            x = x[-1:]
        return self.output(self.norm(x))


# ----- assembling a model from GGUF tensors ----------------------------------------------------


@dataclass
class TensorSource:
    """Checked access to a GGUF file's tensors for building the blocks on one device."""

    file: GGUFFile
    params: ModelParams
    device: str | torch.device = "cpu"
    kernels: str | None = None  # "fast", "reference" or None (LANTERN_KERNELS, else fast on CPU)

    def linear(self, name: str, out_features: int, in_features: int, bias: str | None = None) -> QuantizedLinear:
        weight = self.file.tensor(name, (out_features, in_features))
        b = self.vector(bias, out_features) if bias else None
        return QuantizedLinear(weight, b, device=self.device, kernels=self.kernels)

    def vector(self, name: str, size: int) -> torch.Tensor:
        return dense_vector(self.file.tensor(name, (size,)), self.device)

    def norm(self, name: str) -> RMSNorm:
        return RMSNorm(self.vector(name, self.params.dim), self.params.norm_eps)

    def embedding(self) -> QuantizedEmbedding:
        p = self.params
        return QuantizedEmbedding(self.file.tensor("token_embd.weight", (p.vocab_size, p.dim)), device=self.device)

    def output(self) -> QuantizedLinear:
        """The output head; tied to the token embedding when the file has no output.weight."""
        p = self.params
        name = "output.weight" if self.file.has("output.weight") else "token_embd.weight"
        return self.linear(name, p.vocab_size, p.dim)

"""Building blocks shared by every decoder architecture.

An architecture file (llama.py, phi3.py, ...) reads its hyper-parameters from GGUF metadata into
a `ModelParams` subclass and maps its tensors onto these blocks; the blocks never look at GGUF
names. Activations are float32 [tokens, features] for one sequence.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ContextOverflowError, MemoryLimitError, ModelFileError, UnsupportedModelError
from ..weights.gguf_file import GGUFFile, TensorData
from ..weights.kernels import f16_attention, kernel_policy
from ..weights.kernels.memory import release_pages
from ..weights.linear import QuantizedEmbedding, QuantizedLinear, dense_vector
from .memory import available_bytes

# A pass of at most this many tokens over a float16 cache runs the native attention kernel
# (float32 math on the stored halves); longer ones convert the keys/values they read to float32
# for `attend`'s batched matrix products, which are faster there.
NATIVE_ATTENTION_MAX_TOKENS = 16
# Prompt chunks attend this many queries at a time (bounds the scores' memory).
ATTENTION_QUERY_BLOCK = 128


# ----- hyper-parameters ---------------------------------------------------------------------


MAX_VOCAB = 1 << 22  # 4M tokens: real vocabularies go up to a few hundred thousand


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
    # Block variants (llama/phi3/qwen2 keep the defaults; see gemma3.py, qwen3.py):
    # Interleaved local/global layers (Gemma 3): per layer, True where it is windowed ("local");
    # empty: every layer takes `sliding_window` (Phi-3).
    local_layers: tuple[bool, ...] = ()
    rope_base_local: float = 0.0  # rope base of the local layers, unscaled (0: as the global ones)
    attention_scale: float = 0.0  # scores are q.k times this (0: 1 / sqrt(head_dim))
    embedding_scale: float = 1.0  # token embeddings are multiplied by this (Gemma: sqrt(dim))
    activation: str = "silu"  # the gated feed-forward's activation: "silu" or "gelu_tanh" (GeGLU)
    logit_softcap: float = 0.0  # logits = cap * tanh(logits / cap) when > 0 (Gemma 2 style)

    def layer_is_local(self, layer: int) -> bool:
        """Whether `layer` is a windowed layer of an interleaved local/global pattern."""
        return bool(self.local_layers) and self.local_layers[layer]

    def layer_window(self, layer: int) -> int:
        """The attention window of `layer` (0: full causal attention)."""
        if self.local_layers and not self.local_layers[layer]:
            return 0
        return self.sliding_window

    @classmethod
    def read_common(cls, f: GGUFFile, **overrides) -> dict:
        """The keys shared by all llama-like architectures, as constructor arguments."""
        arch = f.architecture

        def key(name, default=None, required=False):
            value = f.get(f"{arch}.{name}", default)
            if value is None and required:
                raise ModelFileError(f"{f.path}: metadata key {arch}.{name} is missing; the file is incomplete")
            return value

        def bad(name, value, why):
            return ModelFileError(f"{f.path}: metadata {arch}.{name} = {value} {why}; the file is corrupt or "
                                  "not a model lantern runs")

        dim = int(key("embedding_length", required=True))
        n_heads = int(key("attention.head_count", required=True))
        if dim < 1 or n_heads < 1:
            name, value = ("embedding_length", dim) if dim < 1 else ("attention.head_count", n_heads)
            raise bad(name, value, "is not a positive count")
        embeddings = f.tensors.get("token_embd.weight") if hasattr(f, "tensors") else None
        if embeddings is not None and int(embeddings.shape[0]) != dim:  # before any table is sized by it
            raise bad("embedding_length", dim, f"differs from token_embd.weight's width {int(embeddings.shape[0])}")
        n_kv_heads = int(key("attention.head_count_kv", n_heads))
        if key("attention.key_length") is None and dim % n_heads:
            raise bad("attention.head_count", n_heads, f"does not divide the width {dim}")
        head_dim = int(key("attention.key_length", dim // n_heads))
        # The token count from the array's length: decoding 262,144 token strings takes seconds.
        reader = getattr(f, "reader", None)
        tokens = reader.get_field("tokenizer.ggml.tokens") if reader is not None else f.get("tokenizer.ggml.tokens")
        n_tokens = (len(tokens.data) if reader is not None else len(tokens)) if tokens is not None else 0
        vocab_size = int(key("vocab_size", n_tokens))
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
        for name, field in (("block_count", "n_layers"), ("attention.head_count_kv", "n_kv_heads"),
                            ("attention.key_length", "head_dim"), ("feed_forward_length", "ffn_dim"),
                            ("vocab_size", "vocab_size"), ("context_length", "context_length")):
            if params[field] < 1:
                raise bad(name, params[field], "is not a positive count")
        if params["vocab_size"] > MAX_VOCAB:
            raise bad("vocab_size", params["vocab_size"], f"is beyond any real vocabulary (at most {MAX_VOCAB:,})")
        rope_dims = params["rope_dims"]
        if rope_dims < 2 or rope_dims % 2 or rope_dims > params["head_dim"]:
            raise bad("rope.dimension_count", rope_dims, f"is not an even count of at most the head size {params['head_dim']}")
        for name, field in (("rope.freq_base", "rope_base"), ("attention.layer_norm_rms_epsilon", "norm_eps"),
                            ("rope.scaling.attn_factor", "rope_attn_factor"), ("rope.scaling.factor", "rope_scale")):
            if not (math.isfinite(params[field]) and params[field] > 0):
                raise bad(name, params[field], "is not a finite positive number")
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
        # x * rsqrt(mean(x^2) + eps) * weight. On the CPU F.rms_norm runs those same ops (the
        # result is bit-identical) about as fast as written out; on CUDA/MPS it is one fused kernel.
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class Rotary:
    """Rotary position embedding tables and their application.

    `neox=True` rotates element i with i + dims/2 (GPT-NeoX, Phi-3, Qwen2); `neox=False` rotates
    adjacent pairs (2i, 2i+1), the layout llama's GGUF converter produces by permuting Q and K.
    `freq_factors` divide each frequency (Llama 3.1's rope_freqs, Phi-3's LongRoPE factors).
    Angles are computed in float64 and tables kept in float32: low-precision tables corrupt
    long prompts.

    Both layouts are one formula: view the rotated features as pairs (a, b) along a size-2 axis
    (`[2, dims/2]` for NEOX, `[dims/2, 2]` for adjacent pairs); then
    `out = x * (cos, cos) + swap(x) * (-sin, sin)`, three tensor ops however many heads.
    Tables are computed once for positions [0, n) and grown by doubling, so a decode step only
    slices them.
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
        self.inv_freq = inv_freq  # float64 on the CPU (MPS has no float64); tables move to `device`
        self.device = torch.device(device)
        self.pair_shape = (2, dims // 2) if neox else (dims // 2, 2)
        self.swap_dim = -2 if neox else -1  # the size-2 axis of a pair
        self._cos = self._sin = torch.empty(0, 1, *self.pair_shape)

    def tables(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) for positions [start, start + n), [n, 1, *pair_shape], broadcast over heads."""
        if start + n > self._cos.shape[0]:
            self._grow(max(start + n, 2 * self._cos.shape[0], 256))
        return self._cos[start : start + n], self._sin[start : start + n]

    def _grow(self, length: int) -> None:
        positions = torch.arange(length, dtype=torch.float64)
        angles = (positions * self.position_scale)[:, None] * self.inv_freq[None, :]
        cos = (torch.cos(angles) * self.attn_factor).to(torch.float32)
        sin = (torch.sin(angles) * self.attn_factor).to(torch.float32)
        pair_axis = 1 if self.neox else 2  # where (a, b) sits in [T, 2, dims/2] / [T, dims/2, 2]
        self._cos = torch.stack((cos, cos), dim=pair_axis).unsqueeze(1).to(self.device)
        self._sin = torch.stack((-sin, sin), dim=pair_axis).unsqueeze(1).to(self.device)

    def apply_(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate x [T, heads, head_dim] in place (x may be a view); the first `dims` features are
        rotated, the rest pass through. Returns x."""
        pairs = x[..., : self.dims].unflatten(-1, self.pair_shape)
        torch.addcmul(pairs * cos, pairs.flip(self.swap_dim), sin, out=pairs)
        return x


# ----- KV cache -------------------------------------------------------------------------------


class KVCache:
    """Keys and values of every layer for one sequence; grows by doubling up to `max_length`.

    Stored per layer as [kv_heads, capacity, head_dim]: each head's keys are one contiguous
    [tokens, head_dim] matrix, what attention multiplies by without copying. `native_view` is
    where the native step keeps its pointers to that storage (it checks them after growth).
    """

    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, max_length: int,
                 device="cpu", dtype=torch.float32, initial: int = 256):
        self.max_length = max_length
        self.length = 0
        self._shape = (n_kv_heads, head_dim)
        self._device, self._dtype = device, dtype
        capacity = min(initial, max_length)
        self.keys = [self._empty(capacity) for _ in range(n_layers)]
        self.values = [self._empty(capacity) for _ in range(n_layers)]
        self.native_view = None
        self.graph_mark = None  # cuda_graph.GraphedDecode's name for this cache

    def _empty(self, capacity: int) -> torch.Tensor:
        heads, dim = self._shape
        return torch.empty(heads, capacity, dim, device=self._device, dtype=self._dtype)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[1]

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
        room = available_bytes()
        if room is not None and self._bytes(capacity) - self._bytes(self.capacity) > room:
            capacity = needed  # doubling does not fit: exactly what is needed, if that does
        if room is not None and self._bytes(capacity) - self._bytes(self.capacity) > room:
            raise self._no_room(needed, room)
        try:
            for store in (self.keys, self.values):
                for i, old in enumerate(store):
                    grown = self._empty(capacity)
                    grown[:, : self.length] = old[:, : self.length]
                    store[i] = grown
        except (RuntimeError, MemoryError):  # the allocator refused (a ulimit, a cgroup)
            error = self._no_room(needed, room)
            # Some layers grew and some did not: empty them all, so every layer agrees again.
            self.keys = [self._empty(0) for _ in self.keys]
            self.values = [self._empty(0) for _ in self.values]
            self.length, self.native_view = 0, None
            raise error from None

    def _bytes(self, capacity: int) -> int:
        heads, dim = self._shape
        return 2 * len(self.keys) * heads * capacity * dim * torch.empty((), dtype=self._dtype).element_size()

    def _no_room(self, needed: int, room: int | None) -> MemoryLimitError:
        free = f"only {room >> 20} MiB is free" if room is not None else "the allocation failed"
        return MemoryLimitError(
            f"the KV cache for {needed} tokens needs {(self._bytes(needed) - self._bytes(self.capacity)) >> 20} "
            f"MiB more memory but {free}; use a shorter prompt or max-tokens, a smaller --ctx-size, or free memory")

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [T, kv_heads, head_dim] after the current length; return all keys/values so
        far, [kv_heads, length + T, head_dim]."""
        end = self.length + k.shape[0]
        keys, values = self.keys[layer], self.values[layer]
        keys[:, self.length : end] = k.transpose(0, 1)
        values[:, self.length : end] = v.transpose(0, 1)
        return keys[:, :end], values[:, :end]

    def truncate(self, length: int) -> None:
        """Forget every token from `length` on (reuse a shared prefix, roll back a draft)."""
        self.length = max(0, min(length, self.length))


def attention_bias(start: int, n_new: int, window: int, device) -> torch.Tensor | None:
    """Additive float32 [n_new, start + n_new] mask, 0 where the query at position q sees the key
    at k (k <= q and, with a sliding window, q - k < window: HF Phi-3's rule) and -inf elsewhere.
    None when nothing is masked (one query inside the window)."""
    total = start + n_new
    if n_new == 1 and (not window or total <= window):
        return None
    q = torch.arange(start, total, device=device)[:, None]
    k = torch.arange(total, device=device)[None, :]
    visible = k <= q
    if window:
        visible &= (q - k) < window
    return torch.zeros(visible.shape, device=device).masked_fill_(~visible, float("-inf"))


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
           scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v for q [T, heads, head_dim] against keys/values
    [kv_heads, S, head_dim] (grouped-query: each KV head serves heads / kv_heads query heads).
    Returns [T, heads * head_dim].

    The query heads of one KV head are the rows of one matrix, [kv_heads, group * T, head_dim]
    (a view for one query), so attention is two batched matrix products against the cache as it
    is stored: no K/V repeated per query head. On the CPU, SDPA runs grouped-query attention on
    its math path with `repeat_interleave`: 2-4x slower for a decode step, no faster on prompts.
    SDPA's fused kernel (reachable with expanded K/V views) is 1.2-2.6x faster on long prompts
    but rounds differently from this path, and one path for every chunk size keeps a prompt run
    in pieces (a chat turn after a cached prefix) as close as possible to the same prompt run
    whole: the bf16 weight kernels amplify 1e-7 differences into logit changes that flip near
    ties (SmolLM2 answering a repeated question, tests/test_cli_chat.py). Like SDPA's math path,
    this materializes the [heads, T, S] scores (T is at most one prefill chunk).
    """
    n, heads, dim = q.shape
    kv_heads, seen = keys.shape[0], keys.shape[1]
    group = heads // kv_heads
    rows = q.transpose(0, 1).reshape(kv_heads, group * n, dim)
    scores = torch.bmm(rows, keys.transpose(1, 2)).mul_(scale)
    if bias is not None:
        scores.view(kv_heads, group, n, seen).add_(bias)
    out = torch.bmm(torch.softmax(scores, dim=-1), values)  # [kv_heads, group * T, head_dim]
    return out.view(heads, n, dim).transpose(0, 1).reshape(n, heads * dim)


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

    def joined(self, x: torch.Tensor) -> torch.Tensor:
        """Every output side by side, [..., sum of sizes]: the fused weight's output as it is, or
        the separate outputs concatenated. A fresh tensor the caller may modify in place."""
        if self.sizes is not None:
            return self.linears[0](x)
        return torch.cat([linear(x) for linear in self.linears], dim=-1)


class Attention(nn.Module):
    """Grouped-query attention over the KV cache.

    Variants, all optional: `q_norm`/`k_norm` (RMSNorm over each head's features, before rotary:
    Qwen3, Gemma 3), `rotary` (this layer's own rotary table, e.g. Gemma 3's local layers with
    base 10000; None: the model's), the attention window (default `p.layer_window(layer)`) and
    the score scale (default `p.attention_scale`, else 1 / sqrt(head_dim))."""

    def __init__(self, qkv: Projection, wo: QuantizedLinear, p: ModelParams, layer: int, *,
                 q_norm: RMSNorm | None = None, k_norm: RMSNorm | None = None, rotary: Rotary | None = None):
        super().__init__()
        self.qkv, self.wo = qkv, wo
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = p.n_heads, p.n_kv_heads, p.head_dim
        self.scale = p.attention_scale or 1.0 / math.sqrt(p.head_dim)
        self.window = p.layer_window(layer)
        self.q_norm, self.k_norm = q_norm, k_norm
        self.rotary = rotary
        self.f16_attention = f16_attention()  # resolved once: used when the cache is float16

    def forward(self, x, rotary: Rotary, cos, sin, cache: KVCache, bias) -> torch.Tensor:
        n, heads, kv_heads = x.shape[0], self.n_heads, self.n_kv_heads
        # q, k and v heads side by side, [T, heads + 2 kv_heads, head_dim]: q and k are adjacent,
        # so one in-place rotary call turns both.
        qkv = self.qkv.joined(x).unflatten(-1, (heads + 2 * kv_heads, self.head_dim))
        if self.q_norm is not None:
            qkv[:, :heads] = self.q_norm(qkv[:, :heads])
        if self.k_norm is not None:
            qkv[:, heads : heads + kv_heads] = self.k_norm(qkv[:, heads : heads + kv_heads])
        rotary.apply_(qkv[:, : heads + kv_heads], cos, sin)
        q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
        start = cache.length
        keys, values = cache.write(self.layer, k, v)
        if keys.dtype == torch.float16:  # a half-size cache: see Transformer.new_cache
            if n <= NATIVE_ATTENTION_MAX_TOKENS:
                return self.wo(self.f16_attention(q, keys, values, start, self.window, self.scale))
            keys, values = keys.float(), values.float()
        if n <= ATTENTION_QUERY_BLOCK:
            return self.wo(attend(q, keys, values, bias, self.scale))
        # Long chunks in blocks of queries: the [heads, block, keys] scores and their softmax
        # are the largest transients of a prompt chunk (Phi-3-mini, 512 tokens: 67 MB whole).
        out = torch.cat([attend(q[i:i + ATTENTION_QUERY_BLOCK], keys, values,
                                None if bias is None else bias[i:i + ATTENTION_QUERY_BLOCK], self.scale)
                         for i in range(0, n, ATTENTION_QUERY_BLOCK)])
        return self.wo(out)


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): act SiLU (SwiGLU) or tanh-approximated GELU (GeGLU, Gemma)."""

    ACTIVATIONS = {"silu": F.silu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh")}

    def __init__(self, gate_up: Projection, down: QuantizedLinear, activation: str = "silu"):
        super().__init__()
        self.gate_up, self.down = gate_up, down
        self.activation = activation
        self.act = self.ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)  # fresh outputs (or views of one)
        # silu(gate) as a fresh contiguous tensor, then the joined gate|up output can go before
        # `down` runs (which would otherwise copy the strided view): a prompt chunk of 512
        # tokens holds 17 MB less for Phi-3-mini.
        act = self.act(gate).mul_(up)
        del gate, up
        return self.down(act)


class Block(nn.Module):
    """Pre-norm residual block; `post_attn_norm`/`post_ffn_norm` (Gemma 2/3) normalise each
    sub-block's output before it is added to the residual stream."""

    def __init__(self, attn_norm: RMSNorm, attn: Attention, ffn_norm: RMSNorm, mlp: GatedMLP, *,
                 post_attn_norm: RMSNorm | None = None, post_ffn_norm: RMSNorm | None = None):
        super().__init__()
        self.attn_norm, self.attn, self.ffn_norm, self.mlp = attn_norm, attn, ffn_norm, mlp
        self.post_attn_norm, self.post_ffn_norm = post_attn_norm, post_ffn_norm

    def forward(self, x, rotary, cos, sin, cache, bias):
        # Residual adds in place on the fresh sub-block outputs (a + x is x + a exactly).
        a = self.attn(self.attn_norm(x), rotary, cos, sin, cache, bias)
        if self.post_attn_norm is not None:
            a = self.post_attn_norm(a)
        h = a.add_(x)
        m = self.mlp(self.ffn_norm(h))
        if self.post_ffn_norm is not None:
            m = self.post_ffn_norm(m)
        return m.add_(h)


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
        # Each layer's rotary table (its own, or the model's) and window, computed once per pass.
        self._layer_rotary = [block.attn.rotary or rotary for block in self.blocks]
        self._rotaries = list({id(r): r for r in self._layer_rotary}.values())
        self._windows = sorted({block.attn.window for block in self.blocks})
        from .native_step import NativeStep  # imports this module

        # Passes as one native call where every weight allows it: decode steps and drafts, and
        # prompt chunks where the level multiplies them in place (NativeStep.runs).
        self.native_step, self.step_description = NativeStep.build(self)
        from .cuda_graph import GraphedDecode  # imports this module

        # Decode steps on CUDA replayed from a captured graph (None elsewhere).
        self.graphed = GraphedDecode.build(self)
        if self.graphed is not None:
            self.step_description = "PyTorch blocks, one-token steps replayed from CUDA graphs"

    @property
    def variants(self) -> list[str]:
        """The block variants this model uses beyond llama/phi3/qwen2's blocks, in words: what a
        decode path must implement to run it (lantern info, tests/test_new_archs.py)."""
        p, found = self.params, []
        attn = [b.attn for b in self.blocks]
        if any(a.q_norm is not None or a.k_norm is not None for a in attn):
            found.append("per-head q/k RMSNorm")
        if any(b.post_attn_norm is not None or b.post_ffn_norm is not None for b in self.blocks):
            found.append("post-attention/post-FFN norms")
        if any(b.mlp.activation != "silu" for b in self.blocks):
            found.append(f"{self.blocks[0].mlp.activation} feed-forward")
        if len(self._rotaries) > 1 or len(self._windows) > 1:
            found.append("per-layer rope base/window")
        if p.logit_softcap:
            found.append("final logit softcapping")
        if any(a.scale != 1.0 / math.sqrt(p.head_dim) for a in attn):
            found.append("attention scale other than 1/sqrt(head_dim)")
        return found

    def new_cache(self, max_length: int, device="cpu", half: bool = False) -> KVCache:
        """`half`: keys and values in float16, as llama.cpp keeps them, where the native attention
        kernel reads them (`f16_attention`): a decode step reads the whole cache, so half the
        bytes is up to twice the speed on long contexts and half the memory (Phi-3-mini: 0.4 MB
        instead of 0.8 MB per token). Rounding to float16 keeps 11 significant bits."""
        p = self.params
        dtype = torch.float16 if half and f16_attention() is not None else torch.float32
        return KVCache(p.n_layers, p.n_kv_heads, p.head_dim, max_length, device=device, dtype=dtype)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The blocks' input for `tokens`: embedding rows, times `embedding_scale` (Gemma: sqrt(dim))."""
        x = self.embedding(tokens)
        if self.params.embedding_scale != 1.0:
            x.mul_(self.params.embedding_scale)
        return x

    def runs_natively(self, n: int, cache: KVCache, prompt: bool = False) -> bool:
        """Whether a pass of `n` tokens on `cache` is one native step call (`forward`)."""
        step = self.native_step
        return step is not None and step.runs(n, prompt) and cache.keys[0].dtype == torch.float16

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, cache: KVCache, outputs: str = "all",
                prompt: bool = False) -> torch.Tensor | None:
        """Run `tokens` (1-D ids) after what `cache` holds. Returns float32 logits for every token
        (`outputs="all"`), for the last one only ("last"), or nothing ("none": prefill only).
        prompt: the tokens are a prompt being read, whose weight products the native step may
        round x to 8 bits for (NativeStep.__call__); the PyTorch blocks ignore it."""
        n = tokens.shape[0]
        if n == 1 and outputs != "none" and self.graphed is not None:
            logits = self.graphed(tokens, cache)
            if logits is not None:
                return logits
        cache.reserve(n)
        start = cache.length
        x = self.embed(tokens)
        if self.runs_natively(n, cache, prompt):
            cos, sin = self.rotary.tables(start, n)
            logits = self.native_step(x, cache, start, cos, sin, {"all": n, "last": 1, "none": 0}[outputs], prompt)
            cache.length = start + n
            return logits
        tables = {id(r): r.tables(start, n) for r in self._rotaries}
        biases = {w: attention_bias(start, n, w, tokens.device) for w in self._windows}
        x = self.run_blocks(x, tables, biases, cache)
        cache.length = start + n
        if outputs == "none":
            return None
        if outputs == "last":
            x = x[-1:]
        return self.head(x)

    def run_blocks(self, x: torch.Tensor, tables: dict, biases: dict, cache) -> torch.Tensor:
        """The decoder blocks over x, with each rotary table's (cos, sin) by id and each window's
        attention bias; `cache` is a KVCache, or anything with its write()."""
        for block, rotary in zip(self.blocks, self._layer_rotary):
            x = block(x, rotary, *tables[id(rotary)], cache, biases[block.attn.window])
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, output head and soft-capping: float32 logits for each row of x."""
        logits = self.output(self.norm(x))
        if self.params.logit_softcap:
            cap = self.params.logit_softcap
            logits = torch.tanh(logits.div_(cap)).mul_(cap)
        return logits


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

    def projection(self, parts: Sequence[tuple[str, int, str | None]], in_features: int) -> Projection:
        """Linear maps of one input whose outputs are used apart (q|k|v, gate|up), from tensors the
        file stores apart: `parts` are (weight name, rows, bias name or None). For the fast CPU
        kernels, weights of one type are joined into one (a copy of their rows; the file's pages
        are given back), so each step makes one kernel call instead of several: SmolLM2 decode
        makes 121 weight calls per token instead of 211."""
        tensors = [self.file.tensor(name, (rows, in_features)) for name, rows, _ in parts]
        sizes = [rows for _, rows, _ in parts]
        if (len(tensors) > 1 and len({t.type for t in tensors}) == 1 and torch.device(self.device).type == "cpu"
                and kernel_policy(self.kernels) == "fast"):
            joined = TensorData("|".join(t.name for t in tensors), tensors[0].type, (sum(sizes), in_features),
                                torch.cat([t.raw for t in tensors]))
            for t in tensors:
                release_pages(t.raw)
            biases = [self.vector(b, rows) for _, rows, b in parts if b]
            bias = torch.cat(biases) if biases else None
            return Projection([QuantizedLinear(joined, bias, device=self.device, kernels=self.kernels)], sizes)
        return Projection([self.linear(name, rows, in_features, bias=b) for name, rows, b in parts])

    def vector(self, name: str, size: int) -> torch.Tensor:
        return dense_vector(self.file.tensor(name, (size,)), self.device)

    def norm(self, name: str, size: int | None = None) -> RMSNorm:
        """An RMSNorm over `size` features (default the width; the head size for q/k norms)."""
        return RMSNorm(self.vector(name, size or self.params.dim), self.params.norm_eps)

    def embedding(self) -> QuantizedEmbedding:
        p = self.params
        return QuantizedEmbedding(self.file.tensor("token_embd.weight", (p.vocab_size, p.dim)), device=self.device)

    def output(self) -> QuantizedLinear:
        """The output head; tied to the token embedding when the file has no output.weight."""
        p = self.params
        name = "output.weight" if self.file.has("output.weight") else "token_embd.weight"
        return self.linear(name, p.vocab_size, p.dim)

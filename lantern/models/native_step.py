"""A `Transformer`'s forward pass over a few tokens as one native call (csrc/step.c).

Decode steps and speculative verify passes run the same blocks as `layers.py`, but in PyTorch
each layer is ~40 small ops whose dispatch costs more than their work: about half of SmolLM2's
decode step and ~15 ms of Phi-3-mini's (docs/PERFORMANCE.md). `NativeStep` describes the model
once to the C library (pointers to the weights' GGUF blocks, norms, biases) and then runs a
whole pass per call: norms, the weight kernels, rotary, the float16 KV cache write, attention,
SiLU and residuals, then the output head. It applies only where every weight runs on the
in-place GGUF kernels (`native.GGUFKernel`) and the cache is float16; everything else (the
reference kernels, other devices) takes the PyTorch blocks. Prompt chunks run natively where the
level multiplies them in place with its micro-kernel (avx2), as the PyTorch blocks would too, and
at neon with dotprod where every weight has its 8-bit tile (`NativeStep.runs`); elsewhere they
take the PyTorch blocks and the level's prompt route.

LANTERN_NATIVE_STEP=0 turns it off (the PyTorch blocks on the same kernels, for comparisons).
"""

from __future__ import annotations

import ctypes
import os

import torch

from ..weights.kernels import native

i64, ptr = ctypes.c_int64, ctypes.c_void_p
MAX_PARTS = 3


class _Linear(ctypes.Structure):
    _fields_ = [("w", ptr), ("bias", ptr), ("rows", i64), ("cols", i64), ("qtype", i64)]


class _Projection(ctypes.Structure):
    _fields_ = [("part", _Linear * MAX_PARTS), ("nparts", i64)]


class _Layer(ctypes.Structure):
    _fields_ = [("attn_norm", ptr), ("ffn_norm", ptr), ("qkv", _Projection), ("gate_up", _Projection),
                ("wo", _Linear), ("down", _Linear), ("q_norm", ptr), ("k_norm", ptr), ("post_attn_norm", ptr),
                ("post_ffn_norm", ptr), ("window", i64), ("local", i64)]


class _Model(ctypes.Structure):
    _fields_ = [(name, i64) for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                                         "rope_dims", "vocab", "neox", "act")] + [
        ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("softcap", ctypes.c_float), ("layers", ptr),
        ("out_norm", ptr), ("output", _Linear)]


ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}  # csrc/step.c: LT_ACT_*


def _norm(norm, size: int) -> int | None:
    return None if norm is None else _vector(norm.weight, size)


class _Segment(ctypes.Structure):
    _fields_ = [("n_tokens", i64), ("start", i64), ("capacity", i64), ("n_logits", i64), ("int8", i64), ("keys", ptr),
                ("values", ptr)]


class Unsupported(Exception):
    """The model has a part the native step does not run."""


def _vector(t: torch.Tensor | None, size: int) -> int | None:
    if t is None:
        return None
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous() or t.numel() != size:
        raise Unsupported(f"a {tuple(t.shape)} {t.dtype} vector")
    return t.data_ptr()


def _linear(layer) -> _Linear:
    kernel = getattr(layer, "kernel", None)
    if not isinstance(kernel, native.GGUFKernel):
        raise Unsupported(f"{layer.name} runs on {getattr(layer, 'kernel_name', type(layer).__name__)}")
    return _Linear(kernel.raw.data_ptr(), _vector(layer.bias, layer.out_features), kernel.rows, kernel.cols,
                   int(kernel.qtype))


def _projection(proj, sizes: list[int]) -> _Projection:
    parts = [_linear(linear) for linear in proj.linears]
    if len(parts) > MAX_PARTS or sum(p.rows for p in parts) != sum(sizes):
        raise Unsupported("a projection the native step does not lay out")
    out = _Projection(nparts=len(parts))
    for i, part in enumerate(parts):
        out.part[i] = part
    return out


class NativeStep:
    """Runs `Transformer.forward` for passes of up to `max_tokens` tokens in one native call."""

    max_tokens = native.GGUF_MAX_M  # the fused weight kernels' batch limit
    # A pass over several sequences (the batch engine's step: every decoding sequence's next token
    # and a prompt chunk) stays one native call up to this many tokens; beyond the fused kernels'
    # limit the weights take matmul.c's prompt blocks, still read once per pass.
    max_batch_tokens = 64

    def runs(self, n: int, prompt: bool = False) -> bool:
        """Whether a pass of `n` tokens of one sequence is one native call: always up to
        `max_tokens`; beyond, a prompt chunk (`Model.forward` splits prompts into chunks of at
        most PREFILL_CHUNK tokens: the native scratch memory grows with the chunk), where the level
        multiplies prompt chunks in place with its micro-kernel, or, at a level without one (neon),
        a prompt being read (`prompt`) whose every weight has the level's 8-bit tile
        (`int8_prompts`): the 8-bit tile then replaces the float32 expansion and torch's GEMM, as
        at avx2, with the same bits (bench/arm_instructions.py: 0.19-0.20 instructions per weight
        and row of x against 0.45-0.95 for the 15-bit row kernels; torch's GEMM needs at least
        0.25). Scoring passes (`prompt` false) keep that level's exact route. The
        weights then go through the same kernel as in the PyTorch blocks, and what the native call
        saves is the blocks' ~40 small torch ops per layer: 128-token prompts at avx2 1.4x faster on
        SmolLM2-135M and Gemma-3-270M shapes, 1.2x on Qwen3-0.6B's, the same on Phi-3-mini's,
        whose weights are nearly all of the time (bench/prompt_ab.py --routes native, docs/PERFORMANCE.md). One path for every chunk size also keeps
        a prompt read in pieces as close as possible to the same prompt read whole."""
        return n <= self.max_tokens or self.prompt_chunks() or (prompt and self.int8_prompts)

    @property
    def int8_prompts(self) -> bool:
        """Whether every weight of a prompt chunk has the level's 8-bit tile (`runs`)."""
        int8 = {int(t) for t in native.prompt_int8_types()}
        return bool(int8) and self.chunk_types <= int8

    @staticmethod
    def prompt_chunks() -> bool:
        """Whether the level in use runs prompt chunks natively too (see `runs`)."""
        return native.prompt_route() == "in_place" and native.kernel_name("gemm") is not None

    def __init__(self, transformer):
        p = transformer.params
        rotary = transformer.rotary
        blocks = list(transformer.blocks)
        # Layers rotate with the model's table or, with interleaved local layers (Gemma 3), one
        # other table of the same size.
        tables = list({id(r): r for r in (b.attn.rotary or rotary for b in blocks)}.values())
        if len(tables) > 2 or any(t.dims != rotary.dims or t.neox != rotary.neox for t in tables):
            raise Unsupported("rotary tables of different sizes")
        self.local_rotary = next((t for t in tables if t is not rotary), None)
        if any(b.mlp.activation not in ACTIVATIONS for b in blocks) or len({b.mlp.activation for b in blocks}) > 1:
            raise Unsupported(f"the {blocks[0].mlp.activation} activation")
        if len({b.attn.scale for b in blocks}) > 1:
            raise Unsupported("attention scales that differ by layer")
        layers = (_Layer * p.n_layers)()
        for i, block in enumerate(blocks):
            attn, mlp = block.attn, block.mlp
            layers[i] = _Layer(
                _vector(block.attn_norm.weight, p.dim), _vector(block.ffn_norm.weight, p.dim),
                _projection(attn.qkv, [p.n_heads * p.head_dim, p.n_kv_heads * p.head_dim, p.n_kv_heads * p.head_dim]),
                _projection(mlp.gate_up, [p.ffn_dim, p.ffn_dim]), _linear(attn.wo), _linear(mlp.down),
                _norm(attn.q_norm, p.head_dim), _norm(attn.k_norm, p.head_dim),
                _norm(block.post_attn_norm, p.dim), _norm(block.post_ffn_norm, p.dim),
                attn.window, int(attn.rotary is not None and attn.rotary is not rotary))
        self._layers = layers  # the description points into it: keep it alive
        # the types a prompt chunk's weights are multiplied in (the output head takes the last token only)
        self.chunk_types = {lin.qtype for layer in layers for lin in (
            *layer.qkv.part[:layer.qkv.nparts], *layer.gate_up.part[:layer.gate_up.nparts], layer.wo, layer.down)}
        self.desc = _Model(p.dim, p.n_layers, p.n_heads, p.n_kv_heads, p.head_dim, p.ffn_dim, rotary.dims,
                           p.vocab_size, int(rotary.neox), ACTIVATIONS[blocks[0].mlp.activation], p.norm_eps,
                           blocks[0].attn.scale, p.logit_softcap, ctypes.addressof(layers),
                           _vector(transformer.norm.weight, p.dim), _linear(transformer.output))
        self.rotary = rotary
        self.vocab_size = p.vocab_size
        self._lib = native.library()

    def _local_tables(self, spans) -> list:
        """The local layers' (cos, sin) for positions [start, start + n) of each span, joined;
        nothing where no layer is local."""
        if self.local_rotary is None:
            return []
        local = [self.local_rotary.tables(start, n) for start, n in spans]
        return [(torch.cat([c for c, _ in local]), torch.cat([s for _, s in local]))]

    @staticmethod
    def _pointers(tables) -> tuple:
        """step.c's cos[2] / sin[2]: the model's tables, then the local layers' (or NULL)."""
        cos = (ptr * 2)(*[c.data_ptr() for c, _ in tables])
        sin = (ptr * 2)(*[s.data_ptr() for _, s in tables])
        return cos, sin

    @classmethod
    def build(cls, transformer) -> "tuple[NativeStep | None, str]":
        """(the native step for `transformer`, or None where it does not apply; why, in words)."""
        lib = native.library()
        if os.environ.get("LANTERN_NATIVE_STEP", "1") == "0":
            return None, "PyTorch blocks (LANTERN_NATIVE_STEP=0)"
        if lib is None:
            return None, "PyTorch blocks (the native step needs lantern's C library)"
        try:
            step = cls(transformer)
        except Unsupported as exc:
            return None, f"PyTorch blocks ({exc})"
        if cls.prompt_chunks():
            return step, f"native step (every pass in one C call, prompt chunks too, {native.isa()})"
        if step.int8_prompts:
            return step, (f"native step (passes of up to {cls.max_tokens} tokens in one C call, and prompts' chunks "
                          f"on the 8-bit tile, {native.isa()})")
        return step, f"native step (passes of up to {cls.max_tokens} tokens in one C call, {native.isa()})"

    def _cache_pointers(self, cache):
        """Per-layer pointer arrays to the cache's keys and values, rebuilt when it has grown."""
        held = cache.native_view
        if held is None or held[0] != cache.keys[0].data_ptr():
            keys = (ptr * len(cache.keys))(*[k.data_ptr() for k in cache.keys])
            values = (ptr * len(cache.values))(*[v.data_ptr() for v in cache.values])
            held = cache.native_view = (cache.keys[0].data_ptr(), keys, values)
        return held[1], held[2]

    def __call__(self, x: torch.Tensor, cache, start: int, cos: torch.Tensor, sin: torch.Tensor,
                 n_logits: int, prompt: bool = False) -> torch.Tensor | None:
        """Run the embedded tokens x (float32 [n, dim], overwritten) at positions start.. on
        `cache` (float16, reserved), with the rotary tables of those positions (`Rotary.tables`);
        the logits of the last `n_logits` tokens, or None for 0. prompt: the tokens are a prompt
        being read (8-bit x for the weights where the level has it: native.prompt_int8_types)."""
        n = x.shape[0]
        keys, values = self._cache_pointers(cache)
        logits = torch.empty(n_logits, self.vocab_size) if n_logits else None
        tables = [(cos, sin)] + self._local_tables([(start, n)])  # alive until the call returns
        cos_p, sin_p = self._pointers(tables)
        rc = self._lib.lantern_step(ctypes.addressof(self.desc), x.data_ptr(), n, start, keys, values,
                                    cache.capacity, cos_p, sin_p,
                                    logits.data_ptr() if n_logits else None, n_logits, int(prompt),
                                    native.pool_threads())
        if rc != 0:
            raise RuntimeError("the native forward step failed (out of memory?)")
        return logits

    def run_segments(self, x: torch.Tensor, segments, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """One pass over several sequences: x float32 [M, dim] (overwritten) holds their embedded
        tokens one sequence after another; `segments` are (cache, start, n_tokens, n_logits,
        int8) in the same order, each cache float16 and reserved; int8: the tokens' weight
        products may take 8-bit x (a prompt being read, as `__call__`'s prompt; or a batched
        pass's decode tokens: `Model.forward_batch`), such segments after all others; cos/sin the rotary tables of every row's position. The
        logits wanted, [sum of n_logits, vocab], in segment order."""
        described = (_Segment * len(segments))()
        for i, (cache, start, n, n_logits, int8) in enumerate(segments):
            keys, values = self._cache_pointers(cache)
            described[i] = _Segment(n, start, cache.capacity, n_logits, int(int8), ctypes.cast(keys, ptr),
                                    ctypes.cast(values, ptr))
        logits = torch.empty(sum(s[3] for s in segments), self.vocab_size)
        tables = [(cos, sin)] + self._local_tables([(start, n) for _, start, n, _, _ in segments])
        cos_p, sin_p = self._pointers(tables)
        rc = self._lib.lantern_step_batch(ctypes.addressof(self.desc), x.data_ptr(), x.shape[0], ctypes.addressof(described),
                                          len(segments), cos_p, sin_p, logits.data_ptr(), native.pool_threads())
        if rc != 0:
            raise RuntimeError("the native batch step failed (out of memory?)")
        return logits

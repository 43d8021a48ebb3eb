"""Synthetic GGUF models for tests and benchmarks.

Random weights with the exact tensor names, shapes and metadata of real `phi3`, `llama`,
`qwen2`, `gemma3` and `qwen3` files, written with the reference writer (`gguf.GGUFWriter`) in float32, then quantized
with llama.cpp's own quantizer, so lantern and llama.cpp read the very same bytes. Also the F32
"exact math" copy of a quantized file: every tensor dequantized by `gguf.quants`, an independent
dequantizer.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf.constants import TokenType
from gguf.quants import dequantize

# llama.cpp's llama_ftype values for llama_model_quantize.
FTYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30, "BF16": 32,
}


@dataclass
class Spec:
    """Shape of a synthetic model. Dims are multiples of 256 so every K-quant applies."""

    arch: str = "phi3"
    dim: int = 256
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn_dim: int = 512
    vocab_size: int = 512
    context_length: int = 4096
    rope_base: float = 10000.0
    sliding_window: int = 0  # phi3 and gemma3; 0 = key absent
    longrope: bool = False  # phi3 128k variant: rope_factors_long/short + attention factor
    original_context: int = 4096
    rope_freqs: bool = False  # llama 3.1 style divisors
    tied_output: bool = False  # llama: no output.weight
    # Real language models put most probability on a few tokens; a purely random head gives
    # near-uniform logits whose top-2 often tie to 1e-4 std, where float summation order alone
    # picks the winner. Mixing in the embedding (as tied heads do) gives realistic margins.
    output_embedding_mix: float = 0.5
    seed: int = 0
    name: str = ""
    source_type: str = "F32"  # F16 halves the size of the unquantized source of large models

    key_length: int = 0  # head size written as attention.key_length/value_length (0: dim / heads, no key)
    vocab: str = ""  # "gemma3" / "qwen3": that model's real tokenizer (lantern.testing.npm_vocab)

    @property
    def head_dim(self) -> int:
        return self.key_length or self.dim // self.n_heads

    @property
    def rope_dims(self) -> int:
        """Rotary features per head (`rope.dimension_count`); subclasses may rotate fewer."""
        return self.head_dim

    def tokenizer_metadata(self) -> dict | None:
        """GGUF `tokenizer.*` metadata to write instead of `small_vocab`'s (subclasses: a real
        vocabulary, e.g. lantern.testing.phi4_synthetic)."""
        if self.vocab:
            from . import npm_vocab

            assert self.vocab_size == npm_vocab.vocab_size(self.vocab), "a real vocabulary has its real size"
            return npm_vocab.METADATA[self.vocab]()
        return None


# Gemma-3-270M and Qwen3-0.6B shapes with width and layer count shrunk (real: 640 wide, 18
# layers; 1024 wide, 28 layers), keeping their head sizes, head counts, GQA ratios, vocabularies
# and metadata. 6 Gemma layers hold one global layer (5) after five local ones; the window is
# small so that prompts longer than it stay cheap (the real one is 512).
GEMMA3_270M = Spec(arch="gemma3", dim=256, n_layers=6, n_heads=4, n_kv_heads=1, key_length=256, ffn_dim=512,
                   vocab_size=262144, vocab="gemma3", context_length=32768, rope_base=1e6, sliding_window=32,
                   tied_output=True, name="gemma-3-270m-it-synthetic")
QWEN3_06B = Spec(arch="qwen3", dim=256, n_layers=2, n_heads=16, n_kv_heads=8, key_length=128, ffn_dim=768,
                 vocab_size=151936, vocab="qwen3", context_length=40960, rope_base=1e6, tied_output=True,
                 name="qwen3-0.6b-synthetic")

# Full-size shapes of the two, for decode speed beside llama.cpp (bench/compare_llamacpp.py): the
# real width, depth and feed-forward size (Gemma-3-270M: 640 x 18, 2048; Qwen3-0.6B: 1024 x 28,
# 3072) and the real window.
GEMMA3_270M_FULL = replace(GEMMA3_270M, dim=640, n_layers=18, ffn_dim=2048, sliding_window=512, source_type="F16",
                           name="gemma-3-270m-shaped")
QWEN3_06B_FULL = replace(QWEN3_06B, dim=1024, n_layers=28, ffn_dim=3072, source_type="F16", name="qwen3-0.6b-shaped")

# A Phi-3-mini-4k-instruct-shaped model: 3.8B parameters, the real file's shapes and metadata.
PHI3_MINI = Spec(arch="phi3", dim=3072, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=8192,
                 vocab_size=32064, context_length=4096, sliding_window=2047, source_type="F16",
                 name="phi3-mini-synthetic")


def small_vocab(size: int, phi3: bool = False) -> dict:
    """A SentencePiece-style vocabulary llama.cpp accepts: <unk>, <s>, </s>, 256 byte tokens,
    then filler pieces. With `phi3`, ids 32000.. carry Phi-3's special tokens (size must allow)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    while len(tokens) < size:
        tokens.append(f"\u2581t{len(tokens)}")
        types.append(TokenType.NORMAL)
    if phi3 and size >= 32011:
        specials = {32000: "<|endoftext|>", 32001: "<|assistant|>", 32006: "<|system|>",
                    32007: "<|end|>", 32010: "<|user|>"}
        for i, text in specials.items():
            tokens[i], types[i] = text, TokenType.CONTROL
    scores = [-float(i) for i in range(size)]
    return {"tokens": tokens[:size], "types": types[:size], "scores": scores[:size]}


def add_hyperparameters(w: GGUFWriter, spec: Spec) -> None:
    """`spec`'s hyper-parameters as its architecture's metadata keys, into an open writer."""
    w.add_name(spec.name or f"synthetic-{spec.arch}")
    w.add_context_length(spec.context_length)
    w.add_embedding_length(spec.dim)
    w.add_feed_forward_length(spec.ffn_dim)
    w.add_block_count(spec.n_layers)
    w.add_head_count(spec.n_heads)
    w.add_head_count_kv(spec.n_kv_heads)
    w.add_layer_norm_rms_eps(1e-6 if spec.arch in ("gemma3", "qwen3") else 1e-5)
    if spec.arch not in ("gemma3", "qwen3"):  # their converters leave it to the head size
        w.add_rope_dimension_count(spec.rope_dims)
    if spec.key_length:
        w.add_key_length(spec.key_length)
        w.add_value_length(spec.key_length)
    w.add_rope_freq_base(spec.rope_base)
    w.add_file_type(1 if spec.source_type == "F16" else 0)
    if spec.arch == "gemma3" and spec.sliding_window:
        w.add_sliding_window(spec.sliding_window)
    if spec.arch == "phi3":
        if spec.sliding_window:
            w.add_sliding_window(spec.sliding_window)
        w.add_rope_scaling_orig_ctx_len(spec.original_context)
        if spec.longrope:
            scale = spec.context_length / spec.original_context
            w.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(scale) / np.log(spec.original_context))))


def write_synthetic(path: str | os.PathLike, spec: Spec) -> Path:
    """Write `spec` as a float32 GGUF at `path` (random weights, deterministic per seed)."""
    path = Path(path)
    rng = np.random.default_rng(spec.seed)
    arch = spec.arch
    w = GGUFWriter(str(path), arch)
    add_hyperparameters(w, spec)

    tokenizer = spec.tokenizer_metadata()
    if tokenizer is not None:
        from .npm_vocab import add_tokenizer

        add_tokenizer(w, tokenizer)
    else:
        vocab = small_vocab(spec.vocab_size, phi3=arch == "phi3")
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(vocab["tokens"])
        w.add_token_scores(vocab["scores"])
        w.add_token_types(vocab["types"])
        w.add_bos_token_id(1)
        w.add_eos_token_id(32000 if arch == "phi3" and spec.vocab_size > 32000 else 2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)

    float_type = np.float16 if spec.source_type == "F16" else np.float32

    def matrix(rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
        values = rng.standard_normal((rows, cols), dtype=np.float32)
        values *= scale / np.sqrt(cols)
        return values.astype(float_type, copy=False)

    def norm(size: int = spec.dim) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(size)).astype(np.float32)

    d, f, hd = spec.dim, spec.ffn_dim, spec.head_dim
    q_dim, kv_dim = spec.n_heads * hd, spec.n_kv_heads * hd
    embedding = (rng.standard_normal((spec.vocab_size, d), dtype=np.float32) * 0.5).astype(float_type)
    w.add_tensor("token_embd.weight", embedding)
    w.add_tensor("output_norm.weight", norm())
    if not spec.tied_output:
        mix = spec.output_embedding_mix
        w.add_tensor("output.weight", (mix * embedding + matrix(spec.vocab_size, d, 2.0)).astype(float_type))
    if spec.longrope:
        half = spec.rope_dims // 2
        w.add_tensor("rope_factors_long.weight", np.linspace(1.0, 8.0, half, dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.linspace(1.0, 1.5, half, dtype=np.float32))
    if spec.rope_freqs:
        w.add_tensor("rope_freqs.weight", np.concatenate(
            [np.ones(hd // 4, np.float32), np.linspace(1.0, 8.0, hd // 2 - hd // 4, dtype=np.float32)]))
    for i in range(spec.n_layers):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", norm())
        w.add_tensor(b + "ffn_norm.weight", norm())
        if arch == "phi3":
            w.add_tensor(b + "attn_qkv.weight", matrix(q_dim + 2 * kv_dim, d))
            w.add_tensor(b + "ffn_up.weight", matrix(2 * f, d))
        else:
            w.add_tensor(b + "attn_q.weight", matrix(q_dim, d))
            w.add_tensor(b + "attn_k.weight", matrix(kv_dim, d))
            w.add_tensor(b + "attn_v.weight", matrix(kv_dim, d))
            w.add_tensor(b + "ffn_gate.weight", matrix(f, d))
            w.add_tensor(b + "ffn_up.weight", matrix(f, d))
            if arch == "qwen2":
                for part, size in (("q", q_dim), ("k", kv_dim), ("v", kv_dim)):
                    w.add_tensor(b + f"attn_{part}.bias", (0.1 * rng.standard_normal(size)).astype(np.float32))
            if arch in ("gemma3", "qwen3"):
                w.add_tensor(b + "attn_q_norm.weight", norm(hd))
                w.add_tensor(b + "attn_k_norm.weight", norm(hd))
            if arch == "gemma3":
                w.add_tensor(b + "post_attention_norm.weight", norm())
                w.add_tensor(b + "post_ffw_norm.weight", norm())
        w.add_tensor(b + "attn_output.weight", matrix(d, q_dim))
        w.add_tensor(b + "ffn_down.weight", matrix(d, f))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def quantize(src: str | os.PathLike, dst: str | os.PathLike, ftype: str) -> Path:
    """Quantize with llama.cpp's quantizer (`llama_model_quantize`), as users' files are made."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = min(os.cpu_count() or 2, 16)  # the output does not depend on it
    tmp = Path(str(dst) + ".tmp")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize({src} -> {ftype}) failed with {rc}")
    os.replace(tmp, dst)
    return Path(dst)


def rewrite(src: str | os.PathLike, dst: str | os.PathLike, *, tensor=None, metadata=None) -> Path:
    """Copy a GGUF file, passing each tensor through `tensor(name, type, values)` (which returns
    `(name, array, raw_type)` or None to drop it) and each metadata item through
    `metadata(key, value)` (returns the value to write, or None to drop the key)."""
    # lantern's reader: fields as the stock GGUFReader gives them, without its per-item numpy
    # views (the stock reader takes minutes on a 262,144-token vocabulary on 2 busy cores).
    from ..weights.gguf_file import _open_reader

    reader = _open_reader(Path(src))
    arch = reader.get_field("general.architecture").contents()
    if metadata is not None:
        arch = metadata("general.architecture", arch) or arch
    tmp = Path(str(dst) + ".tmp")
    w = GGUFWriter(str(tmp), arch)
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = fld.contents()
        if metadata is not None:
            value = metadata(key, value)
            if value is None:
                continue
        vtype = fld.types[0]
        sub_type = fld.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub_type)
    for t in reader.tensors:
        result = (t.name, np.asarray(t.data), t.tensor_type)
        if tensor is not None:
            result = tensor(t.name, t.tensor_type, np.asarray(t.data))
        if result is None:
            continue
        name, values, raw_type = result
        if raw_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w.add_tensor(name, values)
        else:
            w.add_tensor(name, values, raw_dtype=raw_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, dst)
    return Path(dst)


def f32_reference(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy `src` with every tensor dequantized to float32 by gguf.quants (the exact-math oracle)."""

    def to_f32(name, qtype, data):
        if qtype == GGMLQuantizationType.F32:
            return name, data, qtype
        return name, dequantize(data, qtype).astype(np.float32), GGMLQuantizationType.F32

    return rewrite(src, dst, tensor=to_f32,
                   metadata=lambda key, value: 0 if key == "general.file_type" else value)


# Bump when the files this module writes change, so cached fixtures are rebuilt.
FIXTURE_VERSION = 2


def fixture_dir() -> Path:
    from ..hub import cache_dir

    return cache_dir() / "fixtures" / "synthetic"


def cached_model(spec: Spec, ftype: str = "F32") -> Path:
    """The synthetic model `spec` quantized to `ftype`, built once and kept in the cache."""
    import hashlib

    key = hashlib.sha256(f"{FIXTURE_VERSION}:{spec!r}".encode()).hexdigest()[:12]
    folder = fixture_dir() / f"{spec.arch}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{spec.source_type}.gguf"
    if not source.exists():
        tmp = folder / f"{spec.source_type}.gguf.partial"
        write_synthetic(tmp, spec)
        os.replace(tmp, source)
    if ftype == spec.source_type:
        return source
    target = folder / f"{ftype}.gguf"
    if not target.exists():
        quantize(source, target, ftype)
    return target


def cached_reference(path: Path) -> Path:
    """The F32 exact-math copy of `path`, built once among the fixtures (never beside a model in
    the user's cache, where `lantern ls` would list it)."""
    from .oracle import cached_reference as in_fixtures

    return Path(in_fixtures(path))

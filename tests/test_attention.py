"""The decode-path blocks against plain references: grouped-query attention (batched matrix
products over the cache's layout), rotary in place, and a KV cache that grows and is rolled back
while decoding in steps and drafts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lantern
from lantern.models.layers import Rotary, attend, attention_bias
from lantern.testing.synthetic import Spec, cached_model
from lantern.weights.kernels import native


def reference_attention(q, keys, values, start, window):
    """q [n, heads, d], keys/values [kv_heads, S, d]: K/V repeated per query head, explicit mask."""
    n, heads, d = q.shape
    group = heads // keys.shape[0]
    k = keys.repeat_interleave(group, dim=0).double()
    v = values.repeat_interleave(group, dim=0).double()
    scores = torch.einsum("qhd,hkd->hqk", q.double(), k) / math.sqrt(d)
    pos_q = torch.arange(start, start + n)[:, None]
    pos_k = torch.arange(keys.shape[1])[None, :]
    allowed = (pos_k <= pos_q) & ((pos_q - pos_k < window) if window else True)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,hkd->qhd", scores.softmax(-1), v).reshape(n, heads * d).float()


@pytest.mark.parametrize("heads,kv_heads", [(9, 3), (4, 4)])
@pytest.mark.parametrize("start,n,window", [(0, 1, 0), (40, 1, 0), (40, 1, 16), (40, 5, 0), (40, 5, 16),
                                            (0, 20, 0), (10, 20, 8)])
def test_attend_matches_reference(heads, kv_heads, start, n, window):
    g = torch.Generator().manual_seed(start * 100 + n)
    d, total = 32, start + n
    q = torch.randn(n, heads, d, generator=g)
    # A cache slice as attention gets it: a view of a larger buffer.
    keys = torch.randn(kv_heads, total + 7, d, generator=g)[:, :total]
    values = torch.randn(kv_heads, total + 7, d, generator=g)[:, :total]
    out = attend(q, keys, values, attention_bias(start, n, window, "cpu"), 1 / math.sqrt(d))
    torch.testing.assert_close(out, reference_attention(q, keys, values, start, window), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("dims", [16, 8])  # 8 < head_dim: the rest passes through
def test_rotary_in_place_matches_pairwise_formula(neox, dims):
    head_dim, start, n = 16, 5, 3
    rotary = Rotary(dims, 10000.0, neox=neox)
    x = torch.randn(n, 4, head_dim)
    original, expected = x.clone(), x.clone()
    for t in range(n):
        for i in range(dims // 2):
            theta = (start + t) * 10000.0 ** (-2.0 * i / dims)
            c, s = math.cos(theta), math.sin(theta)
            ia, ib = (i, i + dims // 2) if neox else (2 * i, 2 * i + 1)
            a, b = x[t, :, ia], x[t, :, ib]
            expected[t, :, ia], expected[t, :, ib] = a * c - b * s, a * s + b * c
    view = x[:, 1:3]  # in place through a view, as Attention rotates q and k inside qkv
    assert rotary.apply_(view, *rotary.tables(start, n)) is view
    torch.testing.assert_close(x[:, 1:3], expected[:, 1:3], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(x[:, [0, 3]], original[:, [0, 3]], atol=0, rtol=0)  # untouched


def test_decoding_in_steps_and_drafts_matches_batched():
    """GQA llama over more tokens than the cache's first capacity (256): single steps, 5-token
    drafts partly rolled back (as speculative decoding does) and the batched pass agree."""
    spec = Spec(arch="llama", n_heads=4, n_kv_heads=2, vocab_size=512, n_layers=2, seed=3)
    model = lantern.load(cached_model(spec, "F32"))
    ids = [int(i) for i in np.random.default_rng(2).integers(3, 512, 300)]
    batched = model.logits(ids)

    cache = model.new_cache()
    stepped = torch.cat([model.forward([t], cache) for t in ids])
    torch.testing.assert_close(stepped, batched, atol=2e-4, rtol=1e-4)

    cache = model.new_cache()
    model.forward(ids[:250], cache)
    pos = 250
    while pos < len(ids):
        draft = ids[pos : pos + 5]
        logits = model.forward(draft + [7, 9], cache)  # two wrong guesses after the draft
        torch.testing.assert_close(logits[: len(draft)], batched[pos : pos + len(draft)], atol=2e-4, rtol=1e-4)
        cache.truncate(cache.length - 2)
        pos += len(draft)
    assert cache.length == len(ids)


@pytest.mark.skipif(not native.has_attention(), reason="the native attention kernel needs lantern's C library")
@pytest.mark.parametrize("heads,kv_heads,d", [(9, 3, 64), (14, 2, 64), (8, 2, 128), (4, 4, 96), (9, 3, 32),
                                              (2, 1, 20)])
@pytest.mark.parametrize("start,n,window", [(0, 1, 0), (40, 1, 0), (40, 1, 16), (40, 5, 0), (40, 5, 16),
                                            (255, 3, 0), (600, 12, 300), (1023, 2, 0), (3000, 2, 0), (3000, 2, 2047)])
@pytest.mark.parametrize("level", ["in use", "portable"])
def test_native_f16_attention_matches_reference(heads, kv_heads, d, start, n, window, level):
    """The native kernel over a float16 cache (strided view of a larger buffer, long and windowed
    contexts split into spans of 1,024 positions, grouped query heads in chunks of up to 4, head
    sizes that are not a multiple of 16) equals float64 attention over the same float16 values to
    float32 rounding, at the level in use (span kernels) and the portable level (plain C)."""
    g = torch.Generator().manual_seed(start + n + d)
    total = start + n
    q = torch.randn(n, heads, d, generator=g)
    keys = torch.randn(kv_heads, total + 7, d, generator=g).half()[:, :total]
    values = torch.randn(kv_heads, total + 7, d, generator=g).half()[:, :total]
    before = native.isa()
    native.set_isa(before if level == "in use" else "portable")
    try:
        out = native.attention_f16(q, keys, values, start, window, 1 / math.sqrt(d))
    finally:
        native.set_isa(before)
    expected = reference_attention(q, keys.float(), values.float(), start, window)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("model_name", ["smollm2", "qwen2-q8_0"])
def test_joined_projections_equal_the_separate_weights(model_name, smollm2_path):
    """q|k|v and gate|up stored apart are joined into one weight (one kernel call per step); each
    output equals the file's own tensor (and bias) multiplied alone, bit for bit."""
    from lantern.weights.linear import QuantizedLinear, dense_vector

    path = smollm2_path if model_name == "smollm2" else cached_model(
        Spec(arch="qwen2", n_heads=4, n_kv_heads=2, vocab_size=1024, rope_base=1e6), "Q8_0")
    model = lantern.load(path)
    block, f = model.transformer.blocks[1], model.file
    x = torch.randn(3, model.params.dim, generator=torch.Generator().manual_seed(0))
    for projection, names in ((block.attn.qkv, ["attn_q", "attn_k", "attn_v"]),
                              (block.mlp.gate_up, ["ffn_gate", "ffn_up"])):
        assert len(projection.linears) == 1  # joined
        for m in (1, 3):
            parts = projection(x[:m])
            for name, part in zip(names, parts):
                w = f.tensors[f"blk.1.{name}.weight"]
                bias = f"blk.1.{name}.bias"
                rows = part.shape[-1]
                alone = QuantizedLinear(f.tensor(w.name, (rows, model.params.dim)),
                                        dense_vector(f.tensor(bias, (rows,))) if f.has(bias) else None)
                assert torch.equal(part, alone(x[:m])), (model_name, name, m)

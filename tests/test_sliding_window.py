"""Phi-3's sliding attention window against a plain-PyTorch reference with an explicit mask.

HF transformers' Phi3 (the model authors' reference) lets query q see key k when
`q - sliding_window < k <= q`. llama.cpp ignores Phi's window, so it cannot be the oracle here:
the reference below is a from-scratch forward pass over the float32 weights read with gguf-py.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from gguf import GGUFReader

import lantern
from lantern.testing.synthetic import Spec, cached_model

WINDOW = 16
SPEC = Spec(arch="phi3", vocab_size=512, sliding_window=WINDOW, n_layers=2, seed=7)


def reference_logits(path, ids: list[int], window: int | None) -> torch.Tensor:
    r = GGUFReader(str(path))
    w = {t.name: torch.from_numpy(np.array(t.data, dtype=np.float32)) for t in r.tensors}
    d, heads = SPEC.dim, SPEC.n_heads
    hd, ffn = d // heads, SPEC.ffn_dim
    n = len(ids)

    def rms(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * weight

    def rope(x):  # x [n, heads, hd], NEOX: element i pairs with i + hd/2
        half = hd // 2
        out = torch.empty_like(x)
        for pos in range(n):
            for i in range(half):
                theta = pos * 10000.0 ** (-2.0 * i / hd)
                c, s = math.cos(theta), math.sin(theta)
                a, b = x[pos, :, i], x[pos, :, i + half]
                out[pos, :, i], out[pos, :, i + half] = a * c - b * s, a * s + b * c
        return out

    allowed = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            allowed[q, k] = k <= q and (window is None or q - window < k)

    x = w["token_embd.weight"][ids]
    for layer in range(SPEC.n_layers):
        b = f"blk.{layer}."
        h = rms(x, w[b + "attn_norm.weight"])
        qkv = h @ w[b + "attn_qkv.weight"].T
        q, k, v = qkv.split(d, dim=-1)
        q, k, v = rope(q.view(n, heads, hd)), rope(k.view(n, heads, hd)), v.view(n, heads, hd)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed, float("-inf"))
        attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, d)
        x = x + attn @ w[b + "attn_output.weight"].T
        h = rms(x, w[b + "ffn_norm.weight"])
        gate, up = (h @ w[b + "ffn_up.weight"].T).split(ffn, dim=-1)
        x = x + (torch.nn.functional.silu(gate) * up) @ w[b + "ffn_down.weight"].T
    return rms(x, w["output_norm.weight"]) @ w["output.weight"].T


def test_window_matches_explicit_mask_on_prompt_longer_than_window():
    path = cached_model(SPEC, "F32")
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 512, 3 * WINDOW)]
    windowed = lantern.load(path).logits(ids)
    full = lantern.load(path, sliding_window=False).logits(ids)
    expected_windowed = reference_logits(path, ids, WINDOW)
    expected_full = reference_logits(path, ids, None)
    torch.testing.assert_close(windowed, expected_windowed, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(full, expected_full, atol=2e-4, rtol=1e-4)
    # Within the window both agree; past it they must differ (the window really applies).
    torch.testing.assert_close(windowed[:WINDOW], full[:WINDOW], atol=2e-4, rtol=1e-4)
    assert (windowed[WINDOW:] - full[WINDOW:]).abs().max() > 1e-2


def test_window_applies_when_decoding_token_by_token():
    model = lantern.load(cached_model(SPEC, "F32"))
    ids = [int(i) for i in np.random.default_rng(1).integers(3, 512, 2 * WINDOW + 5)]
    batched = model.logits(ids)
    cache = model.new_cache()
    stepped = torch.cat([model.forward([t], cache) for t in ids])
    torch.testing.assert_close(stepped, batched, atol=2e-4, rtol=1e-4)


def test_window_read_from_metadata():
    model = lantern.load(cached_model(SPEC, "F32"))
    assert model.params.sliding_window == WINDOW
    assert lantern.load(cached_model(SPEC, "F32"), sliding_window=False).params.sliding_window == 0

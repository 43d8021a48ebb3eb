"""lantern's logits against llama.cpp's, measured against the exact math.

The exact math is llama.cpp run on an F32 copy of the file whose every tensor was dequantized by
gguf.quants (an independent dequantizer), with a float32 KV cache. On a quantized file llama.cpp
itself rounds activations to 8 bits, so it is not the target: lantern must be at least as close to
the exact math as llama.cpp is (distance <= max(1.1 x llama.cpp's, 0.02) and top-1 agreement no
lower than llama.cpp's less one position per hundred).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lantern
from lantern.testing.oracle import fidelity, llama_cpp_logits
from lantern.testing.synthetic import Spec, cached_model, cached_reference

SPECS = {
    # Phi-3's real vocabulary size and special-token ids; MHA as Phi-3-mini has.
    "phi3": Spec(arch="phi3", vocab_size=32064),
    "llama": Spec(arch="llama", n_heads=4, n_kv_heads=2, tied_output=True, vocab_size=1024),
    "qwen2": Spec(arch="qwen2", n_heads=4, n_kv_heads=2, vocab_size=1024, rope_base=1e6),
}
QUANT_TYPES = ["F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"]
PROMPT_LENGTH = 320


def prompt(vocab_size: int, length: int = PROMPT_LENGTH, seed: int = 0) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).integers(3, vocab_size, length)]


def assert_at_least_as_faithful(path, ids, n_ctx=None, **load_options):
    reference = llama_cpp_logits(cached_reference(path), ids, n_ctx=n_ctx, f32_cache=True)
    theirs = fidelity(llama_cpp_logits(path, ids, n_ctx=n_ctx), reference)
    ours = fidelity(lantern.load(path, **load_options).logits(ids).numpy(), reference)
    print(f"{path.parent.name}/{path.name}: lantern {ours} | llama.cpp {theirs}")
    assert ours.distance <= max(1.1 * theirs.distance, 0.02), (ours, theirs)
    assert ours.top1_agree >= theirs.top1_agree - math.floor(len(ids) / 100), (ours, theirs)
    return ours, theirs


@pytest.mark.parametrize("qtype", QUANT_TYPES)
@pytest.mark.parametrize("arch", sorted(SPECS))
def test_quantized_at_least_as_faithful_as_llama_cpp(arch, qtype):
    spec = SPECS[arch]
    assert_at_least_as_faithful(cached_model(spec, qtype), prompt(spec.vocab_size))


@pytest.mark.parametrize("arch", sorted(SPECS))
@pytest.mark.parametrize("ftype", ["F32", "F16"])
def test_float_files_agree_with_llama_cpp(arch, ftype):
    spec = SPECS[arch]
    path = cached_model(spec, ftype)
    ids = prompt(spec.vocab_size, seed=1)
    theirs = llama_cpp_logits(path, ids, f32_cache=ftype == "F32")
    ours = fidelity(lantern.load(path).logits(ids).numpy(), theirs)
    assert ours.distance <= 0.02, ours
    assert ours.top1_agree == len(ids), ours


@pytest.mark.parametrize("length", [1, 2, 7, 64, 129])
def test_prompt_lengths(length):
    assert_at_least_as_faithful(cached_model(SPECS["phi3"], "Q4_K_M"), prompt(32064, length, seed=length))


def test_smollm2_q4_1_at_least_as_faithful(smollm2_path, english_token_ids):
    """The real SmolLM2-135M-Instruct Q4_1 on real English text."""
    assert_at_least_as_faithful(smollm2_path, english_token_ids[:320])


def test_longrope_128k_variant():
    """Phi-3-128k: long factors and the attention factor when the context exceeds the original."""
    spec = Spec(arch="phi3", vocab_size=32064, context_length=16384, original_context=512, longrope=True)
    path = cached_model(spec, "Q4_K_M")
    ids = prompt(spec.vocab_size, seed=3)
    # llama.cpp picks the long factors from its context size, so give it the full context.
    assert_at_least_as_faithful(path, ids, n_ctx=spec.context_length)
    # With a context within the original length, the short factors apply (both engines).
    assert_at_least_as_faithful(path, ids, n_ctx=512, context_length=512)
    short_reference = llama_cpp_logits(cached_reference(path), ids, n_ctx=512, f32_cache=True)
    long = lantern.load(path).logits(ids).numpy()
    assert fidelity(long, short_reference).distance > 1.0, "long and short factors must differ"


def test_llama31_rope_freqs():
    spec = Spec(arch="llama", n_kv_heads=2, vocab_size=1024, rope_freqs=True, rope_base=500000.0)
    assert_at_least_as_faithful(cached_model(spec, "Q4_K_M"), prompt(1024, 200, seed=4))


@pytest.mark.parametrize("kernels", ["reference", "fast"])
def test_kv_cache_decode_matches_batched_prompt(kernels):
    """Decoding one token at a time on the cache gives the logits of the batched prompt.

    On the exact kernels the two agree to float32 summation noise. On the fast ones they take
    different routes to the exact math: one-token steps multiply the file's exact weights by
    bf16-rounded activations, batches of more than a few tokens multiply bf16-rounded weights
    (torch's bf16 GEMM). So each is held to the fast path's budget against the exact kernels'
    logits, and the two to each other within both budgets."""
    path = cached_model(SPECS["llama"], "Q4_K_M")
    model = lantern.load(path, kernels=kernels)
    ids = prompt(1024, 40, seed=5)
    batched = model.logits(ids)
    cache = model.new_cache()
    model.forward(ids[:30], cache)
    stepped = torch.stack([model.forward([t], cache)[0] for t in ids[30:]])
    assert cache.length == 40
    if kernels == "reference":
        atol, rtol = 1e-4, 1e-4
    else:
        exact = lantern.load(path, kernels="reference").logits(ids)
        budget = 0.05 * float(exact.std())  # the fast path's distance is 0.03-0.06 std; llama.cpp's ~0.1
        assert float((batched - exact).abs().max()) <= budget
        assert float((stepped - exact[30:]).abs().max()) <= budget
        atol, rtol = 2 * budget, 0.0
    np.testing.assert_allclose(stepped.numpy(), batched[30:].numpy(), atol=atol, rtol=rtol)
    # Rolling the cache back and replaying gives the same logits again.
    cache.truncate(35)
    again = model.forward(ids[35:], cache)
    np.testing.assert_allclose(again.numpy(), batched[35:].numpy(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "Q5_0", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"])
def test_reference_kernels_are_the_exact_math(qtype):
    """The reference kernels (kernels="reference") dequantize exactly and multiply in float32:
    their distance to the exact math is float32 summation noise."""
    path = cached_model(SPECS["phi3"], qtype)
    ids = prompt(32064, 64, seed=9)
    reference = llama_cpp_logits(cached_reference(path), ids, f32_cache=True)
    ours = fidelity(lantern.load(path, kernels="reference").logits(ids).numpy(), reference)
    assert ours.distance <= 1e-3, ours
    assert ours.top1_agree == len(ids), ours

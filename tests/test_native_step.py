"""The native forward step (`lantern/models/native_step.py`, csrc/step.c) against the PyTorch blocks,
at the instruction-set level in use (tests/test_isa_levels.py runs this file at every level).

Short passes (decode steps, speculative verify passes) run as one native call where every weight
is on the in-place GGUF kernels. It must compute what `layers.py` computes: on Q8_0 files the
weight kernels multiply float32 activations exactly (avx512; elsewhere rounded to 15 bits), so the
two paths differ only by float32
summation order (norms, SiLU, softmax), about 1e-6 of the logits' spread per step, and now and
then a key or value that rounds to the other neighbouring float16 in the cache (up to ~2e-4);
they must agree to 1e-3 of the spread (a wrong rotary layout is off by more than 0.05). On the
other types activations are rounded to bfloat16 (avx512) before every weight, which amplifies those
last-bit differences, so there the step is held to the fidelity rule against the exact math.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lantern
from lantern.testing.synthetic import Spec, cached_model
from lantern.weights.kernels import native

pytestmark = pytest.mark.skipif(
    not native.available(), reason="the native step runs on lantern's C library (pip install -e . builds it)")

# What each case exercises on the native side.
CASES = {
    "llama-gqa-tied-ropefreqs": Spec(arch="llama", n_heads=4, n_kv_heads=2, tied_output=True, vocab_size=1024,
                                     rope_freqs=True, rope_base=500000.0),
    "qwen2-biases-neox": Spec(arch="qwen2", n_heads=4, n_kv_heads=2, vocab_size=1024, rope_base=1e6),
    "phi3-fused-window16": Spec(arch="phi3", vocab_size=512, sliding_window=16, seed=7),
    "phi3-longrope": Spec(arch="phi3", vocab_size=32064, context_length=16384, original_context=512, longrope=True),
}
PROMPT = 40  # longer than the window: decode steps past it must drop the oldest keys


def ids_for(spec: Spec, n: int = PROMPT + 17) -> list[int]:
    return [int(i) for i in np.random.default_rng(3).integers(3, spec.vocab_size, n)]


def run(model, ids: list[int], native_step: bool) -> torch.Tensor:
    """Logits of a prompt's last token, 12 decode steps and a 5-token verify pass."""
    step = model.transformer.native_step
    if not native_step:
        model.transformer.native_step = None
    try:
        cache = model.new_cache()
        out = [model.forward(ids[:PROMPT], cache)[-1:]]
        out += [model.forward([t], cache) for t in ids[PROMPT:PROMPT + 12]]
        out.append(model.forward(ids[PROMPT + 12:PROMPT + 17], cache))
        return torch.cat(out)
    finally:
        model.transformer.native_step = step


@pytest.mark.parametrize("case", list(CASES))
def test_native_step_computes_what_the_pytorch_blocks_compute(case):
    spec = CASES[case]
    model = lantern.load(cached_model(spec, "Q8_0"))
    assert model.transformer.native_step is not None
    ids = ids_for(spec)
    ours, blocks = run(model, ids, True), run(model, ids, False)
    spread = blocks.std(dim=-1, keepdim=True)
    assert ((ours - blocks).abs() / spread).max() < 1e-3
    assert torch.equal(ours.argmax(-1), blocks.argmax(-1))


@pytest.mark.parametrize("case,qtype", [("llama-gqa-tied-ropefreqs", "Q4_K_M"), ("phi3-fused-window16", "Q4_K_M"),
                                        ("qwen2-biases-neox", "Q5_0"), ("phi3-longrope", "Q4_1")])
def test_native_step_is_as_faithful_as_the_pytorch_blocks(case, qtype):
    """bf16 activations: both paths against the exact math (the reference kernels), where the
    native step must be as close as the PyTorch blocks are (llama Q4_K_M also has q/k/v of two
    types, three weights side by side in one projection)."""
    spec = CASES[case]
    path = cached_model(spec, qtype)
    ids = ids_for(spec)
    exact = run(lantern.load(path, kernels="reference"), ids, False)
    model = lantern.load(path)
    assert model.transformer.native_step is not None
    spread = exact.std(dim=-1, keepdim=True)
    ours = ((run(model, ids, True) - exact).abs() / spread).max().item()
    blocks = ((run(model, ids, False) - exact).abs() / spread).max().item()
    print(f"{case} {qtype}: native step {ours:.4f}, PyTorch blocks {blocks:.4f} (max |difference| / std)")
    assert ours <= max(1.25 * blocks, 0.02)


def test_short_passes_take_the_native_step_and_prompt_chunks_as_the_level_multiplies_them():
    """Prompt chunks run natively where the level multiplies them in place with its micro-kernel
    (avx2: native.PROMPT_ROUTES), elsewhere on the PyTorch blocks and the level's prompt route."""
    model = lantern.load(cached_model(CASES["phi3-fused-window16"], "Q4_K_M"))
    calls = []
    model.transformer.blocks[0].register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    cache = model.new_cache()
    n = model.transformer.native_step.max_tokens
    model.forward(list(range(3, 3 + n + 1)), cache)  # a prompt chunk
    model.forward(list(range(3, 3 + 100)), cache)  # a longer one
    model.forward([5], cache)  # decode step: native
    model.forward(list(range(5, 5 + n)), cache)  # the longest native pass
    assert calls == ([] if native.isa() == "avx2" else [n + 1, 100])


def test_without_a_prompt_micro_kernel_all_k_quant_prompts_run_in_the_step_on_the_8_bit_tile(monkeypatch):
    """neon's rule (`NativeStep.runs`), exercised on x86: with prompt chunks routed to torch's
    float32 GEMM as at neon (LANTERN_PROMPT_ROUTE=expand_f32), a prompt being read still runs in
    the native step where every weight it multiplies has the level's 8-bit tile, with the same
    bits as the in-place route; a scoring pass of the same tokens (prompt false), and a model
    with a weight the tile lacks (Q8_0), take the PyTorch blocks on the torch route."""
    if "avx2" not in native.supported_isas():
        pytest.skip(f"the 8-bit tile is avx2's here; this CPU runs {native.supported_isas()}")
    before = native.isa()
    native.set_isa("avx2")
    try:
        k_quants = lantern.load(cached_model(CASES["phi3-fused-window16"], "Q4_K_M"))
        q8 = lantern.load(cached_model(CASES["phi3-fused-window16"], "Q8_0"))
        ids = list(range(3, 3 + 60))

        def read(model, prompt):
            """The logits, the PyTorch blocks' passes (tokens), torch's threads meanwhile."""
            calls, threads = [], []
            hooks = [model.transformer.blocks[0].register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0])),
                     model.transformer.embedding.register_forward_hook(lambda *_: threads.append(torch.get_num_threads()))]
            try:
                return model.forward(ids, model.new_cache(), prompt=prompt), calls, threads
            finally:
                for hook in hooks:
                    hook.remove()

        in_place, calls, _ = read(k_quants, True)
        assert calls == []
        monkeypatch.setenv("LANTERN_PROMPT_ROUTE", "expand_f32")
        assert not k_quants.transformer.native_step.prompt_chunks() and k_quants.transformer.native_step.int8_prompts
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            routed, calls, threads = read(k_quants, True)
            # one native call on lantern's pool: torch's ops single-threaded meanwhile (step_threads)
            assert calls == [] and threads == [1] and torch.equal(routed, in_place)
            scored, calls, threads = read(k_quants, False)  # torch's GEMM: its threads stay
            assert calls == [60] and threads == [2] and not torch.equal(scored, in_place)
        finally:
            torch.set_num_threads(torch_threads)
        assert not q8.transformer.native_step.int8_prompts
        assert read(q8, True)[1] == [60]
        assert "prompts' chunks on the 8-bit tile" in lantern.load(
            cached_model(CASES["phi3-fused-window16"], "Q4_K_M")).transformer.step_description
    finally:
        native.set_isa(before)


def test_reference_kernels_and_the_environment_switch_keep_the_blocks(monkeypatch):
    """...and say so (run --verbose and bench print the description)."""
    path = cached_model(CASES["qwen2-biases-neox"], "Q8_0")
    assert lantern.load(path).transformer.step_description.startswith(
        "native step (every pass in one C call, prompt chunks too, " if native.isa() == "avx2"
        else "native step (passes of up to 12 tokens in one C call, ")
    reference = lantern.load(path, kernels="reference").transformer
    assert reference.native_step is None and "runs on reference" in reference.step_description
    monkeypatch.setenv("LANTERN_NATIVE_STEP", "0")
    switched = lantern.load(path).transformer
    assert switched.native_step is None and switched.step_description == "PyTorch blocks (LANTERN_NATIVE_STEP=0)"


def test_native_step_cache_pointers_follow_growth():
    """The cache doubles its storage as it fills; the step must write to the new storage."""
    spec = CASES["llama-gqa-tied-ropefreqs"]
    model = lantern.load(cached_model(spec, "Q8_0"))
    ids = ids_for(spec, 300)

    def steps():
        cache = model.new_cache()
        first = cache.keys[0].data_ptr()
        out = torch.cat([model.forward([t], cache) for t in ids])  # grows past 256 positions
        assert cache.keys[0].data_ptr() != first
        return out

    ours = steps()
    step, model.transformer.native_step = model.transformer.native_step, None
    try:
        blocks = steps()
    finally:
        model.transformer.native_step = step
    assert ((ours - blocks).abs() / blocks.std(dim=-1, keepdim=True)).max() < 1e-3


def test_fidelity_budget_is_meaningful():
    """The bound above must be able to fail: a step with a wrong rotary (adjacent pairs instead of
    NEOX) is far outside it."""
    spec = CASES["phi3-fused-window16"]
    model = lantern.load(cached_model(spec, "Q8_0"))
    ids = ids_for(spec)
    blocks = run(model, ids, False)
    model.transformer.native_step.desc.neox = 0
    wrong = run(model, ids, True)
    assert ((wrong - blocks).abs() / blocks.std(dim=-1, keepdim=True)).max() > 0.05
    assert not math.isnan(wrong.sum().item())

"""IQ4_NL and IQ4_XS end to end (issue #12 item 4): files quantized by llama.cpp's own quantizer
load, run every IQ4 weight in place on the level's own row kernels (4-bit codes into a table of
16 values) and decode on the native step; the reference kernels give the exact math of the file
(llama.cpp on its F32 copy, dequantized by gguf-py); `lantern info` names the C functions.

The fast path's fidelity on IQ4 files, per architecture, is in tests/test_kernels.py
(`test_fast_path_decode_is_as_faithful_as_llama_cpp`, DECODE_TYPES); the kernels against the
exact product and bit-exact expansion there too (GGUF_TYPES); dequantization in
tests/test_quants.py; every level against the portable C in tests/test_native_isa.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

import lantern
from lantern.testing.cpu import avx2_variant
from lantern.testing.synthetic import Spec, cached_model, cached_reference
from lantern.weights.gguf_file import GGUFFile
from lantern.weights.kernels import kernel_function, native
from lantern.weights.linear import QuantizedLinear

SPEC = Spec(arch="llama", n_heads=4, n_kv_heads=2, tied_output=True, vocab_size=1024)
IQ4 = ["IQ4_NL", "IQ4_XS"]

needs_native = pytest.mark.skipif(not native.available(),
                                  reason="native kernels not built (pip install -e . builds them)")


def _kernel_names(ftype: str) -> set[str]:
    """The row kernels that may serve `ftype` at the level in use: the level's own, in the
    variant this CPU runs (avx2: plain, vnni or avxvnni; neon: plain or dotprod), or the generic
    one at portable."""
    level = native.isa()
    if level == "portable":
        return {f"{ftype.lower()}_generic"}
    variants = {"avx2": [avx2_variant()] if avx2_variant() is not None else ["", "_vnni", "_avxvnni"],
                "neon": ["", "_dotprod"]}.get(level, [""])
    return {f"{ftype.lower()}_{level}{v}" for v in variants}


@pytest.mark.parametrize("ftype", IQ4)
def test_llama_cpp_quantizes_the_fixture_to_iq4(ftype):
    """The fixture is what users download: llama.cpp's quantizer wrote IQ4 for the bulk of the
    weights (it keeps a few tensors at other types, as it does for every file type)."""
    types = GGUFFile(cached_model(SPEC, ftype)).tensor_types()
    print(ftype, types)
    assert types.get(ftype, 0) >= 8, types  # 2 layers x 7 matrices, less those bumped up


@needs_native
@pytest.mark.parametrize("ftype", IQ4)
def test_iq4_weights_run_in_place_on_the_levels_own_kernels_and_the_native_step(ftype):
    path = cached_model(SPEC, ftype)
    model = lantern.load(path)
    layers = [m for m in model.transformer.modules() if isinstance(m, QuantizedLinear) and m.qtype == QT[ftype]]
    assert layers
    for m in layers:
        assert m.kernel_name == "gguf-native", m.kernel_name
        assert kernel_function(m.kernel) in _kernel_names(ftype)
    assert model.transformer.native_step is not None, model.transformer.step_description
    # decode steps on the native step agree with the PyTorch blocks on the same kernels
    ids = [int(i) for i in np.random.default_rng(3).integers(3, SPEC.vocab_size, 24)]
    cache = model.new_cache()
    model.forward(ids[:20], cache)
    steps = np.concatenate([model.forward([t], cache).numpy() for t in ids[20:]])
    whole = model.logits(ids).numpy()[20:]
    spread = whole.std(axis=-1, keepdims=True)
    assert (np.abs(steps - whole) / spread).max() < 0.05


@pytest.mark.parametrize("ftype", IQ4)
def test_reference_kernels_are_the_exact_math_of_the_file(ftype):
    """kernels="reference" dequantizes IQ4 exactly (quants.py, bit-identical to gguf-py) and
    multiplies in float32: its logits are llama.cpp's on the F32 copy up to summation order."""
    from lantern.testing.oracle import fidelity, llama_cpp_logits

    path = cached_model(SPEC, ftype)
    ids = [int(i) for i in np.random.default_rng(5).integers(3, SPEC.vocab_size, 64)]
    reference = llama_cpp_logits(cached_reference(path), ids, f32_cache=True)
    ours = fidelity(lantern.load(path, kernels="reference").logits(ids).numpy(), reference)
    theirs = fidelity(llama_cpp_logits(path, ids), reference)
    print(f"{ftype}: lantern reference {ours} | llama.cpp {theirs}")
    assert ours.distance < 1e-3 and ours.top1_agree == len(ids), ours


@needs_native
@pytest.mark.parametrize("ftype", IQ4)
def test_lantern_info_names_the_iq4_kernels(ftype):
    path = cached_model(SPEC, ftype)
    out = subprocess.run([sys.executable, "-m", "lantern", "info", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert any(name in out.stdout for name in _kernel_names(ftype)), out.stdout

"""The fast weight kernels against the exact float32 reference, per GGUF type.

Tolerances come from bfloat16 rounding (relative 2^-9, half an ulp) on the fast path: the
activations, the per-group scale and zero (int4 kernel), the expanded weights (dense path) and
the kernel's bfloat16 output each round once. A decoding mistake (wrong nibble, scale or element
order) gives errors of the order of |x| |w| and fails by far.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT

import lantern
from lantern.testing.synthetic import Spec, cached_model
from lantern.weights import linear
from lantern.weights.gguf_file import GGUFFile
from lantern.weights.kernels import dense, int4, native
from lantern.weights.quants import dequantize

SPEC = Spec(arch="llama", n_heads=4, n_kv_heads=2, tied_output=True, vocab_size=1024)
# GGUF type -> a synthetic file holding such tensors.
FILES = {
    QT.Q4_0: "Q4_0", QT.Q4_1: "Q4_1", QT.Q5_0: "Q5_0", QT.Q5_1: "Q5_1", QT.Q8_0: "Q8_0",
    QT.Q2_K: "Q2_K", QT.Q3_K: "Q3_K_M", QT.Q4_K: "Q4_K_M", QT.Q5_K: "Q5_K_M", QT.Q6_K: "Q6_K",
}
U = 2.0 ** -9  # bfloat16 unit roundoff


def tensors_of(qtype):
    f = GGUFFile(cached_model(SPEC, FILES[qtype]))
    found = [f.tensor(n) for n, info in f.tensors.items()
             if info.tensor_type == qtype and len(f.tensor(n).shape) == 2]
    assert found, f"no {qtype.name} tensor in the fixture"
    return found


def bound(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Error bound for x @ w.T on the fast path: rounding of x and w (each 2^-9 relative), of the
    group's scale and zero (up to 8 x 2^-9 of the group's largest weight), and of the output."""
    g = w.abs().view(w.shape[0], -1, 16).amax(-1, keepdim=True).expand(-1, -1, 16).reshape(w.shape)
    return U * (x.abs() @ (2 * w.abs() + 8 * g).T) + 2 * U * y.abs() + 1e-6


@pytest.mark.parametrize("qtype", list(FILES), ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 3, 200])
def test_fast_kernel_matches_float32_reference(qtype, m):
    t = tensors_of(qtype)[0]
    exact = dequantize(t.raw, t.type, t.shape)
    layer = linear.QuantizedLinear(t, kernels="fast")
    assert layer.kernel is not None, f"{qtype.name} has no fast kernel"
    assert layer.raw is None, "the file's bytes must be given back after conversion"
    x = torch.randn(m, t.shape[1], generator=torch.Generator().manual_seed(m))
    y = layer(x)
    ref = x @ exact.T
    assert y.dtype == torch.float32 and y.shape == ref.shape
    excess = (y - ref).abs() - bound(x, exact, ref)
    assert excess.max() <= 0, f"{qtype.name} M={m}: error exceeds the bf16 bound by {excess.max():.3g}"
    # The layer's weight() is what the kernel multiplies by: close to the file's weight.
    w = layer.weight(slice(0, 64))
    g = exact[:64].abs().view(64, -1, 16).amax(-1, keepdim=True).expand(-1, -1, 16).reshape(64, -1)
    assert ((w - exact[:64]).abs() <= U * (2 * exact[:64].abs() + 8 * g) + 1e-7).all()


def random_blocks(qtype, rows, cols, seed=0):
    """Random but valid blocks: random quant bytes, small positive f16 scales."""
    elems, nbytes = {QT.Q4_0: (32, 18), QT.Q8_0: (32, 34), QT.Q4_1: (32, 20)}[qtype]
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (rows * cols // elems, nbytes), dtype=np.uint8)
    b[:, 0:2] = np.frombuffer(rng.uniform(0.001, 0.1, len(b)).astype(np.float16).tobytes(), np.uint8).reshape(-1, 2)
    if qtype == QT.Q4_1:
        b[:, 2:4] = np.frombuffer(rng.uniform(-0.5, 0.5, len(b)).astype(np.float16).tobytes(), np.uint8).reshape(-1, 2)
    return torch.from_numpy(b.reshape(rows, -1))


@pytest.mark.parametrize("rows", [16, 100, 200])
@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_1, QT.Q8_0], ids=lambda t: t.name)
def test_int4_rows_not_multiple_of_64(qtype, rows):
    """torch packs rows in blocks of 64: other row counts are padded with zero weights."""
    cols = 96
    raw = random_blocks(qtype, rows, cols)
    exact = dequantize(raw, qtype, (rows, cols))
    k = int4.Int4Kernel(raw, qtype, rows, cols)
    for m in (1, 200):
        x = torch.randn(m, cols)
        ref = x @ exact.T
        assert ((k(x) - ref).abs() <= bound(x, exact, ref)).all()


# GGUF block offsets of the float16 fields (d, and m or dmin) per int4 type.
_F16_FIELDS = {QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2), QT.Q8_0: (0,),
               QT.Q4_K: (0, 2), QT.Q5_K: (0, 2)}


def random_int4_blocks(qtype, rows, cols, seed=0):
    """Random blocks of any int4 type: random bytes everywhere (quants, K-quant scales, high
    bits), random finite float16 fields of any sign and magnitude (subnormals included)."""
    elems, nbytes = int4._BLOCK[qtype]
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (rows * cols // elems, nbytes), dtype=np.uint8)
    for off in _F16_FIELDS[qtype]:
        h = rng.integers(0, 1 << 16, len(b), dtype=np.uint16)
        h = np.where((h >> 10) & 31 == 31, h & 0x83FF, h).astype(np.uint16)  # no inf / NaN
        b[:, off:off + 2] = h.view(np.uint8).reshape(-1, 2)
    return torch.from_numpy(b.reshape(rows, -1))


@pytest.mark.skipif(not native.has_int4_pack(), reason="native kernels not built (pip install -e . builds them)")
@pytest.mark.parametrize("rows", [16, 64, 100, 200])
@pytest.mark.parametrize("qtype", int4.INT4_TYPES, ids=lambda t: t.name)
def test_native_int4_conversion_is_bit_identical(qtype, rows, monkeypatch):
    """The C converter writes exactly the bytes of the PyTorch conversion (packed codes, bf16
    scale and zero, padding rows), also when the weight is converted in several slabs."""
    cols = 512 if qtype in (QT.Q4_K, QT.Q5_K) else 160
    raw = random_int4_blocks(qtype, rows, cols, seed=rows)
    torch_path = int4.Int4Weight(raw, qtype, rows, cols, native_ok=False)
    monkeypatch.setattr(int4, "NATIVE_SLAB_WEIGHTS", 64 * cols)  # 64 rows per call: several slabs
    for c_path in (int4.Int4Weight(raw, qtype, rows, cols), int4.Int4Weight(raw, qtype, rows, cols)):
        assert len(c_path.packed) == len(torch_path.packed) == int4.PIECES[qtype]
        for a, b in zip(c_path.packed, torch_path.packed):
            assert a.shape == b.shape and torch.equal(a, b)
        for a, b in zip(c_path.sz, torch_path.sz):
            assert a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))
        monkeypatch.setattr(int4, "NATIVE_SLAB_WEIGHTS", 1 << 25)  # then in one call


@pytest.mark.skipif(not native.has_kquant_to_bf16(), reason="native kernels not built (pip install -e . builds them)")
@pytest.mark.parametrize("qtype", [QT.Q2_K, QT.Q3_K], ids=lambda t: t.name)
def test_native_dense_conversion_is_bit_identical(qtype):
    """Q2_K/Q3_K's dense bf16 copy from the C library equals the PyTorch dequantize's, rounded."""
    nbytes, d_offsets = {QT.Q2_K: (84, (80, 82)), QT.Q3_K: (110, (108,))}[qtype]
    rows, cols = 70, 768
    rng = np.random.default_rng(3)
    b = rng.integers(0, 256, (rows * cols // 256, nbytes), dtype=np.uint8)
    for off in d_offsets:
        h = rng.integers(0, 1 << 16, len(b), dtype=np.uint16)
        b[:, off:off + 2] = np.where((h >> 10) & 31 == 31, h & 0x83FF, h).astype(np.uint16).view(np.uint8).reshape(-1, 2)
    raw = torch.from_numpy(b.reshape(rows, -1))
    c_path = dense.DenseKernel(raw, qtype, rows, cols)
    torch_path = dense.DenseKernel(raw, qtype, rows, cols, native_ok=False)
    assert torch.equal(c_path.weight.view(torch.int16), torch_path.weight.view(torch.int16))
    assert torch.equal(torch_path.weight, dequantize(raw, qtype, (rows, cols)).to(torch.bfloat16))


def test_int4_packing_layout_matches_torch():
    codes = torch.randint(0, 16, (192, 160), dtype=torch.uint8)
    assert torch.equal(int4._pack_codes_manual(codes), int4._pack_codes_torch(codes))
    assert torch.equal(int4.unpack_codes(int4._pack_codes_manual(codes), 192, 160), codes)


@pytest.mark.skipif(not native.available(), reason="native kernels not built (pip install -e . builds them)")
def test_native_portable_path_matches_simd_path():
    t = tensors_of(QT.Q6_K)[0]
    rows, cols = t.shape
    x = torch.randn(5, cols)
    lib = native.library()
    try:
        lib.lantern_set_features(0)
        portable = native.q6k_matmul(t.raw.contiguous(), x, rows, cols)
        portable_bf16 = native.q6k_to_bf16(t.raw.contiguous(), rows, cols)
    finally:
        lib.lantern_set_features(-1)
    simd = native.q6k_matmul(t.raw.contiguous(), x, rows, cols)
    exact = dequantize(t.raw, t.type, t.shape)
    torch.testing.assert_close(simd, x @ exact.T, rtol=1e-5, atol=1e-5)  # float32 math
    torch.testing.assert_close(portable, simd, rtol=1e-5, atol=1e-5)
    assert torch.equal(portable_bf16, native.q6k_to_bf16(t.raw.contiguous(), rows, cols))
    assert torch.equal(portable_bf16, exact.to(torch.bfloat16))


def test_pure_pytorch_fallback_without_native(monkeypatch):
    """Without the C library every type still runs (Q6_K as dense bfloat16)."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", True)
    for qtype in (QT.Q6_K, QT.Q4_K):
        t = tensors_of(qtype)[0]
        layer = linear.QuantizedLinear(t, kernels="fast")
        assert layer.kernel_name in ("dense-bf16", "int4")
        x = torch.randn(200, t.shape[1])
        exact = dequantize(t.raw, t.type, t.shape)
        ref = x @ exact.T
        assert ((layer(x) - ref).abs() <= bound(x, exact, ref)).all()


def test_policy_switch_and_environment(monkeypatch):
    t = tensors_of(QT.Q4_K)[0]
    assert linear.QuantizedLinear(t, kernels="reference").kernel is None
    monkeypatch.setenv("LANTERN_KERNELS", "reference")
    assert linear.QuantizedLinear(t).kernel is None
    linear.set_kernel_policy("fast")
    try:
        assert linear.QuantizedLinear(t).kernel is not None
    finally:
        linear.set_kernel_policy(None)
    monkeypatch.setenv("LANTERN_KERNELS", "bogus")
    with pytest.raises(ValueError):
        linear.QuantizedLinear(t)


# ----- fidelity of whole models on the fast path, decode included -----------------------------


# Every type the in-place kernels take (and so the native decode step), per architecture.
DECODE_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K"]


@pytest.mark.parametrize("qtype", DECODE_TYPES)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_fast_path_decode_is_as_faithful_as_llama_cpp(arch, qtype):
    """A prompt chunk (expanded bf16 weights, torch's GEMM), a small batch and one-token decode
    steps (the native step on the in-place kernels where the CPU has AVX-512 BF16, else the
    PyTorch blocks on the int4 / Q6_K kernels) all stay at least as close to the exact math as
    llama.cpp is."""
    from lantern.testing.oracle import fidelity, llama_cpp_logits
    from lantern.testing.synthetic import cached_reference

    spec = {
        "llama": SPEC,
        "qwen2": Spec(arch="qwen2", n_heads=4, n_kv_heads=2, vocab_size=1024, rope_base=1e6),
        "phi3": Spec(arch="phi3", vocab_size=32064),
    }[arch]
    path = cached_model(spec, qtype)
    ids = [int(i) for i in np.random.default_rng(11).integers(3, spec.vocab_size, 160)]
    reference = llama_cpp_logits(cached_reference(path), ids, f32_cache=True)
    theirs = fidelity(llama_cpp_logits(path, ids), reference)
    model = lantern.load(path)  # the default: fast kernels
    cache = model.new_cache()
    ours = [model.forward(ids[:140], cache)]  # one chunk of 140 (dense path)
    ours.append(model.forward(ids[140:148], cache))  # a small batch (int4 / fused kernels)
    ours += [model.forward([t], cache) for t in ids[148:]]  # decode steps
    ours = fidelity(torch.cat(ours).numpy(), reference)
    print(f"{arch} {qtype}: lantern fast {ours} | llama.cpp {theirs}")
    assert ours.distance <= max(1.1 * theirs.distance, 0.02), (ours, theirs)
    assert ours.top1_agree >= theirs.top1_agree - math.floor(len(ids) / 100), (ours, theirs)


# ----- GGUF blocks multiplied in place (native, AVX-512 BF16 or portable C) ------------------------

GGUF_TYPES = list(native.GGUF_BLOCKS)
needs_gguf_native = pytest.mark.skipif(
    not (native.available() and hasattr(native.library(), "lantern_gguf_matmul")),
    reason="native kernels not built (pip install -e . builds them)")


def random_gguf_blocks(qtype, rows, cols, seed=0):
    """Random blocks of any type the in-place kernel takes: random bytes (quants, scales, high
    bits), random finite float16 d / dmin / m of any sign and magnitude (subnormals included)."""
    if qtype != QT.Q6_K:
        return random_int4_blocks(qtype, rows, cols, seed)
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (rows * cols // 256, 210), dtype=np.uint8)
    h = rng.integers(0, 1 << 16, len(b), dtype=np.uint16)
    b[:, 208:210] = np.where((h >> 10) & 31 == 31, h & 0x83FF, h).astype(np.uint16).view(np.uint8).reshape(-1, 2)
    return torch.from_numpy(b.reshape(rows, -1))


def _features(mask):
    """Context: the native library uses only the CPU features in `mask` (0: portable C)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        lib = native.library()
        lib.lantern_set_features(mask)
        try:
            yield
        finally:
            lib.lantern_set_features(-1)
    return ctx()


@needs_gguf_native
@pytest.mark.parametrize("m", [1, 3, 16, 17, 100])
@pytest.mark.parametrize("qtype", GGUF_TYPES, ids=lambda t: t.name)
def test_gguf_kernel_matches_float32_reference(qtype, m):
    """The in-place kernel (fused for small M, expanded slabs + bf16 GEMM above GGUF_MAX_M) against
    the exact float32 product, odd row count, on the SIMD path and the portable C path."""
    rows, cols = 37, 512 if native.GGUF_BLOCKS[qtype][0] == 256 else 160
    raw = random_gguf_blocks(qtype, rows, cols, seed=m)
    exact = dequantize(raw, qtype, (rows, cols))
    x = torch.randn(m, cols, generator=torch.Generator().manual_seed(m))
    ref = x.double() @ exact.double().T
    b = bound(x, exact, ref.float())
    k = native.GGUFKernel(raw, qtype, rows, cols)
    results = {"kernel": k(x), "fused": native.gguf_matmul(k.raw, qtype, x, rows, cols)}
    with _features(0):
        results["portable kernel"] = k(x)
        results["portable fused"] = native.gguf_matmul(k.raw, qtype, x, rows, cols)
    for name, y in results.items():
        assert y.dtype == torch.float32 and y.shape == (m, rows)
        excess = (y.double() - ref).abs() - b
        assert excess.max() <= 0, f"{qtype.name} M={m} {name}: error exceeds the bound by {excess.max():.3g}"
    # SIMD and portable paths differ only in the order of float32 additions
    scale = (x.abs() @ exact.abs().T).double()
    assert ((results["fused"].double() - results["portable fused"].double()).abs() <= 1e-5 * scale + 1e-30).all()


@needs_gguf_native
@pytest.mark.parametrize("qtype", GGUF_TYPES, ids=lambda t: t.name)
def test_gguf_expansion_is_bit_identical(qtype):
    """Blocks -> bf16 (prompt chunks, `dense`) equals quants.py's dequantize rounded to bf16, on the
    SIMD and the portable path."""
    rows, cols = 21, 768
    raw = random_gguf_blocks(qtype, rows, cols, seed=5)
    want = dequantize(raw, qtype, (rows, cols)).to(torch.bfloat16)
    k = native.GGUFKernel(raw, qtype, rows, cols)
    simd = k.dense(0, rows)
    with _features(0):
        portable = k.dense(0, rows)
    assert torch.equal(simd, want) and torch.equal(portable, want)
    assert torch.equal(k.dense(5, 12), want[5:12])


@needs_gguf_native
@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q6_K, QT.Q4_1, QT.Q8_0], ids=lambda t: t.name)
def test_gguf_pool_thread_counts_agree(qtype):
    """Rows are split over the thread pool; every row is computed by the same code whichever
    thread takes it, so 1, 2 and 3 threads give identical bits (also when the pool is reused,
    grown and shrunk), and so do two Python threads calling at once."""
    import threading

    rows, cols = 301, 1024
    raw = random_gguf_blocks(qtype, rows, cols, seed=9)
    k = native.GGUFKernel(raw, qtype, rows, cols)
    for m in (1, 5):
        x = torch.randn(m, cols)
        one = native.gguf_matmul(k.raw, qtype, x, rows, cols, threads=1)
        for threads in (2, 3, 2, 1, 2):
            assert torch.equal(native.gguf_matmul(k.raw, qtype, x, rows, cols, threads=threads), one)
        assert torch.equal(native.gguf_to_bf16(k.raw, qtype, rows, cols, threads=2),
                           native.gguf_to_bf16(k.raw, qtype, rows, cols, threads=1))
        out = [None] * 4

        def work(i):
            for _ in range(20):
                out[i] = native.gguf_matmul(k.raw, qtype, x, rows, cols, threads=2)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert all(torch.equal(o, one) for o in out)


@needs_gguf_native
def test_gguf_kernel_reads_the_file_in_place():
    """Where the CPU has AVX-512 BF16, layers of a real file hold a view of the memory map: nothing
    converted or copied; elsewhere the int4 / float32 Q6_K kernels take these types."""
    for qtype in (QT.Q4_K, QT.Q6_K, QT.Q4_0, QT.Q8_0):
        t = tensors_of(qtype)[0]
        layer = linear.QuantizedLinear(t, kernels="fast")
        if not native.bf16_simd():
            assert layer.kernel_name in ("int4", "q6k-native")
            continue
        assert layer.kernel_name == "gguf-native"
        assert layer.kernel.raw.data_ptr() == t.raw.data_ptr()
        assert layer.kernel.nbytes == t.raw.numel()


@pytest.mark.skipif(not native.bf16_simd(), reason="the in-place GGUF kernels need AVX-512 BF16 and the C library")
def test_decode_steps_run_torch_single_threaded_and_the_pool_on_all_threads():
    """During a small-batch step torch's own ops run on one thread while the weight kernels use
    the threads torch had; prompt chunks leave torch's threads alone; both are restored after."""
    model = lantern.load(cached_model(Spec(arch="llama", n_heads=4, n_kv_heads=2, vocab_size=1024), "Q4_K_M"))
    seen = []
    model.transformer.embedding.register_forward_hook(  # runs on both the PyTorch and the native step
        lambda *_: seen.append((torch.get_num_threads(), native.pool_threads())))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cache = model.new_cache()
        model.forward(list(range(3, 3 + native.GGUF_MAX_M + 1)), cache)  # a prompt chunk
        model.forward([5], cache)  # a decode step
        model.forward([5, 6, 7], cache)  # a speculative verify
        assert seen == [(2, 2), (1, 2), (1, 2)]
        assert torch.get_num_threads() == 2 and native.pool_threads() == 2
    finally:
        torch.set_num_threads(before)

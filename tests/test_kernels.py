"""The fast weight kernels against the exact float32 reference, per GGUF type, at the
instruction-set level in use (LANTERN_ISA; tests/test_isa_levels.py runs this file once per
level the CPU has).

Tolerances come from bfloat16 rounding (relative 2^-9, half an ulp), the coarsest of the fast
paths: the activations (avx512), the expanded weights (prompt chunks at avx512, dense Q2_K/Q3_K)
and the output each round once; the other levels round x to 15 bits and are well inside. A
decoding mistake (wrong nibble, scale or element order) gives errors of the order of |x| |w| and
fails by far.
"""

from __future__ import annotations

import contextlib
import math
import os
import re

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT

import lantern
from lantern.testing.cpu import avx2_variant
from lantern.testing.synthetic import Spec, cached_model
from lantern.weights import linear
from lantern.weights.gguf_file import GGUFFile
from lantern.errors import ModelFileError
from lantern.weights import kernels
from lantern.weights.kernels import dense, native
from lantern.weights.quants import dequantize

needs_native = pytest.mark.skipif(not native.available(),
                                  reason="native kernels not built (pip install -e . builds them)")

SPEC = Spec(arch="llama", n_heads=4, n_kv_heads=2, tied_output=True, vocab_size=1024)
# GGUF type -> a synthetic file holding such tensors.
FILES = {
    QT.Q4_0: "Q4_0", QT.Q4_1: "Q4_1", QT.Q5_0: "Q5_0", QT.Q5_1: "Q5_1", QT.Q8_0: "Q8_0",
    QT.Q2_K: "Q2_K", QT.Q3_K: "Q3_K_M", QT.Q4_K: "Q4_K_M", QT.Q5_K: "Q5_K_M", QT.Q6_K: "Q6_K",
    QT.IQ4_NL: "IQ4_NL", QT.IQ4_XS: "IQ4_XS",
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


# GGUF block offsets of the float16 fields (d, and m or dmin) per type.
_F16_FIELDS = {QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2), QT.Q8_0: (0,),
               QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,), QT.Q2_K: (80, 82), QT.Q3_K: (108,),
               QT.IQ4_NL: (0,), QT.IQ4_XS: (0,)}
_BLOCKS = {**native.GGUF_BLOCKS, QT.Q2_K: (256, 84), QT.Q3_K: (256, 110)}


def random_gguf_blocks(qtype, rows, cols, seed=0):
    """Random blocks of any type: random bytes everywhere (quants, K-quant scales, high bits),
    random finite float16 fields of any sign and magnitude (subnormals included)."""
    elems, nbytes = _BLOCKS[qtype]
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (rows * cols // elems, nbytes), dtype=np.uint8)
    for off in _F16_FIELDS[qtype]:
        h = rng.integers(0, 1 << 16, len(b), dtype=np.uint16)
        h = np.where((h >> 10) & 31 == 31, h & 0x83FF, h).astype(np.uint16)  # no inf / NaN
        b[:, off:off + 2] = h.view(np.uint8).reshape(-1, 2)
    return torch.from_numpy(b.reshape(rows, -1))


@needs_native
@pytest.mark.parametrize("qtype", [QT.Q2_K, QT.Q3_K], ids=lambda t: t.name)
def test_native_dense_conversion_is_bit_identical(qtype):
    """Q2_K/Q3_K's dense bf16 copy from the C library equals the PyTorch dequantize's, rounded."""
    rows, cols = 70, 768
    raw = random_gguf_blocks(qtype, rows, cols, seed=3)
    c_path = dense.DenseKernel(raw, qtype, rows, cols)
    torch_path = dense.DenseKernel(raw, qtype, rows, cols, native_ok=False)
    assert torch.equal(c_path.weight.view(torch.int16), torch_path.weight.view(torch.int16))
    assert torch.equal(torch_path.weight, dequantize(raw, qtype, (rows, cols)).to(torch.bfloat16))


def test_pure_pytorch_fallback_without_native(monkeypatch):
    """Without the C library every type still runs: the in-place types on the reference path,
    Q2_K/Q3_K as dense bfloat16."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", True)
    for qtype in (QT.Q6_K, QT.Q4_K, QT.Q3_K):
        t = tensors_of(qtype)[0]
        layer = linear.QuantizedLinear(t, kernels="fast")
        assert layer.kernel_name == ("dense-bf16" if qtype == QT.Q3_K else "reference")
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
DECODE_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS"]


@pytest.mark.parametrize("qtype", DECODE_TYPES)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "phi3"])
def test_fast_path_decode_is_as_faithful_as_llama_cpp(arch, qtype):
    """A prompt chunk read as generation reads prompts (the level's prompt route: at avx2 the
    K-quants on x rounded to int8 per 32), a small batch, one-token decode steps (the native
    step on the in-place kernels of the level in use) and decode steps in batched passes of
    native.BATCH_INT8_SEQUENCES sequences (at avx2 the K-quants' 8-bit route again) all stay at
    least as close to the exact math as llama.cpp is."""
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
    ours = [model.forward(ids[:140], cache, prompt=True)]  # a prompt chunk of 140, as generation reads it
    ours.append(model.forward(ids[140:148], cache))  # a small batch (the row kernels)
    ours += [model.forward([t], cache) for t in ids[148:154]]  # decode steps
    others = [model.new_cache() for _ in range(native.BATCH_INT8_SEQUENCES - 1)]
    for j, t in enumerate(ids[154:]):  # decode steps in batched passes, beside sequences of their own
        batch = [([t], cache)] + [([ids[j + k]], other) for k, other in enumerate(others)]
        ours.append(model.forward_batch(batch)[0])
    ours = fidelity(torch.cat(ours).numpy(), reference)
    print(f"{arch} {qtype}: lantern fast {ours} | llama.cpp {theirs}")
    assert ours.distance <= max(1.1 * theirs.distance, 0.02), (ours, theirs)
    assert ours.top1_agree >= theirs.top1_agree - math.floor(len(ids) / 100), (ours, theirs)


# ----- GGUF blocks multiplied in place (the native row kernels of each level) --------------------

GGUF_TYPES = list(native.GGUF_BLOCKS)
needs_gguf_native = needs_native


@contextlib.contextmanager
def at_level(name):
    """Within: the native kernels run at level `name`; then at the level in force before."""
    before = native.isa()
    native.set_isa(name)
    try:
        yield
    finally:
        native.set_isa(before)


@needs_gguf_native
@pytest.mark.parametrize("m", [1, 3, 16, 17, 100])
@pytest.mark.parametrize("qtype", GGUF_TYPES, ids=lambda t: t.name)
def test_gguf_kernel_matches_float32_reference(qtype, m):
    """The in-place kernel (row kernels for small M; above GGUF_MAX_M the level's prompt route:
    its micro-kernel, or expanded slabs + torch's GEMM) against the exact float32 product, odd row count, at the level in use and at
    the portable level (the oracle of every level)."""
    rows, cols = 37, 512 if native.GGUF_BLOCKS[qtype][0] == 256 else 160
    raw = random_gguf_blocks(qtype, rows, cols, seed=m)
    exact = dequantize(raw, qtype, (rows, cols))
    x = torch.randn(m, cols, generator=torch.Generator().manual_seed(m))
    ref = x.double() @ exact.double().T
    b = bound(x, exact, ref.float())
    k = native.GGUFKernel(raw, qtype, rows, cols)
    results = {"kernel": k(x), "fused": native.gguf_matmul(k.raw, qtype, x, rows, cols)}
    with at_level("portable"):
        results["portable kernel"] = k(x)
        results["portable fused"] = native.gguf_matmul(k.raw, qtype, x, rows, cols)
    for name, y in results.items():
        assert y.dtype == torch.float32 and y.shape == (m, rows)
        excess = (y.double() - ref).abs() - b
        assert excess.max() <= 0, f"{qtype.name} M={m} {name}: error exceeds the bound by {excess.max():.3g}"
    # Prompt chunks through a level's float32 micro-kernel (avx512) read x in float32 and the
    # weights as the exact expansion: only float32 accumulation error (1-3e-7 of sum |w x| here).
    # Otherwise a level with the portable level's activations (15-bit integers: avx2, whose
    # 8-row tile takes its prompt chunks) differs from it only in the order of float32
    # additions; avx512 rounds x to bfloat16 (the bound above).
    scale = (x.abs() @ exact.abs().T).double()
    if m > native.GGUF_MAX_M and native.kernel_name("gemm") and not native.kernel_name("rows8", qtype):
        diff = (results["fused"].double() - ref).abs()
        assert (diff <= 2e-6 * scale + 1e-30).all(), f"{qtype.name} M={m}: {native.kernel_name('gemm')}"
    elif native.library().lantern_x_format() == 2:
        diff = (results["fused"].double() - results["portable fused"].double()).abs()
        assert (diff <= 1e-5 * scale + 1e-30).all(), f"{qtype.name} M={m}: {native.isa()} vs portable"


def _int8_per_32(x: np.ndarray) -> np.ndarray:
    """x rounded as the 8-bit prompt tile rounds it (lantern.h): per 32, d = max|x| / 127 and
    q = round-to-even(x * (127 / max|x|)) in float32; returns d * q in float64."""
    g = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(g).max(-1, keepdims=True)
    inv = np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0).astype(np.float32)
    q = np.rint(g * inv)
    return (q * (amax / np.float32(127)).astype(np.float64)).reshape(x.shape)


@needs_gguf_native
@pytest.mark.parametrize("m", [1, 5, 13, 40])
@pytest.mark.parametrize("qtype", GGUF_TYPES, ids=lambda t: t.name)
def test_prompt_rows_take_int8_x_only_where_the_level_says(qtype, m):
    """Prompt rows (`prompt=True`) of the types `native.prompt_int8_types()` names are x rounded
    to int8 per 32 against the exact weights, to float32 accumulation (whatever M, an odd row
    count over several tasks); every other type and level gives prompt rows exactly what it
    gives any row."""
    rows, cols = 51, 768
    raw = random_gguf_blocks(qtype, rows, cols, seed=m)
    w = dequantize(raw, qtype, (rows, cols)).double().numpy()
    x = np.random.default_rng(m).standard_normal((m, cols)).astype(np.float32)
    y = native.gguf_matmul(raw, qtype, torch.from_numpy(x), rows, cols, prompt=True).double().numpy()
    plain = native.gguf_matmul(raw, qtype, torch.from_numpy(x), rows, cols).double().numpy()
    if qtype not in native.prompt_int8_types():
        assert np.array_equal(y, plain, equal_nan=True)
        return
    assert native.isa() == "avx2" and qtype in (QT.Q4_K, QT.Q5_K, QT.Q6_K)
    finite = np.isfinite(w).all(1)  # random float16 fields: a few rows overflow to inf
    xr = _int8_per_32(x)
    scale = np.abs(xr) @ np.abs(w[finite]).T
    assert (np.abs(y[:, finite] - xr @ w[finite].T) <= 1e-6 * scale).all()
    exact = x.astype(np.float64) @ w[finite].T  # and it is a rounding of x: far from exact, unlike the plain route
    assert (np.abs(plain[:, finite] - exact) <= 1e-4 * scale).all()
    assert np.abs(y[:, finite] - exact).max() > 10 * np.abs(plain[:, finite] - exact).max()


@needs_gguf_native
@pytest.mark.parametrize("qtype", GGUF_TYPES, ids=lambda t: t.name)
def test_gguf_expansion_is_bit_identical(qtype):
    """Blocks -> float32 (prompt chunks) equals quants.py's dequantize bit for bit, and -> bf16
    (prompt chunks at avx512, `dense`) that rounded to bf16, at the level in use and at the
    portable level."""
    rows, cols = 21, 768
    raw = random_gguf_blocks(qtype, rows, cols, seed=5)
    exact = dequantize(raw, qtype, (rows, cols))
    want = exact.to(torch.bfloat16)
    k = native.GGUFKernel(raw, qtype, rows, cols)
    for level in (native.isa(), "portable"):
        with at_level(level):
            assert torch.equal(k.dense(0, rows), want), level
            f32 = native.gguf_expand(k.raw, qtype, rows, cols, torch.float32)
            assert torch.equal(f32.view(torch.int32), exact.view(torch.int32)), level
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
    """On every CPU, layers of a real file hold a view of the memory map: nothing converted or
    copied."""
    for qtype in (QT.Q4_K, QT.Q6_K, QT.Q4_0, QT.Q8_0):
        t = tensors_of(qtype)[0]
        layer = linear.QuantizedLinear(t, kernels="fast")
        assert layer.kernel_name == "gguf-native"
        assert layer.kernel.raw.data_ptr() == t.raw.data_ptr()
        assert layer.kernel.nbytes == t.raw.numel()


@needs_native
def test_decode_steps_run_torch_single_threaded_and_the_pool_on_all_threads():
    """During a small-batch step torch's own ops run on one thread while the weight kernels use
    the threads torch had; prompt chunks do the same where the level multiplies them on the
    pool ("in_place": avx2) and leave torch's threads alone where torch's GEMM does (the other
    levels); both are restored after."""
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
        prompt = (1, 2) if native.prompt_route() == "in_place" else (2, 2)
        assert seen == [prompt, (1, 2), (1, 2)]
        assert torch.get_num_threads() == 2 and native.pool_threads() == 2
    finally:
        torch.set_num_threads(before)


# ----- levels, names and the self-check ---------------------------------------------------------


def avx2_tiles() -> set[str]:
    """The 8-row tile the avx2 level must choose here: its vnni variant where the CPU has AVX-512
    VNNI, its avxvnni one where it has AVX-VNNI (and LANTERN_AVX2_VNNI is not 0), else the plain
    one; any where /proc/cpuinfo is absent. The 8-bit prompt tile takes the same variant
    (gemm_q8_avx2[_vnni|_avxvnni])."""
    variant = avx2_variant()
    if variant is None:
        return {"rows8_avx2", "rows8_avx2_vnni", "rows8_avx2_avxvnni"}
    return {"rows8_avx2" + variant}


@contextlib.contextmanager
def avx2_vnni(on: bool):
    """Within: the avx2 level with its vnni variant allowed (on) or not (LANTERN_AVX2_VNNI=0)."""
    before = os.environ.get("LANTERN_AVX2_VNNI")
    os.environ["LANTERN_AVX2_VNNI"] = "1" if on else "0"
    try:
        with at_level("avx2"):
            yield
    finally:
        if before is None:
            del os.environ["LANTERN_AVX2_VNNI"]
        else:
            os.environ["LANTERN_AVX2_VNNI"] = before
        native.set_isa(native.isa())  # at_level refilled the table under the setting above: again under the restored one


# Functions a level takes from a lower level above portable because they measured faster there:
# avx512 multiplies Q4_1 and Q8_0 with the avx2 row kernels (15-bit x; lantern.h q15_types).
TAKEN_FROM_BELOW = {"avx512": {"matmul Q4_1": "avx2", "matmul Q8_0": "avx2"}}


@needs_native
@pytest.mark.parametrize("level", native.supported_isas())
def test_each_level_serves_every_type_with_its_own_kernels(level):
    """Every level above portable serves every in-place type, the prompt-chunk expansion, the
    attention and the vector helpers with functions of its own, not the generic fallback (or,
    where a level keeps a lower one's on purpose, that level's: TAKEN_FROM_BELOW); the names say
    which (as `run --verbose`, `lantern info` and `bench --json` show them)."""
    with at_level(level):
        info = kernels.level()
        assert info["isa"] == level
        names = {f"matmul {t}": f for t, f in info["matmul"].items()}
        names.update({f"expand {t}": f for t, f in info["expand"].items() if t in {q.name for q in GGUF_TYPES}})
        names.update(attention=info["attention"], vector=info["vector"])
        assert all(names.values()), names
        suffix = "_generic" if level == "portable" else f"_{level}"
        taken = TAKEN_FROM_BELOW.get(level, {})
        # (the avx2 functions a level takes may be avx2's vnni variants: "_avx2_vnni", "_avx2_avxvnni")
        wrong = {role: f for role, f in names.items()
                 if suffix not in f and not re.search(rf"_{taken.get(role)}(_vnni|_avxvnni)?$", f)}
        assert not wrong, f"at {level} these run other levels' functions: {wrong}"
        # prompt chunks: named per type; at avx2 through its own micro-kernel
        assert set(info["prompt"]) == {t.name for t in GGUF_TYPES} and all(info["prompt"].values()), info["prompt"]
        int8 = {t.name for t in (QT.Q4_K, QT.Q5_K, QT.Q6_K)}
        if level == "avx2":  # the K-quants' prompt rows on 8-bit x (lantern.h), the others on the 8-row tile
            tiles = avx2_tiles()  # the 8-bit tile takes the same variant as the 8-row one
            int8_tiles = {"expand_q8 + " + t.replace("rows8", "gemm_q8") for t in tiles}
            assert all(f in int8_tiles for t, f in info["prompt"].items() if t in int8), (int8_tiles, info["prompt"])
            assert all(f in tiles for t, f in info["prompt"].items() if t not in int8), (tiles, info["prompt"])
            assert len(set(info["rows8"].values())) == 1 and set(info["rows8"].values()) <= tiles, info["rows8"]
            # batched decode passes of 5+ sequences: the K-quants on the 8-bit tile, as their prompts
            assert {t: f for t, f in info["batch"].items() if f} == {t: info["prompt"][t] for t in int8}, info["batch"]
        elif level == "neon":  # with dotprod (its row kernels say), the K-quants' 8-bit tile; without, none
            tile = "expand_q8 + gemm_q8_neon_dotprod" if info["matmul"]["Q4_K"].endswith("_dotprod") else None
            assert {t: f for t, f in info["batch"].items() if f} == ({t: tile for t in int8} if tile else {}), info["batch"]
            assert not any(info["rows8"].values()), info["rows8"]
        else:
            assert not any(info["rows8"].values()), info["rows8"]
            assert not any(info["batch"].values()), info["batch"]


@needs_native
@pytest.mark.parametrize("qtype", GGUF_TYPES, ids=lambda t: t.name)
def test_avx2_vnni_tile_is_bit_exact_with_the_plain_one(qtype):
    """The avx2 level's row kernels and tiles in their vnni variant (vpdpwssd, vpdpbusd; AVX-512
    VNNI or AVX-VNNI) give the same int32 sums as the plain ones (vpmaddwd, vpmaddubsw, vpaddd), so
    the same bits: 1-4 rows of x (the row kernels: decode steps), 5-12 rows, a prompt's rows and 8
    rows on 8-bit x (a batched decode pass: the 8-bit tile's one-record route for the K-quants),
    every type."""
    CALLS = [(1, False), (2, False), (3, False), (4, False), (5, False), (8, False), (12, False), (40, True),
             (8, True)]  # (rows of x, 8-bit rows)
    if "avx2" not in native.supported_isas():
        pytest.skip("this CPU does not run the avx2 level")
    with avx2_vnni(True):
        variant = avx2_variant()
    if not variant:
        pytest.skip("this CPU has neither AVX-512 VNNI nor AVX-VNNI (or no /proc/cpuinfo says so): no vnni variant runs here")
    rows, cols = 37, 512 if native.GGUF_BLOCKS[qtype][0] == 256 else 160
    raw = random_gguf_blocks(qtype, rows, cols, seed=11)
    runs = {}
    for on in (False, True):
        with avx2_vnni(on):
            assert native.kernel_name("rows8", qtype) == "rows8_avx2" + (variant if on else "")
            assert native.kernel_name("matmul", qtype) == f"{qtype.name.lower()}_avx2" + (variant if on else "")
            k = native.GGUFKernel(raw, qtype, rows, cols)
            runs[on] = [native.gguf_matmul(k.raw, qtype, torch.randn(m, cols, generator=torch.Generator().manual_seed(m)),
                                           rows, cols, prompt=int8) for m, int8 in CALLS]
    for (m, int8), plain, vnni in zip(CALLS, runs[False], runs[True]):
        assert torch.equal(plain, vnni), f"{qtype.name} M={m} (8-bit: {int8}): the vnni tile differs from the plain one"


@needs_native
def test_lantern_isa_names_a_level_the_cpu_lacks_in_one_line(tmp_path):
    """LANTERN_ISA asking for a level this CPU (or build) does not run, or one that does not
    exist, is a one-line error and a non-zero exit, naming the levels it does run."""
    import subprocess
    import sys

    lacking = next(level for level in native.ISAS if level not in native.supported_isas())
    path = cached_model(SPEC, "Q4_0")
    for wanted, says in ((lacking, "does not run it"), ("sse9", "not a level")):
        env = {**__import__("os").environ, "LANTERN_ISA": wanted}
        run = subprocess.run([sys.executable, "-m", "lantern", "info", str(path)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode != 0
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and "LANTERN_ISA" in lines[0], run.stderr
        if wanted == lacking:
            assert all(level in lines[0] for level in native.supported_isas())


def test_a_refused_lantern_isa_stays_refused(monkeypatch):
    """A LANTERN_ISA that was refused is refused on every later call in the process too, never
    dropped silently for the pure-PyTorch path."""
    from lantern.errors import LanternError

    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setenv("LANTERN_ISA", "sse9")
    for _ in range(2):
        with pytest.raises(LanternError, match="LANTERN_ISA='sse9' is not a level"):
            native.available()


class _OffByOneNibble(native.GGUFKernel):
    """A kernel with a layout bug: the output of every row is the next row's (as a kernel that
    misreads a tile's row order would give)."""

    def __call__(self, x):
        return super().__call__(x).roll(1, dims=1)


@needs_native
@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q6_K, QT.Q4_1], ids=lambda t: t.name)
def test_a_kernel_that_fails_its_self_check_is_not_used(qtype, monkeypatch):
    """At load, the first kernel for each type checks itself on a tile of the real weights; one
    that disagrees with the exact math is turned away: the layer runs the reference kernel (so
    its output is exact) and `describe()` says why."""
    monkeypatch.setattr(kernels, "_verdicts", {})
    monkeypatch.setattr(kernels, "fallbacks", {})
    t = tensors_of(qtype)[0]
    assert kernels.self_check(native.GGUFKernel(t.raw, qtype, *t.shape), t.raw, qtype, *t.shape, t.name) is None
    monkeypatch.setattr(kernels, "_verdicts", {})
    monkeypatch.setattr(native, "GGUFKernel", _OffByOneNibble)
    layer = linear.QuantizedLinear(t, kernels="fast")
    assert layer.kernel is None and layer.kernel_name == "reference"
    assert qtype in kernels.fallbacks and "single-token" in kernels.fallbacks[qtype]
    assert f"{qtype.name} on the reference kernels" in kernels.describe()
    x = torch.randn(2, t.shape[1])
    torch.testing.assert_close(layer(x), x @ dequantize(t.raw, qtype, t.shape).T)


class _PromptRowsShifted(native.GGUFKernel):
    """A kernel right on decode steps and 15-bit prompt chunks whose 8-bit prompt rows read the
    wrong row of x (what a packing bug in that tile would give)."""

    def __call__(self, x, prompt=False):
        return super().__call__(x.roll(1, dims=0) if prompt else x, prompt=prompt)


class _DecodeRowsShifted(native.GGUFKernel):
    """The same, wrong only where the 8-bit rows fit one record of x (a batched decode pass)."""

    def __call__(self, x, prompt=False):
        return super().__call__(x.roll(1, dims=0) if prompt and x.shape[0] <= 8 else x, prompt=prompt)


@needs_native
@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q6_K], ids=lambda t: t.name)
def test_the_self_check_covers_the_8_bit_prompt_rows(qtype, monkeypatch):
    """Where the level reads a type's prompt rows on x rounded to int8 (the K-quants at avx2: what
    generation's prompts and batched decode passes take), the self-check runs that route too, at
    both sizes, with the rounding's worst case in its bound: the real tile passes, and one that
    misreads x there is turned away by name."""
    if qtype not in native.prompt_int8_types():
        pytest.skip(f"the {native.isa()} level reads no prompt rows of {qtype.name} on 8-bit x (avx2 does)")
    t = tensors_of(qtype)[0]
    monkeypatch.setattr(kernels, "_verdicts", {})
    assert kernels.self_check(native.GGUFKernel(t.raw, qtype, *t.shape), t.raw, qtype, *t.shape, t.name) is None
    monkeypatch.setattr(kernels, "_verdicts", {})
    why = kernels.self_check(_PromptRowsShifted(t.raw, qtype, *t.shape), t.raw, qtype, *t.shape, t.name)
    assert why is not None and "prompt rows on 8-bit x" in why, why
    monkeypatch.setattr(kernels, "_verdicts", {})
    why = kernels.self_check(_DecodeRowsShifted(t.raw, qtype, *t.shape), t.raw, qtype, *t.shape, t.name)
    assert why is not None and "batched decode rows on 8-bit x" in why, why


@needs_native
def test_non_finite_weights_in_the_file_are_a_clean_error(monkeypatch):
    """A file whose own weights are inf/NaN is refused at load, naming the tensor: no fallback,
    no NaN logits later."""
    monkeypatch.setattr(kernels, "_verdicts", {})
    raw = random_gguf_blocks(QT.Q4_0, 64, 256, seed=1).clone()
    raw.view(-1, 18)[5, 0:2] = torch.tensor([0x00, 0x7C], dtype=torch.uint8)  # d = +inf
    with pytest.raises(ModelFileError, match="blk.0.attn_q.weight.*non-finite"):
        kernels.build(raw, QT.Q4_0, 64, 256, "cpu", "blk.0.attn_q.weight")

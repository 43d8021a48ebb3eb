"""lantern.weights.quants.dequantize against two independent references, bit for bit.

* gguf-py's numpy `gguf.quants.dequantize` (and its `quantize`, for round trips);
* llama.cpp's own compiled `dequantize_row_*` from libggml-base, which ships with the pinned
  llama-cpp-python test dependency, called through ctypes.

Blocks are random bytes with the f16 scale fields overwritten by finite values (normal,
subnormal, the largest, negative, zero), so every expected value is finite and equality is exact.
"""

from __future__ import annotations

import ctypes
import os
import warnings

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from lantern.weights.quants import BLOCK_SIZES, QK_K, block_geometry, dequantize

QUANT_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS]

# Block layouts (ggml-common.h): byte offsets of the f16 fields, the per-sub-block scale bytes
# and the quant bytes (low bits, then high bits where the type has them).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0],
}
SCALE_BYTES = {T.Q2_K: (0, 16), T.Q3_K: (96, 108), T.Q4_K: (4, 16), T.Q5_K: (4, 16), T.Q6_K: (192, 208),
               T.IQ4_XS: (2, 8)}
QUANT_BYTES = {
    T.Q4_0: [(2, 18)], T.Q4_1: [(4, 20)], T.Q5_0: [(2, 22)], T.Q5_1: [(4, 24)], T.Q8_0: [(2, 34)],
    T.Q2_K: [(16, 80)], T.Q3_K: [(0, 96)], T.Q4_K: [(16, 144)], T.Q5_K: [(16, 176)],
    T.Q6_K: [(0, 192)], T.IQ4_NL: [(2, 18)], T.IQ4_XS: [(8, 136)],
}


def random_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite f16 values of every kind: normal over the whole exponent range, subnormal, zero,
    the largest finite value, both signs."""
    mag = np.exp2(rng.uniform(-14, 15.99, n)) * rng.uniform(1, 2, n)
    vals = np.minimum(mag, 65504).astype(np.float16)
    kind = rng.integers(0, 10, n)
    bits = vals.view(np.uint16).copy()
    bits[kind == 0] = rng.integers(1, 0x400, int((kind == 0).sum()))  # subnormal
    bits[kind == 1] = 0  # zero
    bits[kind == 2] = 0x7BFF  # 65504
    sign = rng.integers(0, 2, n).astype(np.uint16) << 15
    out = (bits | sign).view(np.float16)
    assert np.isfinite(out).all()
    return out


def random_blocks(qtype, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """[n_blocks, block_bytes] random blocks with finite f16 fields."""
    _, nbytes = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        blocks[:, off : off + 2] = random_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks


def to_rows(blocks: np.ndarray, rows: int) -> np.ndarray:
    return np.ascontiguousarray(blocks.reshape(rows, -1))


def expected(raw: np.ndarray, qtype) -> torch.Tensor:
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # inputs are all finite
        ref = gguf_dequantize(raw, qtype)
    assert np.isfinite(ref).all()
    return torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))


def ours(raw: np.ndarray, qtype, shape) -> torch.Tensor:
    got = dequantize(torch.from_numpy(raw), qtype, tuple(shape))
    assert got.dtype == torch.float32 and tuple(got.shape) == tuple(shape)
    return got


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    if not torch.equal(got, want):
        bad = (got != want).nonzero()
        i = tuple(bad[0].tolist())
        raise AssertionError(
            f"{len(bad)} values differ; first at {i}: got {got[i].item()!r}, want {want[i].item()!r}"
        )
    # torch.equal treats 0.0 and -0.0 as equal; the sign of zero must match too
    assert torch.equal(torch.signbit(got), torch.signbit(want))


# ----- random blocks against gguf-py ---------------------------------------------------------


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_random_blocks_match_gguf_py(qtype):
    rng = np.random.default_rng(1000 + int(qtype))
    block, _ = GGML_QUANT_SIZES[qtype]
    rows, cols = 12, block * 24
    raw = to_rows(random_blocks(qtype, rows * cols // block, rng), rows)
    assert_same(ours(raw, qtype, (rows, cols)), expected(raw, qtype))


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_many_chunks_match_gguf_py(qtype):
    # More than one internal chunk (about 2^20 elements), with a partial last chunk that ends
    # in the middle of a row.
    rng = np.random.default_rng(2000 + int(qtype))
    block, _ = GGML_QUANT_SIZES[qtype]
    rows, cols = 5, 1024 * 256 + 2 * QK_K
    raw = to_rows(random_blocks(qtype, rows * cols // block, rng), rows)
    assert_same(ours(raw, qtype, (rows, cols)), expected(raw, qtype))


def edge_blocks(qtype, rng: np.random.Generator) -> np.ndarray:
    """Blocks that pin every field to its extremes: quants all 0x00 / all 0xFF / random, scale
    bytes (K-quants) all 0x00 / all 0xFF / random, f16 fields at 1, -1, 65504, -65504, the
    smallest subnormal, the largest subnormal, the smallest normal, 0 and -0."""
    f16_values = np.array(
        [1.0, -1.0, 65504.0, -65504.0, 2.0**-24, -(2.0**-24), 2.0**-14 - 2.0**-24, 2.0**-14, 0.0, -0.0],
        dtype=np.float16,
    )
    quant_fills = [0x00, 0xFF, None]
    scale_fills = [0x00, 0xFF, None] if qtype in SCALE_BYTES else [None]
    _, nbytes = GGML_QUANT_SIZES[qtype]
    blocks = []
    for qf in quant_fills:
        for sf in scale_fills:
            for i, v in enumerate(f16_values):
                blk = rng.integers(0, 256, nbytes, dtype=np.uint8)
                for lo, hi in QUANT_BYTES[qtype]:
                    if qf is not None:
                        blk[lo:hi] = qf
                if sf is not None:
                    lo, hi = SCALE_BYTES[qtype]
                    blk[lo:hi] = sf
                for k, off in enumerate(F16_FIELDS[qtype]):
                    # pair each value with a different one in the second field (d, m / d, dmin)
                    blk[off : off + 2] = np.array([f16_values[(i + 3 * k) % len(f16_values)]]).view(np.uint8)
                blocks.append(blk)
    return np.stack(blocks)


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_edge_blocks_match_gguf_py(qtype):
    rng = np.random.default_rng(3000 + int(qtype))
    blocks = edge_blocks(qtype, rng)
    block, _ = GGML_QUANT_SIZES[qtype]
    raw = to_rows(blocks, len(blocks))
    assert_same(ours(raw, qtype, (len(blocks), block)), expected(raw, qtype))


# ----- against llama.cpp's compiled reference -------------------------------------------------


def _libggml_base() -> ctypes.CDLL:
    import llama_cpp  # the pinned test dependency ships libggml-base

    return ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))


@pytest.fixture(scope="module")
def libggml():
    return _libggml_base()


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_matches_llama_cpp_dequantize_row(qtype, libggml):
    rng = np.random.default_rng(4000 + int(qtype))
    block, _ = GGML_QUANT_SIZES[qtype]
    blocks = np.concatenate([random_blocks(qtype, 512, rng), edge_blocks(qtype, rng)])
    raw = np.ascontiguousarray(blocks)
    n = len(blocks) * block
    fn = getattr(libggml, "dequantize_row_" + qtype.name.lower().replace("_k", "_K"))
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    want = np.empty(n, dtype=np.float32)
    fn(raw.ctypes.data, want.ctypes.data, n)
    assert np.isfinite(want).all()
    assert_same(ours(raw, qtype, (n,)), torch.from_numpy(want))


# ----- hand-computed values (no reference library involved) ------------------------------------


def test_q4_0_by_hand():
    # d = 0.5; qs[j] = j (low nibble) | (15 - j) << 4: y[j] = (j - 8) / 2, y[16 + j] = (7 - j) / 2
    blk = np.zeros(18, dtype=np.uint8)
    blk[0:2] = np.array([0.5], dtype=np.float16).view(np.uint8)
    blk[2:18] = [j | ((15 - j) << 4) for j in range(16)]
    got = ours(blk[None], T.Q4_0, (1, 32))[0]
    want = torch.tensor([(j - 8) / 2 for j in range(16)] + [(7 - j) / 2 for j in range(16)])
    assert_same(got, want)


def test_q8_0_by_hand():
    blk = np.zeros(34, dtype=np.uint8)
    blk[0:2] = np.array([-0.25], dtype=np.float16).view(np.uint8)
    q = np.array([-128, -1, 0, 1, 127] + [3] * 27, dtype=np.int8)
    blk[2:34] = q.view(np.uint8)
    got = ours(blk[None], T.Q8_0, (1, 32))[0]
    assert_same(got, torch.from_numpy(q.astype(np.float32) * np.float32(-0.25)))


def test_q4_k_by_hand():
    # Sub-block j has scale j + 1 and min 2j, encoded with get_scale_min_k4's packing; all
    # quants are 3 (low nibble) and 5 (high nibble): sub-block 2g uses 3, 2g + 1 uses 5.
    sc = [j + 1 for j in range(8)]
    mn = [2 * j for j in range(8)]
    s = np.zeros(12, dtype=np.uint8)
    for j in range(4):
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6)
        s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6)
        s[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4)
    blk = np.zeros(144, dtype=np.uint8)
    blk[0:4] = np.array([0.125, 0.5], dtype=np.float16).view(np.uint8)
    blk[4:16] = s
    blk[16:144] = 3 | (5 << 4)
    got = ours(blk[None], T.Q4_K, (1, 256))[0].view(8, 32)
    for j in range(8):
        q = 3 if j % 2 == 0 else 5
        assert torch.all(got[j] == float(np.float32(0.125 * sc[j] * q - 0.5 * mn[j]))), j


IQ4_VALUES = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]  # ggml-common.h


def test_iq4_nl_by_hand():
    # d = -0.5; qs[j] = j (low nibble) | (15 - j) << 4: y[j] = -0.5 * values[j], y[16 + j] = -0.5 * values[15 - j]
    blk = np.zeros(18, dtype=np.uint8)
    blk[0:2] = np.array([-0.5], dtype=np.float16).view(np.uint8)
    blk[2:18] = [j | ((15 - j) << 4) for j in range(16)]
    got = ours(blk[None], T.IQ4_NL, (1, 32))[0]
    want = torch.tensor([-0.5 * IQ4_VALUES[j] for j in range(16)] + [-0.5 * IQ4_VALUES[15 - j] for j in range(16)])
    assert_same(got, want)


def test_iq4_xs_by_hand():
    # Sub-block ib has the 6-bit scale ls = 4 ib + 3 (low 4 bits in scales_l[ib / 2] at 4 (ib % 2),
    # high 2 bits in scales_h at 2 ib), d = 0.25: y = 0.25 * (ls - 32) * values[code]; codes:
    # element j (j < 16) of sub-block ib = (j + ib) % 16, element 16 + j = 15 - j.
    ls = [4 * ib + 3 for ib in range(8)]
    blk = np.zeros(136, dtype=np.uint8)
    blk[0:2] = np.array([0.25], dtype=np.float16).view(np.uint8)
    scales_h = sum((v >> 4) << (2 * ib) for ib, v in enumerate(ls))
    blk[2:4] = np.array([scales_h], dtype=np.uint16).view(np.uint8)
    for ib in range(8):
        blk[4 + ib // 2] |= (ls[ib] & 15) << (4 * (ib % 2))
        blk[8 + 16 * ib : 24 + 16 * ib] = [((j + ib) % 16) | ((15 - j) << 4) for j in range(16)]
    got = ours(blk[None], T.IQ4_XS, (1, 256))[0].view(8, 32)
    for ib in range(8):
        dl = 0.25 * (ls[ib] - 32)
        want = [dl * IQ4_VALUES[(j + ib) % 16] for j in range(16)] + [dl * IQ4_VALUES[15 - j] for j in range(16)]
        assert_same(got[ib], torch.tensor(want))


# ----- float types ---------------------------------------------------------------------------


def test_f32_is_copied_not_aliased():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    raw = torch.from_numpy(x)
    got = dequantize(raw, T.F32, (4, 64))
    assert_same(got, raw)
    got.add_(1)  # callers may modify the result; the source must stay untouched
    assert np.array_equal(x, raw.numpy())


@pytest.mark.parametrize("qtype", [T.F16, T.BF16], ids=lambda t: t.name)
def test_half_types_match_gguf_py(qtype):
    rng = np.random.default_rng(6 + int(qtype))
    rows, cols = 16, 96
    if qtype == T.F16:
        vals = random_f16(rng, rows * cols).reshape(rows, cols)
        raw_bytes = vals.view(np.uint8)
        typed = torch.from_numpy(vals)
    else:
        # every bf16 bit pattern whose value is finite (exponent != 0xFF): normal, subnormal, zero
        bits = rng.integers(0, 1 << 16, rows * cols, dtype=np.uint32).astype(np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] ^= 0x0080
        bits[: 1 << 4] = [0x0000, 0x8000, 0x0001, 0x807F, 0x7F7F, 0xFF7F] + [0x3F80] * 10
        raw_bytes = bits.reshape(rows, cols).view(np.uint8)
        typed = torch.from_numpy(bits.reshape(rows, cols).view(np.int16)).view(torch.bfloat16)
    want = expected(np.ascontiguousarray(raw_bytes), qtype).view(rows, cols)
    assert_same(dequantize(typed, qtype, (rows, cols)), want)
    assert_same(dequantize(torch.from_numpy(np.ascontiguousarray(raw_bytes)), qtype, (rows, cols)), want)


# ----- row subsets, odd layouts, shapes -------------------------------------------------------


@pytest.mark.parametrize("qtype", QUANT_TYPES + [T.F32, T.F16, T.BF16], ids=lambda t: t.name)
def test_row_subsets(qtype):
    rng = np.random.default_rng(7000 + int(qtype))
    rows, cols = 10, 512
    if qtype in F16_FIELDS:
        block, _ = GGML_QUANT_SIZES[qtype]
        raw = torch.from_numpy(to_rows(random_blocks(qtype, rows * cols // block, rng), rows))
    else:
        dtype = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}[qtype]
        raw = torch.from_numpy(rng.standard_normal((rows, cols)).astype(np.float32)).to(dtype)
    full = dequantize(raw, qtype, (rows, cols))
    ids = torch.tensor([7, 2, 2, 0, 9])
    assert_same(dequantize(raw[ids], qtype, (len(ids), cols)), full[ids])  # embedding lookup
    assert_same(dequantize(raw[3:6], qtype, (3, cols)), full[3:6])  # a view at an offset
    strided = dequantize(raw[1::3], qtype, (3, cols))  # non-contiguous rows
    assert_same(strided, full[1::3])
    assert strided.is_contiguous() and full.is_contiguous()
    assert_same(dequantize(raw[5], qtype, (cols,)), full[5])  # a single row, 1-D
    assert dequantize(raw[0:0], qtype, (0, cols)).shape == (0, cols)


@pytest.mark.parametrize("qtype", QUANT_TYPES, ids=lambda t: t.name)
def test_odd_offsets_and_shapes(qtype):
    # Rows of one block starting at every byte offset parity: the decoders must not rely on
    # word alignment of the fields. Also a 3-D shape over the same bytes.
    rng = np.random.default_rng(8000 + int(qtype))
    block, nbytes = GGML_QUANT_SIZES[qtype]
    blocks = random_blocks(qtype, 6, rng)
    want = expected(np.ascontiguousarray(blocks), qtype).view(6, block)
    flat = torch.from_numpy(np.concatenate([np.zeros(3, np.uint8), blocks.reshape(-1)]))
    for start in range(4):
        # an odd start is impossible for real tensors, but a view at any offset must still decode
        shifted = torch.cat([flat[:start], flat[3:]])[start:]
        assert_same(dequantize(shifted.view(6, nbytes), qtype, (6, block)), want)
    got3d = dequantize(torch.from_numpy(blocks).view(2, 3, nbytes), qtype, (2, 3, block))
    assert_same(got3d, want.view(2, 3, block))


def test_read_only_memory_map_is_never_written(tmp_path):
    rng = np.random.default_rng(9)
    path = tmp_path / "blocks.bin"
    for qtype in QUANT_TYPES:
        block, nbytes = GGML_QUANT_SIZES[qtype]
        blocks = random_blocks(qtype, 64, rng)
        blocks.tofile(path)
        mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(8, 8 * nbytes))  # PROT_READ
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch warns about non-writable arrays
            raw = torch.from_numpy(mm)
        got = dequantize(raw, qtype, (8, 8 * block))  # a write would crash, not just differ
        assert_same(got, expected(np.ascontiguousarray(blocks), qtype).view(8, 8 * block))
        assert np.array_equal(np.fromfile(path, dtype=np.uint8), blocks.reshape(-1))
        del raw, mm


def test_out_buffer_is_used_and_checked():
    rng = np.random.default_rng(10)
    raw = torch.from_numpy(to_rows(random_blocks(T.Q6_K, 8, rng), 4))
    out = torch.full((4, 512), float("nan"))
    res = dequantize(raw, T.Q6_K, (4, 512), out=out)
    assert res is out
    assert_same(out, dequantize(raw, T.Q6_K, (4, 512)))
    with pytest.raises(ValueError):
        dequantize(raw, T.Q6_K, (4, 512), out=torch.empty(4, 511))
    with pytest.raises(ValueError):
        dequantize(raw, T.Q6_K, (4, 512), out=torch.empty(4, 512, dtype=torch.float16))


def test_bad_input_is_refused():
    raw = torch.zeros(4, 144, dtype=torch.uint8)
    with pytest.raises(ValueError):
        dequantize(raw, T.Q4_K, (4, 512))  # 4 x 144 bytes hold 4 x 256 elements
    with pytest.raises(ValueError):
        dequantize(torch.zeros(2, 36, dtype=torch.uint8), T.Q4_0, (2, 48))  # rows not whole blocks
    with pytest.raises(ValueError):
        dequantize(raw.view(torch.int8), T.Q4_K, (4, 256))
    with pytest.raises(ValueError):
        dequantize(raw, T.IQ2_XXS, (4, 256))
    with pytest.raises(ValueError):
        dequantize(torch.zeros(4, 8), T.F32, (4, 9))


def test_block_geometry():
    assert block_geometry(T.Q4_K) == (256, 144)
    assert block_geometry(T.Q8_0) == (32, 34)
    assert block_geometry(T.F16) == (1, 2)
    assert set(BLOCK_SIZES) == set(QUANT_TYPES) | {T.F32, T.F16, T.BF16}
    for qtype, geom in BLOCK_SIZES.items():
        assert geom == tuple(GGML_QUANT_SIZES[qtype])


# ----- round trips through gguf-py's quantizers ------------------------------------------------


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.BF16], ids=lambda t: t.name)
def test_gguf_py_quantize_round_trip(qtype):
    rng = np.random.default_rng(11000 + int(qtype))
    rows, cols = 24, 256
    x = (rng.standard_normal((rows, cols)) * np.exp(rng.uniform(-6, 6, (rows, 1)))).astype(np.float32)
    x[0] = 0.0  # an all-zero row quantizes with d = 0
    x[1, :] = 3.0  # a constant row
    x[2] = rng.standard_normal(cols)
    x[2, ::2] *= -100  # mixed magnitudes within blocks
    q = gguf_quantize(x, qtype)
    assert q.dtype == np.uint8
    want = expected(q, qtype).view(rows, cols)
    raw = torch.from_numpy(q)
    if qtype == T.BF16:
        raw = raw.view(torch.bfloat16)
    got = dequantize(raw, qtype, (rows, cols))
    assert_same(got, want)
    # and the decode is the quantizer's intent: close to the input
    tol = {T.Q4_0: 0.2, T.Q4_1: 0.2, T.Q5_0: 0.1, T.Q5_1: 0.1, T.Q8_0: 0.02, T.BF16: 0.01}[qtype]
    scale = np.abs(x).max(axis=1, keepdims=True) + 1e-30
    assert (np.abs(got.numpy() - x) / scale).max() < tol

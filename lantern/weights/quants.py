"""Dequantize GGML tensor encodings to float32 with plain torch ops.

`dequantize(raw, qtype, shape)` turns what `GGUFFile.tensor(name).raw` holds (uint8 blocks for the
quantized types, float tensors for F32/F16/BF16) into a float32 tensor of `shape`. It works on any
leading subset of rows (`raw[ids]` for an embedding lookup) and on any device.

Every decoder follows llama.cpp's `dequantize_row_*` (ggml-quants.c) in float32, in C's order
(`(d * sc) * q - (dmin * m)`, `q * d + m`, ...), and is bit-identical to llama.cpp's compiled
reference and to gguf-py's `gguf.quants.dequantize` (tests/test_quants.py checks both). The
exactness does not hang on that order: in every supported format each product is exact in
float32 (an f16 scale has at most 11 significant bits and the integers multiplied into it at most
12 together, Q6_K's 7-bit scale times its 5-bit quant being the widest; nothing over- or
underflows; IQ4_XS's d * (scale - 32) has at most 17 bits and its codes 7 more), so the only rounding is the final `+ m` / `- dmin * m`, and any evaluation order,
FMA contraction or device gives the same float32 value.

Speed: on CPU the work runs in chunks of about a million elements so that the uint8/int8
intermediates stay in cache and only the float32 output touches main memory; each chunk is
written straight into its slice of the output. Pass `out=` to reuse a buffer and skip the page
faults of a fresh allocation (for large tensors these cost about as much as the decoding).
"""

from __future__ import annotations

import math

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = ["BLOCK_SIZES", "GROUP_SIZES", "KVALUES_IQ4NL", "QK_K", "block_geometry", "decompose", "dequantize"]

QK_K = 256

T = GGMLQuantizationType

_FLOAT_TYPES = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}
_QUANT_TYPES = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS)

# IQ4_NL / IQ4_XS: the 16 values a 4-bit code stands for (ggml-common.h, kvalues_iq4nl)
KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)

# qtype -> (elements per block, bytes per block), for every type `dequantize` accepts.
BLOCK_SIZES: dict[GGMLQuantizationType, tuple[int, int]] = {
    t: tuple(GGML_QUANT_SIZES[t]) for t in (*_FLOAT_TYPES, *_QUANT_TYPES)
}

# A quantized tensor as (codes, scale, offset): see `decompose`.
Parts = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]

# qtype -> elements that share one scale (and offset): llama.cpp's sub-blocks.
GROUP_SIZES: dict[GGMLQuantizationType, int] = {
    t: 16 if t in (T.Q2_K, T.Q3_K, T.Q6_K) else 32 for t in _QUANT_TYPES
}

# Elements decoded per step on CPU: big enough to amortize torch's per-op overhead, small enough
# that the integer intermediates stay in L2/L3.
_CPU_CHUNK_ELEMS = 1 << 20
# On accelerators one step covers this many elements (bounds temporary memory, not speed).
_DEVICE_CHUNK_ELEMS = 1 << 26


def block_geometry(qtype: GGMLQuantizationType) -> tuple[int, int]:
    """(elements per block, bytes per block) of `qtype`; (1, itemsize) for F32/F16/BF16."""
    try:
        return BLOCK_SIZES[GGMLQuantizationType(qtype)]
    except (KeyError, ValueError):
        raise ValueError(f"lantern cannot dequantize tensor type {_type_name(qtype)}") from None


def dequantize(
    raw: torch.Tensor,
    qtype: GGMLQuantizationType,
    shape: tuple[int, ...],
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode `raw` (GGML encoding `qtype`) into a float32 tensor of `shape` on raw's device.

    `raw` is never written to (it may be a read-only memory map). For quantized types it holds
    whole blocks (uint8, any shape with prod(shape) / block_elems * block_bytes bytes in row-major
    order, e.g. [rows, bytes_per_row]); for F32/F16/BF16 it holds the values (or their bytes as
    uint8). The result is always a new contiguous tensor (or `out`, which must be contiguous
    float32 of `shape` on raw's device), even for F32.
    """
    block_elems, block_bytes = block_geometry(qtype)
    qtype = GGMLQuantizationType(qtype)
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)

    if out is not None:
        if out.dtype != torch.float32 or tuple(out.shape) != shape or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 tensor of shape {list(shape)}")
        if out.device != raw.device:
            raise ValueError(f"out is on {out.device} but raw is on {raw.device}")

    if qtype in _FLOAT_TYPES:
        values = raw
        if values.dtype == torch.uint8:
            values = _as(values.contiguous(), _FLOAT_TYPES[qtype])
        if values.dtype != _FLOAT_TYPES[qtype]:
            raise ValueError(f"{qtype.name} data must be {_FLOAT_TYPES[qtype]} or uint8, got {raw.dtype}")
        if values.numel() != numel:
            raise ValueError(
                f"{qtype.name} data has {values.numel()} values, shape {list(shape)} needs {numel}"
            )
        result = out if out is not None else torch.empty(shape, dtype=torch.float32, device=raw.device)
        result.copy_(values.reshape(shape))
        return result

    if raw.dtype != torch.uint8:
        raise ValueError(f"{qtype.name} data must be uint8 bytes, got {raw.dtype}")
    row = shape[-1] if shape else 1
    if row % block_elems != 0:
        raise ValueError(
            f"{qtype.name} rows must be a multiple of {block_elems} elements, got shape {list(shape)}"
        )
    n_blocks = numel // block_elems
    if raw.numel() != n_blocks * block_bytes:
        raise ValueError(
            f"{qtype.name} data has {raw.numel()} bytes, shape {list(shape)} needs {n_blocks * block_bytes}"
        )

    blocks = raw.reshape(n_blocks, block_bytes)  # a view when raw is contiguous (never written)
    result = out if out is not None else torch.empty(shape, dtype=torch.float32, device=raw.device)
    dst = result.view(n_blocks, block_elems)
    parts = _PARTS[qtype]
    chunk_elems = _CPU_CHUNK_ELEMS if raw.device.type == "cpu" else _DEVICE_CHUNK_ELEMS
    step = max(1, chunk_elems // block_elems)
    for start in range(0, n_blocks, step):
        q, scale, offset = parts(blocks[start : start + step])
        o = dst[start : start + step]
        o.copy_(q)
        groups = o.view(o.shape[0], scale.shape[1], -1)
        groups.mul_(scale.unsqueeze(-1))
        if offset is not None:
            groups.sub_(offset.unsqueeze(-1))
    return result


def decompose(raw: torch.Tensor, qtype: GGMLQuantizationType, rows: int, cols: int) -> Parts:
    """A quantized [rows, cols] tensor as its parts: integer codes `q` (int8 or uint8,
    [rows, cols], element order) and float32 `scale` and `offset` per group of GROUP_SIZES[qtype]
    consecutive elements of a row ([rows, cols // group]; offset None where the format has none),
    such that `scale * q - offset` is exactly what `dequantize` gives (the product is exact in
    float32, see above). For kernels that keep a weight in this form (lantern.weights.kernels.gpu)."""
    qtype = GGMLQuantizationType(qtype)
    if qtype not in _PARTS:
        raise ValueError(f"{_type_name(qtype)} has no integer codes to decompose")
    block_elems, block_bytes = BLOCK_SIZES[qtype]
    if cols % block_elems or raw.numel() != rows * cols // block_elems * block_bytes:
        raise ValueError(f"{qtype.name} data of {raw.numel()} bytes is not a [{rows}, {cols}] tensor")
    q, scale, offset = _PARTS[qtype](raw.reshape(-1, block_bytes))
    per_row = cols // GROUP_SIZES[qtype]
    return (q.reshape(rows, cols), scale.reshape(rows, per_row),
            None if offset is None else offset.reshape(rows, per_row))


# ----- helpers -------------------------------------------------------------------------------
#
# The kernels below avoid what is slow in eager torch on CPU: shifts on uint8 tensors (not
# vectorized), shifts by a tensor of amounts, and broadcasts or copies whose innermost run is a
# handful of bytes. Bit fields are cut out of int16/int32 words with scalar shifts and masks that
# act on every byte of a word at once (the masks keep each field inside its byte, so neither the
# words' sign nor bits of neighbouring bytes leak into the result; like GGUF itself this assumes a
# little-endian host). The pieces are put into llama.cpp's element order with torch.stack/cat,
# whose copies run at memcpy speed, and one conversion copy per chunk turns them into float32.


def _type_name(qtype) -> str:
    try:
        return GGMLQuantizationType(qtype).name
    except ValueError:
        return str(qtype)


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret the bytes of `x` (last dim contiguous) as `dtype`, copying only if the strides
    or the offset do not allow a view."""
    try:
        return x.view(dtype)
    except RuntimeError:  # a fresh copy starts at offset 0 (contiguous() may return x itself)
        return x.clone(memory_format=torch.contiguous_format).view(dtype)


def _f16(b: torch.Tensor, offset: int) -> torch.Tensor:
    """The f16 field at byte `offset` of every block, widened (exactly) to float32: [n, 1]."""
    return _as(b[:, offset : offset + 2], torch.float16).to(torch.float32)


def _u8_to_f32(words: torch.Tensor) -> torch.Tensor:
    """int32 words holding one small unsigned value per byte -> float32 values, byte order."""
    return words.view(torch.uint8).reshape(words.shape[0], -1).to(torch.float32)


def _shift(x: torch.Tensor, left: int) -> torch.Tensor:
    """x << left (left > 0) or x >> -left (left < 0); callers mask the result. For left == 0
    this is `x` itself (possibly a view of the caller's raw bytes): never modify it in place."""
    if left > 0:
        return x << left
    if left < 0:
        return x >> -left
    return x


_BIT_SPREAD: dict[torch.device, torch.Tensor] = {}


def _bit_spread(device: torch.device) -> torch.Tensor:
    """int64[256]: entry x holds 8 bytes, byte k = 0x10 when bit k of x is set (Q5_0/Q5_1 qh)."""
    table = _BIT_SPREAD.get(device)
    if table is None:
        x = torch.arange(256, dtype=torch.int64)
        table = torch.zeros(256, dtype=torch.int64)
        for k in range(8):
            table |= ((x >> k) & 1) << (8 * k + 4)
        table = _BIT_SPREAD[device] = table.to(device)
    return table


# ----- legacy 32-element blocks ---------------------------------------------------------------
# Each decoder takes blocks `b` ([n, block_bytes] uint8) and returns their Parts: the integer
# codes in element order ([n, block_elems], int8 or uint8) and the float32 scale and offset of
# each group of GROUP_SIZES consecutive elements ([n, groups]; offset None when zero), where the
# value is scale * q - offset.


def _nibbles32(b: torch.Tensor, offset: int) -> torch.Tensor:
    """The 16 quant bytes at `offset` of each block -> [n, 32] uint8 in element order:
    qs[j] & 15 for j < 16, qs[j - 16] >> 4 after. The masks run over the whole chunk as int16
    words (block sizes are even), so only the final interleave works block by block."""
    n, nbytes = b.shape
    words = _as(b.reshape(-1), torch.int16)
    lo = (words & 0x0F0F).view(torch.uint8).view(n, nbytes)[:, offset : offset + 16]
    hi = ((words >> 4) & 0x0F0F).view(torch.uint8).view(n, nbytes)[:, offset : offset + 16]
    return torch.stack((lo, hi), dim=1).view(n, 32)


def _qh32(qh: torch.Tensor) -> torch.Tensor:
    """Q5_0/Q5_1: [n, 4] bytes of a little-endian u32 -> [n, 32] uint8, element j = 16 * bit j."""
    idx = qh.reshape(-1).to(torch.int64)
    return _bit_spread(qh.device).index_select(0, idx).view(torch.uint8).view(-1, 32)


def _q4_0(b: torch.Tensor) -> Parts:
    # y[j] = ((qs[j] & 15) - 8) * d, y[j + 16] = ((qs[j] >> 4) - 8) * d
    q = _nibbles32(b, 2).sub_(8)  # uint8 wraps; as int8 it reads q - 8
    return q.view(torch.int8), _f16(b, 0), None


def _q4_1(b: torch.Tensor) -> Parts:
    # y = q * d + m
    return _nibbles32(b, 4), _f16(b, 0), _f16(b, 2).neg_()


def _q5_0(b: torch.Tensor) -> Parts:
    # y = ((low nibble | high bit << 4) - 16) * d
    q = _nibbles32(b, 6).bitwise_or_(_qh32(b[:, 2:6])).sub_(16)
    return q.view(torch.int8), _f16(b, 0), None


def _q5_1(b: torch.Tensor) -> Parts:
    # y = (low nibble | high bit << 4) * d + m
    return _nibbles32(b, 8).bitwise_or_(_qh32(b[:, 4:8])), _f16(b, 0), _f16(b, 2).neg_()


def _q8_0(b: torch.Tensor) -> Parts:
    # y = qs * d
    return b[:, 2:34].view(torch.int8), _f16(b, 0), None


# ----- K-quants: 256-element super-blocks -----------------------------------------------------


def _q2_k(b: torch.Tensor) -> Parts:
    # scales[16] (low nibble: scale, high: min), qs[64], d, dmin.
    # Element 128h + 32j + l = (qs[32h + l] >> 2j) & 3 with scale byte e // 16;
    # y = (d * (sc & 15)) * q - (dmin * (sc >> 4)).
    n = b.shape[0]
    d, dmin = _f16(b, 80), _f16(b, 82)
    s = _as(b[:, 0:16], torch.int32)
    dl = d * _u8_to_f32(s & 0x0F0F0F0F)
    ml = dmin * _u8_to_f32((s >> 4) & 0x0F0F0F0F)
    w = _as(b[:, 16:80], torch.int32).view(n, 2, 8)  # [n, h, 8 words]
    q = torch.stack([_shift(w, -2 * j) & 0x03030303 for j in range(4)], dim=2)  # [n, h, j, 8]
    return q.view(torch.uint8).view(n, 256), dl, ml


def _q3_k_scales(s: torch.Tensor) -> torch.Tensor:
    """Q3_K's 16 scales minus 32 as float32 [n, 16], from the 12 scale bytes as int32 [n, 3]
    (llama.cpp's kmask1/kmask2 shuffle)."""
    a0, a1, tmp = s[:, 0], s[:, 1], s[:, 2]
    aux = torch.stack(
        (
            (a0 & 0x0F0F0F0F) | ((tmp & 0x03030303) << 4),
            (a1 & 0x0F0F0F0F) | (((tmp >> 2) & 0x03030303) << 4),
            ((a0 >> 4) & 0x0F0F0F0F) | (((tmp >> 4) & 0x03030303) << 4),
            ((a1 >> 4) & 0x0F0F0F0F) | (((tmp >> 6) & 0x03030303) << 4),
        ),
        dim=1,
    )
    return aux.view(torch.uint8).sub_(32).view(torch.int8).to(torch.float32)


def _q3_k(b: torch.Tensor) -> Parts:
    # hmask[32], qs[64], scales[12], d.
    # Element e = 128h + 32j + l: low = (qs[32h + l] >> 2j) & 3, high = bit (4h + j) of
    # hmask[l]; q = low - (high ? 0 : 4); y = (d * (scale[e // 16] - 32)) * q.
    n = b.shape[0]
    d = _f16(b, 108)
    dl = d * _q3_k_scales(_as(b[:, 96:108], torch.int32))
    words = _as(b, torch.int16)  # [n, 55]; fields at even offsets
    hm = words[:, 0:16].reshape(n, 1, 16)
    qs = words[:, 16:48].view(n, 2, 16)  # [n, h, 16]
    hm2 = torch.cat((hm, hm >> 4), dim=1)  # [n, h, 16]: bit j of hm2[h] = bit 4h + j of hmask
    planes = [
        (_shift(qs, -2 * j) & 0x0303).bitwise_or_(_shift(hm2, 2 - j) & 0x0404)
        for j in range(4)
    ]
    q = torch.stack(planes, dim=2).view(torch.uint8).sub_(4)  # [n, h, j, 16]: low + 4 * high - 4
    return q.view(torch.int8).view(n, 256), dl, None


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's get_scale_min_k4 for j = 0..7 from the 12 scale bytes as int32 [n, 3]:
    (scales, mins) as float32 [n, 8]."""
    a, m, hi = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.stack((a & 0x3F3F3F3F, (hi & 0x0F0F0F0F) | ((a >> 2) & 0x30303030)), dim=1)
    mn = torch.stack((m & 0x3F3F3F3F, ((hi >> 4) & 0x0F0F0F0F) | ((m >> 2) & 0x30303030)), dim=1)
    return _u8_to_f32(sc), _u8_to_f32(mn)


def _k4_prologue(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: per-sub-block factors d * sc and dmin * m, each float32 [n, 8]."""
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _scale_min_k4(_as(b[:, 4:16], torch.int32))
    return d * sc, dmin * mn


def _k4_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Q4_K/Q5_K: 128 quant bytes -> int32 words [n, 8 (sub-block 2g + nibble), 8]."""
    w = _as(qs, torch.int32).view(-1, 4, 8)  # [n, g, 8 words]
    return torch.stack((w & 0x0F0F0F0F, (w >> 4) & 0x0F0F0F0F), dim=2).view(-1, 8, 8)


def _q4_k(b: torch.Tensor) -> Parts:
    # d, dmin, scales[12], qs[128]. Sub-block 2g = low nibbles of qs[32g : 32g + 32], 2g + 1 =
    # high nibbles; y = (d * sc) * q - (dmin * m).
    n = b.shape[0]
    d1, m1 = _k4_prologue(b)
    q = _k4_nibbles(b[:, 16:144])
    return q.view(torch.uint8).view(n, 256), d1, m1


def _q5_k(b: torch.Tensor) -> Parts:
    # d, dmin, scales[12], qh[32], qs[128]. As Q4_K, plus 16 * bit s of qh[l] for sub-block s;
    # y = (d * sc) * q - (dmin * m).
    n = b.shape[0]
    d1, m1 = _k4_prologue(b)
    qh = _as(b[:, 16:48], torch.int32).view(n, 1, 8)
    qh4 = torch.cat([_shift(qh, -2 * g) for g in range(4)], dim=1)  # [n, g, 8]: bit k = bit 2g + k
    w = _as(b[:, 48:176], torch.int32).view(n, 4, 8)  # [n, g, 8]
    lo = (w & 0x0F0F0F0F).bitwise_or_((qh4 << 4).bitwise_and_(0x10101010))
    hi = ((w >> 4).bitwise_and_(0x0F0F0F0F)).bitwise_or_((qh4 << 3).bitwise_and_(0x10101010))
    q = torch.stack((lo, hi), dim=2)  # [n, g, k, 8]
    return q.view(torch.uint8).view(n, 256), d1, m1


def _q6_k(b: torch.Tensor) -> Parts:
    # ql[128], qh[64], scales int8[16], d.
    # Half h (128 elements): element 64k + 32c + l (k: nibble, c: which 32 bytes of ql) is
    # ((ql[64h + 32c + l] >> 4k) & 15) | ((qh[32h + l] >> 2(2k + c)) & 3) << 4, minus 32;
    # y = (d * scale[e // 16]) * q.
    n = b.shape[0]
    d = _f16(b, 208)
    dl = d * b[:, 192:208].view(torch.int8).to(torch.float32)
    words = _as(b, torch.int16)  # [n, 105]; fields at even offsets
    ql = words[:, 0:64].view(n, 2, 32)  # [n, h, (c, 16)]
    qh = words[:, 64:96].view(n, 2, 1, 16)
    qh2 = torch.cat((qh, qh >> 2), dim=2).view(n, 2, 32)  # bits 2k, 2k+1 of qh2[h, c] = plane 2k + c
    lo = (ql & 0x0F0F).bitwise_or_((qh2 << 4).bitwise_and_(0x3030))
    hi = ((ql >> 4).bitwise_and_(0x0F0F)).bitwise_or_(qh2 & 0x3030)
    q = torch.stack((lo, hi), dim=2).view(torch.uint8).sub_(32)  # [n, h, k, (c, 16)]
    return q.view(torch.int8).view(n, 256), dl, None


# ----- IQ4: 4-bit codes into a non-linear table of 16 values -----------------------------------

_IQ4_VALUES: dict[torch.device, torch.Tensor] = {}


def _iq4_lookup(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 (any shape) -> int8 KVALUES_IQ4NL[code], same shape."""
    table = _IQ4_VALUES.get(codes.device)
    if table is None:
        table = _IQ4_VALUES[codes.device] = torch.tensor(KVALUES_IQ4NL, dtype=torch.int8, device=codes.device)
    return table[codes.to(torch.int64)]


def _iq4_nl(b: torch.Tensor) -> Parts:
    # d, qs[16]: y[j] = d * kvalues[qs[j] & 15], y[j + 16] = d * kvalues[qs[j] >> 4]
    return _iq4_lookup(_nibbles32(b, 2)), _f16(b, 0), None


def _iq4_xs(b: torch.Tensor) -> Parts:
    # d, scales_h (u16), scales_l[4], qs[128]. Sub-block ib (32 elements): 6-bit scale
    # ls = (scales_l[ib / 2] >> 4 (ib % 2)) & 15 | ((scales_h >> 2 ib) & 3) << 4; its codes are
    # qs[16 ib + j] & 15 (element j) and >> 4 (element j + 16); y = (d * (ls - 32)) * kvalues[code].
    n = b.shape[0]
    d = _f16(b, 0)
    sh = _as(b[:, 2:4], torch.int16).to(torch.int32)  # [n, 1]
    sl = b[:, 4:8].to(torch.int32)  # [n, 4]
    lo = torch.stack((sl & 15, sl >> 4), dim=2).view(n, 8)
    hi = (sh >> torch.arange(0, 16, 2, dtype=torch.int32, device=b.device)) & 3
    dl = d * (lo | (hi << 4)).sub_(32).to(torch.float32)  # [n, 8]
    w = _as(b[:, 8:136], torch.int16).view(n, 8, 8)  # [n, ib, 8 words]
    q = torch.stack((w & 0x0F0F, (w >> 4) & 0x0F0F), dim=2).view(torch.uint8).view(n, 256)
    return _iq4_lookup(q), dl, None


_PARTS = {
    T.Q4_0: _q4_0,
    T.Q4_1: _q4_1,
    T.Q5_0: _q5_0,
    T.Q5_1: _q5_1,
    T.Q8_0: _q8_0,
    T.Q2_K: _q2_k,
    T.Q3_K: _q3_k,
    T.Q4_K: _q4_k,
    T.Q5_K: _q5_k,
    T.Q6_K: _q6_k,
    T.IQ4_NL: _iq4_nl,
    T.IQ4_XS: _iq4_xs,
}

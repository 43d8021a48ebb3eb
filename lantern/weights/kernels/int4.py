"""GGUF blocks as sums of torch int4 weight-only products (CPU).

torch's CPU int4 kernel computes `y = x @ W.T` with `W[n, k] = (q - 8) * scale + zero`, `q` in
0..15 and one (scale, zero) pair per group of 32 along K and per output row. Every GGUF type
whose scales cover 32 consecutive elements is an exact sum of such products (exact up to the
rounding of scale and zero to bfloat16, the kernel's only scale dtype):

* Q4_0 `d*(q-8)`: one piece, scale d, zero 0.
* Q4_1 `d*q + m`: one piece, scale d, zero m + 8d.
* Q4_K `(d*sc)*q - dmin*m` per 32: one piece, scale S = d*sc, zero 8S - dmin*m.
* Q5_0 `d*(q-16)`, Q5_1 `d*q + m`, Q5_K: q = low nibble + 16 * high bit, so two pieces:
  the low nibbles as above, and the high bit (code hb + 8 or hb + 7) with scale 16 * scale.
* Q8_0 `d*q`: q = 16*h + l with l = q & 15, h = q >> 4 in -8..7: pieces (l, d, 8d) and
  (h + 8, 16d, 0).

Q6_K, Q2_K and Q3_K have scales per 16 elements: they do not fit (torch's groups start at 32).

The packed weights replace the file's bytes: conversion runs a slab of rows at a time, so only
one slab's integer codes exist at once. With the C library (`native.int4_pack`) the blocks are
decoded straight into the packed layout, bit-identical to the PyTorch path below (kept as the
fallback and as the specification; `tests/test_kernels.py` compares the two).
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType as QT

GROUP = 32
ROW_BLOCK = 64  # the CPU packing interleaves rows in blocks of 64; N is padded to a multiple
INT4_TYPES = (QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q4_K, QT.Q5_K)
PIECES = {QT.Q4_0: 1, QT.Q4_1: 1, QT.Q4_K: 1, QT.Q5_0: 2, QT.Q5_1: 2, QT.Q5_K: 2, QT.Q8_0: 2}

_BLOCK = {QT.Q4_0: (32, 18), QT.Q4_1: (32, 20), QT.Q5_0: (32, 22), QT.Q5_1: (32, 24),
          QT.Q8_0: (32, 34), QT.Q4_K: (256, 144), QT.Q5_K: (256, 176)}


def available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu")


# ----- decoding GGUF blocks into (codes, scale, zero) pieces ------------------------------------


def _words(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The blocks [n, nbytes] reinterpreted as int16/int32 words [n, nbytes / size] (no copy
    when the rows are contiguous)."""
    b = b if b.is_contiguous() else b.contiguous()
    return b.view(dtype)


def _bytes(words: torch.Tensor) -> torch.Tensor:
    return words.view(torch.uint8)


def _f16(b: torch.Tensor, offset: int) -> torch.Tensor:
    return b[:, offset:offset + 2].contiguous().view(torch.float16).to(torch.float32)  # [n, 1]


def _nibbles(b: torch.Tensor, offset: int) -> torch.Tensor:
    """The 16 quant bytes at `offset` of each block -> [n, 32] codes: low nibbles (elements
    0-15), then high nibbles. Masks run over whole int16 words (offsets and sizes are even)."""
    w = _words(b, torch.int16)
    lo = _bytes(w & 0x0F0F)[:, offset:offset + 16]
    hi = _bytes((w >> 4) & 0x0F0F)[:, offset:offset + 16]
    return torch.cat((lo, hi), dim=1)


_BITS = None


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """[n, 4] bytes of a little-endian u32 -> [n, 32] uint8, element j = bit j."""
    global _BITS
    if _BITS is None:
        x = torch.arange(256, dtype=torch.int64)
        table = torch.zeros(256, dtype=torch.int64)
        for k in range(8):
            table |= ((x >> k) & 1) << (8 * k)
        _BITS = table
    return _BITS.index_select(0, qh.reshape(-1).to(torch.int64)).view(torch.uint8).view(-1, 32)


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """llama.cpp's get_scale_min_k4 for j = 0..7 from the 12 scale bytes as int32 [n, 3]."""
    a, m, hi = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.stack((a & 0x3F3F3F3F, (hi & 0x0F0F0F0F) | ((a >> 2) & 0x30303030)), dim=1)
    mn = torch.stack((m & 0x3F3F3F3F, ((hi >> 4) & 0x0F0F0F0F) | ((m >> 2) & 0x30303030)), dim=1)
    n = s.shape[0]
    return _bytes(sc).view(n, 8).to(torch.float32), _bytes(mn).view(n, 8).to(torch.float32)


def decode_pieces(raw: torch.Tensor, qtype: QT, rows: int, cols: int):
    """GGUF blocks of `rows` x `cols` weights -> list of (codes uint8 [rows, cols] in 0..15,
    scale float32 [rows, cols/32], zero float32 [rows, cols/32]) whose int4 products sum to W."""
    elems, nbytes = _BLOCK[qtype]
    b = raw.reshape(-1, nbytes)
    n = b.shape[0]
    g = cols // GROUP

    def shaped(codes, scale, zero):
        return (codes.reshape(rows, cols), scale.reshape(rows, g), zero.reshape(rows, g))

    if qtype == QT.Q4_0:
        d = _f16(b, 0)
        return [shaped(_nibbles(b, 2), d, torch.zeros_like(d))]
    if qtype == QT.Q4_1:
        d, m = _f16(b, 0), _f16(b, 2)
        return [shaped(_nibbles(b, 4), d, m + 8 * d)]
    if qtype == QT.Q5_0:
        d = _f16(b, 0)
        return [shaped(_nibbles(b, 6), d, 8 * d),  # d * lo
                shaped(_bits32(b[:, 2:6]).add_(7), 16 * d, torch.zeros_like(d))]  # 16d * (hb - 1)
    if qtype == QT.Q5_1:
        d, m = _f16(b, 0), _f16(b, 2)
        return [shaped(_nibbles(b, 8), d, m + 8 * d),
                shaped(_bits32(b[:, 4:8]).add_(8), 16 * d, torch.zeros_like(d))]  # 16d * hb
    if qtype == QT.Q8_0:
        d = _f16(b, 0)
        w = _words(b, torch.int16)
        lo = _bytes(w & 0x0F0F)[:, 2:34]
        hi = _bytes(((w >> 4) & 0x0F0F) ^ 0x0808)[:, 2:34]  # (q >> 4) + 8 for q = 16h + l
        return [shaped(lo, d, 8 * d), shaped(hi, 16 * d, torch.zeros_like(d))]
    if qtype in (QT.Q4_K, QT.Q5_K):
        d, dmin = _f16(b, 0), _f16(b, 2)
        w = _words(b, torch.int32)  # [n, 36] or [n, 44]
        sc, mn = _scale_min_k4(w[:, 1:4])
        S, Mn = d * sc, dmin * mn  # [n, 8], llama.cpp's products
        qs = (w[:, 4:36] if qtype == QT.Q4_K else w[:, 12:44]).reshape(n, 4, 1, 8)
        lo = torch.cat((qs & 0x0F0F0F0F, (qs >> 4) & 0x0F0F0F0F), dim=2)  # sub-block 2j low, 2j+1 high
        pieces = [shaped(_bytes(lo).view(n, 256), S, 8 * S - Mn)]
        if qtype == QT.Q5_K:
            qh = w[:, 4:12].reshape(n, 1, 8)  # bit s of qh[l] = high bit of sub-block s
            hb = torch.cat([(qh >> s) & 0x01010101 for s in range(8)], dim=1) | 0x08080808
            pieces.append(shaped(_bytes(hb).view(n, 256), 16 * S, torch.zeros_like(S)))
        return pieces
    raise ValueError(f"{qtype.name} has no int4 decomposition")


# ----- packing ---------------------------------------------------------------------------------


def _pack_codes_manual(codes: torch.Tensor) -> torch.Tensor:
    """torch's CPU int4 layout, written directly from uint8 codes [N, K] (N % 64 == 0):
    [N/64, K, 32] bytes, byte (k, j) = codes[64b + j, k] | codes[64b + 32 + j, k] << 4."""
    n, k = codes.shape
    c = codes.view(n // ROW_BLOCK, 2, 32, k)
    packed = (c[:, 0] | (c[:, 1] << 4)).transpose(1, 2).contiguous()
    return packed.view(n, k // 2)


def _pack_codes_torch(codes: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)


_PACKER = None


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, K] (N % 64 == 0) in torch's CPU int4 layout. The direct layout writer is
    used only after it reproduced torch's own converter on a probe (else the converter runs)."""
    global _PACKER
    if _PACKER is None:
        probe = torch.randint(0, 16, (128, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        same = torch.equal(_pack_codes_manual(probe), _pack_codes_torch(probe))
        _PACKER = _pack_codes_manual if same else _pack_codes_torch
    return _PACKER(codes)


def unpack_codes(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of `_pack_codes_manual`: uint8 codes [n, k]."""
    p = packed.view(n // ROW_BLOCK, k, 32)
    return torch.stack((p & 15, p >> 4), dim=1).transpose(2, 3).reshape(n, k)


# The native converter packs this many weights per call (then gives their file pages back).
NATIVE_SLAB_WEIGHTS = 1 << 25


class Int4Weight:
    """A GGUF weight as int4 pieces: `packed` (torch layout) and `sz` [K/32, N_pad, 2] bf16 each."""

    def __init__(self, raw: torch.Tensor, qtype: QT, rows: int, cols: int, slab_weights: int = 1 << 22,
                 native_ok: bool = True):
        from . import native

        self.qtype, self.rows, self.cols = qtype, rows, cols
        self.padded = -(-rows // ROW_BLOCK) * ROW_BLOCK
        n_pieces = PIECES[qtype]
        g = cols // GROUP
        if native_ok and native.has_int4_pack() and cols % _BLOCK[qtype][0] == 0:
            self._convert_native(raw, n_pieces, g)
            return
        self.packed = [torch.empty(self.padded, cols // 2, dtype=torch.uint8) for _ in range(n_pieces)]
        sz = [torch.zeros(self.padded, g, 2, dtype=torch.bfloat16) for _ in range(n_pieces)]
        raw = raw.reshape(rows, -1)
        step = max(ROW_BLOCK, (slab_weights // cols) // ROW_BLOCK * ROW_BLOCK)
        for start in range(0, self.padded, step):
            stop = min(start + step, self.padded)
            real = max(0, min(stop, rows) - start)
            pieces = decode_pieces(raw[start:start + real], qtype, real, cols) if real else None
            for i in range(n_pieces):
                if real < stop - start:  # padding rows: code 8, scale 0, zero 0 -> weight 0
                    codes = torch.full((stop - start, cols), 8, dtype=torch.uint8)
                    if real:
                        codes[:real] = pieces[i][0]
                else:
                    codes = pieces[i][0]
                self.packed[i][start:stop] = pack_codes(codes.contiguous())
                if real:
                    sz[i][start:start + real] = torch.stack(pieces[i][1:], dim=-1)
            pieces = None
        self.sz = [s.transpose(0, 1).contiguous() for s in sz]

    def _convert_native(self, raw: torch.Tensor, n_pieces: int, g: int) -> None:
        """The same bytes as the PyTorch conversion, written by the C library (multi-threaded,
        no intermediates) slab by slab; each slab's file pages are given back once packed."""
        from . import native
        from .memory import release_pages

        rows, cols = self.rows, self.cols
        self.packed = [torch.empty(self.padded, cols // 2, dtype=torch.uint8) for _ in range(n_pieces)]
        self.sz = [torch.empty(g, self.padded, 2, dtype=torch.bfloat16) for _ in range(n_pieces)]
        raw = raw.reshape(rows, -1)
        if not raw.is_contiguous():
            raw = raw.contiguous()
        step = max(ROW_BLOCK, (NATIVE_SLAB_WEIGHTS // cols) // ROW_BLOCK * ROW_BLOCK)
        for start in range(0, self.padded, step):
            stop = min(start + step, self.padded)
            native.int4_pack(raw, self.qtype, self.packed, self.sz, rows, cols, start, stop)
            if stop < self.padded:  # the last slab's pages go with the whole tensor's (linear.py)
                release_pages(raw[start:min(stop, rows)])

    @property
    def nbytes(self) -> int:
        return sum(p.numel() + s.numel() * 2 for p, s in zip(self.packed, self.sz))

    def matmul(self, x_bf16: torch.Tensor) -> torch.Tensor:
        """x [M, K] bf16 -> float32 [M, rows]."""
        y = None
        for packed, sz in zip(self.packed, self.sz):
            part = torch.ops.aten._weight_int4pack_mm_for_cpu(x_bf16, packed, GROUP, sz)
            y = part.float() if y is None else y.add_(part)
        return y if self.padded == self.rows else y[:, : self.rows]

    def dense(self, start: int, stop: int, dtype=torch.bfloat16) -> torch.Tensor:
        """Rows [start, stop) of the weight the kernel multiplies by, as `dtype`."""
        lo, hi = start // ROW_BLOCK * ROW_BLOCK, min(-(-stop // ROW_BLOCK) * ROW_BLOCK, self.padded)
        w = None
        for packed, sz in zip(self.packed, self.sz):
            codes = unpack_codes(packed[lo:hi], hi - lo, self.cols)
            s = sz[:, lo:hi].float()  # [g, n, 2]
            part = codes.view(hi - lo, -1, GROUP).float().sub_(8)
            part.mul_(s[..., 0].T.unsqueeze(-1)).add_(s[..., 1].T.unsqueeze(-1))
            w = part if w is None else w.add_(part)
        return w.view(hi - lo, self.cols)[start - lo: stop - lo].to(dtype)


# Batches of at most this many rows go through the int4 kernel; larger ones (prompt chunks)
# expand the weight to bfloat16 slab by slab (native C unpacker) and run torch's dense bf16 GEMM,
# which is about 1.3x (M=256) to 1.8x (M=512) faster than the int4 kernel there. Without the C
# library the expansion in torch is too slow to pay off, and every M uses the int4 kernel.
# See docs/PERFORMANCE.md, "Kernels".
INT4_MAX_M = 128
DENSE_SLAB_WEIGHTS = 1 << 23


class Int4Kernel(Int4Weight):
    name = "int4"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x float32 [M, cols] -> float32 [M, rows]."""
        from . import native

        xb = x.to(torch.bfloat16)
        if x.shape[0] <= INT4_MAX_M or not native.available():
            return self.matmul(xb)
        out = torch.empty(x.shape[0], self.rows, dtype=torch.float32)
        step = max(ROW_BLOCK, (DENSE_SLAB_WEIGHTS // self.cols) // ROW_BLOCK * ROW_BLOCK)
        for start in range(0, self.rows, step):
            stop = min(start + step, self.padded)
            w = native.int4_to_bf16(self.packed, self.sz, self.padded, self.cols, start, stop)
            keep = min(stop, self.rows) - start
            out[:, start:start + keep] = torch.nn.functional.linear(xb, w[:keep])
        return out

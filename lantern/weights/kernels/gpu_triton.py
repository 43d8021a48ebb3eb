"""The Triton kernel of `gpu.PackedKernel`: y = x @ W.T for up to GEMV_MAX_M rows of x.

Each program takes BLOCK_N rows of W and walks the columns BLOCK_K at a time: it loads the codes
of BLOCK_K // G groups once, forms the weights in registers as scale * q - offset (the file's
values exactly: the product is exact in float32) and accumulates their products with every row
of x in float32. The weights are read from device memory once per call, whatever the rows of x.
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # MPS, Windows, CPU-only PyTorch: gpu.PackedKernel expands slabs instead
    triton = None


def available() -> bool:
    return triton is not None


# (BLOCK_N, BLOCK_K) per BLOCK_M: rows of W per program and columns per step. On an H200, one
# token's Phi-3-mini matrices (3.1 GB packed) took 5.2 to 5.7 ms at M=1 with tiles from 4x256 to
# 16x512 (0.55-0.60 TB/s), 7.0 to 7.7 ms at 128 columns; at M=8, 19 to 24 ms. A graphed decode
# step took 7.3 ms there: this kernel is its bound (docs/PERFORMANCE.md).
TILES = {1: (8, 256), 2: (8, 256), 4: (8, 128), 8: (8, 128)}


if triton is not None:

    @triton.jit
    def _gemv(codes, scale, offset, x, y, M, N, K,
              G: tl.constexpr, H: tl.constexpr, NIBBLES: tl.constexpr, BIAS: tl.constexpr, HAS_OFFSET: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        rows = rows.to(tl.int64)  # offsets of big matrices pass 2^31
        ms = tl.arange(0, BLOCK_M)
        m_ok = ms < M
        NG: tl.constexpr = BLOCK_K // G  # groups per step; H: bytes per group
        g = tl.arange(0, NG)
        h = tl.arange(0, H)
        row_bytes = K // G * H
        groups = K // G
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            gi = k0 // G + g  # [NG] group index along the row
            c = tl.load(codes + rows[:, None, None] * row_bytes + gi[None, :, None] * H + h[None, None, :],
                        mask=row_ok[:, None, None], other=0)  # [BLOCK_N, NG, H]
            sidx = rows[:, None] * groups + gi[None, :]
            s = tl.load(scale + sidx, mask=row_ok[:, None], other=0.0)[:, :, None]
            if HAS_OFFSET:
                o = tl.load(offset + sidx, mask=row_ok[:, None], other=0.0)[:, :, None]
            xcol = k0 + g[:, None] * G + h[None, :]  # [NG, H]
            xp = x + ms[:, None, None] * K + xcol[None, :, :]
            if NIBBLES:
                w_lo = s * ((c & 15).to(tl.int32) - BIAS).to(tl.float32)
                w_hi = s * ((c >> 4).to(tl.int32) - BIAS).to(tl.float32)
                if HAS_OFFSET:
                    w_lo = w_lo - o
                    w_hi = w_hi - o
                x_lo = tl.load(xp, mask=m_ok[:, None, None], other=0.0)
                x_hi = tl.load(xp + H, mask=m_ok[:, None, None], other=0.0)
                part = w_lo[None] * x_lo[:, None] + w_hi[None] * x_hi[:, None]  # [M, N, NG, H]
            else:
                w = s * c.to(tl.float32)
                if HAS_OFFSET:
                    w = w - o
                part = w[None] * tl.load(xp, mask=m_ok[:, None, None], other=0.0)[:, None]
            acc += tl.sum(tl.sum(part, axis=3), axis=2)
        tl.store(y + ms[:, None] * N + rows[None, :], acc, mask=m_ok[:, None] & row_ok[None, :])


@functools.lru_cache(maxsize=None)
def _block_k(cols: int, group: int, preferred: int) -> int:
    """The widest step of at most `preferred` columns that divides the row (whole groups)."""
    k = preferred
    while k > group and cols % k:
        k //= 2
    return k


def gemv(kernel, x: torch.Tensor) -> torch.Tensor:
    """x float32 [M <= 8, cols] on kernel.device -> float32 [M, rows]."""
    m = x.shape[0]
    block_m = 1 if m == 1 else 2 if m == 2 else 4 if m <= 4 else 8
    block_n, block_k = TILES[block_m]
    block_k = _block_k(kernel.cols, kernel.group, block_k)
    x = x.contiguous()
    y = torch.empty(m, kernel.rows, dtype=torch.float32, device=x.device)
    offset = kernel.offset if kernel.offset is not None else kernel.scale  # unread without one
    group_bytes = kernel.group // 2 if kernel.nibbles else kernel.group
    _gemv[(triton.cdiv(kernel.rows, block_n),)](
        kernel.codes, kernel.scale, offset, x, y, m, kernel.rows, kernel.cols,
        G=kernel.group, H=group_bytes, NIBBLES=kernel.nibbles, BIAS=kernel.bias or 0,
        HAS_OFFSET=kernel.offset is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return y

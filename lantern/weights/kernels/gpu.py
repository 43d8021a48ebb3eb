"""Quantized weights on a GPU (CUDA, MPS): the file's integer codes on the device, multiplied
without a float copy of the weight.

At load a weight is cut into its parts on the device (`quants.decompose`): integer codes, and a
float32 scale and offset per group of 16 or 32 weights, such that scale * q - offset is exactly the
file's value. Codes that fit in 4 bits (Q4_0, Q4_1, Q4_K, Q3_K, Q2_K) are packed two to a byte;
the others (Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, IQ4's table values) keep a byte each.

* Up to GEMV_MAX_M rows of x (decode steps, drafts, a batch of sequences): one Triton kernel per
  weight reads the codes once for all rows, forms each weight in registers and accumulates in
  float32 (`gpu_triton`), where Triton is installed (PyTorch's CUDA wheels for Linux bring it).
* More rows (prompt chunks), or no Triton (MPS, Windows): slabs of rows are expanded to float32
  by a few torch ops and multiplied by torch's float32 GEMM.

Both paths multiply exactly the file's weights in float32: they differ from the reference path
only in summation order. Phi-3-mini-shaped Q4_K_M on an H200: see docs/PERFORMANCE.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as QT

from ..quants import GROUP_SIZES, decompose

# Types whose codes fit in a nibble, and what to add to make them unsigned.
NIBBLE_BIAS = {QT.Q4_0: 8, QT.Q4_1: 0, QT.Q4_K: 0, QT.Q3_K: 4, QT.Q2_K: 0}
GPU_TYPES = tuple(GROUP_SIZES)
# Up to this many rows of x go to the Triton GEMV; more are a prompt chunk (expand + GEMM).
GEMV_MAX_M = 8
# Weights converted or expanded per step (bounds the temporary float32 memory: 64 MB).
SLAB_WEIGHTS = 1 << 24


def _slabs(rows: int, cols: int):
    """(start, stop) of consecutive slabs of rows of at most SLAB_WEIGHTS weights (at least a row)."""
    step = max(1, SLAB_WEIGHTS // cols)
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def triton_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    from . import gpu_triton

    return gpu_triton.available()


class PackedKernel:
    """A [rows, cols] weight as packed codes plus per-group scale and offset on `device`."""

    in_place = False  # QuantizedLinear releases the file's pages once the device holds the weight

    def __init__(self, raw: torch.Tensor, qtype: QT, rows: int, cols: int, device="cpu"):
        self.qtype, self.rows, self.cols = qtype, rows, cols
        self.device = torch.device(device)
        self.group = GROUP_SIZES[qtype]
        self.bias = NIBBLE_BIAS.get(qtype)
        self.nibbles = self.bias is not None
        self.triton = triton_available(self.device)
        self.name = "gpu-triton" if self.triton else "gpu-torch"
        groups = cols // self.group
        self.codes = torch.empty(rows, cols // 2 if self.nibbles else cols,
                                 dtype=torch.uint8 if self.nibbles else torch.int8, device=self.device)
        self.scale = torch.empty(rows, groups, dtype=torch.float32, device=self.device)
        self.offset = None
        raw = raw.reshape(rows, -1)
        for start, stop in _slabs(rows, cols):
            q, scale, offset = decompose(raw[start:stop].to(self.device), qtype, stop - start, cols)
            self.codes[start:stop] = self._pack(q)
            self.scale[start:stop] = scale
            if offset is not None:
                if self.offset is None:
                    self.offset = torch.zeros(rows, groups, dtype=torch.float32, device=self.device)
                self.offset[start:stop] = offset

    @property
    def level(self) -> str:
        return self.device.type

    def for_tile(self, raw: torch.Tensor, rows: int, cols: int) -> "PackedKernel":
        return type(self)(raw, self.qtype, rows, cols, self.device)

    @property
    def nbytes(self) -> int:
        parts = (self.codes, self.scale) if self.offset is None else (self.codes, self.scale, self.offset)
        return sum(t.numel() * t.element_size() for t in parts)

    def _pack(self, q: torch.Tensor) -> torch.Tensor:
        """Codes [n, cols] -> storage: a byte each, or (nibbles) per group of G codes G/2 bytes,
        byte j holding code j (low nibble) and code j + G/2 (high)."""
        if not self.nibbles:
            return q.view(torch.int8) if q.dtype == torch.int8 else q.to(torch.int8)
        n, half = q.shape[0], self.group // 2
        u = q.to(torch.int16).add_(self.bias).to(torch.uint8).view(n, -1, 2, half)
        return (u[:, :, 0] | (u[:, :, 1] << 4)).view(n, -1)

    def dense(self, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of the weight, float32: exactly the file's values."""
        codes = self.codes[start:stop]
        n = codes.shape[0]
        if self.nibbles:
            c = codes.view(n, -1, self.group // 2)
            q = torch.cat((c & 15, c >> 4), dim=2).to(torch.float32).sub_(self.bias)
        else:
            q = codes.to(torch.float32).view(n, -1, self.group)
        w = q.mul_(self.scale[start:stop].unsqueeze(-1))
        if self.offset is not None:
            w.sub_(self.offset[start:stop].unsqueeze(-1))
        return w.view(n, self.cols)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x float32 [M, cols] on the device -> float32 [M, rows]."""
        if self.triton and x.shape[0] <= GEMV_MAX_M:
            from . import gpu_triton

            return gpu_triton.gemv(self, x)
        out = torch.empty(x.shape[0], self.rows, dtype=torch.float32, device=x.device)
        for start, stop in _slabs(self.rows, self.cols):
            out[:, start:stop] = F.linear(x, self.dense(start, stop))
        return out

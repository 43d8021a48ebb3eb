"""A dense bfloat16 copy of the weight, multiplied by torch's bfloat16 GEMM/GEMV.

For the types the in-place kernels do not multiply (Q2_K, Q3_K). Costs 16 bits per weight in
memory (Q3_K: 3.44 in the file). Conversion runs a slab of
rows at a time, so the float32 intermediate never exists whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as QT

from ..quants import dequantize

DENSE_TYPES = (QT.Q2_K, QT.Q3_K)
SLAB_WEIGHTS = 1 << 22


class DenseKernel:
    name = "dense-bf16"

    def __init__(self, raw: torch.Tensor, qtype: QT, rows: int, cols: int, native_ok: bool = True):
        from . import native

        self.qtype, self.rows, self.cols = qtype, rows, cols
        self.weight = torch.empty(rows, cols, dtype=torch.bfloat16)
        raw = raw.reshape(rows, -1)
        if native_ok and cols % 256 == 0 and native.available():
            # The same bytes from the C library, multi-threaded, no float32 intermediate.
            native.gguf_expand(raw if raw.is_contiguous() else raw.contiguous(), qtype, rows, cols, out=self.weight)
            return
        step = max(1, SLAB_WEIGHTS // cols)
        for start in range(0, rows, step):
            part = raw[start:start + step]
            self.weight[start:start + step] = dequantize(part, qtype, (part.shape[0], cols))

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * 2

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x float32 [M, cols] -> float32 [M, rows]."""
        return F.linear(x.to(torch.bfloat16), self.weight).float()

    def dense(self, start: int, stop: int) -> torch.Tensor:
        return self.weight[start:stop]

"""A dense bfloat16 copy of the weight, multiplied by torch's bfloat16 GEMM/GEMV.

For the types with scales per 16 elements (Q6_K, Q2_K, Q3_K), which torch's int4 kernel cannot
express. Costs 16 bits per weight in memory (Q6_K: 6.56 in the file). Conversion runs a slab of
rows at a time, so the float32 intermediate never exists whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as QT

from ..quants import dequantize

DENSE_TYPES = (QT.Q6_K, QT.Q2_K, QT.Q3_K)
SLAB_WEIGHTS = 1 << 22


class DenseKernel:
    name = "dense-bf16"

    def __init__(self, raw: torch.Tensor, qtype: QT, rows: int, cols: int, native_ok: bool = True):
        from . import native

        self.qtype, self.rows, self.cols = qtype, rows, cols
        self.weight = torch.empty(rows, cols, dtype=torch.bfloat16)
        raw = raw.reshape(rows, -1)
        if native_ok and qtype in (QT.Q2_K, QT.Q3_K) and cols % 256 == 0 and native.has_kquant_to_bf16():
            # The same bytes from the C library, multi-threaded, no float32 intermediate.
            native.kquant_to_bf16(raw if raw.is_contiguous() else raw.contiguous(), qtype, self.weight)
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

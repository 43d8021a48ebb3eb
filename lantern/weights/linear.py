"""Quantized linear layers: the one interface between the model and its weight kernels.

A model only ever calls `QuantizedLinear(x)` and `QuantizedEmbedding(ids)`; how the weight is
stored and multiplied (dequantize-then-matmul, torch's int4 kernels, ...) is chosen here per
tensor type and can change without the model noticing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as QT
from torch import nn

from .gguf_file import TensorData
from .quants import dequantize

FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)

# The reference kernel dequantizes at most this many weights at a time, so the float32 copy of
# a large matrix (Phi-3's output head: 98M weights, 394 MB) never exists whole.
DEQUANT_CHUNK = 1 << 24


def dense_vector(t: TensorData, device="cpu") -> torch.Tensor:
    """A small tensor (norm weight, bias, rope factors) as float32."""
    return dequantize(t.raw, t.type, t.shape).to(device=device, dtype=torch.float32)


def _on_device(raw: torch.Tensor, device) -> torch.Tensor:
    # On the CPU the memory map itself is the storage: no copy, pages load on first use.
    return raw if torch.device(device).type == "cpu" else raw.to(device)


class QuantizedLinear(nn.Module):
    """y = x @ W.T + b with W kept in its GGUF encoding.

    The reference kernel dequantizes W to float32 for each call and multiplies in float32: the
    exact math of the file's weights, at the cost of a dequantization per call.
    """

    def __init__(self, weight: TensorData, bias: torch.Tensor | None = None, device="cpu"):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.qtype = weight.type
        self.name = weight.name
        self.raw = _on_device(weight.raw, device)
        self.bias = bias

    def weight(self, rows: slice = slice(None)) -> torch.Tensor:
        """The float32 weight (or a slice of its rows), exactly as the file encodes it."""
        if self.qtype == QT.F32:
            return self.raw[rows]
        raw = self.raw[rows]
        return dequantize(raw, self.qtype, (raw.shape[0], self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows_per_chunk = max(1, DEQUANT_CHUNK // self.in_features)
        if self.qtype == QT.F32 or self.out_features <= rows_per_chunk:
            return F.linear(x, self.weight(), self.bias)
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
        for start in range(0, self.out_features, rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            out[..., rows] = F.linear(x, self.weight(rows), None if self.bias is None else self.bias[rows])
        return out

    def extra_repr(self) -> str:
        return f"{self.name}: {self.in_features} -> {self.out_features}, {self.qtype.name}"


class QuantizedEmbedding(nn.Module):
    """Row lookup that dequantizes only the rows asked for."""

    def __init__(self, weight: TensorData, device="cpu"):
        super().__init__()
        self.num_embeddings, self.embedding_dim = weight.shape
        self.qtype = weight.type
        self.raw = _on_device(weight.raw, device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.raw[ids.to(self.raw.device)]
        return dequantize(rows, self.qtype, (ids.shape[0], self.embedding_dim)).to(torch.float32)

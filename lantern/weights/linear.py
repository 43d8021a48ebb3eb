"""Quantized linear layers: the one interface between the model and its weight kernels.

A model only ever calls `QuantizedLinear(x)` and `QuantizedEmbedding(ids)`; how the weight is
stored and multiplied (dequantize-then-matmul, the native in-place kernels, ...) is chosen here per
tensor type and can change without the model noticing.

Kernel policy (see `lantern.weights.kernels`): "fast" (the default on CPU) multiplies the file's
blocks in place with the native kernels of the CPU's instruction set; "reference" dequantizes to
float32 at every call (the exact math). Select with `set_kernel_policy`, the
environment variable LANTERN_KERNELS, or `QuantizedLinear(..., kernels=...)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as QT
from torch import nn

from .gguf_file import TensorData
from .kernels import build as _build_kernel
from .kernels import kernel_policy, set_kernel_policy  # noqa: F401  (public API)
from .kernels.memory import release_pages
from .quants import dequantize


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
    """y = x @ W.T + b with W kept compact.

    Reference kernel (`kernels="reference"`): W stays in its GGUF encoding, is dequantized to
    float32 for each call and multiplied in float32: the exact math of the file's weights.
    Fast kernel (`kernels="fast"`, the default on CPU): `self.kernel` multiplies W's blocks in
    place (or a dense copy for the types without in-place kernels) and returns float32 (see
    `lantern.weights.kernels`).
    """

    def __init__(self, weight: TensorData, bias: torch.Tensor | None = None, device="cpu",
                 kernels: str | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.qtype = weight.type
        self.name = weight.name
        self.bias = bias
        self.kernel = None
        if kernel_policy(kernels) == "fast":
            self.kernel = _build_kernel(weight.raw, weight.type, self.out_features, self.in_features, device,
                                        weight.name)
        if self.kernel is None:
            self.raw = _on_device(weight.raw, device)
        else:
            self.raw = None
            if not getattr(self.kernel, "in_place", False):  # in-place kernels read the map itself
                release_pages(weight.raw)

    @property
    def kernel_name(self) -> str:
        return "reference" if self.kernel is None else self.kernel.name

    def weight(self, rows: slice = slice(None)) -> torch.Tensor:
        """The float32 weight (or a slice of its rows) the layer multiplies by: exactly the file's
        on the reference path, the kernel's (bfloat16-rounded scales) on the fast path."""
        if self.kernel is not None:
            start, stop, _ = rows.indices(self.out_features)
            return self.kernel.dense(start, stop).float()
        if self.qtype == QT.F32:
            return self.raw[rows]
        raw = self.raw[rows]
        return dequantize(raw, self.qtype, (raw.shape[0], self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            y = self.kernel(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y.add_(self.bias)
        rows_per_chunk = max(1, DEQUANT_CHUNK // self.in_features)
        if self.qtype == QT.F32 or self.out_features <= rows_per_chunk:
            return F.linear(x, self.weight(), self.bias)
        out = torch.empty(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
        for start in range(0, self.out_features, rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            out[..., rows] = F.linear(x, self.weight(rows), None if self.bias is None else self.bias[rows])
        return out

    def extra_repr(self) -> str:
        return f"{self.name}: {self.in_features} -> {self.out_features}, {self.qtype.name}, {self.kernel_name}"


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

"""The GPU weight kernel (`kernels.gpu.PackedKernel`): codes, scales and offsets that give back the
file's weights bit for bit, and products within float32 rounding of the exact ones.

The packing and the torch path (prompt chunks; every batch on MPS) run on the CPU here, so CI
checks them; the Triton path (decode steps on CUDA) runs where PyTorch sees a CUDA GPU and Triton
is installed, and otherwise skips saying why. Time: a few seconds.
"""

from __future__ import annotations

import pytest
import torch
from gguf import GGMLQuantizationType as QT

from lantern.weights.kernels import gpu
from lantern.weights.quants import BLOCK_SIZES, GROUP_SIZES, decompose, dequantize
from test_kernels import random_gguf_blocks

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch on this machine"))]


def shape_of(qtype):
    """Rows that do not fill the Triton kernel's last block of rows; a row of 11 legacy blocks,
    which no power-of-two step divides, or three K-quant super-blocks."""
    return 37, 352 if BLOCK_SIZES[qtype][0] == 32 else 768


@pytest.mark.parametrize("qtype", list(GROUP_SIZES), ids=lambda t: t.name)
def test_decompose_gives_the_dequantized_values(qtype):
    rows, cols = shape_of(qtype)
    raw = random_gguf_blocks(qtype, rows, cols, seed=1)
    q, scale, offset = decompose(raw, qtype, rows, cols)
    group = GROUP_SIZES[qtype]
    w = q.to(torch.float32).view(rows, -1, group) * scale.unsqueeze(-1)
    if offset is not None:
        w -= offset.unsqueeze(-1)
    assert torch.equal(w.view(rows, cols), dequantize(raw, qtype, (rows, cols)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", list(GROUP_SIZES), ids=lambda t: t.name)
def test_packed_kernel_multiplies_the_files_weights(device, qtype):
    rows, cols = shape_of(qtype)
    raw = random_gguf_blocks(qtype, rows, cols, seed=2)
    kernel = gpu.PackedKernel(raw, qtype, rows, cols, device)
    exact = dequantize(raw, qtype, (rows, cols))
    assert torch.equal(kernel.dense(0, rows).cpu(), exact)
    assert torch.equal(kernel.dense(7, 30).cpu(), exact[7:30])
    assert kernel.codes.dtype == (torch.uint8 if qtype in gpu.NIBBLE_BIAS else torch.int8)
    expected = "gpu-triton" if device == "cuda" and gpu.triton_available(torch.device(device)) else "gpu-torch"
    assert kernel.name == expected
    # Every batch width of the Triton kernel (1, 2, 4, 8 rows) and a prompt chunk past it.
    for m in (1, 2, 3, 5, 8, gpu.GEMV_MAX_M + 5):
        x = torch.randn(m, cols, generator=torch.Generator().manual_seed(m))
        y = kernel(x.to(device)).cpu()
        ref = x.double() @ exact.double().T
        # float32 accumulation of `cols` products: well within 4 * cols * 2^-24 of sum |x w|.
        bound = 4 * cols * 2.0 ** -24 * (x.abs().double() @ exact.abs().double().T) + 1e-30
        assert y.dtype == torch.float32 and y.shape == (m, rows)
        worst = float(((y.double() - ref).abs() / bound).max())
        assert worst <= 1.0, f"{qtype.name} M={m} on {device}: {worst:.3g} of the float32 bound"


def test_triton_is_used_on_cuda_or_says_why_not():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch on this machine")
    from lantern.weights.kernels import gpu_triton

    assert gpu_triton.available(), "PyTorch sees a CUDA GPU but Triton is not importable"


def test_load_on_a_gpu_device_keeps_codes_not_floats():
    """On the CPU the kernel is never chosen (the native kernels are); on any other device the
    fast policy builds it, and the reference policy keeps the file's bytes."""
    from lantern.weights.kernels import build

    rows, cols = 64, 512
    raw = random_gguf_blocks(QT.Q4_K, rows, cols, seed=3)
    assert not isinstance(build(raw, QT.Q4_K, rows, cols, "cpu"), gpu.PackedKernel)
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to PyTorch on this machine")
    kernel = build(raw, QT.Q4_K, rows, cols, "cuda")
    assert isinstance(kernel, gpu.PackedKernel) and kernel.codes.device.type == "cuda"
    assert kernel.nbytes == rows * cols * 3 // 4  # 4-bit codes, float32 scale and offset per 32


class _SwappedNibbles(gpu.PackedKernel):
    """The GPU kernel with a planted layout bug: each byte's two codes swapped."""

    def _pack(self, q):
        packed = super()._pack(q)
        return (packed >> 4) | (packed << 4) if self.nibbles else packed


def test_the_self_check_turns_a_wrong_gpu_kernel_away(monkeypatch):
    """The load-time check that guards the CPU kernels guards this one too: right, it serves;
    wrong, the type takes the reference path and --verbose's description says why."""
    from lantern.weights import kernels

    rows, cols = 96, 512
    raw = random_gguf_blocks(QT.Q4_K, rows, cols, seed=4)
    monkeypatch.setattr(kernels, "_verdicts", {})
    monkeypatch.setattr(kernels, "fallbacks", {})
    assert kernels.self_check(gpu.PackedKernel(raw, QT.Q4_K, rows, cols), raw, QT.Q4_K, rows, cols, "w") is None
    monkeypatch.setattr(kernels, "_verdicts", {})
    why = kernels.self_check(_SwappedNibbles(raw, QT.Q4_K, rows, cols), raw, QT.Q4_K, rows, cols, "w")
    assert why is not None and "single-token" in why
    kernels.fallbacks[QT.Q4_K] = why
    text = kernels.describe("cuda")
    assert "GPU kernels on cuda" in text and "native C" not in text
    assert "Q4_K on the reference kernels" in text

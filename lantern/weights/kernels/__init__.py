"""Weight kernels behind `QuantizedLinear`: how a GGUF weight is stored and multiplied.

Two policies:

* ``"reference"``: the weight keeps its file encoding and is dequantized to float32 for each
  call (exact float32 math; slow). Implemented in `lantern.weights.linear`.
* ``"fast"`` (default on CPU):

  - With the C extension on a CPU with AVX-512 BF16: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and
    Q6_K stay in their file encoding, a view of the memory map (no conversion at load), and are
    multiplied in place (`native.GGUFKernel`): small batches (decode, speculative verify) by the
    fused C kernel on the blocks (x rounded to bfloat16, the file's exact weights, float32
    accumulation); prompt chunks by expanding slabs of rows to bfloat16 (C, multi-threaded) for
    torch's bf16 GEMM. LANTERN_GGUF_NATIVE=0 turns this route off (the ones below).
  - Otherwise the weight is converted once at load into a form a fast kernel reads, and the
    file's bytes are given back: Q4_0, Q4_1, Q4_K (one piece), Q5_0, Q5_1, Q5_K, Q8_0 (two
    pieces): torch's int4 weight-only kernel (`int4.py`) for small batches; for prompt chunks the
    same packed weight is expanded to bfloat16 a slab at a time for a dense bf16 GEMM. Q6_K (no
    int4 form): the float32 C kernel on the file's blocks when the CPU has AVX-512; else, like
    Q2_K and Q3_K, a dense bfloat16 copy (`dense.py`).

  The conversions run in C when the extension is built (`_native.c`: multi-threaded on a
  persistent thread pool, the same bytes as the PyTorch code, which stays as the fallback, e.g.
  with LANTERN_NATIVE=0).
  - F32, F16, BF16: the reference path (already dense).

  Activations are rounded to bfloat16 on the fast path (the int4 kernel runs 50-100x slower on
  float32 activations); the result is float32.

Choose with `set_kernel_policy`, the environment variable ``LANTERN_KERNELS`` (read when the first
layer is built) or per layer (`QuantizedLinear(..., kernels="reference")`). Non-CPU devices always
use the reference path.
"""

from __future__ import annotations

import contextlib
import os

import torch
from gguf import GGMLQuantizationType as QT

POLICIES = ("fast", "reference")

_policy: str | None = None


def set_kernel_policy(policy: str | None) -> None:
    """Select the kernels for layers built from now on: "fast", "reference", or None (the
    environment variable LANTERN_KERNELS, else "fast")."""
    global _policy
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"unknown kernel policy {policy!r}; use one of {', '.join(POLICIES)}")
    _policy = policy


def kernel_policy(policy: str | None = None) -> str:
    """The policy in force: `policy` if given, else the one set, else LANTERN_KERNELS, else fast."""
    chosen = policy or _policy or os.environ.get("LANTERN_KERNELS") or "fast"
    if chosen not in POLICIES:
        raise ValueError(f"unknown kernel policy {chosen!r} (LANTERN_KERNELS?); use one of {', '.join(POLICIES)}")
    return chosen


def build(raw: torch.Tensor, qtype: QT, rows: int, cols: int, device) -> "object | None":
    """The fast kernel for a [rows, cols] weight of `qtype`, or None where the reference path
    is the right one (float types, non-CPU devices, shapes the kernels do not take)."""
    from . import dense, int4, native

    if torch.device(device).type != "cpu":
        return None
    if qtype in native.GGUF_BLOCKS and cols % native.GGUF_BLOCKS[qtype][0] == 0 and native.bf16_simd():
        return native.GGUFKernel(raw, qtype, rows, cols)
    if qtype in int4.INT4_TYPES and cols % int4.GROUP == 0 and int4.available():
        return int4.Int4Kernel(raw, qtype, rows, cols)
    if qtype == QT.Q6_K and cols % 256 == 0 and native.simd():
        return native.Q6KKernel(raw, qtype, rows, cols)
    if qtype in dense.DENSE_TYPES:
        return dense.DenseKernel(raw, qtype, rows, cols)
    return None


def runs_on_pool(modules) -> bool:
    """Whether any of `modules` (layers) multiplies with a kernel on lantern's own thread pool."""
    from . import native

    return any(isinstance(getattr(m, "kernel", None), native.GGUFKernel) for m in modules)


def step_threads(n_tokens: int, on_pool: bool) -> "contextlib.AbstractContextManager":
    """The thread arrangement for a forward pass of `n_tokens`: when the weight kernels run on
    lantern's own pool (`on_pool`) at this batch size, torch's ops run single-threaded meanwhile
    (`native.torch_ops_single_threaded`); otherwise nothing changes."""
    from . import native

    if on_pool and n_tokens <= native.GGUF_MAX_M:
        return native.torch_ops_single_threaded()
    return contextlib.nullcontext()


def f16_attention():
    """The native attention over a float16 KV cache (`native.attention_f16`), or None where the
    C library or its vector path is missing (then the cache stays float32)."""
    from . import native

    return native.attention_f16 if native.has_attention() else None


def describe() -> str:
    """One line on what the fast kernels use on this machine (for --verbose)."""
    from . import int4

    parts = [f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"]
    from . import native

    parts.append("int4 weight-only kernel" if int4.available() else "no int4 kernel (dense bfloat16 only)")
    if native.available():
        parts.append("native C kernels" + (" (AVX-512 BF16: GGUF blocks in place)" if native.bf16_simd()
                                           else " (AVX-512)" if native.simd() else " (portable C)"))
    else:
        parts.append("no native kernels (pure PyTorch)")
    return ", ".join(parts)

"""ctypes bindings to lantern's optional C kernels (`_native.c`) and the Q6_K kernel built on them.

The library is an extension module built by `pip install` (setup.py); when it is absent (no
compiler at install time, a platform without wheels) `available()` is False and the callers fall
back to pure PyTorch. ctypes releases the GIL for the duration of each call.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import threading

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType as QT

_lib = None
_tried = False


def library():
    """The loaded C library, or None."""
    global _lib, _tried
    if not _tried:
        _tried = True
        if os.environ.get("LANTERN_NATIVE", "1") == "0":
            return None
        try:
            spec = importlib.util.find_spec("lantern.weights.kernels._native")
            if spec is not None and spec.origin:
                lib = ctypes.CDLL(spec.origin)
                i64, ptr = ctypes.c_int64, ctypes.c_void_p
                lib.lantern_cpu_features.restype = ctypes.c_int
                lib.lantern_set_features.argtypes = (ctypes.c_int,)
                lib.lantern_set_features.restype = ctypes.c_int
                lib.lantern_q6k_matmul.argtypes = (ptr, ptr, ptr, i64, i64, i64, ctypes.c_int)
                lib.lantern_q6k_to_bf16.argtypes = (ptr, ptr, i64, i64, ctypes.c_int)
                lib.lantern_int4_to_bf16.argtypes = (ptr, ptr, ctypes.c_int, ptr, i64, i64, i64, i64, ctypes.c_int)
                if hasattr(lib, "lantern_int4_pack"):  # absent from libraries built before it
                    lib.lantern_int4_pack.argtypes = (ptr, ctypes.c_int, ptr, ptr, i64, i64, i64, i64, i64, ctypes.c_int)
                    lib.lantern_int4_pack.restype = ctypes.c_int
                if hasattr(lib, "lantern_attention_f16"):
                    lib.lantern_attention_f16.argtypes = (ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i64,
                                                          ctypes.c_float, ctypes.c_int)
                    lib.lantern_attention_f16.restype = ctypes.c_int
                if hasattr(lib, "lantern_gguf_matmul"):
                    lib.lantern_gguf_matmul.argtypes = (ptr, ctypes.c_int, ptr, ptr, i64, i64, i64, ctypes.c_int)
                    lib.lantern_gguf_matmul.restype = ctypes.c_int
                    lib.lantern_gguf_to_bf16.argtypes = (ptr, ctypes.c_int, ptr, i64, i64, ctypes.c_int)
                    lib.lantern_gguf_to_bf16.restype = ctypes.c_int
                if hasattr(lib, "lantern_step"):
                    lib.lantern_step.argtypes = (ptr, ptr, i64, i64, ptr, ptr, i64, ptr, ptr, ptr, i64, ctypes.c_int)
                    lib.lantern_step.restype = ctypes.c_int
                if hasattr(lib, "lantern_kquant_to_bf16"):
                    lib.lantern_kquant_to_bf16.argtypes = (ptr, ctypes.c_int, ptr, i64, i64, ctypes.c_int)
                    lib.lantern_kquant_to_bf16.restype = ctypes.c_int
                _lib = lib
        except OSError:
            _lib = None
    return _lib


def available() -> bool:
    return library() is not None


def simd() -> bool:
    """Whether the library runs its AVX-512 paths on this CPU."""
    lib = library()
    return bool(lib and lib.lantern_cpu_features() & 1)


def bf16_simd() -> bool:
    """Whether the library has the in-place GGUF kernels and runs their AVX-512 BF16 path here
    (LANTERN_GGUF_NATIVE=0 turns them off: the int4 / float32 Q6_K kernels, for comparisons)."""
    lib = library()
    return bool(lib and hasattr(lib, "lantern_gguf_matmul") and lib.lantern_cpu_features() & 2
                and os.environ.get("LANTERN_GGUF_NATIVE", "1") != "0")


_pool_threads = 0  # set while torch's own ops run single-threaded (decode steps)


def pool_threads() -> int:
    """Threads for lantern's pool: torch's count, or what it was before a decode step lowered it."""
    return _pool_threads or max(1, torch.get_num_threads())


@contextlib.contextmanager
def torch_ops_single_threaded():
    """Within: torch's own ops run on one thread, lantern's kernels on the threads torch had.

    A decode step's torch ops (norms, rotary, attention over one query) are too small to split,
    but each one that enters an OpenMP region leaves torch's workers spinning afterwards, on the
    cores lantern's pool needs for the next weight kernel a few microseconds later: the pool then
    waits for a core, backs off and runs alone. SmolLM2-135M Q4_1 decode, 2 cores: 18.5 ms/token
    with torch on 2 threads, 14-15.7 with torch on 1 (docs/PERFORMANCE.md)."""
    global _pool_threads
    n = torch.get_num_threads()
    if n == 1 or _pool_threads:
        yield
        return
    _pool_threads = n
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
        _pool_threads = 0


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def q6k_matmul(raw: torch.Tensor, x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """x float32 [M, cols] @ W.T for Q6_K blocks `raw` (rows x cols): float32 [M, rows]."""
    x = x.contiguous()
    y = torch.empty(x.shape[0], rows, dtype=torch.float32)
    library().lantern_q6k_matmul(_ptr(raw), _ptr(x), _ptr(y), rows, cols, x.shape[0], pool_threads())
    return y


def q6k_to_bf16(raw: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    out = torch.empty(rows, cols, dtype=torch.bfloat16)
    library().lantern_q6k_to_bf16(_ptr(raw), _ptr(out), rows, cols, pool_threads())
    return out


def int4_to_bf16(packed: list, sz: list, rows: int, cols: int, start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) (multiples of 64) of a sum of torch-packed int4 weights, as bf16."""
    n = len(packed)
    pp = (ctypes.c_void_p * n)(*[p.data_ptr() for p in packed])
    sp = (ctypes.c_void_p * n)(*[s.data_ptr() for s in sz])
    out = torch.empty(stop - start, cols, dtype=torch.bfloat16)
    library().lantern_int4_to_bf16(pp, sp, n, _ptr(out), rows, cols, start, stop, pool_threads())
    return out


def has_int4_pack() -> bool:
    """Whether the library has the load-time GGUF -> int4 layout converter."""
    lib = library()
    return bool(lib is not None and hasattr(lib, "lantern_int4_pack"))


def int4_pack(raw: torch.Tensor, qtype: QT, packed: list, sz: list, rows: int, cols: int, start: int,
              stop: int) -> None:
    """Rows [start, stop) (multiples of 64, of the padded row count) of GGUF blocks `raw`
    ([rows, bytes per row], contiguous) into torch's int4 layout `packed` ([N, cols/2] uint8
    each) and `sz` ([cols/32, N, 2] bf16 each), exactly as `int4.py` writes them in PyTorch."""
    n = len(packed)
    pp = (ctypes.c_void_p * n)(*[p.data_ptr() for p in packed])
    sp = (ctypes.c_void_p * n)(*[s.data_ptr() for s in sz])
    rc = library().lantern_int4_pack(_ptr(raw), int(qtype), pp, sp, rows, packed[0].shape[0], cols, start, stop,
                                     pool_threads())
    if rc != 0:
        raise ValueError(f"native int4 packing refused {qtype.name} {rows}x{cols} rows {start}:{stop}")


def has_kquant_to_bf16() -> bool:
    """Whether the library has the Q2_K/Q3_K -> bfloat16 converter."""
    lib = library()
    return bool(lib is not None and hasattr(lib, "lantern_kquant_to_bf16"))


def kquant_to_bf16(raw: torch.Tensor, qtype: QT, out: torch.Tensor) -> None:
    """Q2_K/Q3_K blocks `raw` (contiguous, rows of `out`) -> `out` [rows, cols] bf16: the bytes
    of lantern's float32 dequantize rounded to bfloat16."""
    rows, cols = out.shape
    if library().lantern_kquant_to_bf16(_ptr(raw), int(qtype), _ptr(out), rows, cols, pool_threads()) != 0:
        raise ValueError(f"native dequantize refused {qtype.name} {rows}x{cols}")


# Batches up to this many rows run the fused Q6_K kernel; larger ones expand slabs to bfloat16
# for torch's GEMM.
Q6K_MAX_M = 16
DENSE_SLAB_WEIGHTS = 1 << 23


class Q6KKernel:
    """Q6_K kept in its file encoding (6.56 bits per weight), multiplied by the C kernel."""

    name = "q6k-native"

    def __init__(self, raw: torch.Tensor, qtype: QT, rows: int, cols: int):
        assert qtype == QT.Q6_K and cols % 256 == 0
        self.qtype, self.rows, self.cols = qtype, rows, cols
        # The file's blocks are multiplied as they are: no copy, a view of the memory map (held
        # alive by the view). Copying 0.8 GB of Phi-3-mini's Q6_K cost ~2 s of page faults at
        # load for no gain in memory (the copy is as large as the file pages it replaces). The
        # pages `QuantizedLinear` gives back after "conversion" are simply read again from the
        # page cache at the first call.
        raw = raw.reshape(rows, -1)
        self.raw = raw if raw.is_contiguous() else raw.contiguous()

    @property
    def nbytes(self) -> int:
        return self.raw.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= Q6K_MAX_M:
            return q6k_matmul(self.raw, x.float(), self.rows, self.cols)
        xb = x.to(torch.bfloat16)
        out = torch.empty(x.shape[0], self.rows, dtype=torch.float32)
        step = max(64, DENSE_SLAB_WEIGHTS // self.cols)
        for start in range(0, self.rows, step):
            stop = min(start + step, self.rows)
            out[:, start:stop] = F.linear(xb, q6k_to_bf16(self.raw[start:stop], stop - start, self.cols))
        return out

    def dense(self, start: int, stop: int) -> torch.Tensor:
        return q6k_to_bf16(self.raw[start:stop].contiguous(), stop - start, self.cols)


# ----- GGUF blocks multiplied in place (any CPU; fast with AVX-512 BF16) -------------------------

# The types `lantern_gguf_matmul` reads: (elements, bytes) per block.
GGUF_BLOCKS = {QT.Q4_0: (32, 18), QT.Q4_1: (32, 20), QT.Q5_0: (32, 22), QT.Q5_1: (32, 24), QT.Q8_0: (32, 34),
               QT.Q4_K: (256, 144), QT.Q5_K: (256, 176), QT.Q6_K: (256, 210)}


def gguf_matmul(raw: torch.Tensor, qtype: QT, x: torch.Tensor, rows: int, cols: int, threads: int | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """x float32 [M, cols] @ W.T for the GGUF blocks `raw` ([rows, bytes per row], contiguous):
    float32 [M, rows]. x is rounded to bfloat16 inside (Q8_0: used as float32)."""
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.float().contiguous()
    y = torch.empty(x.shape[0], rows, dtype=torch.float32) if out is None else out
    rc = library().lantern_gguf_matmul(raw.data_ptr(), int(qtype), x.data_ptr(), y.data_ptr(), rows, cols,
                                       x.shape[0], threads or pool_threads())
    if rc != 0:
        raise ValueError(f"native GGUF matmul refused {qtype.name} {rows}x{cols}")
    return y


def gguf_to_bf16(raw: torch.Tensor, qtype: QT, rows: int, cols: int, out: torch.Tensor | None = None,
                 threads: int | None = None) -> torch.Tensor:
    """GGUF blocks (`rows` rows, contiguous) -> bfloat16 [rows, cols]: lantern's float32 dequantize
    rounded to nearest even."""
    out = torch.empty(rows, cols, dtype=torch.bfloat16) if out is None else out
    if library().lantern_gguf_to_bf16(raw.data_ptr(), int(qtype), out.data_ptr(), rows, cols, threads or pool_threads()):
        raise ValueError(f"native GGUF expansion refused {qtype.name} {rows}x{cols}")
    return out


# Batches up to this many rows run the in-place kernel; larger ones (prompt chunks) expand a slab
# of rows at a time to bfloat16 and run torch's bf16 GEMM. (Measured on the 2-core Zen 4: see
# docs/PERFORMANCE.md, "Kernels".)
GGUF_MAX_M = 12
GGUF_SLAB_WEIGHTS = 1 << 22

_slab = threading.local()


def _slab_buffer(n: int) -> torch.Tensor:
    """A bfloat16 scratch buffer of at least n elements, reused across calls (per thread)."""
    buf = getattr(_slab, "buf", None)
    if buf is None or buf.numel() < n:
        buf = _slab.buf = torch.empty(n, dtype=torch.bfloat16)
    return buf


def has_attention() -> bool:
    """Whether `attention_f16` (few queries over a float16 KV cache) is there and vectorized."""
    return bool(simd() and hasattr(library(), "lantern_attention_f16"))


def attention_f16(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int, window: int,
                  scale: float) -> torch.Tensor:
    """Causal attention of q float32 [n, heads, head_dim] (positions start, start + 1, ...) over a
    float16 cache `keys`/`values` [kv_heads, length, head_dim] (a view of the stored cache: rows
    may be strided), float32 math; `window` > 0 limits each query to its last `window` keys.
    Returns float32 [n, heads * head_dim]."""
    n, heads, dim = q.shape
    q = q.contiguous()
    assert keys.dtype == values.dtype == torch.float16 and keys.stride() == values.stride()
    assert keys.stride(2) == 1 and keys.stride(1) == dim and keys.shape[1] >= start + n
    out = torch.empty(n, heads * dim, dtype=torch.float32)
    if library().lantern_attention_f16(q.data_ptr(), keys.data_ptr(), values.data_ptr(), out.data_ptr(), n, heads,
                                       keys.shape[0], dim, start, keys.stride(0) // dim, window, scale,
                                       pool_threads()):
        raise ValueError(f"{heads} heads do not group over {keys.shape[0]} KV heads")
    return out


class GGUFKernel:
    """The weight stays in its file encoding, a view of the memory map (no conversion at load, no
    copy: resident memory is the file pages read). Small batches: `lantern_gguf_matmul` on the
    blocks; prompt chunks: slabs expanded to bfloat16 (C, multi-threaded) and torch's bf16 GEMM."""

    name = "gguf-native"
    in_place = True  # QuantizedLinear leaves the file's pages alone

    def __init__(self, raw: torch.Tensor, qtype: QT, rows: int, cols: int):
        elems, nbytes = GGUF_BLOCKS[qtype]
        assert cols % elems == 0
        self.qtype, self.rows, self.cols = qtype, rows, cols
        raw = raw.reshape(rows, cols // elems * nbytes)
        self.raw = raw if raw.is_contiguous() else raw.contiguous()

    @property
    def nbytes(self) -> int:
        return self.raw.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x float32 [M, cols] -> float32 [M, rows]."""
        m = x.shape[0]
        if m <= GGUF_MAX_M:  # decode steps and drafts: the fused kernel on the blocks
            return gguf_matmul(self.raw, self.qtype, x, self.rows, self.cols)
        xb = x.to(torch.bfloat16)
        out = torch.empty(m, self.rows, dtype=torch.float32)
        step = max(16, GGUF_SLAB_WEIGHTS // self.cols)
        buf = _slab_buffer(min(step, self.rows) * self.cols)
        for start in range(0, self.rows, step):
            stop = min(start + step, self.rows)
            w = buf[: (stop - start) * self.cols].view(stop - start, self.cols)
            gguf_to_bf16(self.raw[start:stop], self.qtype, stop - start, self.cols, out=w)
            out[:, start:stop] = F.linear(xb, w)
        return out

    def dense(self, start: int, stop: int) -> torch.Tensor:
        return gguf_to_bf16(self.raw[start:stop], self.qtype, stop - start, self.cols)

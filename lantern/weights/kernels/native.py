"""ctypes bindings to lantern's optional C library (lantern/weights/csrc) and the in-place GGUF kernel.

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

from ...errors import LanternError

_lib = None
_tried = False
_error: LanternError | None = None  # why the library was refused: raised again on every call

ABI_VERSION = 6  # lantern/weights/csrc/lantern.h: LT_ABI_VERSION

# Instruction-set levels (lantern.h); LANTERN_ISA names one.
ISAS = ("portable", "avx2", "avx512", "neon")


def _bind(lib) -> None:
    i64, ptr, cint, cstr = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, args, res in (
        ("lantern_abi_version", (), cint),
        ("lantern_rows_max_m", (), cint),
        ("lantern_isa_mask", (), cint),
        ("lantern_set_isa", (cint,), cint),
        ("lantern_isa", (), cint),
        ("lantern_isa_name", (cint,), cstr),
        ("lantern_kernel_name", (cint, cint), cstr),
        ("lantern_x_format", (), cint),
        ("lantern_gguf_matmul", (ptr, cint, ptr, ptr, i64, i64, i64, cint, cint), cint),
        ("lantern_gguf_expand", (ptr, cint, ptr, i64, i64, cint, cint), cint),
        ("lantern_attention_f16", (ptr, ptr, ptr, ptr, i64, i64, i64, i64, i64, i64, i64, ctypes.c_float, cint), cint),
        ("lantern_step", (ptr, ptr, i64, i64, ptr, ptr, i64, ptr, ptr, ptr, i64, cint, cint), cint),
        ("lantern_step_batch", (ptr, ptr, i64, ptr, i64, ptr, ptr, ptr, cint), cint),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res


def library():
    """The loaded C library at the instruction-set level in force (LANTERN_ISA, else the best
    this CPU runs), or None (not built, or LANTERN_NATIVE=0).

    Raises LanternError when LANTERN_ISA names a level this CPU or build lacks, or when the
    built library is from another version of lantern (its structs would not match)."""
    global _lib, _tried, _error
    if _error is not None:
        raise _error
    if not _tried:
        _tried = True
        try:
            _lib = _load()
        except LanternError as exc:
            _error = exc
            raise
    return _lib


def _load():
    """The library found and checked, at the level LANTERN_ISA asks for; None where there is none."""
    if os.environ.get("LANTERN_NATIVE", "1") == "0":
        return None
    # LANTERN_NATIVE_LIB: another build of the library (kernel work, A/B benchmarks)
    path = os.environ.get("LANTERN_NATIVE_LIB")
    if not path:
        spec = importlib.util.find_spec("lantern.weights.kernels._native")
        if spec is None or not spec.origin:
            return None
        path = spec.origin
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        if os.environ.get("LANTERN_NATIVE_LIB"):
            raise LanternError(f"LANTERN_NATIVE_LIB={path} does not load; unset it or build it again") from None
        return None
    if not hasattr(lib, "lantern_abi_version") or lib.lantern_abi_version() != ABI_VERSION:
        raise LanternError(f"lantern's native library {path} is from another version of lantern; "
                           "rebuild it with: pip install -e . (or LANTERN_NATIVE=0 to run without it)")
    _bind(lib)
    if lib.lantern_rows_max_m() != GGUF_MAX_M:
        raise LanternError(f"lantern's native library {path} was built with LT_ROWS_MAX_M="
                           f"{lib.lantern_rows_max_m()}, but lantern expects {GGUF_MAX_M} (native.GGUF_MAX_M); "
                           "rebuild it without that -D, or change both")
    _select_isa(lib, os.environ.get("LANTERN_ISA", ""))
    return lib


def _select_isa(lib, wanted: str) -> None:
    wanted = wanted.strip().lower()
    if not wanted:
        lib.lantern_set_isa(-1)
        return
    if wanted not in ISAS:
        raise LanternError(f"LANTERN_ISA={wanted!r} is not a level lantern knows; use one of {', '.join(ISAS)}")
    if lib.lantern_set_isa(ISAS.index(wanted)) < 0:
        raise LanternError(f"LANTERN_ISA={wanted}: this CPU or build does not run it; it runs "
                           f"{', '.join(supported_isas(lib))}")


def supported_isas(lib=None) -> list[str]:
    """The levels this CPU and build run, lowest first."""
    lib = lib or library()
    if lib is None:
        return []
    mask = lib.lantern_isa_mask()
    return [name for i, name in enumerate(ISAS) if mask >> i & 1]


def available() -> bool:
    return library() is not None


def isa() -> str | None:
    """The instruction-set level the kernels run at ("portable", "avx2", "avx512", "neon"), or None."""
    lib = library()
    return None if lib is None else ISAS[lib.lantern_isa()]


def set_isa(name: str | None) -> str:
    """Run the kernels at level `name` (None: the best this CPU runs) from now on; returns the
    level in use. For tests and benchmarks: not to be called while kernels run. Raises
    LanternError for a level this CPU or build lacks."""
    lib = library()
    if lib is None:
        raise LanternError("lantern's native kernels are not built; reinstall with: pip install -e .")
    _select_isa(lib, name or "")
    return isa()


KERNEL_ROLES = {"matmul": 0, "expand_bf16": 1, "expand_f32": 2, "attention": 3, "vector": 4, "gemm": 5, "gemm_q8": 6, "rows8": 7}


def kernel_name(role: str, qtype: QT | None = None) -> str | None:
    """The C function serving `role` (KERNEL_ROLES) at the level in use, e.g. "q4_k_avx2"."""
    lib = library()
    if lib is None:
        return None
    name = lib.lantern_kernel_name(KERNEL_ROLES[role], int(qtype) if qtype is not None else -1)
    return None if name is None else name.decode()


# How each level multiplies prompt chunks (more than GGUF_MAX_M tokens): "expand_bf16" (slabs of
# weights to bfloat16, torch's bf16 GEMM: AVX-512 BF16 has the hardware), "expand_f32" (exact
# float32 slabs, torch's float32 GEMM) or "in_place" (`lantern_gguf_matmul` on the blocks: per
# type the level's 8-bit prompt tile (kernel_name("gemm_q8", t)) or 8-row tile on 15-bit x
# (kernel_name("rows8", t)), else its float32 micro-kernel (kernel_name("gemm")), else its row
# kernels over blocks of 64 tokens). Measured per level: docs/PERFORMANCE.md, "Prompt chunks per level".
# neon with dotprod reads the prompts of a model whose every weight has its 8-bit tile on that
# tile instead (NativeStep.runs: the step passes prompt=True), whatever this route says.
PROMPT_ROUTES = {"avx512": "expand_bf16", "avx2": "in_place", "neon": "expand_f32", "portable": "expand_f32"}


def prompt_int8_types() -> list[QT]:
    """The types whose prompt rows the level in use multiplies on x rounded to int8 per 32
    (`kernel_name("gemm_q8", t)`; lantern.h): the K-quants at avx2, where prompts have no bf16
    hardware and that tile outruns the float32 and 15-bit ones (bench/native/int8_tile.c), and
    at neon with dotprod (SDOT by element; bench/arm_instructions.py counts its instructions:
    ARM speed is unmeasured). Every level's tile gives the same bits (lt_gemm_q8_generic's)."""
    return [t for t in GGUF_BLOCKS if kernel_name("gemm_q8", t)]


# A batched pass's decode tokens take the 8-bit tile (the prompt rows' route, for the types of
# `prompt_int8_types`) from this many decoding sequences on (`Model.forward_batch`). Fewer rows run
# on the 15-bit row kernels for less; from 5 the 15-bit route's own tile costs as much as 8 rows.
# Phi-3-mini Q4_K_M on Ice Lake (bench/batch_pass.py), a pass against one step, 15-bit / 8-bit:
# 4 sequences 2.02 / 1.95, 5: 2.88 / 2.01, 8: 2.96 / 2.09.
BATCH_INT8_SEQUENCES = 5


def prompt_route() -> str:
    """How prompt chunks multiply in-place weights at the level in use (PROMPT_ROUTES;
    LANTERN_PROMPT_ROUTE overrides it, for comparisons)."""
    return os.environ.get("LANTERN_PROMPT_ROUTE") or PROMPT_ROUTES.get(isa() or "", "expand_f32")


def expands_to_bf16() -> bool:
    """Whether prompt chunks expand weights to bfloat16 rather than float32."""
    return prompt_route() == "expand_bf16"


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


# ----- GGUF blocks multiplied in place (every CPU, by the row kernels of its level) ---------------

# The types `lantern_gguf_matmul` reads: (elements, bytes) per block.
GGUF_BLOCKS = {QT.Q4_0: (32, 18), QT.Q4_1: (32, 20), QT.Q5_0: (32, 22), QT.Q5_1: (32, 24), QT.Q8_0: (32, 34),
               QT.Q4_K: (256, 144), QT.Q5_K: (256, 176), QT.Q6_K: (256, 210),
               QT.IQ4_NL: (32, 18), QT.IQ4_XS: (256, 136)}


def gguf_matmul(raw: torch.Tensor, qtype: QT, x: torch.Tensor, rows: int, cols: int, threads: int | None = None,
                out: torch.Tensor | None = None, prompt: bool = False) -> torch.Tensor:
    """x float32 [M, cols] @ W.T for the GGUF blocks `raw` ([rows, bytes per row], contiguous):
    float32 [M, rows]. Up to GGUF_MAX_M rows, x is rounded inside to the form the level's row
    kernels read (bfloat16 at avx512, 15-bit integers per 32 elsewhere and for avx512's Q8_0
    and Q4_1: lantern.h); more rows take the level's prompt micro-kernel where it has one, in float32.
    prompt: the rows are a prompt being read; where the level has an 8-bit tile for the type
    (`prompt_int8_types`), x is rounded to int8 per 32 for it, whatever M."""
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.float().contiguous()
    y = torch.empty(x.shape[0], rows, dtype=torch.float32) if out is None else out
    rc = library().lantern_gguf_matmul(raw.data_ptr(), int(qtype), x.data_ptr(), y.data_ptr(), rows, cols,
                                       x.shape[0], int(prompt), threads or pool_threads())
    if rc != 0:
        raise ValueError(f"native GGUF matmul refused {qtype.name} {rows}x{cols}")
    return y


def gguf_expand(raw: torch.Tensor, qtype: QT, rows: int, cols: int, dtype=torch.bfloat16,
                out: torch.Tensor | None = None, threads: int | None = None) -> torch.Tensor:
    """GGUF blocks (`rows` rows, contiguous) -> [rows, cols] weights: float32 exactly as
    lantern's dequantize, or those values rounded to bfloat16 (nearest even)."""
    out = torch.empty(rows, cols, dtype=dtype) if out is None else out
    if library().lantern_gguf_expand(raw.data_ptr(), int(qtype), out.data_ptr(), rows, cols,
                                     int(dtype == torch.float32), threads or pool_threads()):
        raise ValueError(f"native GGUF expansion refused {qtype.name} {rows}x{cols}")
    return out


def gguf_to_bf16(raw: torch.Tensor, qtype: QT, rows: int, cols: int, out: torch.Tensor | None = None,
                 threads: int | None = None) -> torch.Tensor:
    return gguf_expand(raw, qtype, rows, cols, torch.bfloat16, out, threads)


# Batches up to this many rows run the in-place kernel; larger ones (prompt chunks) expand a slab
# of rows at a time to bfloat16 (AVX-512 BF16) or float32 and run torch's GEMM. (Measured on the
# 2-core Zen 4: see docs/PERFORMANCE.md, "Kernels".) The C library's LT_ROWS_MAX_M (lantern.h), checked at
# load.
GGUF_MAX_M = 12
GGUF_SLAB_WEIGHTS = 1 << 22

_slab = threading.local()


def _slab_buffer(n: int, dtype) -> torch.Tensor:
    """A scratch buffer of at least n elements of `dtype`, reused across calls (per thread)."""
    buf = getattr(_slab, "buf", None)
    if buf is None or buf.numel() < n or buf.dtype != dtype:
        buf = _slab.buf = torch.empty(n, dtype=dtype)
    return buf


def has_attention() -> bool:
    """Whether `attention_f16` (few queries over a float16 KV cache) is there: wherever the C
    library is (vectorized span kernels where the level has them, plain C elsewhere)."""
    return available()


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
    blocks; prompt chunks: the level's `prompt_route()` (the same, or slabs expanded to bfloat16
    or float32 in C for torch's GEMM)."""

    name = "gguf-native"
    in_place = True  # QuantizedLinear leaves the file's pages alone
    device = torch.device("cpu")

    def __init__(self, raw: torch.Tensor, qtype: QT, rows: int, cols: int):
        elems, nbytes = GGUF_BLOCKS[qtype]
        assert cols % elems == 0
        self.qtype, self.rows, self.cols = qtype, rows, cols
        raw = raw.reshape(rows, cols // elems * nbytes)
        self.raw = raw if raw.is_contiguous() else raw.contiguous()

    @property
    def nbytes(self) -> int:
        return self.raw.numel()

    @property
    def level(self) -> str:
        return isa() or ""

    def for_tile(self, raw: torch.Tensor, rows: int, cols: int) -> "GGUFKernel":
        return type(self)(raw, self.qtype, rows, cols)

    def __call__(self, x: torch.Tensor, prompt: bool = False) -> torch.Tensor:
        """x float32 [M, cols] -> float32 [M, rows]. prompt: x's rows are a prompt being read
        (`gguf_matmul`'s; the native step's prompt chunks take that route)."""
        m = x.shape[0]
        route = "in_place" if m <= GGUF_MAX_M or prompt else prompt_route()
        if route == "in_place":  # decode steps and drafts (and prompt chunks where that is faster)
            return gguf_matmul(self.raw, self.qtype, x, self.rows, self.cols, prompt=prompt)
        dtype = torch.bfloat16 if route == "expand_bf16" else torch.float32
        xw = x.to(dtype)
        out = torch.empty(m, self.rows, dtype=torch.float32)
        step = max(16, GGUF_SLAB_WEIGHTS // self.cols)
        buf = _slab_buffer(min(step, self.rows) * self.cols, dtype)
        for start in range(0, self.rows, step):
            stop = min(start + step, self.rows)
            w = buf[: (stop - start) * self.cols].view(stop - start, self.cols)
            gguf_expand(self.raw[start:stop], self.qtype, stop - start, self.cols, dtype, out=w)
            out[:, start:stop] = F.linear(xw, w)
        return out

    def dense(self, start: int, stop: int) -> torch.Tensor:
        return gguf_to_bf16(self.raw[start:stop], self.qtype, stop - start, self.cols)

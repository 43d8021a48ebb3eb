"""Weight kernels behind `QuantizedLinear`: how a GGUF weight is stored and multiplied.

Two policies:

* ``"reference"``: the weight keeps its file encoding and is dequantized to float32 for each
  call (exact float32 math; slow). Implemented in `lantern.weights.linear`.
* ``"fast"`` (the default), on the CPU with the C library (`native`, sources in lantern/weights/csrc):

  - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS stay in their file
    encoding, a view of the memory map (no conversion at load), and are multiplied in place
    (`native.GGUFKernel`; IQ4's 4-bit codes index a table of 16 values in registers): small
    batches (decode, speculative verify) by the row kernels of the instruction-set level in use
    (avx512: x rounded to bfloat16; avx2, neon, portable: x as 15-bit integers per 32, exact
    integer dot products); prompt chunks as `native.PROMPT_ROUTES` says per level: slabs of rows
    expanded to bfloat16 (avx512) or float32 (neon, portable) for torch's GEMM, or in place
    (avx2: the K-quants on x rounded to int8 per 32, the others on its 8-row tile). At neon with
    dotprod, a model whose every weight is a K-quant reads its prompts on the same 8-bit tile
    (`NativeStep.runs`). Batched passes of 5+ decoding sequences take that tile too, where the
    level has it (`native.BATCH_INT8_SEQUENCES`).
  - Q2_K, Q3_K: a dense bfloat16 copy (`dense.py`).
  - F32, F16, BF16: the reference path (already dense).

  Every kernel checks itself the first time it serves a weight type (`self_check`): on a tile of
  the real weights, single-token and prompt-chunk paths, against the exact math. One that
  disagrees is not used (the type takes the reference path, and `describe()` says why).
  The level is the best the CPU runs; LANTERN_ISA=portable|avx2|avx512|neon asks for another.

On a GPU (CUDA, MPS) every quantized type keeps its integer codes on the device, with a float32
scale and offset per group, and is multiplied by a Triton kernel (small batches, CUDA) or
expanded to float32 slab by slab for torch's GEMM (`gpu.py`): the file's weights exactly.

Choose with `set_kernel_policy`, the environment variable ``LANTERN_KERNELS`` (read when the first
layer is built) or per layer (`QuantizedLinear(..., kernels="reference")`).
"""

from __future__ import annotations

import contextlib
import os

import torch
from gguf import GGMLQuantizationType as QT

from ...errors import ModelFileError

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


# ----- the self-check ------------------------------------------------------------------------

# A tile of the real weights: up to CHECK_ROWS rows by CHECK_COLS columns (64 x 2 super-blocks).
CHECK_ROWS, CHECK_COLS = 64, 512
# Every output must be within CHECK_TOLERANCE of sum_i |x_i w_i| of the exact product:
# the worst case of the fast paths is 2^-8 (x and the expanded weights each rounded to bfloat16,
# relative 2^-9); a wrong layout or kernel is off by the order of the sum itself.
CHECK_TOLERANCE = 2.0 ** -6

_verdicts: dict[tuple[str, QT], str | None] = {}  # (level, type) -> None when right, else why not
fallbacks: dict[QT, str] = {}  # types the self-check turned away, with the reason


def self_check(kernel, raw: torch.Tensor, qtype: QT, rows: int, cols: int, name: str) -> str | None:
    """None when `kernel` multiplies a tile of this weight right on both paths (a single token and a
    prompt chunk), else what went wrong. Raises ModelFileError when the file's own weights in the
    tile are not finite. Runs once per level and type."""
    from . import gpu, native
    from ..quants import BLOCK_SIZES, dequantize

    key = (kernel.level, qtype)
    if key in _verdicts:
        return _verdicts[key]
    elems, nbytes = BLOCK_SIZES[qtype]
    r, c = min(rows, CHECK_ROWS), min(cols, CHECK_COLS)
    tile = raw.reshape(rows, -1)[:r, : c // elems * nbytes].contiguous()
    w = dequantize(tile, qtype, (r, c))
    if not torch.isfinite(w).all():
        raise ModelFileError(f"{name}: the file's {qtype.name} weights hold non-finite values (inf or NaN); "
                             "the file is corrupt: download it again")
    probe = kernel.for_tile(tile, r, c)
    # One draw of x serves every path: its first row alone (a decode step, the row kernels) and
    # all of it (a prompt chunk: more than GGUF_MAX_M or GEMV_MAX_M rows), and where the level
    # reads prompt rows of this type on x rounded to int8 per 32 (native.prompt_int8_types), all
    # of it that way and its first 8 rows (a batched decode pass: matmul.c's one-record route),
    # with that rounding's worst case added to the bound: half of x's step per group (max|x| /
    # 127) times |w|.
    x = torch.randn(max(native.GGUF_MAX_M, gpu.GEMV_MAX_M) + 4, c, generator=torch.Generator().manual_seed(0))
    exact = x @ w.T  # float32: its own error (~1e-7 relative) is far below the tolerance
    scale = x.abs() @ w.abs().T  # sum |x w| per output
    bound = CHECK_TOLERANCE * scale + 1e-30
    # (rows of x, path, read as a prompt, bound, what the bound is)
    paths = [(1, "single-token", False, bound, f"{CHECK_TOLERANCE:.3g}"),
             (x.shape[0], "prompt-chunk", False, bound, f"{CHECK_TOLERANCE:.3g}")]
    if isinstance(probe, native.GGUFKernel) and qtype in native.prompt_int8_types():
        step = x.abs().reshape(x.shape[0], -1, 32).amax(-1, keepdim=True).expand(-1, -1, 32).reshape(x.shape) / 127
        rounded = bound + 0.5 * (step @ w.abs().T)
        paths += [(x.shape[0], "prompt rows on 8-bit x", True, rounded, f"{CHECK_TOLERANCE:.3g} plus x's int8 rounding"),
                  (8, "batched decode rows on 8-bit x", True, rounded, f"{CHECK_TOLERANCE:.3g} plus x's int8 rounding")]
    verdict = None
    for m, path, prompt, b, allowed in paths:
        y = (probe(x[:m], prompt=True) if prompt else probe(x[:m].to(probe.device))).cpu()
        err = (y - exact[:m]).abs()
        if not (torch.isfinite(y).all() and bool((err <= b[:m]).all())):
            off = float((err / (scale[:m] + 1e-30)).max()) if torch.isfinite(y).all() else float("inf")
            verdict = (f"{kernel_function(kernel) or kernel.name} ({path}) is off by {off:.3g} "
                       f"of sum|x*w| on {qtype.name}, beyond {allowed}")
            break
    _verdicts[key] = verdict
    return verdict


def kernel_function(kernel) -> str | None:
    """The C function behind an in-place kernel at the level in use, e.g. "q4_k_avx2"."""
    from . import native

    return native.kernel_name("matmul", kernel.qtype) if isinstance(kernel, native.GGUFKernel) else None


def build(raw: torch.Tensor, qtype: QT, rows: int, cols: int, device, name: str = "weight") -> "object | None":
    """The fast kernel for a [rows, cols] weight of `qtype`, or None where the reference path
    is the right one (float types, shapes the kernels do not take, a kernel that failed its
    self-check)."""
    from . import dense, gpu, native

    def checked(kernel):
        why = self_check(kernel, raw, qtype, rows, cols, name)
        if why is None:
            return kernel
        fallbacks[qtype] = why
        return None

    if torch.device(device).type != "cpu":
        return checked(gpu.PackedKernel(raw, qtype, rows, cols, device)) if qtype in gpu.GPU_TYPES else None
    if (qtype in native.GGUF_BLOCKS and cols % native.GGUF_BLOCKS[qtype][0] == 0 and native.available()
            and native.kernel_name("matmul", qtype)):
        return checked(native.GGUFKernel(raw, qtype, rows, cols))
    if qtype in dense.DENSE_TYPES:
        return dense.DenseKernel(raw, qtype, rows, cols)
    return None


def runs_on_pool(modules) -> bool:
    """Whether any of `modules` (layers) multiplies with a kernel on lantern's own thread pool."""
    from . import native

    return any(isinstance(getattr(m, "kernel", None), native.GGUFKernel) for m in modules)


def step_threads(n_tokens: int, on_pool: bool, native_pass: bool = False) -> "contextlib.AbstractContextManager":
    """The thread arrangement for a forward pass of `n_tokens`: when the weight kernels run on
    lantern's own pool (`on_pool`) at this batch size (decode steps; prompt chunks too where the
    prompt route is "in_place", or where the pass is one native step call, `native_pass`: a
    batched pass, neon's all-K-quant prompts), torch's ops run single-threaded meanwhile
    (`native.torch_ops_single_threaded`): torch's idle OpenMP workers spin on the cores the pool
    needs next. Qwen3-0.6B-shaped Q4_K_M at avx2, 128-token prompt: 98 tok/s with torch on 2
    threads, 134 with its ops on 1 (the same as OMP_WAIT_POLICY=passive). Where torch's GEMM
    multiplies the prompt's weights, nothing changes."""
    from . import native

    if on_pool and (native_pass or n_tokens <= native.GGUF_MAX_M or native.prompt_route() == "in_place"):
        return native.torch_ops_single_threaded()
    return contextlib.nullcontext()


def f16_attention():
    """The native attention over a float16 KV cache (`native.attention_f16`), or None where the
    C library is missing (then the cache stays float32)."""
    from . import native

    return native.attention_f16 if native.has_attention() else None


def level() -> dict:
    """The instruction-set level in use and the C function serving each role (for --verbose,
    `lantern info` and `bench --json`): {"isa": ..., "supported": [...], "matmul": {type: fn},
    "rows8": {type: fn or None} (5-12 rows of x), "batch": {type: "fn + fn" or None} (the decode
    tokens of a pass of native.BATCH_INT8_SEQUENCES or more sequences, where not the row kernels or
    rows8), "expand": {type: fn}, "prompt": {type: "fn + fn"}, "attention": fn, "vector": fn,
    "fallbacks": {type: why}}."""
    from . import native

    if not native.available():
        return {"isa": None, "supported": [], "fallbacks": {}}
    expand = "expand_bf16" if native.expands_to_bf16() else "expand_f32"
    route, gemm = native.prompt_route(), native.kernel_name("gemm")

    def int8_tile(t):  # the 8-bit route of type t (prompt rows; batched decode tokens), or None
        return f"expand_q8 + {native.kernel_name('gemm_q8', t)}" if native.kernel_name("gemm_q8", t) else None

    def prompt(t):  # the functions prompt chunks of type t go through (native.PROMPT_ROUTES)
        if route != "in_place":
            torch_route = f"{native.kernel_name(expand, t)} + torch GEMM"
            # neon: in a model whose every weight has the tile (NativeStep.int8_prompts)
            return f"{int8_tile(t)} (all-K-quant models; else {torch_route})" if int8_tile(t) else torch_route
        if int8_tile(t):  # prompts read by generation: x int8 per 32
            return int8_tile(t)
        if native.kernel_name("rows8", t):  # 15-bit x, 8 rows in the lanes
            return native.kernel_name("rows8", t)
        return f"{native.kernel_name('expand_f32', t)} + {gemm}" if gemm else native.kernel_name("matmul", t)

    return {
        "isa": native.isa(),
        "supported": native.supported_isas(),
        "matmul": {t.name: native.kernel_name("matmul", t) for t in native.GGUF_BLOCKS},
        "rows8": {t.name: native.kernel_name("rows8", t) for t in native.GGUF_BLOCKS},
        "batch": {t.name: int8_tile(t) for t in native.GGUF_BLOCKS},
        "expand": {t.name: native.kernel_name(expand, t) for t in (*native.GGUF_BLOCKS, QT.Q2_K, QT.Q3_K)},
        "prompt": {t.name: prompt(t) for t in native.GGUF_BLOCKS},
        "attention": native.kernel_name("attention"),
        "vector": native.kernel_name("vector"),
        "fallbacks": {t.name: why for t, why in fallbacks.items()},
    }


def describe(device="cpu") -> str:
    """One line on what the fast kernels use on this machine for `device` (for --verbose)."""
    from . import gpu, native

    device = torch.device(device)
    if device.type != "cpu":
        how = ("a Triton GEMV for up to {m} rows, float32 GEMM beyond" if gpu.triton_available(device)
               else "float32 GEMM over expanded slabs (no Triton here)").format(m=gpu.GEMV_MAX_M)
        parts = [f"torch {torch.__version__}", f"GPU kernels on {device.type}: integer codes on the device, {how}"]
        parts += [f"{qtype.name} on the reference kernels: {why}" for qtype, why in fallbacks.items()]
        return ", ".join(parts)
    parts = [f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"]
    if native.available():
        info = level()
        parts.append(f"native C kernels at {info['isa']} (this CPU runs {', '.join(info['supported'])})")
        parts.append(f"attention {info['attention']}")
        for qtype, why in info["fallbacks"].items():
            parts.append(f"{qtype} on the reference kernels: {why}")
    else:
        parts.append("no native kernels (pure PyTorch)")
    return ", ".join(parts)

"""Where one prompt pass spends its time: per GGUF weight type, the seconds and GFLOP/s of the
in-place weight products (`native.gguf_matmul`, the "in_place" prompt route), and the rest of the
pass (attention, norms, rotary, the torch ops between them).

    LANTERN_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 python bench/prompt_profile.py MODEL [--tokens 256]

Only meaningful at a level whose prompt route is "in_place" (native.PROMPT_ROUTES; or with
LANTERN_PROMPT_ROUTE=in_place): elsewhere the weights go through torch's GEMM and show up as "rest".
One warm-up pass, then the fastest of --reps passes.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lantern  # noqa: E402
from lantern.weights.kernels import native  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = lantern.load(args.model)
    seconds, flops = collections.Counter(), collections.Counter()
    plain = native.gguf_matmul

    def timed(raw, qtype, x, rows, cols, *rest, **kw):
        t = time.perf_counter()
        y = plain(raw, qtype, x, rows, cols, *rest, **kw)
        seconds[qtype.name] += time.perf_counter() - t
        flops[qtype.name] += 2 * rows * cols * x.shape[0]
        return y

    native.gguf_matmul = timed
    ids = [1000 + i for i in range(args.tokens)]
    model.forward(ids[:32], model.new_cache())
    best = None
    for _ in range(args.reps):
        seconds.clear()
        flops.clear()
        t = time.perf_counter()
        model.forward(ids, model.new_cache(), last_only=True)
        total = time.perf_counter() - t
        if best is None or total < best[0]:
            best = (total, dict(seconds), dict(flops))
    total, seconds, flops = best
    print(f"{Path(args.model).name}: {args.tokens}-token prompt at {native.isa()} "
          f"(route {native.prompt_route()}, prompt kernel {native.kernel_name('gemm')}, "
          f"{native.pool_threads()} threads): {total:.2f} s, "
          f"{args.tokens / total:.1f} tok/s")
    for name in sorted(seconds):
        print(f"  {name:7s} {seconds[name]:6.2f} s  {flops[name] / seconds[name] / 1e9:6.0f} GFLOP/s")
    print(f"  rest    {total - sum(seconds.values()):6.2f} s")


if __name__ == "__main__":
    main()

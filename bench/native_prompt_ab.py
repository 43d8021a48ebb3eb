"""Prompt passes through the native step against the PyTorch blocks, in one process, taking turns:
what running prompt chunks as one native call (`NativeStep.runs`, levels whose prompt route is
in place: avx2) saves over the blocks' torch ops between the same weight kernels. This machine's
speed drifts between runs, so the two are only comparable side by side.

    python bench/native_prompt_ab.py smollm2 --tokens 128 --rounds 9
    python bench/native_prompt_ab.py PHI3.gguf --tokens 128 --rounds 5

Prints each side's median tok/s over the rounds and the median of the per-round ratios
(blocks' time / native time: above 1, the native step is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lantern  # noqa: E402
from lantern.models.native_step import NativeStep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=128, help="prompt length (one pass)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    model = lantern.load(args.model)
    if not NativeStep.prompt_chunks():
        sys.exit("native_prompt_ab: this level does not run prompt chunks natively (avx2 does)")
    ids = [(7 * i + 3) % model.vocab_size for i in range(args.tokens)]
    native = NativeStep.prompt_chunks

    def seconds(on_native_step: bool) -> float:
        NativeStep.prompt_chunks = staticmethod(native if on_native_step else lambda: False)
        cache = model.new_cache()
        started = time.perf_counter()
        model.forward(ids, cache, last_only=True)
        return time.perf_counter() - started

    seconds(True), seconds(False)  # warm both
    blocks, steps = [], []
    for _ in range(args.rounds):
        blocks.append(seconds(False))
        steps.append(seconds(True))
    NativeStep.prompt_chunks = staticmethod(native)
    ratio = statistics.median(b / s for b, s in zip(blocks, steps))
    print(f"{Path(model.file.path).name}, {args.tokens}-token prompt, {args.rounds} rounds: PyTorch blocks "
          f"{args.tokens / statistics.median(blocks):.1f} tok/s, native step {args.tokens / statistics.median(steps):.1f} "
          f"tok/s, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()

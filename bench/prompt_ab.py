"""Two ways of reading the same prompt, in one process, taking turns (this machine's speed drifts
between runs, so two routes are only comparable side by side):

  --routes native  prompt chunks as one native call (`NativeStep.runs`, levels whose prompt route
                   is in place: avx2) against the PyTorch blocks' torch ops between the same
                   weight kernels;
  --routes int8    prompt rows on x rounded to int8 per 32 (the 8-bit prompt tile, lantern.h: the
                   K-quants at avx2; `Model.forward(..., prompt=True)`, as generation reads
                   prompts) against the same rows kept to 15 bits (`prompt=False`).

    python bench/prompt_ab.py smollm2 --routes native --tokens 128 --rounds 9
    python bench/prompt_ab.py PHI3.gguf --routes int8 --tokens 256 --rounds 5

Prints each side's median tok/s over the rounds and the median of the per-round ratios (the
second route's time / the first's: above 1, the first route is faster).
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
from lantern.weights.kernels import native  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--routes", choices=["native", "int8"], required=True)
    ap.add_argument("--tokens", type=int, default=128, help="prompt length (one pass)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    model = lantern.load(args.model)
    ids = [(7 * i + 3) % model.vocab_size for i in range(args.tokens)]
    natively = NativeStep.prompt_chunks
    if args.routes == "native":
        if not natively():
            sys.exit("prompt_ab: this level does not run prompt chunks natively (avx2 does)")
        names = ("native step", "PyTorch blocks")
    else:
        if not native.prompt_int8_types():
            sys.exit(f"prompt_ab: the {native.isa()} level has no 8-bit prompt tile (avx2 has)")
        names = ("x int8 per 32", "x exact")

    def seconds(first: bool) -> float:
        if args.routes == "native":
            NativeStep.prompt_chunks = staticmethod(natively if first else lambda: False)
        cache = model.new_cache(args.tokens + 1)
        started = time.perf_counter()
        model.forward(ids, cache, last_only=True, prompt=args.routes == "native" or first)
        return time.perf_counter() - started

    seconds(True), seconds(False)  # warm both
    firsts, seconds_ = [], []
    for _ in range(args.rounds):
        seconds_.append(seconds(False))
        firsts.append(seconds(True))
    NativeStep.prompt_chunks = staticmethod(natively)
    ratio = statistics.median(s / f for f, s in zip(firsts, seconds_))
    print(f"{Path(model.file.path).name}, {args.tokens}-token prompt, {args.rounds} rounds ({native.isa()}): "
          f"{names[0]} {args.tokens / statistics.median(firsts):.1f} tok/s, {names[1]} "
          f"{args.tokens / statistics.median(seconds_):.1f} tok/s, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()

"""Prompt rows on x rounded to int8 per 32 against the same rows kept to 15 bits, in one process,
taking turns: what the 8-bit prompt tile (lantern.h; the K-quants at avx2) buys a prompt read as
generation reads it (`Model.forward(..., prompt=True)`) over the exact route (the float32
micro-kernel, `prompt=False`). This machine's speed drifts between runs, so the two are only
comparable side by side.

    python bench/prompt_int8_ab.py PHI3.gguf --tokens 256 --rounds 5

Prints each side's median tok/s over the rounds and the median of the per-round ratios (exact
time / int8 time: above 1, the int8 route is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lantern  # noqa: E402
from lantern.weights.kernels import native  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=256, help="prompt length (one pass)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    model = lantern.load(args.model)
    if not native.prompt_int8_types():
        sys.exit(f"prompt_int8_ab: the {native.isa()} level has no 8-bit prompt tile (avx2 has)")
    ids = [(7 * i + 3) % model.vocab_size for i in range(args.tokens)]

    def seconds(prompt: bool) -> float:
        cache = model.new_cache(args.tokens + 1)
        started = time.perf_counter()
        model.forward(ids, cache, last_only=True, prompt=prompt)
        return time.perf_counter() - started

    seconds(True), seconds(False)  # warm both
    exact, int8 = [], []
    for _ in range(args.rounds):
        exact.append(seconds(False))
        int8.append(seconds(True))
    ratio = statistics.median(e / q for e, q in zip(exact, int8))
    print(f"{Path(model.file.path).name}, {args.tokens}-token prompt, {args.rounds} rounds ({native.isa()}): "
          f"x exact {args.tokens / statistics.median(exact):.1f} tok/s, x int8 per 32 "
          f"{args.tokens / statistics.median(int8):.1f} tok/s, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()

"""Two builds of lantern's native library in one process, taking turns: the decode step (one
sequence) and the batched step (8 sequences) of a model, with A, then B, then A... This machine's
speed drifts by a third between runs, so an A/B of a kernel change is only meaningful with both
builds timed side by side; run it with A = B once to see the noise floor (ratio ~1.00).

    cp lantern/weights/kernels/_native*.so /tmp/A.so        # before the change
    # ... change, rebuild (python setup.py build_ext --inplace) ...
    python bench/native_ab.py smollm2 /tmp/A.so lantern/weights/kernels/_native*.so
    python bench/native_ab.py PHI3.gguf /tmp/A.so lantern/weights/kernels/_native*.so --prompt 256 --rounds 4

Prints per batch size the median over rounds of each build's fastest of 5 steps, and A / B
(above 1: B is faster); with --prompt N, the median over rounds of one N-token prompt pass (read
as generation reads prompts: `prompt=True`).
Both builds must be of this version of lantern (the ABI check).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lantern  # noqa: E402
from lantern.weights.kernels import native  # noqa: E402


def load(path: str):
    lib = ctypes.CDLL(path)
    if lib.lantern_abi_version() != native.ABI_VERSION:
        sys.exit(f"native_ab: {path} is from another version of lantern")
    native._bind(lib)
    native._select_isa(lib, os.environ.get("LANTERN_ISA", ""))
    return lib


def use(model, lib) -> None:
    """Every native call of `model` on `lib` from now on: the kernels' and the decode step's."""
    native._lib = lib
    if model.transformer.native_step is not None:
        model.transformer.native_step._lib = lib
    time.sleep(0.05)  # the other build's pool goes idle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--batch", default="1,8", help="sequences per step (default: 1,8)")
    ap.add_argument("--prompt", type=int, default=0, help="time N-token prompt passes instead of steps")
    ap.add_argument("--exact", action="store_true",
                    help="batched passes keep decode tokens on 15-bit x (serve --exact-batches)")
    args = ap.parse_args()
    libs = {"A": load(args.a), "B": load(args.b)}
    model = lantern.load(args.model)
    if args.prompt:
        prompt_ab(model, libs, args.prompt, args.rounds)
        return
    step = model.transformer.native_step
    if step is None:
        sys.exit("native_ab: the native step does not run this model here")
    sizes = [int(v) for v in args.batch.split(",")]
    caches = [model.new_cache() for _ in range(max(sizes))]
    for i, cache in enumerate(caches):
        model.forward(list(range(100 + i, 140 + i)), cache, last_only=True)
    times = {(name, b): [] for name in libs for b in sizes}
    for _ in range(args.rounds):
        for name, lib in libs.items():
            use(model, lib)
            for b in sizes:
                passes = [([5 + j], caches[j]) for j in range(b)]
                model.forward_batch(passes, exact=args.exact)
                best = float("inf")
                for _ in range(5):
                    t = time.perf_counter()
                    model.forward_batch(passes, exact=args.exact)
                    best = min(best, time.perf_counter() - t)
                times[(name, b)].append(best)
            for cache in caches:
                cache.truncate(40)
    for b in sizes:
        a, bb = statistics.median(times[("A", b)]), statistics.median(times[("B", b)])
        print(f"{b} sequences: A {a * 1e3:.2f} ms, B {bb * 1e3:.2f} ms, A / B {a / bb:.3f}")


def prompt_ab(model, libs, tokens: int, rounds: int) -> None:
    ids = [1000 + i for i in range(tokens)]
    times = {name: [] for name in libs}
    for r in range(rounds + 1):
        for name, lib in libs.items():
            use(model, lib)
            t = time.perf_counter()
            model.forward(ids, model.new_cache(), last_only=True, prompt=True)  # as generation reads prompts
            if r:  # round 0 warms both builds up
                times[name].append(time.perf_counter() - t)
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    print(f"{tokens}-token prompt: A {a:.3f} s, B {b:.3f} s, A / B {a / b:.3f} "
          f"(A {' '.join(f'{v:.2f}' for v in times['A'])}; B {' '.join(f'{v:.2f}' for v in times['B'])})")


if __name__ == "__main__":
    main()

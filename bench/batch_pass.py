"""What a batched pass costs: B sequences' next tokens in one `Model.forward_batch`, against one
sequence's decode step, at every instruction-set level the CPU runs.

    python bench/batch_pass.py                        # SmolLM2-135M Q4_1
    python bench/batch_pass.py --model PATH --batches 1,2,4,8 --reps 7 --levels avx2,portable

The ceiling of continuous batching is B / cost(B): 8 sequences whose pass costs 2.5 single steps
decode 3.2x as many tokens per second as one. Each sequence holds a `--context`-token prompt in
its own cache, so attention reads real caches. Levels run in-process, interleaved, medians of
--reps.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lantern  # noqa: E402
from lantern.weights.kernels import native  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pass_seconds(model, caches, tokens: int, steps: int, exact: bool = False) -> float:
    """Median seconds of one pass over len(caches) sequences, each fed one token per pass, under
    `decode_threads()` as the engine runs them: without it torch's idle OpenMP workers spin on
    the cores lantern's pool needs, and a one-token step measured 1.3x slower (8 tokens 1.0x)."""
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        with model.decode_threads():
            model.forward_batch([([tokens], cache) for cache in caches], exact=exact)
        times.append(time.perf_counter() - started)
        for cache in caches:
            cache.truncate(cache.length - 1)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--steps", type=int, default=9, help="passes per measurement")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--levels", default=None, help="comma-separated (default: every level the CPU runs)")
    parser.add_argument("--exact", action="store_true",
                        help="decode tokens on 15 bits at any batch size (forward_batch's exact; default: "
                             "8-bit x from native.BATCH_INT8_SEQUENCES sequences, where the level has the tile)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    levels = args.levels.split(",") if args.levels else native.supported_isas()
    model = lantern.load(args.model)
    prompt = [(7 * i + 3) % model.vocab_size for i in range(args.context)]
    caches = [model.new_cache() for _ in range(max(batches))]
    for cache in caches:
        model.forward(prompt, cache)
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.reps):
        for level in levels:
            native.set_isa(level)
            for b in batches:
                results.setdefault((level, b), []).append(pass_seconds(model, caches[:b], 42, args.steps, args.exact))
    print(f"{Path(model.file.path).name} on {cpu_name()}; context {args.context} tokens per sequence; "
          f"median of {args.reps} x {args.steps} passes")
    print(f"{'level':<10}{'B':>4}{'pass ms':>10}{'x one step':>12}{'tokens/s':>10}{'B / cost':>10}")
    for level in levels:
        one = statistics.median(results[(level, 1)]) if 1 in batches else None
        for b in batches:
            t = statistics.median(results[(level, b)])
            ratio = t / one if one else float("nan")
            print(f"{level:<10}{b:>4}{1000 * t:>10.2f}{ratio:>12.2f}{b / t:>10.1f}{b / ratio:>10.2f}")


if __name__ == "__main__":
    main()

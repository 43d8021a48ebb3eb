"""Load time and peak memory: lantern beside llama.cpp on the same file, in the same run.

The issue's measurement: load the model, score 16 tokens, report load time and the process's peak
RSS. It is `lantern bench --compare` cut down to that (prompts of 16 tokens, one decoded token,
each engine in a fresh process per repeat, medians), printing only load time and memory.

    python bench/memory_load.py                      # full-size Phi-3-mini-shaped Q4_K_M (built once, ~10 min)
    python bench/memory_load.py --model smollm2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .gguf path or lantern model spec (default: synthetic Phi-3-mini Q4_K_M)")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from lantern.benchmark import BenchConfig, run_benchmark

    if args.model:
        from lantern.hub import resolve

        path = resolve(args.model)
    else:
        from lantern.testing.synthetic import PHI3_MINI, cached_model

        print("building the Phi-3-mini-shaped Q4_K_M once (cached afterwards)...", file=sys.stderr)
        path = cached_model(PHI3_MINI, "Q4_K_M")

    cfg = BenchConfig(prompt_lengths=(args.tokens,), decode_tokens=1, repeats=args.repeats, threads=args.threads)
    report = run_benchmark(path, cfg, engines=("lantern", "llama.cpp"))
    ours, theirs, size = report["lantern"], report["llama.cpp"], report["file_bytes"]
    if args.json:
        print(json.dumps({"model": str(path), "file_bytes": size, "tokens": args.tokens, "threads": args.threads,
                          **{e: {k: report[e][k] for k in ("load_s", "peak_rss_bytes")} for e in ("lantern", "llama.cpp")}},
                         indent=2))
        return 0
    gib = 1024**3
    print(f"model: {path.name} ({size / gib:.2f} GiB), score {args.tokens} tokens, {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"{'':14}{'lantern':>12}{'llama.cpp':>12}{'ratio':>9}")
    print(f"{'load time':14}{ours['load_s']:>11.2f}s{theirs['load_s']:>11.2f}s{ours['load_s'] / theirs['load_s']:>9.2f}")
    print(f"{'peak RSS':14}{ours['peak_rss_bytes'] / gib:>8.2f} GiB{theirs['peak_rss_bytes'] / gib:>8.2f} GiB"
          f"{ours['peak_rss_bytes'] / theirs['peak_rss_bytes']:>9.2f}")
    print(f"{'RSS / file':14}{ours['peak_rss_bytes'] / size:>12.2f}{theirs['peak_rss_bytes'] / size:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load time and peak memory: lantern beside llama.cpp on the same file, in the same run.

Each measurement runs in a fresh process (so peak RSS is that engine's alone): load the model,
score N tokens, report the load time and the process's peak resident set size. Repeats and
prints medians and the ratio lantern / llama.cpp.

    python bench/memory_load.py                      # full-size Phi-3-mini-shaped Q4_K_M (built once, ~10 min)
    python bench/memory_load.py --model smollm2 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
engine, path, n_tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ids = [(i * 7919) % 30000 + 100 for i in range(n_tokens)]
if engine == "lantern":
    import torch
    torch.set_num_threads(threads)
    import lantern
    started = time.perf_counter()
    model = lantern.load(path)
    loaded = time.perf_counter() - started
    model.logits(ids)
else:
    import llama_cpp
    started = time.perf_counter()
    llm = llama_cpp.Llama(model_path=path, n_ctx=max(64, n_tokens), n_threads=threads,
                          n_threads_batch=threads, logits_all=True, verbose=False)
    loaded = time.perf_counter() - started
    llm.eval(ids)
print(json.dumps({"load_s": loaded, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def measure(engine: str, path: Path, n_tokens: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, engine, str(path), str(n_tokens), str(threads)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .gguf path or lantern model spec (default: synthetic Phi-3-mini Q4_K_M)")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    if args.model:
        from lantern.hub import resolve

        path = resolve(args.model)
    else:
        from lantern.testing.synthetic import PHI3_MINI, cached_model

        print("building the Phi-3-mini-shaped Q4_K_M once (cached afterwards)...", file=sys.stderr)
        path = cached_model(PHI3_MINI, "Q4_K_M")
    size = path.stat().st_size

    runs = {"lantern": [], "llama.cpp": []}
    for _ in range(args.repeats):  # alternate engines so drift on a shared machine hits both
        for engine in runs:
            runs[engine].append(measure("lantern" if engine == "lantern" else "llama", path, args.tokens, args.threads))

    report = {"model": str(path), "file_bytes": size, "tokens": args.tokens, "threads": args.threads}
    for engine, samples in runs.items():
        report[engine] = {
            "load_s": statistics.median(s["load_s"] for s in samples),
            "peak_rss_bytes": statistics.median(s["peak_rss_bytes"] for s in samples),
        }
    ours, theirs = report["lantern"], report["llama.cpp"]
    if args.json:
        print(json.dumps(report, indent=2))
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

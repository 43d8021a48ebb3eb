"""Decode on CUDA with and without CUDA graphs, in one process, taking turns (eager, graphed,
eager, graphed): the same prompt, then greedy steps, the first 32 untimed.

    python bench/cuda_graphs.py MODEL.gguf [--prompt 256] [--steps 128] [--rounds 2]

Prints each turn's decode tok/s and peak GPU memory, and whether the greedy tokens agree.
H200, Phi-3-mini-shaped Q4_K_M (2026-12-04, the device script this was written from): eager
48.5 / 59.2 tok/s, graphed 136.9 / 135.5, the same 160 tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import torch

    import lantern

    if not torch.cuda.is_available():
        sys.exit("cuda_graphs.py: no CUDA GPU visible to PyTorch on this machine")
    warm = 32
    ids = list(range(100, 100 + args.prompt))
    tokens = {}
    for _ in range(args.rounds):
        for graphs in ("0", "1"):
            os.environ["LANTERN_CUDA_GRAPHS"] = graphs
            torch.cuda.reset_peak_memory_stats()
            model = lantern.load(args.model, device="cuda")
            with torch.inference_mode():
                cache = model.new_cache(args.prompt + warm + args.steps + 1)
                token = int(model.forward(ids, cache, last_only=True, prompt=True)[-1].argmax())
                produced = []
                for i in range(warm + args.steps):
                    if i == warm:
                        torch.cuda.synchronize()
                        started = time.perf_counter()
                    token = int(model.forward([token], cache, last_only=True)[-1].argmax())
                    produced.append(token)
                rate = args.steps / (time.perf_counter() - started)
            graphed = model.transformer.graphed
            print(f"graphs {'on ' if graphs == '1' else 'off'}: decode {rate:7.1f} tok/s, peak GPU "
                  f"{torch.cuda.max_memory_allocated() / 1e9:.2f} GB"
                  + (f" ({graphed.disabled})" if graphed is not None and graphed.disabled else ""), flush=True)
            tokens.setdefault(graphs, produced)
            del model, cache
            torch.cuda.empty_cache()
    same = sum(a == b for a, b in zip(tokens["0"], tokens["1"]))
    print(f"greedy tokens the same with and without graphs: {same} of {len(tokens['0'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

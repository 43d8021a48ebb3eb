"""Weight kernels: reference (dequantize to float32 per call) vs fast, per GGUF type and shape,
and end-to-end decode/prompt speed of whole models.

    python bench/kernels.py                      # Phi-3-mini shapes, main types, M=1, 4, 16, 256
    python bench/kernels.py --types all --reps 5
    python bench/kernels.py --types Q4_0,Q4_K,IQ4_NL,IQ4_XS --m 1 --no-reference   # IQ4 vs Q4 decode
    python bench/kernels.py --types Q4_0,Q4_K,IQ4_NL,IQ4_XS --cpu-time  # the same in CPU time, 1 thread
    python bench/kernels.py --smol               # per-call microseconds on SmolLM2-135M's shapes
    python bench/kernels.py --e2e                # + end-to-end on SmolLM2 and the Phi-3-mini fixture
    python bench/kernels.py --interleaved MODEL  # decode/prompt: lantern at each instruction-set
                                                 # level and llama.cpp in one process, alternating
    python bench/kernels.py --levels avx2        # only these levels (default: every one the CPU runs)

Prints G weights/s (weights of the matrix per second; for M=256 that is M x fewer per token) for
the fast kernel `build()` picks (`gguf-native`: the file's blocks in place) at every instruction-set
level the CPU runs (LANTERN_ISA's levels, switched in-process), and the reference. Each timed call multiplies the next of several copies of the weight (together larger
than the last-level cache), so the weights come from memory as in a real forward pass. The
machine is shared: every variant runs interleaved in the same process and the median of --reps
runs is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as QT

from lantern.weights import linear
from lantern.weights.gguf_file import TensorData
from lantern.weights.kernels import describe

PHI3_SHAPES = [(9216, 3072), (16384, 3072), (3072, 8192), (32064, 3072)]
MAIN_TYPES = ["Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0"]
ALL_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
# (elements, bytes, offsets of f16 fields) per block
LAYOUT = {"Q4_0": (32, 18, [0]), "Q4_1": (32, 20, [0, 2]), "Q5_0": (32, 22, [0]), "Q5_1": (32, 24, [0, 2]),
          "Q8_0": (32, 34, [0]), "Q2_K": (256, 84, [80, 82]), "Q3_K": (256, 110, [108]),
          "Q4_K": (256, 144, [0, 2]), "Q5_K": (256, 176, [0, 2]), "Q6_K": (256, 210, [208]),
          "IQ4_NL": (32, 18, [0]), "IQ4_XS": (256, 136, [0])}


def random_weight(qtype: str, rows: int, cols: int, seed: int = 0) -> TensorData:
    """Random quant bytes with small finite f16 scales: valid blocks of `qtype`."""
    elems, nbytes, f16 = LAYOUT[qtype]
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (rows * cols // elems, nbytes), dtype=np.uint8)
    for off in f16:
        b[:, off:off + 2] = np.frombuffer(rng.uniform(1e-3, 1e-2, len(b)).astype(np.float16).tobytes(),
                                          np.uint8).reshape(-1, 2)
    return TensorData(f"bench.{qtype}", QT[qtype], (rows, cols), torch.from_numpy(b.reshape(rows, -1)))


def timed(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# Each timed call uses the next of enough copies of the weight to exceed this many bytes (the
# last-level cache of the machines measured is 32 MiB).
WORKING_SET = 96 << 20


def levels_to_run(wanted: str | None) -> list[str]:
    from lantern.weights.kernels import native

    have = native.supported_isas()
    return [lv for lv in (wanted.split(",") if wanted else have) if lv in have]


class _Rotating:
    """Calls the next of several layers (copies of one weight) each time."""

    def __init__(self, layers):
        self.layers, self.i = layers, 0

    def __call__(self, x):
        self.i = (self.i + 1) % len(self.layers)
        return self.layers[self.i](x)


def kernels(types, shapes, ms, reps, reference: bool, levels: list[str]) -> None:
    from lantern.weights.kernels import native

    print(f"# kernels: {describe()}")
    print(f"{'type':6} {'shape':>12} {'kernel':>12} " + " ".join(f"{'M=' + str(m):>9}" for m in ms) + "   (G weights/s)")
    for qtype in types:
        for rows, cols in shapes:
            base = random_weight(qtype, rows, cols)
            copies = max(1, -(-WORKING_SET // base.raw.numel()))
            weights = [base] + [TensorData(base.name, base.type, base.shape, base.raw.clone()) for _ in range(copies - 1)]
            fast = [linear.QuantizedLinear(w, kernels="fast") for w in weights]
            layers = {}
            if fast[0].kernel_name == "gguf-native":
                layers.update({level: _Rotating(fast) for level in levels})
            else:
                layers[fast[0].kernel_name] = _Rotating(fast)
            if reference:
                layers["reference"] = linear.QuantizedLinear(base, kernels="reference")
            rates = {name: [] for name in layers}
            before = native.isa()
            for m in ms:
                x = torch.randn(m, cols)
                for name, layer in layers.items():
                    if name in levels:
                        native.set_isa(name)
                    r = max(1, reps // 3) if name == "reference" else reps * (3 if m < 64 else 1)
                    rates[name].append(rows * cols / timed(lambda: layer(x), r) / 1e9)
                    native.set_isa(before)
            for name in layers:
                print(f"{qtype:6} {rows:>5}x{cols:<6} {name:>12} " + " ".join(f"{v:9.2f}" for v in rates[name]),
                      flush=True)


def cpu_time(types, reps: int, levels: list[str]) -> None:
    """Compute speed of the row kernels, robust to a busy shared machine: one thread, a 256 x 3072
    weight that stays in L2, M = 1, the calling thread's CPU time (time.thread_time) per call,
    median of `reps` rounds of 200 calls. Memory bandwidth is left out (decode on a quiet machine
    is bounded by it for the 4-bit types: compare these with the wall-clock table)."""
    from lantern.weights.kernels import native

    rows, cols, calls = 256, 3072, 200
    print(f"# row kernels, 1 thread, {rows}x{cols} in L2, M=1, CPU time: G weights/s per CPU second")
    print(f"{'type':6} " + " ".join(f"{lv:>10}" for lv in levels))
    before = native.isa()
    for qtype in types:
        w = random_weight(qtype, rows, cols)
        x = torch.randn(1, cols)
        rates = []
        for level in levels:
            native.set_isa(level)
            per_round = []
            for _ in range(reps):
                native.gguf_matmul(w.raw, w.type, x, rows, cols, threads=1)
                t0 = time.thread_time()
                for _ in range(calls):
                    native.gguf_matmul(w.raw, w.type, x, rows, cols, threads=1)
                per_round.append((time.thread_time() - t0) / calls)
            rates.append(rows * cols / statistics.median(per_round) / 1e9)
        native.set_isa(before)
        print(f"{qtype:6} " + " ".join(f"{r:10.2f}" for r in rates), flush=True)


SMOL_SHAPES = [("Q4_1", 576, 576), ("Q4_1", 192, 576), ("Q4_1", 1536, 576), ("Q4_1", 576, 1536),
               ("Q8_0", 49152, 576)]


def smol(reps: int, levels: list[str]) -> None:
    """Per-call microseconds at M=1 on SmolLM2-135M's shapes (the whole call from Python: x
    prepared, dispatch, output), at each level, 1 and all threads."""
    from lantern.weights.kernels import native

    print(f"# SmolLM2-135M shapes, M=1, microseconds per call (median); {describe()}")
    print(f"{'type':6} {'shape':>12} {'threads':>7} {'kernel':>12} {'us/call':>9} {'G w/s':>7}")
    threads = torch.get_num_threads()
    for qtype, rows, cols in SMOL_SHAPES:
        w = random_weight(qtype, rows, cols)
        fast = linear.QuantizedLinear(w, kernels="fast")
        layers = {level: fast for level in levels}
        x = torch.randn(1, cols)
        before = native.isa()
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            for name, layer in layers.items():
                native.set_isa(name)
                t = timed(lambda: layer(x), max(50, reps * 40))
                native.set_isa(before)
                print(f"{qtype:6} {rows:>5}x{cols:<6} {n:>7} {name:>12} {t * 1e6:9.1f} {rows * cols / t / 1e9:7.2f}",
                      flush=True)
        torch.set_num_threads(threads)


# ----- end to end ---------------------------------------------------------------------------------


def e2e_one(path: str, policy: str, decode_tokens: int, prompt_tokens: int, reps: int) -> dict:
    import lantern

    linear.set_kernel_policy(policy)
    started = time.perf_counter()
    model = lantern.load(path)
    load_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.integers(3, min(model.vocab_size, 32000), prompt_tokens + decode_tokens)]
    prompt_s, decode_s = [], []
    for _ in range(reps):
        cache = model.new_cache(prompt_tokens + decode_tokens + 1)
        t = time.perf_counter()
        model.forward(ids[:prompt_tokens], cache, last_only=True)
        prompt_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for tok in ids[prompt_tokens:]:
            model.forward([tok], cache, last_only=True)
        decode_s.append(time.perf_counter() - t)
    return {
        "model": Path(path).name, "policy": policy, "load_s": round(load_s, 2),
        "prompt_tok_s": round(prompt_tokens / statistics.median(prompt_s), 2),
        "decode_tok_s": round(decode_tokens / statistics.median(decode_s), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "file_mib": round(os.path.getsize(path) / 2**20),
    }


def e2e(models, policies, decode_tokens, prompt_tokens, reps) -> None:
    for path in models:
        for policy in policies:
            n_dec, n_prompt = decode_tokens, prompt_tokens
            if policy == "reference" and os.path.getsize(path) > 1 << 30:
                n_dec, n_prompt = 2, 16  # the reference path needs seconds per token here
            out = subprocess.run(
                [sys.executable, __file__, "--e2e-one", str(path), policy, str(n_dec), str(n_prompt), str(reps)],
                capture_output=True, text=True)
            line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]
            print(line, flush=True)


def interleaved(path: str, rounds: int, burst: int, prompt_tokens: int, threads: int, levels: list[str]) -> None:
    """lantern at each instruction-set level and llama.cpp, loaded in one process and measured in
    alternation: each round every engine decodes `burst` tokens, then runs one prompt of
    `prompt_tokens`. On a shared machine all of them then see the same contention; figures are
    medians over rounds."""
    import llama_cpp

    import lantern
    from lantern.benchmark import bench_ids, load_average
    from lantern.weights.kernels import native

    torch.set_num_threads(threads)
    engines, engine_level = {}, {}
    for level in levels:
        native.set_isa(level)
        label = f"lantern {level}"
        t = time.perf_counter()
        engines[label], engine_level[label] = lantern.load(path), level
        print(f"# {label}: load {time.perf_counter() - t:.2f} s", flush=True)
    native.set_isa(None)
    vocab = next(iter(engines.values())).vocab_size
    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=threads,
                          n_threads_batch=threads, logits_all=False, verbose=False)

    def llama_argmax() -> int:
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))

    ids = bench_ids(prompt_tokens, vocab)

    def run_prompt(label):
        """A fresh cache (context), the prompt; returns (cache, first greedy token)."""
        if label == "llama.cpp":
            llm.reset()
            llm.eval(ids)
            return None, llama_argmax()
        model = engines[label]
        native.set_isa(engine_level[label])
        cache = model.new_cache(prompt_tokens + burst + 1)
        return cache, int(model.forward(ids, cache, last_only=True)[-1].argmax())

    labels = [*engines, "llama.cpp"]
    decode = {k: [] for k in labels}
    prompt = {k: [] for k in labels}
    loads = []
    with torch.inference_mode():
        for label in labels:  # warm-up
            run_prompt(label)
        for _ in range(rounds):
            for label in labels:
                t = time.perf_counter()
                cache, token = run_prompt(label)
                prompt[label].append(prompt_tokens / (time.perf_counter() - t))
                t = time.perf_counter()
                for _ in range(burst):
                    if label == "llama.cpp":
                        llm.eval([token])
                        token = llama_argmax()
                    else:
                        token = int(engines[label].forward([token], cache, last_only=True)[-1].argmax())
                decode[label].append(burst / (time.perf_counter() - t))
            loads.append(load_average())
    print(f"# {Path(path).name}, {threads} threads, {rounds} rounds of {burst} decode tokens and one "
          f"{prompt_tokens}-token prompt per engine; load average {min(loads):.1f}-{max(loads):.1f}")
    print(f"{'engine':22} {'decode tok/s':>13} {'prompt tok/s':>13}   (medians; decode min-max)")
    for label in labels:
        d = decode[label]
        print(f"{label:22} {statistics.median(d):13.1f} {statistics.median(prompt[label]):13.1f}   "
              f"({min(d):.1f}-{max(d):.1f})", flush=True)


def default_models() -> list[Path]:
    cache = Path(os.environ.get("LANTERN_CACHE", Path.home() / ".cache" / "lantern"))
    found = [cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"]
    found += sorted((cache / "fixtures" / "synthetic").glob("phi3-*/Q4_K_M.gguf"), key=os.path.getsize)[-1:]
    return [p for p in found if p.exists() and p.stat().st_size > 0]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--e2e-one":
        path, policy, n_dec, n_prompt, reps = sys.argv[2:7]
        print(json.dumps(e2e_one(path, policy, int(n_dec), int(n_prompt), int(reps))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=",".join(MAIN_TYPES), help="comma-separated GGUF types, or 'all'")
    ap.add_argument("--shapes", default="phi3", help="'phi3' or e.g. 4096x4096,1024x4096 (out x in)")
    ap.add_argument("--m", default="1,4,16,256", help="batch sizes (tokens per call)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) reference kernel")
    ap.add_argument("--levels", help="comma-separated instruction-set levels (default: every one the CPU runs)")
    ap.add_argument("--smol", action="store_true", help="only per-call microseconds on SmolLM2 shapes")
    ap.add_argument("--cpu-time", action="store_true",
                    help="only: row kernels' compute speed in CPU time (1 thread, in L2, M=1), per level")
    ap.add_argument("--interleaved", metavar="MODEL", help="only: lantern per level vs llama.cpp, alternating")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--burst", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--e2e", action="store_true", help="also run whole models (SmolLM2, Phi-3-mini fixture)")
    ap.add_argument("--e2e-only", action="store_true")
    ap.add_argument("--model", action="append", help="GGUF file for --e2e (repeatable)")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    args = ap.parse_args()
    types = ALL_TYPES if args.types == "all" else args.types.split(",")
    shapes = PHI3_SHAPES if args.shapes == "phi3" else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    levels = levels_to_run(args.levels)
    if args.smol:
        smol(args.reps, levels)
        return
    if args.cpu_time:
        cpu_time(types, args.reps, levels)
        return
    if args.interleaved:
        interleaved(args.interleaved, args.rounds, args.burst, args.prompt_tokens, args.threads, levels)
        return
    if not args.e2e_only:
        kernels(types, shapes, [int(m) for m in args.m.split(",")], args.reps, not args.no_reference, levels)
    if args.e2e or args.e2e_only:
        models = [Path(m) for m in args.model] if args.model else default_models()
        e2e(models, ["fast", "reference"], args.decode_tokens, args.prompt_tokens, max(1, args.reps // 2))


if __name__ == "__main__":
    main()

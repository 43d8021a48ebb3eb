"""`bench/serve.py`'s workload without HTTP: the same clients and requests through a `BatchEngine`
in this process, and where its time goes.

Each of --clients threads submits --requests requests one after another: a prompt of exactly
--prompt-tokens tokens (a different slice of English text each) and exactly --gen-tokens greedy
tokens (`ignore_eos`). Reported per concurrency: aggregate generated tokens/s, and the engine's
passes by kind (from its `on_step` observer): passes that carry a prompt chunk, and decode-only
passes by their number of sequences, with their share of the wall time. The first shows what
batching cannot save (a prompt's tokens are compute-bound alone or together), the second what the
batch-pass cost (`bench/batch_pass.py`) makes of the rest; the HTTP layer is what `serve.py` adds.

    python bench/batch_engine.py                       # SmolLM2-135M Q4_1, 1 and 8 clients
    python bench/batch_engine.py --model PATH --clients 1,4,8 --prompt-tokens 128 --gen-tokens 128
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lantern  # noqa: E402
from lantern.generate.batch import BatchEngine, StepStats  # noqa: E402
from lantern.generate.sampling import SamplerSettings  # noqa: E402
from batch_pass import cpu_name  # noqa: E402
from serve import model_path, run_clients  # noqa: E402


def run_phase(engine: BatchEngine, stats: list[StepStats], prompts: list[list[int]], clients: int, args) -> float:
    """Seconds of wall time for `clients` threads running their requests; `stats` gets the passes."""
    stats.clear()

    def client(i: int) -> None:
        for k in range(args.requests):
            handle = engine.submit(prompts[(i * args.requests + k) % len(prompts)], SamplerSettings(temperature=0),
                                   max_tokens=args.gen_tokens, ignore_eos=True)
            if sum(1 for _ in handle.tokens()) != args.gen_tokens:
                raise SystemExit(f"a request ended {handle.finish_reason!r} before {args.gen_tokens} tokens")

    return run_clients(client, clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2", help="a .gguf path, an alias or phi3-mini-synthetic")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2, help="requests per client per phase")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    path = model_path(args.model)
    model = lantern.load(path)
    text = (Path(__file__).resolve().parents[1] / "tests" / "data" / "english.txt").read_text(encoding="utf-8")
    ids = model.tokenizer.encode(text, add_bos=False, special=False)
    n = max(clients) * args.requests * (len(clients) + 1)
    stride = max(1, (len(ids) - args.prompt_tokens) // n)
    prompts = [ids[i * stride: i * stride + args.prompt_tokens] for i in range(n)]
    stats: list[StepStats] = []
    engine = BatchEngine(model, parallel=max(clients), ctx_size=max(clients) * (args.prompt_tokens + args.gen_tokens + 64),
                         on_step=stats.append)
    print(f"{path.name} on {cpu_name()}: prompt {args.prompt_tokens}, {args.gen_tokens} generated tokens per request, "
          f"{args.requests} requests per client")
    try:
        run_phase(engine, stats, prompts[-1:], 1, argparse.Namespace(requests=1, gen_tokens=8))  # warm-up
        for phase, c in enumerate(clients):
            wall = run_phase(engine, stats, prompts[phase * max(clients) * args.requests:], c, args)
            tokens = c * args.requests * args.gen_tokens
            print(f"{c} client(s): {tokens / wall:7.1f} tok/s over {wall:.2f} s")
            kinds: dict[str, list] = collections.defaultdict(lambda: [0, 0.0, 0])
            for s in stats:
                kind = "with a prompt chunk" if s.tokens > s.decode_tokens else f"decode only, {s.sequences} seq"
                kinds[kind][0] += 1
                kinds[kind][1] += s.seconds
                kinds[kind][2] += s.tokens - s.decode_tokens
            for kind, (count, seconds, prompt_tokens) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
                extra = f", {prompt_tokens} prompt tokens" if prompt_tokens else ""
                print(f"    {kind:<22} {count:5d} passes {1e3 * seconds / count:8.1f} ms each, "
                      f"{seconds:6.2f} s = {100 * seconds / wall:4.1f}% of the wall{extra}")
    finally:
        engine.close()


if __name__ == "__main__":
    main()

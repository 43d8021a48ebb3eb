"""``lantern bench [-m MODEL]``: prompt and decode speed, time to first token, load time and peak
memory, as medians over repeats; ``--compare`` runs llama.cpp (llama-cpp-python) on the same file
with the same threads in the same run and prints the ratio lantern / llama.cpp.

Each repeat of each engine runs in a fresh process (see `lantern.benchmark`), so load time and
peak RSS are that engine's alone. The prompts are deterministic token ids (no tokenizer) and
decoding is greedy. Progress goes to stderr, the report to stdout (``--json``: one JSON object).
"""

from __future__ import annotations

import argparse
import json
import sys

from . import add_device_argument, add_model_argument
from .options import positive_int


def prompt_lengths_type(text: str) -> tuple[int, ...]:
    """A comma-separated list of positive token counts, e.g. ``256,512``."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts such as 256,512, got {text!r}")
    values = []
    for p in parts:
        try:
            value = int(p)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated token counts such as 256,512, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"prompt lengths must be positive integers, got {text!r}")
        if value not in values:
            values.append(value)
    return tuple(values)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="measure prompt/decode speed, time to first token, load time and memory (optionally beside llama.cpp)",
        description="Measure a model: prompt tok/s for each prompt length, decode tok/s, time to first "
        "token (a prompt of the first length, then the first greedy token), load time and the "
        "process's peak RSS; medians over repeats, each repeat in a fresh process. Prompts are "
        "deterministic token ids and decoding is greedy, so every run does the same work.",
    )
    add_model_argument(parser)
    add_device_argument(parser)
    parser.add_argument("--repeats", type=positive_int, default=3, metavar="N",
                        help="runs per engine; figures are medians (default: 3)")
    parser.add_argument("--prompt-lengths", type=prompt_lengths_type, default=(256, 512), metavar="N,N",
                        help="prompt lengths in tokens, comma-separated; time to first token and decode "
                        "follow a prompt of the first (default: 256,512)")
    parser.add_argument("--decode-tokens", type=positive_int, default=128, metavar="N",
                        help="greedy tokens to decode (default: 128)")
    parser.add_argument("--compare", action="store_true",
                        help="also run llama.cpp (llama-cpp-python, CPU) on the same file with the same "
                        "threads, one engine after the other, and print the ratios")
    parser.add_argument("--kernels", choices=("fast", "reference"), default=None,
                        help="lantern's weight kernels: fast (converted once at load) or reference "
                        "(float32 dequantize per call, the exact math); default: lantern's own "
                        "default, or $LANTERN_KERNELS")
    parser.add_argument("--speculate", action="store_true",
                        help="also decode an input-grounded task (rewriting a ~400-token text): lantern with "
                        "prompt-lookup speculation, llama.cpp plainly; reports the acceptance rate")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the device, CPU threads and capability, and which kernel "
                        "handles each weight type")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..benchmark import BenchConfig, format_report, run_benchmark
    from ..hub import resolve

    path = resolve(args.model)
    cfg = BenchConfig(
        prompt_lengths=args.prompt_lengths,
        decode_tokens=args.decode_tokens,
        repeats=args.repeats,
        threads=args.threads,
        device=str(args.device),
        kernels=args.kernels,
        progress=not args.quiet,
        speculate=args.speculate,
    )
    engines = ("lantern", "llama.cpp") if args.compare else ("lantern",)
    report = run_benchmark(path, cfg, engines)
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report, verbose=args.verbose))
    sys.stdout.flush()
    return 0

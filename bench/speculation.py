"""Speculative decoding on this machine: what a verify pass costs, and what it buys on real tasks.

    python bench/speculation.py costs MODEL          # seconds of a pass over 1..12 tokens, as x one step
    python bench/speculation.py tasks [MODEL]        # plain greedy vs prompt lookup, three grounded tasks

`costs` times `Model.forward` of n tokens after a 300-token context, with the arg-max of every
row, inside `decode_threads` (as generation runs it), the lengths interleaved, medians of --repeats. `tasks` decodes 128
greedy tokens for a rewrite, a proofread and a verbatim repeat of `lantern.benchmark.GROUNDED_TEXT`,
plain and speculative alternately in one process, medians of --repeats; the default model is
SmolLM2-135M-Instruct (the one real model this environment has).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import lantern  # noqa: E402
from lantern.benchmark import GROUNDED_TEXT  # noqa: E402
from lantern.generate.decode import generate_tokens  # noqa: E402
from lantern.generate.prompts import encode_conversation, messages_for  # noqa: E402
from lantern.generate.sampling import Sampler, SamplerSettings  # noqa: E402
from lantern.generate.speculative import PromptLookup, SpeculationStats, speculative_greedy_tokens  # noqa: E402

TASKS = {
    "rewrite": "Rewrite the following text, keeping every sentence:\n\n" + GROUNDED_TEXT,
    "proofread": "Correct the spelling mistakes in the following text and write it out in full:\n\n"
                 + GROUNDED_TEXT.replace("identity", "identiy").replace("object", "objcet", 3)
                 .replace("mutable", "mutible", 2),
    "repeat": "Repeat the following text word for word:\n\n" + GROUNDED_TEXT,
}


def costs(model, repeats: int) -> None:
    context = list(range(100, 400))
    cache = model.new_cache(1024)
    model.forward(context, cache, last_only=True)
    times = {n: [] for n in range(1, 13)}
    for _ in range(repeats):  # lengths interleaved: drift on a shared machine hits all of them
        for n in times:
            cache.truncate(len(context))
            started = time.perf_counter()
            with model.decode_threads():
                model.forward(list(range(7, 7 + n)), cache).numpy().argmax(axis=-1)
            times[n].append(time.perf_counter() - started)
    seconds = {n: statistics.median(t) for n, t in times.items()}
    print(" ".join(f"{n}: {1000 * s:.2f} ms ({s / seconds[1]:.2f}x)" for n, s in seconds.items()))


def decode(model, ids: list[int], speculative: bool, tokens: int) -> tuple[float, SpeculationStats]:
    stats = SpeculationStats()
    cache = model.new_cache(len(ids) + tokens + 16)
    if speculative:
        gen = speculative_greedy_tokens(model, ids, PromptLookup(), cache, stats=stats)
    else:
        gen = generate_tokens(model, ids, Sampler(SamplerSettings(temperature=0)), cache)
    next(gen)  # the prompt and the first token, as the benchmark's time to first token
    started = time.perf_counter()
    for _ in zip(range(tokens), gen):
        pass
    rate = tokens / (time.perf_counter() - started)
    gen.close()
    return rate, stats


def tasks(model, repeats: int, tokens: int) -> None:
    for name, prompt in TASKS.items():
        ids = encode_conversation(model.tokenizer, model.chat_template, messages_for(prompt))
        rates = {False: [], True: []}
        for _ in range(repeats):
            for speculative in (False, True):
                rate, stats = decode(model, ids, speculative, tokens)
                rates[speculative].append(rate)
        plain, spec = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"{name} ({len(ids)}-token prompt): plain {plain:.1f} tok/s, prompt lookup {spec:.1f} tok/s "
              f"({spec / plain:.2f}x; last run {stats.summary()})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("costs", "tasks"))
    parser.add_argument("model", nargs="?", default="smollm2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = lantern.load(args.model)
    if args.what == "costs":
        costs(model, max(args.repeats, 5))
    else:
        tasks(model, args.repeats, args.tokens)


if __name__ == "__main__":
    main()

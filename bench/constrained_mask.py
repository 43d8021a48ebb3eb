"""What constrained decoding (llguidance) adds per token: the mask computation, applying it to the
logits, and advancing the matcher, for real vocabularies of three sizes.

    python bench/constrained_mask.py [--reps 3]

Vocabularies: SmolLM2 (49,152 byte-level BPE pieces, the real model file), Phi-3 (32,064
SentencePiece pieces) and Qwen3 (151,936 byte-level BPE pieces), the last two from lantern's
vocabulary-only fixtures (lantern.testing.phi3_vocab / npm_vocab). Each constraint is walked token
by token along a valid output (the tokenizer's own tokens of it), timing at every step:

- mask: `Constraint.mask(logits)`: llguidance's bit mask for the next token plus setting the
  forbidden logits to -inf (what the Sampler pays before sampling);
- accept: `Constraint.accept(token)`.

Numbers are per token, in microseconds (median and 95th percentile over all steps and reps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch

from lantern.generate import constrained, tools
from lantern.tokenizer import Tokenizer
from lantern.weights.gguf_file import GGUFFile

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}},
    "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}},
    "required": ["name", "age", "tags", "id"], "additionalProperties": False}
JSON_TEXT = '{"name": "Ada Lovelace, the first programmer", "age": 36, "tags": ["red", "blue"], "id": "ADA-1815"}'
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOL_TEXT = ("I will look up the weather for you in the capital of France now.\n<tool_call>\n"
             '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')


def vocabularies():
    from lantern.hub import resolve
    from lantern.testing import npm_vocab, phi3_vocab

    yield "SmolLM2", resolve("smollm2", progress=False)
    yield "Phi-3", phi3_vocab.cached_phi3_vocab_gguf()
    yield "Qwen3", npm_vocab.cached_vocab_gguf("qwen3")


def walk(model, grammar: str, kind: str, text: str, reps: int):
    tok = model.tokenizer
    c = constrained.Constraint(model, grammar, kind)
    # the tokens of the text as a continuation (no SentencePiece phantom space)
    ids = constrained.lltokenizer(model).tokenize_str(text)
    logits = torch.randn(model.vocab_size)
    masks, accepts = [], []
    for _ in range(reps):
        c.reset()
        for t in ids:
            a = time.perf_counter()
            masked = c.mask(logits)
            b = time.perf_counter()
            assert masked[t] > float("-inf"), (kind, tok.token_text(t))
            assert c.accept(t)
            masks.append(b - a)
            accepts.append(time.perf_counter() - b)
    last = c.mask(logits)
    assert set(torch.nonzero(last > float("-inf")).flatten().tolist()) <= set(tok.stop_ids) | set(
        range(model.vocab_size)) and all(last[s] > float("-inf") for s in tok.stop_ids)
    return len(ids), masks, accepts


def us(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    print("| vocabulary | size | tokenizer build | constraint | compile | tokens | mask median / p95 (us) | accept median (us) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, path in vocabularies():
        tokenizer = Tokenizer.from_gguf(GGUFFile(path))
        model = SimpleNamespace(tokenizer=tokenizer, vocab_size=tokenizer.vocab_size)
        started = time.perf_counter()
        constrained.lltokenizer(model)
        build = time.perf_counter() - started
        cases = [("JSON schema", constrained.grammar_text(json_schema=SCHEMA)[0], JSON_TEXT)]
        tool_list = tools.normalize_tools([WEATHER])
        cases.append(("tools auto (hermes)", constrained._llguidance().LLMatcher.grammar_from_lark(
            tools.hermes_grammar(tool_list, "auto", True)), TOOL_TEXT))
        for kind, grammar, text in cases:
            started = time.perf_counter()
            constrained.Constraint(model, grammar, kind)
            compile_s = time.perf_counter() - started
            n, masks, accepts = walk(model, grammar, kind, text, args.reps)
            print(f"| {name} | {tokenizer.vocab_size:,} | {build:.2f} s | {kind} | {compile_s * 1e3:.0f} ms | {n} | "
                  f"{us(masks, 0.5):.0f} / {us(masks, 0.95):.0f} | {us(accepts, 0.5):.0f} |")


if __name__ == "__main__":
    main()

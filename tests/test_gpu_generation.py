"""What a user runs, on a GPU: greedy and seeded sampling with every sampler, speculation, the
batch engine and a JSON schema, each on the CPU here (so the tests themselves are checked) and on
CUDA where PyTorch sees a GPU (skipped, saying why, elsewhere). A synthetic model, so a lent GPU
machine (no network) needs nothing but lantern.testing to build it. Time: about 20 s on the CPU.
"""

from __future__ import annotations

import json

import pytest
import torch

import lantern
from lantern.generate.batch import BatchEngine
from lantern.generate.decode import generate_tokens
from lantern.generate.sampling import Sampler, SamplerSettings
from lantern.testing.synthetic import Spec, cached_model

from greedy_equality import assert_same_greedy_output

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch on this machine"))]
SPEC = Spec(arch="llama", n_heads=4, n_kv_heads=2, tied_output=True, vocab_size=1024)
PROMPT = "the lantern lit the path, the path led home, the lantern lit the path"


@pytest.fixture(scope="module", params=DEVICES)
def model(request):
    return lantern.load(cached_model(SPEC, "Q4_K_M"), device=request.param)


def test_greedy_generation_is_the_chain_of_argmaxes(model):
    gen = model.complete(PROMPT, chat=False, temperature=0, max_tokens=24)
    assert gen.sampled_ids and gen.finish_reason in ("stop", "length")
    cache = model.new_cache()
    logits = model.forward(gen.prompt_ids, cache, last_only=True, prompt=True)
    chain = []
    for _ in gen.sampled_ids:
        chain.append(int(logits[-1].argmax()))
        logits = model.forward([chain[-1]], cache, last_only=True)
    assert_same_greedy_output(model, gen.prompt_ids, chain, gen.sampled_ids)


def test_seeded_sampling_with_every_sampler_repeats(model):
    options = dict(chat=False, max_tokens=24, temperature=0.9, top_k=40, top_p=0.9, min_p=0.05,
                   repeat_penalty=1.1, frequency_penalty=0.2, presence_penalty=0.1)
    first = model.complete(PROMPT, seed=5, **options)
    again = model.complete(PROMPT, seed=5, **options)
    assert first.sampled_ids == again.sampled_ids and first.text == again.text
    assert first.finish_reason in ("stop", "length")


def test_prompt_lookup_speculation_gives_the_plain_greedy_output(model):
    plain = model.complete(PROMPT, chat=False, temperature=0, max_tokens=32)
    spec = model.complete(PROMPT, chat=False, temperature=0, max_tokens=32, speculate="lookup")
    assert_same_greedy_output(model, plain.prompt_ids, plain.sampled_ids, spec.sampled_ids)


def test_batch_engine_gives_each_request_its_output_alone(model):
    prompts = [model.tokenizer.encode(p) for p in (PROMPT, "home is where", "a b c d e f")]
    alone = []
    for ids in prompts:
        tokens = generate_tokens(model, ids, Sampler(temperature=0))
        alone.append([next(tokens) for _ in range(12)])
    with BatchEngine(model, parallel=3) as engine:
        handles = [engine.submit(ids, SamplerSettings(temperature=0), max_tokens=12, ignore_eos=True)
                   for ids in prompts]
        outputs = [list(h.tokens()) for h in handles]
    for ids, single, batched in zip(prompts, alone, outputs):
        assert_same_greedy_output(model, ids, single, batched)


def test_json_schema_output_parses(model):
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green"]}},
              "required": ["colour"], "additionalProperties": False}
    # The random model wanders in the whitespace JSON allows; 96 tokens let it finish (6 of 6
    # seeds on the CPU).
    stops = 0
    for seed in range(4):
        gen = model.complete(PROMPT, chat=False, temperature=1.0, seed=seed, max_tokens=96, json_schema=schema)
        assert gen.finish_reason in ("stop", "length")
        if gen.finish_reason == "stop":
            stops += 1
            assert json.loads(gen.text)["colour"] in ("red", "green")
    assert stops >= 2, f"only {stops} of 4 finished"

"""Constrained decoding (lantern.generate.constrained, over llguidance) and logprobs recording,
on the real SmolLM2 model.

Time budget: about 2 minutes on a quiet 2-core machine (SmolLM2 loaded once; some 30 short
completions of up to 48 tokens; three `lantern run` processes).

The constraints ask for what the model would never write unprompted (a made-up enum and an
ID pattern, at temperature 1.5), so the tests cannot pass by the model happening to comply: every
completion that finishes "stop" must parse and validate, and most of them must finish.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from lantern.errors import LanternError
from lantern.generate import constrained
from lantern.generate.decode import prefill
from lantern.generate.sampling import Sampler, SamplerSettings, token_logprob

COLORS = ["zorblax", "quuxite", "vermillion-7"]
SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": COLORS},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
        "count": {"type": "integer", "minimum": 2, "maximum": 9},
    },
    "required": ["color", "code", "count"],
    "additionalProperties": False,
}
PROMPT = "Tell me a short story about the sea."


def valid(obj) -> bool:
    """SCHEMA, checked by hand (jsonschema is not a dependency)."""
    return (isinstance(obj, dict) and set(obj) == {"color", "code", "count"}
            and obj["color"] in COLORS
            and isinstance(obj["code"], str) and re.fullmatch(r"[A-Z]{3}-[0-9]{4}", obj["code"]) is not None
            and type(obj["count"]) is int and 2 <= obj["count"] <= 9)


@pytest.fixture(scope="module")
def model(smollm2_path):
    import lantern

    return lantern.load(smollm2_path)


def test_unprompted_the_model_never_writes_the_enum(model):
    """The control: without the constraint, the same prompt at the same temperature gives none of
    the made-up values."""
    for seed in range(2):
        text = model.complete(PROMPT, temperature=1.5, seed=seed, max_tokens=30).text
        assert not any(c in text for c in COLORS)
        assert re.search(r"[A-Z]{3}-[0-9]{4}", text) is None


def test_json_schema_at_temperature_1_5_many_seeds(model):
    stops = 0
    for seed in range(8):
        gen = model.complete(PROMPT, temperature=1.5, seed=seed, max_tokens=48, json_schema=SCHEMA)
        assert gen.finish_reason in ("stop", "length")
        if gen.finish_reason == "stop":
            stops += 1
            assert valid(json.loads(gen.text)), gen.text
            assert gen.sampled_ids[-1] in model.tokenizer.stop_ids  # ended by end-of-generation
    assert stops >= 4, f"only {stops} of 8 finished"  # the others ran out of tokens mid-object


def test_json_object_and_schema_as_text(model):
    for seed in range(3):
        gen = model.complete("Describe a cat.", temperature=1.5, seed=seed, max_tokens=40,
                             json_schema='{"type": "object"}')
        if gen.finish_reason == "stop":
            assert isinstance(json.loads(gen.text), dict)
    # OpenAI's response_format and Ollama's format give the same constraints
    assert constrained.from_response_format(model, {"type": "text"}) is None
    c = constrained.from_response_format(model, {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    assert c.kind == "JSON schema"
    assert constrained.from_ollama_format(model, "json").kind == "JSON schema"
    with pytest.raises(LanternError, match="response_format type"):
        constrained.from_response_format(model, {"type": "yaml"})


def test_regex_lark_and_gbnf(model):
    cases = [
        (dict(regex=r"[0-9]{2,5}-(yes|no)"), r"[0-9]{2,5}-(yes|no)"),
        (dict(grammar='start: "ID-" DIGITS ("!" | "?")\nDIGITS: /[0-9]{3}/'), r"ID-[0-9]{3}[!?]"),
        (dict(grammar='root ::= "x" [0-9] [0-9]? ("a" | "b")'), r"x[0-9]{1,2}[ab]"),
    ]
    for options, pattern in cases:
        stops = 0
        for seed in range(3):
            gen = model.complete("Say hello.", temperature=1.5, seed=seed, max_tokens=12, **options)
            if gen.finish_reason == "stop":
                stops += 1
                assert re.fullmatch(pattern, gen.text), (options, gen.text)
        assert stops >= 2, options


def test_errors_are_one_line(model):
    cases = [
        (dict(grammar="start: foo"), "grammar error: .*unknown name"),
        (dict(grammar='root ::= ( "a"'), "grammar error"),
        (dict(regex="a(b"), "regex error: .*unclosed group"),
        (dict(json_schema={"type": "foo"}), "JSON schema error: .*foo"),
        (dict(json_schema="{not json"), "JSON schema error: the schema is not valid JSON"),
        (dict(json_schema=[1]), "JSON schema error: a schema must be a JSON object"),
        (dict(regex="a", grammar="start: \"a\""), "give exactly one"),
    ]
    for options, message in cases:
        with pytest.raises(LanternError) as info:
            model.generate("hi", **options)
        text = str(info.value)
        assert "\n" not in text and re.match(message, text), text


def test_mask_allows_only_end_of_generation_when_complete(model):
    c = constrained.make_constraint(model, regex="ab")
    logits = torch.randn(model.vocab_size)
    before = logits.clone()
    rest = b"ab"
    while rest:
        masked = c.mask(logits)
        allowed = torch.nonzero(masked > float("-inf")).flatten().tolist()
        # only tokens that spell a start of what is left (llguidance forces the canonical
        # tokens of forced text: here the one token "ab")
        assert allowed and all(rest.startswith(model.tokenizer.token_bytes(t)) for t in allowed)
        assert c.accept(allowed[0])
        rest = rest[len(model.tokenizer.token_bytes(allowed[0])):]
    assert torch.equal(logits, before)  # mask never changes its input
    assert c.done
    allowed = set(torch.nonzero(c.mask(logits) > float("-inf")).flatten().tolist())
    assert allowed == set(model.tokenizer.stop_ids)
    c.reset()
    assert not c.done and not c.accepting
    # a forbidden token puts it in error; then only end-of-generation is allowed
    assert not c.accept(model.tokenizer.encode("z", add_bos=False)[0])
    assert set(torch.nonzero(c.mask(logits) > float("-inf")).flatten().tolist()) == set(model.tokenizer.stop_ids)


def test_sentencepiece_vocabulary_masks_real_bytes():
    """Phi-3's SentencePiece vocabulary: `▁{` is " {" and byte tokens are their byte, so a JSON
    object may start with "{" tokens but not " {" ones (llguidance must not be told that
    encoding adds a space: it would read every token one byte off)."""
    from types import SimpleNamespace

    from lantern.testing import phi3_vocab
    from lantern.tokenizer import Tokenizer
    from lantern.weights.gguf_file import GGUFFile

    tokenizer = Tokenizer.from_gguf(GGUFFile(phi3_vocab.cached_phi3_vocab_gguf()))
    vocab = SimpleNamespace(tokenizer=tokenizer, vocab_size=tokenizer.vocab_size)
    c = constrained.make_constraint(vocab, json_schema={"type": "object"})
    allowed = torch.nonzero(c.allowed()).flatten().tolist()
    assert all(tokenizer.token_bytes(t).startswith(b"{") for t in allowed)
    assert tokenizer.token_to_id["<0x7B>"] in allowed and tokenizer.token_to_id["{"] in allowed
    assert tokenizer.token_to_id["\u2581{"] not in allowed
    assert c.accept(tokenizer.token_to_id["{}"]) and c.accepting


def test_the_llguidance_tokenizer_is_built_once_per_model(model):
    assert constrained.lltokenizer(model) is constrained.lltokenizer(model)
    tok = constrained.lltokenizer(model)
    # byte-level BPE pieces map to real bytes: "Ġthe" is " the"
    the = model.tokenizer.encode(" the", add_bos=False)
    assert tok.decode_bytes(the) == b" the"
    assert all(tok.is_special_token(t) for t in model.tokenizer.stop_ids)


def test_logprobs_are_the_models_own(model):
    gen = model.generate(PROMPT, temperature=1.5, seed=3, max_tokens=6, logprobs=3)
    gen.complete()
    records = gen.sampler.logprobs
    assert [r.token for r in records] == gen.sampled_ids
    # the first record against the model's logits for the prompt, before temperature, read the
    # way generation reads a prompt (prefill: at avx512 another route's bf16 rounding moves
    # logits by a few hundredths)
    _, logits = prefill(model, gen.prompt_ids, model.new_cache())
    lp = torch.log_softmax(logits[-1].float(), dim=-1)
    first = records[0]
    assert math.isclose(first.logprob, float(lp[first.token]), abs_tol=1e-3)
    assert len(first.top) == 3 and first.top[0][0] == int(lp.argmax())
    assert [v for _, v in first.top] == sorted((v for _, v in first.top), reverse=True)
    assert all(r.logprob <= 0 for r in records)
    # off by default; `reset` restarts the record
    s = Sampler(SamplerSettings(temperature=0), logprobs=0)
    x = torch.tensor([0.0, 2.0, 1.0])
    assert s(x) == 1 and s.logprobs[0].top == () and math.isclose(
        s.logprobs[0].logprob, float(torch.log_softmax(x, -1)[1]), rel_tol=1e-6)
    s.reset()
    assert s.logprobs == []
    assert Sampler(SamplerSettings()).top_logprobs is None
    with pytest.raises(LanternError, match="top-logprobs"):
        Sampler(SamplerSettings(), logprobs=21)
    assert token_logprob(x, 2, 5).top[0] == (1, pytest.approx(float(torch.log_softmax(x, -1)[1])))


def test_constrained_greedy_through_the_sampler_chain(model):
    """The mask comes before penalties and filters: with top-k 1 and a repeat penalty the chosen
    token is still an allowed one."""
    for settings in (SamplerSettings(temperature=0), SamplerSettings(temperature=1.0, top_k=1, seed=1),
                     SamplerSettings(temperature=1.0, top_p=0.01, repeat_penalty=1.3, seed=2)):
        c = constrained.make_constraint(model, regex="(red|green|blue)")
        sampler = Sampler(settings, c)
        sampler.reset([1, 2, 3])
        logits = model.logits(model.tokenize("My favourite colour is"))[-1]
        token = sampler(logits)
        assert any(w.startswith(model.tokenizer.token_bytes(token).decode()) for w in ("red", "green", "blue"))


def test_cli_json_schema_and_grammar(tmp_path, smollm2_path):
    import subprocess
    import sys

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    grammar = tmp_path / "g.gbnf"
    grammar.write_text('root ::= "Answer: " ("yes" | "no")\n')
    out = subprocess.run([sys.executable, "-m", "lantern", "run", "-m", str(smollm2_path), "--temperature", "1.5",
                          "--seed", "1", "-n", "40", "--json-schema", str(schema), PROMPT],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    if "finish reason: stop" in out.stderr:
        assert valid(json.loads(out.stdout))
    out = subprocess.run([sys.executable, "-m", "lantern", "run", "-m", str(smollm2_path), "--seed", "2",
                          "--grammar", str(grammar), "Is the sea blue?"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("Answer: yes", "Answer: no")
    bad = subprocess.run([sys.executable, "-m", "lantern", "run", "-m", str(smollm2_path), "--grammar",
                          str(tmp_path / "missing.lark"), "hi"], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "--grammar: cannot read" in bad.stderr

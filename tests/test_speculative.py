"""Speculative decoding: same greedy output as plain decoding, fewer forward passes.

Real model (SmolLM2-135M-Instruct Q4_1), real input-grounded task (rewrite a given text).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

import lantern
from lantern.generate.stream import SpeculationWarning
from lantern.generate.speculative import DraftLength, DraftModel, PromptLookup
from lantern.testing.synthetic import cached_reference

from greedy_equality import assert_same_greedy_output

MAX_TOKENS = 48


@pytest.fixture(scope="module")
def model(smollm2_path):
    return lantern.load(smollm2_path)


@pytest.fixture(scope="module")
def rewrite_prompt(english_text):
    return "Rewrite the following text, keeping every sentence:\n\n" + english_text[:1500]


def test_draft_length_pays_for_itself_or_drafts_nothing():
    policy = DraftLength(max_draft=8)
    assert policy.choose(8) == 0  # nothing measured yet: a plain step first
    policy.time(1, 1.0)
    assert policy.choose(8) >= 1  # then drafts get tried (optimistic about unmeasured lengths)
    for n, seconds in {2: 1.3, 3: 1.7, 5: 2.6, 9: 4.6}.items():
        policy.time(n, seconds)
    assert policy.cost(9) == pytest.approx(4.6) and policy.cost(4) == pytest.approx(2.15)  # interpolated
    assert policy.cost(10) == pytest.approx(4.6 * (1 + 0.3 / 9))  # one past the longest: optimistic
    assert policy.cost(12) == pytest.approx(4.6 * 12 / 9)  # further out: proportional
    for _ in range(30):
        policy.observe(4, 4)  # drafts keep being right: long ones pay
    assert policy.choose(8) >= 4 and policy.choose(2) == 2
    for _ in range(30):
        policy.observe(1, 0)  # they stop being right: a verify pass costs more than it yields
    assert policy.choose(8) == 0
    policy.time(2, 1.05)  # unless passes of two cost hardly more than one
    for _ in range(30):
        policy.observe(2, 1)
    assert policy.choose(8) >= 1
    for _ in range(30):  # each kind of proposal (prompt lookup's match length) has its own rates
        policy.observe(4, 4, kind=3)
        policy.observe(1, 0, kind=2)
    assert policy.choose(8, kind=3) >= 4 and policy.choose(8, kind=2) == 0


def test_one_slow_pass_does_not_rule_a_draft_length_out():
    """A length timed once during a stall would otherwise never be chosen, so never re-measured."""
    policy = DraftLength(max_draft=8)
    for _ in range(5):
        policy.time(1, 0.020)
    policy.time(2, 0.090)  # the first 2-token pass pays a one-time cost
    assert policy.cost(2) == pytest.approx(0.020 + 0.3 * 0.020)  # once: no more than its neighbours say
    policy.time(5, 0.034)
    policy.time(3, 0.097)
    assert policy.cost(3) == pytest.approx(0.034)  # nor more than a longer pass measured
    for _ in range(30):
        policy.observe(1, 1)
        policy.observe(2, 2)
    assert policy.choose(1) == 1
    policy.time(2, 0.024)  # measured again: the faster of the first two stands, then smoothing
    assert policy.seconds[2] == pytest.approx(0.024)
    policy.time(2, 0.034)
    assert policy.seconds[2] == pytest.approx(0.8 * 0.024 + 0.2 * 0.034)


def test_prompt_lookup_says_which_match_it_proposes_from():
    lookup = PromptLookup(max_ngram=3, min_ngram=2)
    assert lookup.propose([1, 2, 3, 4, 9, 2, 3]) == [4, 9, 2, 3] and lookup.match == 2
    assert lookup.propose([1, 2, 3, 4, 9, 2, 3, 4, 9, 1, 2, 3]) == [4, 9, 2, 3, 4, 9, 1, 2, 3] and lookup.match == 3
    assert lookup.propose([7, 8]) == [] and lookup.match == 0


def test_prompt_lookup_proposes_what_followed_the_last_ngram():
    lookup = PromptLookup(max_draft=3, max_ngram=2, min_ngram=1)
    assert lookup.propose([5, 6, 7, 8, 9, 1, 6, 7]) == [8, 9, 1]
    assert lookup.propose([5, 6, 7, 8, 9, 1, 6, 7], limit=1) == [8]
    assert lookup.propose([1, 2, 3]) == []  # another sequence: the index starts over
    assert PromptLookup(min_ngram=2).propose([5, 6, 7, 1, 7]) == []  # a lone repeated token is no match


@pytest.mark.parametrize("min_ngram", [1, 2])
def test_prompt_lookup_index_follows_a_growing_sequence(min_ngram):
    """The incremental n-gram index proposes exactly what a search of the whole sequence finds
    (the latest earlier occurrence of the longest matching suffix), token by token."""
    import numpy as np

    def search(seq, k, max_ngram=3):
        for n in range(min(max_ngram, len(seq) - 1), min_ngram - 1, -1):
            hits = [i for i in range(len(seq) - n) if seq[i:i + n] == seq[len(seq) - n:]]
            if hits:
                return seq[hits[-1] + n:hits[-1] + n + k]
        return []

    seq = [int(t) for t in np.random.default_rng(1).integers(0, 6, 400)]
    lookup = PromptLookup(max_draft=5, min_ngram=min_ngram)
    for end in range(1, len(seq) + 1):
        assert lookup.propose(seq[:end]) == search(seq[:end], 5), end


def test_prompt_lookup_matches_plain_greedy_with_fewer_passes(model, rewrite_prompt):
    plain = model.complete(rewrite_prompt, temperature=0, max_tokens=MAX_TOKENS)
    spec = model.complete(rewrite_prompt, temperature=0, max_tokens=MAX_TOKENS, speculate="lookup")
    assert_same_greedy_output(model, plain.prompt_ids, plain.token_ids, spec.token_ids)
    stats = spec.speculation
    print(stats.summary())
    # Rewriting a given text repeats it: on average every pass yields at least two tokens.
    assert stats.verify_passes <= len(spec.token_ids) / 2
    assert stats.acceptance_rate > 0.2


def test_draft_model_matches_target_greedy(smollm2_path, model, rewrite_prompt):
    """The Q4_1 file drafts for its exact float32 copy (same vocabulary, a heavier model)."""
    target = lantern.load(cached_reference(smollm2_path))
    prompt = "Answer in one sentence: why is the sky blue?"
    plain = target.complete(prompt, temperature=0, max_tokens=32)
    spec = target.complete(prompt, temperature=0, max_tokens=32, speculate=model)
    assert_same_greedy_output(target, plain.prompt_ids, plain.token_ids, spec.token_ids)
    assert spec.speculation.acceptance_rate > 0.3


def test_draft_model_vocabulary_must_match(model):
    from lantern.testing.synthetic import Spec, cached_model

    other = lantern.load(cached_model(Spec(arch="llama", n_kv_heads=2, vocab_size=1024), "Q8_0"))
    with pytest.raises(lantern.LanternError, match="vocabulary"):
        model.generate("hi", temperature=0, speculate=other)


def test_sampled_decoding_is_not_speculated(model):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen = model.complete("Say hello.", temperature=0.7, seed=1, max_tokens=8, speculate="lookup")
    assert gen.speculation is None
    assert any(issubclass(w.category, SpeculationWarning) for w in caught)
    again = model.complete("Say hello.", temperature=0.7, seed=1, max_tokens=8)
    assert gen.token_ids == again.token_ids


def test_chat_session_keeps_a_consistent_cache_with_speculation(model):
    plain, spec = model.chat(temperature=0), model.chat(temperature=0, speculate="lookup")
    for question in ["Repeat exactly: the quick brown fox jumps over the lazy dog.", "Now say it again."]:
        a = plain.send(question, max_tokens=24).complete()
        b = spec.send(question, max_tokens=24).complete()
        assert_same_greedy_output(model, a.prompt_ids, a.token_ids, b.token_ids)
        assert a.prompt_ids == b.prompt_ids
    # The cache holds exactly the conversation so far (prompt and answer but the last token).
    assert spec.cache.length == len(b.prompt_ids) + len(b.sampled_ids) - 1


def test_command_line_speculate_reports_acceptance(smollm2_path):
    result = subprocess.run(
        [sys.executable, "-m", "lantern", "run", "-m", str(smollm2_path), "--temperature", "0", "-n", "24",
         "--speculate", "Repeat exactly: one two three four five six seven eight nine ten."],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "speculation:" in result.stderr and "accepted" in result.stderr
    assert result.stdout.strip()

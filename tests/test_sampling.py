"""Sampling functions on small hand-written distributions, the chain's statistics, seeds."""

import math

import pytest
import torch

from lantern.errors import LanternError
from lantern.generate.sampling import (
    Sampler,
    SamplerSettings,
    apply_frequency_presence,
    apply_repeat_penalty,
    apply_temperature,
    greedy,
    min_p,
    sample,
    softmax,
    top_k,
    top_k_ids,
    top_p,
)

INF = float("inf")


def logits_of(probs):
    return torch.tensor([math.log(p) if p > 0 else -INF for p in probs], dtype=torch.float32)


def assert_probs(logits, expected):
    got = softmax(logits)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


# ----- penalties -----------------------------------------------------------------------------


def test_repeat_penalty_is_sign_aware_and_counts_each_token_once():
    logits = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.0])
    out = apply_repeat_penalty(logits, [0, 1, 1, 1, 3, 4], 2.0)
    # positive divided, negative multiplied, token 1 penalised once although it occurs 3 times,
    # token 2 untouched, a zero logit stays zero.
    assert out.tolist() == [1.0, -2.0, 0.5, 1.5, 0.0]
    assert logits.tolist() == [2.0, -1.0, 0.5, 3.0, 0.0]  # input not modified


def test_repeat_penalty_one_is_identity_and_ignores_out_of_range_ids():
    logits = torch.tensor([1.0, -1.0])
    assert apply_repeat_penalty(logits, [0, 1], 1.0).tolist() == [1.0, -1.0]
    assert apply_repeat_penalty(logits, [5, -1], 1.3).tolist() == [1.0, -1.0]


def test_frequency_and_presence_penalties_follow_llama_cpp():
    logits = torch.tensor([1.0, 1.0, 1.0, 1.0])
    out = apply_frequency_presence(logits, [0, 0, 2], 0.5, 0.25)
    # token 0: count 2 -> 1 - 2*0.5 - 0.25; token 2: count 1 -> 1 - 0.5 - 0.25
    assert out.tolist() == [-0.25, 1.0, 0.25, 1.0]


# ----- temperature and filters ---------------------------------------------------------------


def test_temperature_scales_logits():
    logits = torch.tensor([1.0, 2.0, 3.0])
    out = apply_temperature(logits, 0.5)
    assert out.tolist() == [2.0, 4.0, 6.0]
    z = math.exp(2) + math.exp(4) + math.exp(6)
    assert_probs(out, [math.exp(2) / z, math.exp(4) / z, math.exp(6) / z])


def test_temperature_zero_is_argmax_with_lowest_id_on_ties():
    logits = torch.tensor([1.0, 5.0, 2.0, 5.0])
    assert_probs(apply_temperature(logits, 0.0), [0.0, 1.0, 0.0, 0.0])


def test_top_k_keeps_k_most_likely():
    logits = logits_of([0.1, 0.4, 0.2, 0.3])
    assert_probs(top_k(logits, 2), [0.0, 4 / 7, 0.0, 3 / 7])
    assert_probs(top_k(logits, 0), [0.1, 0.4, 0.2, 0.3])  # 0 = off
    assert_probs(top_k(logits, 10), [0.1, 0.4, 0.2, 0.3])


def test_top_k_ties_keep_exactly_k_lowest_ids_first():
    logits = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])
    kept = top_k(logits, 2)
    assert torch.isfinite(kept).tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("seed", range(6))
def test_top_k_ids_are_the_ids_top_k_keeps(seed):
    """The sampler's fast top-k (one topk pass) keeps exactly top_k's set, ties included."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(5000, generator=g)
    if seed % 2:  # ties across the k-th place, and at the top
        logits = torch.randint(0, 6, (5000,), generator=g).float()
    for k in (1, 2, 40, 4999):
        expected = torch.nonzero(top_k(logits, k) != -INF).flatten()
        assert torch.equal(top_k_ids(logits, k), expected)


def test_greedy_is_the_lowest_id_among_the_largest():
    assert greedy(torch.tensor([1.0, 5.0, 2.0, 5.0])) == 1
    assert greedy(torch.tensor([-INF, -3.0, -INF])) == 1


def test_top_p_keeps_smallest_set_reaching_p():
    logits = logits_of([0.1, 0.4, 0.2, 0.3])
    # sorted 0.4, 0.3 (0.7 >= 0.65): two tokens
    assert_probs(top_p(logits, 0.65), [0.0, 4 / 7, 0.0, 3 / 7])
    # 0.4 + 0.3 < 0.75, + 0.2 = 0.9: three tokens
    assert_probs(top_p(logits, 0.75), [0.0, 4 / 9, 2 / 9, 3 / 9])
    # p = 0 still keeps the most likely token; p = 1 keeps all
    assert_probs(top_p(logits, 0.0), [0.0, 1.0, 0.0, 0.0])
    assert_probs(top_p(logits, 1.0), [0.1, 0.4, 0.2, 0.3])
    assert_probs(top_p(logits, 0.3), [0.0, 1.0, 0.0, 0.0])


def test_min_p_is_relative_to_the_most_likely_token():
    logits = logits_of([0.1, 0.4, 0.2, 0.3])
    # threshold 0.6 * 0.4 = 0.24: tokens 1 and 3
    assert_probs(min_p(logits, 0.6), [0.0, 4 / 7, 0.0, 3 / 7])
    # threshold 0.3 * 0.4 = 0.12: tokens 1, 2, 3
    assert_probs(min_p(logits, 0.3), [0.0, 4 / 9, 2 / 9, 3 / 9])
    assert_probs(min_p(logits, 0.0), [0.1, 0.4, 0.2, 0.3])
    assert_probs(min_p(logits, 1.0), [0.0, 1.0, 0.0, 0.0])


def test_filters_compose_on_already_filtered_logits():
    logits = logits_of([0.05, 0.4, 0.2, 0.3, 0.05])
    x = top_k(logits, 3)  # 0.4 0.3 0.2 -> 4/9 3/9 2/9
    x = top_p(x, 0.7)  # 4/9 + 3/9 = 0.78 >= 0.7 -> tokens 1, 3
    assert_probs(x, [0.0, 4 / 7, 0.0, 3 / 7, 0.0])
    x = min_p(x, 0.8)  # 3/7 >= 0.8 * 4/7? 0.43 < 0.457 -> only token 1
    assert_probs(x, [0.0, 1.0, 0.0, 0.0, 0.0])


def test_sample_draws_from_the_distribution_given_a_generator():
    probs = torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert sample(probs) == 2
    g1 = torch.Generator().manual_seed(7)
    g2 = torch.Generator().manual_seed(7)
    p = torch.tensor([0.25, 0.25, 0.25, 0.25])
    assert [sample(p, g1) for _ in range(20)] == [sample(p, g2) for _ in range(20)]


# ----- the chain -----------------------------------------------------------------------------


def reference_distribution(logits, k, p, mp, temperature):
    """The chain's target distribution, computed from the definitions in plain Python."""
    values = logits.tolist()
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]
    z = sum(math.exp(values[i]) for i in order)
    cum, kept = 0.0, []
    for i in order:  # top-p at temperature 1 on the top-k survivors
        kept.append(i)
        cum += math.exp(values[i]) / z
        if cum >= p:
            break
    best = max(values[i] for i in kept)
    kept = [i for i in kept if math.exp(values[i] - best) >= mp]  # min-p
    w = {i: math.exp(values[i] / temperature) for i in kept}  # temperature last
    total = sum(w.values())
    return [w.get(i, 0.0) / total for i in range(len(values))]


def chi_square_p_value(counts, expected_probs, n):
    """Pearson's chi-square goodness of fit over the cells with non-zero expectation."""
    stat, cells = 0.0, 0
    for c, q in zip(counts, expected_probs):
        if q > 0:
            e = n * q
            stat += (c - e) ** 2 / e
            cells += 1
    df = cells - 1
    # survival function of chi-square(df) = regularized upper incomplete gamma Q(df/2, stat/2)
    return float(torch.special.gammaincc(torch.tensor(df / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2.0, dtype=torch.float64)))


@pytest.fixture(scope="module")
def chain_case():
    g = torch.Generator().manual_seed(1234)
    logits = torch.randn(50, generator=g) * 1.5
    settings = dict(top_k=12, top_p=0.9, min_p=0.08, temperature=0.7)
    expected = reference_distribution(logits, 12, 0.9, 0.08, 0.7)
    return logits, settings, expected


def test_sampler_probs_match_reference_chain(chain_case):
    logits, settings, expected = chain_case
    sampler = Sampler(seed=0, **settings)
    assert sampler.probs(logits).tolist() == pytest.approx(expected, abs=1e-6)
    # The chain really truncates: fewer survivors than top-k, more than one.
    assert 1 < sum(q > 0 for q in expected) < 12


def test_sampled_frequencies_match_the_truncated_distribution(chain_case):
    logits, settings, expected = chain_case
    sampler = Sampler(seed=2024, **settings)
    n = 20000
    counts = [0] * len(expected)
    for _ in range(n):
        counts[sampler(logits)] += 1
    # Nothing outside the kept set is ever drawn.
    assert all(c == 0 for c, q in zip(counts, expected) if q == 0)
    assert chi_square_p_value(counts, expected, n) > 1e-3
    # The test has power: the same draws reject the untruncated temperature-0.7 distribution
    # and the temperature-1 truncated one.
    wrong = softmax(logits / 0.7).tolist()
    assert chi_square_p_value(counts, wrong, n) < 1e-3
    wrong_t = reference_distribution(logits, 12, 0.9, 0.08, 1.0)
    assert chi_square_p_value(counts, wrong_t, n) < 1e-3


def test_same_seed_same_tokens_different_seed_different_tokens():
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    a = Sampler(seed=42, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    b = Sampler(seed=42, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    c = Sampler(seed=43, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    draws_a = [a(logits) for _ in range(30)]
    assert draws_a == [b(logits) for _ in range(30)]
    assert draws_a != [c(logits) for _ in range(30)]
    a.reseed(42)
    assert [a(logits) for _ in range(30)] == draws_a


def test_no_seed_picks_a_random_seed_and_records_it():
    a, b = Sampler(), Sampler()
    assert a.seed != b.seed
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(3))
    replay = Sampler(seed=a.seed, temperature=1.5, top_k=0)
    a2 = Sampler(seed=a.seed, temperature=1.5, top_k=0)
    assert [replay(logits) for _ in range(10)] == [a2(logits) for _ in range(10)]


def test_greedy_is_argmax_after_penalties_lowest_id_on_ties():
    s = Sampler(temperature=0.0)
    assert s(torch.tensor([0.0, 3.0, 1.0, 3.0])) == 1
    assert s(torch.tensor([[0.0, 1.0, 4.0]])) == 2  # [1, vocab] accepted
    p = Sampler(temperature=0.0, repeat_penalty=2.0, repeat_last_n=2)
    p.reset([2, 0, 1])  # window of 2: tokens 0 and 1 are recent, token 2 is not
    logits = torch.tensor([3.0, 2.9, 1.6])
    assert p(logits) == 2  # 3.0/2 = 1.5, 2.9/2 = 1.45, 1.6 untouched
    p.reset([0])
    p.accept(2)
    p.accept(1)
    assert p.recent == [2, 1]
    assert p(logits) == 0


def test_penalties_apply_in_the_chain_before_truncation():
    s = Sampler(temperature=1.0, top_k=1, repeat_penalty=4.0, seed=0)
    logits = torch.tensor([2.0, 1.0, 0.0])
    s.reset([0])
    assert s.probs(logits).tolist() == [0.0, 1.0, 0.0]  # 2.0/4 = 0.5 < 1.0
    s_off = Sampler(temperature=1.0, top_k=1, repeat_penalty=4.0, repeat_last_n=0, seed=0)
    s_off.reset([0])
    assert s_off.probs(logits).tolist() == [1.0, 0.0, 0.0]


def test_defaults_are_llama_cpp_defaults():
    s = SamplerSettings()
    assert (s.temperature, s.top_k, s.top_p, s.min_p) == (0.8, 40, 0.95, 0.05)
    assert (s.repeat_penalty, s.repeat_last_n, s.frequency_penalty, s.presence_penalty) == (1.0, 64, 0.0, 0.0)
    assert s.seed is None


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(top_p=1.5), "top-p must be between 0 and 1"),
        (dict(top_p=-0.1), "top-p must be between 0 and 1"),
        (dict(min_p=2.0), "min-p must be between 0 and 1"),
        (dict(temperature=-1.0), "temperature must be 0 (greedy) or at least 1e-06"),
        (dict(temperature=1e-320), "temperature must be 0 (greedy) or at least 1e-06"),
        (dict(temperature=float("nan")), "temperature must be a finite number"),
        (dict(top_k=-3), "top-k must be >= 0"),
        (dict(top_k=2.5), "top-k must be an integer"),
        (dict(repeat_penalty=0.0), "repeat-penalty must be at least 1e-06"),
        (dict(repeat_last_n=-2), "repeat-last-n must be between 0 and 2**31-1"),
        (dict(repeat_last_n=2**40), "repeat-last-n must be between 0 and 2**31-1"),
        (dict(seed=-1), "seed must be an integer"),
    ],
)
def test_invalid_settings_raise_one_line_errors(kwargs, words):
    with pytest.raises(LanternError) as info:
        SamplerSettings(**kwargs)
    assert words in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(LanternError):
        Sampler(**kwargs)

"""Greedy outputs that must be the same whatever the pass shapes (speculative verify passes, batches
of several sequences), up to near-ties: the rule the tests share."""

from __future__ import annotations


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def assert_same_greedy_output(model, prompt_ids, plain, other, batched_logits=None):
    """Identical, or the first difference is a near-tie: the plain run's top two logits there are
    closer than one-token decoding and a batched pass differ on those logits. batched_logits:
    the last token's logits after a context as `other`'s passes form them (default: the whole
    context in one pass, `Model.logits`)."""
    i = first_divergence(plain, other)
    if i is None:
        return
    context = prompt_ids + plain[:i]
    cache = model.new_cache()
    model.forward(context[:-1], cache)
    single = model.forward(context[-1:], cache)[0]
    batched = batched_logits(context) if batched_logits else model.logits(context)[-1]
    top2 = single.topk(2).values
    noise = float((single - batched).abs().max())
    assert float(top2[0] - top2[1]) <= 2 * noise, (
        f"outputs differ at token {i} where the top-2 margin {float(top2[0] - top2[1]):.4f} is not a near-tie "
        f"(one-token vs batched logits differ by {noise:.4f})"
    )

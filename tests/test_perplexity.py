"""Perplexity of the real SmolLM2 Q4_1 on real English text: lantern within 1% of llama.cpp."""

import numpy as np
import torch

import lantern
from lantern.testing.oracle import llama_cpp_logits

TOKENS = 2048


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    log_probs = torch.log_softmax(torch.as_tensor(logits[:-1], dtype=torch.float64), dim=-1)
    targets = torch.as_tensor(ids[1:])
    return float(torch.exp(-log_probs[torch.arange(len(targets)), targets].mean()))


def test_smollm2_perplexity_matches_llama_cpp(smollm2_path, english_token_ids):
    ids = english_token_ids[:TOKENS]
    assert len(ids) == TOKENS
    ours = perplexity(lantern.load(smollm2_path).logits(ids).numpy(), ids)
    theirs = perplexity(llama_cpp_logits(smollm2_path, ids), ids)
    print(f"perplexity over {TOKENS} tokens: lantern {ours:.4f}, llama.cpp {theirs:.4f}")
    assert abs(ours - theirs) <= 0.01 * theirs
    assert ours < 30, "a 135M instruct model reads English documentation far better than chance"

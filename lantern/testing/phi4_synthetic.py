"""A synthetic Phi-4-mini-shaped model (arch `phi3`): what sets Phi-4-mini apart from Phi-3, at
its real sizes, in a file small enough for tests.

Kept as Phi-4-mini-instruct has it (config.json; llama.cpp's converter, `Phi3MiniModel`):
head size 128 with partial rotary over the first 96 features (`partial_rotary_factor` 0.75),
grouped-query attention 3:1 (24 query heads to 8 KV heads), a tied output head (no
`output.weight`), LongRoPE factors (`rope_factors_long/short`, 48 each, the attention factor
`sqrt(1 + ln(ctx / orig) / ln(orig))`), `sliding_window` 262144, and the real 200,064-entry
o200k vocabulary with Phi-4's chat tokens (lantern.testing.phi4_vocab). Shrunk: 2 layers instead
of 32 and 6 query / 2 KV heads (width 768) instead of 24 / 8 (width 3072), feed-forward 2048.
`PHI4_MINI_BLOCKS` is the same with a small vocabulary. The original context is 256 instead of
4096, so prompts of a few hundred tokens already run on the long factors; 256 is a multiple of
llama.cpp's context padding, so a 256-token context keeps llama.cpp on the short ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .synthetic import Spec


@dataclass
class Phi4Spec(Spec):
    rope_dims: int = 96  # rotary features per head; the rest of the 128 pass through
    real_vocab: bool = True  # False: synthetic.small_vocab(vocab_size), for tests of the blocks alone

    def tokenizer_metadata(self) -> dict | None:
        if not self.real_vocab:
            return None
        from .phi4_vocab import phi4_tokenizer_metadata

        meta = phi4_tokenizer_metadata()
        del meta["general.name"]
        return meta


PHI4_MINI_SMALL = Phi4Spec(
    arch="phi3", dim=768, n_layers=2, n_heads=6, n_kv_heads=2, ffn_dim=2048, vocab_size=200064,
    context_length=4096, original_context=256, longrope=True, sliding_window=262144,
    tied_output=True, source_type="F16", name="Phi 4 Mini Instruct (synthetic)",
)

# The same blocks with a 1,024-token SentencePiece vocabulary: a 30 MB file for the checks that
# are about rotary, LongRoPE and metadata rather than the vocabulary.
PHI4_MINI_BLOCKS = replace(PHI4_MINI_SMALL, vocab_size=1024, real_vocab=False)

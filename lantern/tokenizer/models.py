"""The two merge algorithms of llama.cpp, reproduced exactly.

`SentencePieceBPE` is llama.cpp's `llm_tokenizer_spm_session` (the "llama" tokenizer model):
start from single characters and repeatedly merge the adjacent pair whose concatenation is a
vocabulary entry with the highest score (ties: leftmost pair); characters left that are not in the
vocabulary become byte tokens `<0xXX>`. Any vocabulary entry can be formed this way, control tokens
included, and only the scores decide. HF `tokenizers`' BPE model with byte fallback and Llama-2's
merge list gives the same ids on the test corpus, but it is a different algorithm (only listed
merges, ties broken by merge-list order instead of position, and a GGUF carries scores, not
merges), so llama.cpp's loop is written out here. Speed comes from a cache: when no vocabulary entry contains `▁` after another character
(true of Llama-2/Phi-3 and every SentencePiece BPE vocabulary lantern has seen), no merge can cross
the start of a `▁`-prefixed word, so the text is cut there and each word is merged once and cached.
The cut is exact, not an approximation: a merge that crossed it would form a vocabulary entry with
`▁` after another character.

`ByteLevelBPE` is llama.cpp's `llm_tokenizer_bpe_session` (the "gpt2" tokenizer model) for one
pre-tokenized, byte-encoded word: merge the adjacent pair with the lowest merge rank (ties:
leftmost), look the resulting symbols up; symbols that are not in the vocabulary are dropped
byte by byte. The heavy lifting runs in HF `tokenizers` (a `BPE` model with the GGUF's vocabulary
and merges, the same algorithm in Rust) when the merge list is consistent with the vocabulary;
otherwise, and to check it, in `merge_word`, a direct transcription.
"""

from __future__ import annotations

import functools
import heapq
import re
from typing import Sequence

SPM_SPACE = "\u2581"  # ▁


class SentencePieceBPE:
    def __init__(self, token_to_id: dict[str, int], scores: Sequence[float], byte_ids: Sequence[int | None]):
        self.token_to_id = token_to_id
        self.scores = scores
        self.byte_ids = byte_ids  # byte value -> token id (llama_vocab::byte_to_token), or None
        self.splittable = not any(re.search(f"[^{SPM_SPACE}]{SPM_SPACE}", t) for t in token_to_id)
        self._word = functools.lru_cache(maxsize=1 << 16)(self._merge)
        self._split = re.compile(f"(?<=[^{SPM_SPACE}])(?={SPM_SPACE})")

    def encode(self, escaped: str) -> list[int]:
        """Token ids for text whose spaces are already written as ▁."""
        if not escaped:
            return []
        if not self.splittable:
            return list(self._merge(escaped))
        out: list[int] = []
        for word in self._split.split(escaped):
            out.extend(self._word(word))
        return out

    def _merge(self, text: str) -> tuple[int, ...]:
        t2i = self.token_to_id
        scores = self.scores
        n = len(text)
        if n == 0:
            return ()
        # symbol i always starts at character i (merges absorb the right neighbour)
        length = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        heap: list[tuple[float, int, int, int]] = []

        def try_add(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            size = length[left] + length[right]
            tid = t2i.get(text[left:left + size])
            if tid is None:
                return
            # llama.cpp: highest score first, then the leftmost pair
            heapq.heappush(heap, (-scores[tid], left, right, size))

        for i in range(1, n):
            try_add(i - 1, i)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            if length[left] == 0 or length[right] == 0 or length[left] + length[right] != size:
                continue  # stale: one side was merged since
            length[left] = size
            length[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            try_add(prev[left], left)
            try_add(left, nxt[left])

        out: list[int] = []
        i = 0
        while i != -1:
            piece = text[i:i + length[i]]
            tid = t2i.get(piece)
            if tid is not None:
                out.append(tid)
            else:  # only single characters can be missing: fall back to their UTF-8 bytes
                for b in piece.encode("utf-8"):
                    bid = self.byte_ids[b]
                    if bid is not None:
                        out.append(bid)
            i = nxt[i]
        return tuple(out)


class ByteLevelBPE:
    def __init__(self, token_to_id: dict[str, int], merges: Sequence[str], ignore_merges: bool):
        self.token_to_id = token_to_id
        self.ignore_merges = ignore_merges
        ranks: dict[tuple[str, str], int] = {}
        for i, merge in enumerate(merges):
            pos = merge.find(" ", 1)  # llama.cpp splits at the first space after position 0
            pair = (merge[:pos], merge[pos + 1:]) if pos >= 0 else ("", "")
            ranks.setdefault(pair, i)  # std::map::emplace keeps the first rank of a duplicate
        self.ranks = ranks
        self.hf = self._build_hf(token_to_id, merges, ignore_merges)
        self._word = functools.lru_cache(maxsize=1 << 16)(self.merge_word)

    @staticmethod
    def _build_hf(token_to_id: dict[str, int], merges: Sequence[str], ignore_merges: bool):
        """A `tokenizers.Tokenizer` doing the same merges, or None when the GGUF's merge list does
        not fit HF's model (a merge whose parts or result are not tokens, a duplicate merge)."""
        try:
            from tokenizers import Tokenizer as HFTokenizer
            from tokenizers.models import BPE
        except ImportError:  # pragma: no cover - tokenizers is a dependency
            return None
        pairs: list[tuple[str, str]] = []
        seen: set[tuple[str, str]] = set()
        for merge in merges:
            pos = merge.find(" ", 1)
            if pos < 0:
                return None
            a, b = merge[:pos], merge[pos + 1:]
            if a not in token_to_id or b not in token_to_id or a + b not in token_to_id or (a, b) in seen:
                return None
            seen.add((a, b))
            pairs.append((a, b))
        return HFTokenizer(BPE(vocab=dict(token_to_id), merges=pairs, ignore_merges=ignore_merges))

    def encode_words(self, words: list[str]) -> list[int]:
        """Token ids for byte-encoded pre-tokenized words."""
        if not words:
            return []
        if self.hf is not None:
            return self.hf.encode(words, is_pretokenized=True, add_special_tokens=False).ids
        out: list[int] = []
        for w in words:
            out.extend(self._word(w))
        return out

    def merge_word(self, word: str) -> tuple[int, ...]:
        """llama.cpp's merge loop for one byte-encoded word, in Python (no HF involved)."""
        t2i = self.token_to_id
        if self.ignore_merges:
            tid = t2i.get(word)
            if tid is not None:
                return (tid,)
        syms = list(word)
        n = len(syms)
        if n == 0:
            return ()
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prev = list(range(-1, n - 1))
        ranks = self.ranks
        heap: list[tuple[int, int, int, str]] = []

        def add(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            rank = ranks.get((syms[left], syms[right]))
            if rank is None:
                return
            heapq.heappush(heap, (rank, left, right, syms[left] + syms[right]))

        for i in range(1, n):
            add(i - 1, i)
        while heap:
            _, left, right, text = heapq.heappop(heap)
            if not syms[left] or not syms[right] or syms[left] + syms[right] != text:
                continue  # stale: one side was merged since
            syms[left] = text
            syms[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add(prev[left], left)
            add(left, nxt[left])
        out: list[int] = []
        i = 0
        while i != -1:
            tid = t2i.get(syms[i])
            if tid is not None:
                out.append(tid)
            else:
                # llama.cpp looks each byte of the symbol up as a one-byte token (and drops misses)
                for b in syms[i].encode("utf-8"):
                    bid = t2i.get(chr(b)) if b < 0x80 else None
                    if bid is not None:
                        out.append(bid)
            i = nxt[i]
        return tuple(out)

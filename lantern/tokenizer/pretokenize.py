"""Pre-tokenizers for byte-level BPE vocabularies, split exactly as llama.cpp splits.

llama.cpp (src/llama-vocab.cpp, `llm_tokenizer_bpe`) maps `tokenizer.ggml.pre` to a list of regular
expressions applied one after the other: each one splits every piece left by the previous one
(matches and the text between matches both become pieces). The common expressions run through
hand-written matchers in src/unicode.cpp (`unicode_regex_split_custom_gpt2`, `..._llama3`,
`..._qwen2`); the others through std::regex over a "collapsed" copy of the text in which every
non-ASCII code point stands for its category. Each matcher here is a Python `re` expression that
gives the same pieces, with `\\p{L}`, `\\p{N}`, `\\p{P}` and `\\s` spelled out from llama.cpp's own
Unicode 15.1 tables (see `unicode.py`), so the split does not depend on the Python version.

Equivalences worth knowing (checked against the hand-written matchers):
- `\\s+(?!\\S)` backs off one whitespace character when more follow, as in the regex.
- The contractions of the llama3/qwen2 expressions are case-insensitive for ASCII letters only
  (llama.cpp lower-cases with its own table; no non-ASCII letter lower-cases to s/t/m/d/r/v/e/l).
- Unassigned code points are neither letters, numbers nor whitespace, so they fall in the
  `[^\\s\\p{L}\\p{N}]+` runs, as in llama.cpp.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

from ..errors import UnsupportedModelError
from .unicode import char_class

Splitter = Callable[[str], list[str]]


@functools.lru_cache(maxsize=None)
def _classes() -> dict[str, str]:
    return {
        "L": char_class("L"),
        "N": char_class("N"),
        "W": char_class("", whitespace=True),
        # llama.cpp's default pre-tokenizer: `[\p{P}\$\+<=>\^~\|]+`
        "Pdef": char_class("P", extra="$+<=>^~|"),
    }


def _gpt2_pattern() -> str:
    c = _classes()
    L, N, W = c["L"], c["N"], c["W"]
    # 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    return (
        r"'s|'t|'re|'ve|'m|'ll|'d"
        rf"| ?[{L}]+| ?[{N}]+| ?[^{W}{L}{N}]+|[{W}]+(?![^{W}])|[{W}]+"
    )


_CONTRACTIONS_CI = r"'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"


def _llama3_pattern(digits: str) -> str:
    c = _classes()
    L, N, W = c["L"], c["N"], c["W"]
    # (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*
    #   |\s*[\r\n]+|\s+(?!\S)|\s+          (qwen2: \p{N} instead of \p{N}{1,3})
    return (
        _CONTRACTIONS_CI
        + rf"|[^\r\n{L}{N}]?[{L}]+|[{N}]{digits}| ?[^{W}{L}{N}]+[\r\n]*"
        + rf"|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+"
    )


def _gpt4o_pattern() -> str:
    c = _classes()
    L, N, W = c["L"], c["N"], c["W"]
    # llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT4O expression (llama-vocab.cpp), which rewrites o200k's
    # `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+` as
    #   ((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+
    # and runs it through std::regex on the collapsed text, where every non-ASCII letter is the
    # same placeholder byte. So: "upper" = A-Z or any non-ASCII letter, "lower" = a-z or any
    # non-ASCII letter, and combining marks (\p{M}) are not part of a word.
    #   [^\r\n\p{L}\p{N}]?U*Lo+C?|[^\r\n\p{L}\p{N}]?U+Lo*C?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*
    #   |\s*[\r\n]+|\s+(?!\S)|\s+          (C: the ASCII-case-insensitive contractions)
    non_ascii = char_class("L", ascii=False)
    upper, lower = f"[A-Z{non_ascii}]", f"[a-z{non_ascii}]"
    lead = rf"[^\r\n{L}{N}]?"
    suffix = f"(?:{_CONTRACTIONS_CI})?"
    return (
        rf"{lead}{upper}*{lower}+{suffix}|{lead}{upper}+{lower}*{suffix}"
        + rf"|[{N}]{{1,3}}| ?[^{W}{L}{N}]+[\r\n/]*|[{W}]*[\r\n]+|[{W}]+(?![^{W}])|[{W}]+"
    )


def _regex_splitter(pattern: str) -> Callable[[list[str]], list[str]]:
    """Split every piece into the matches of `pattern` and the text between them
    (llama.cpp's unicode_regex_split_stl / custom matchers)."""
    rx = re.compile(pattern)

    def split(pieces: list[str]) -> list[str]:
        out: list[str] = []
        for piece in pieces:
            pos = 0
            for m in rx.finditer(piece):
                s, e = m.span()
                if s > pos:
                    out.append(piece[pos:s])
                if e > s:
                    out.append(piece[s:e])
                pos = e
            if pos < len(piece):
                out.append(piece[pos:])
        return out

    return split


def _chain(*steps: Callable[[list[str]], list[str]]) -> Splitter:
    def split(text: str) -> list[str]:
        pieces = [text] if text else []
        for step in steps:
            pieces = step(pieces)
        return pieces

    return split


# tokenizer.ggml.pre -> (family, ignore_merges, default add_bos or None)
# (llama_vocab::impl::load in llama-vocab.cpp)
_PRE_TYPES: dict[str, tuple[str, bool, bool | None]] = {}
for _name in ("default",):
    _PRE_TYPES[_name] = ("default", False, None)
for _name in ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
              "lfm2", "jina-v5-nano"):
    _PRE_TYPES[_name] = ("llama3", True, True)
for _name in ("dbrx", "smaug-bpe"):
    _PRE_TYPES[_name] = ("llama3", False, None)
for _name in ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
              "a.x-4.0", "mellum", "modern-bert", "exaone4", "mpt", "olmo", "jais", "trillion",
              "granite-docling"):
    _PRE_TYPES[_name] = ("gpt2", False, None)
for _name in ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
              "solar-open"):
    _PRE_TYPES[_name] = ("qwen2", False, None)
for _name in ("gpt-4o", "llama4", "kanana2", "talkie"):
    _PRE_TYPES[_name] = ("gpt4o", False, None)
for _name in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b",
              "mellum2"):
    _PRE_TYPES[_name] = ("smollm", False, None)

SUPPORTED_PRE = tuple(sorted(_PRE_TYPES))


@functools.lru_cache(maxsize=None)
def _family_splitter(family: str) -> Splitter:
    c = _classes()
    if family == "gpt2":
        return _chain(_regex_splitter(_gpt2_pattern()))
    if family == "llama3":
        return _chain(_regex_splitter(_llama3_pattern("{1,3}")))
    if family == "qwen2":
        return _chain(_regex_splitter(_llama3_pattern("")))
    if family == "gpt4o":
        return _chain(_regex_splitter(_gpt4o_pattern()))
    if family == "smollm":
        # "\p{N}" (each number character alone), then the GPT-2 expression
        return _chain(_regex_splitter(rf"[{c['N']}]"), _regex_splitter(_gpt2_pattern()))
    if family == "default":
        return _chain(
            _regex_splitter(rf"[{c['Pdef']}]+"),
            _regex_splitter(_gpt2_pattern()),
            _regex_splitter(rf"[{c['N']}]+"),
            _regex_splitter(r"[0-9][0-9][0-9]"),
        )
    raise AssertionError(family)


def pre_tokenizer(pre: str | None) -> tuple[Splitter, bool, bool | None]:
    """(split function, ignore_merges, default add_bos) for a `tokenizer.ggml.pre` value.

    A missing value means llama.cpp's 'default' (it warns that quality degrades)."""
    key = pre or "default"
    spec = _PRE_TYPES.get(key)
    if spec is None:
        raise UnsupportedModelError(
            f"BPE pre-tokenizer {key!r} is not supported by lantern "
            f"(supported: {', '.join(SUPPORTED_PRE)})"
        )
    family, ignore_merges, add_bos = spec
    return _family_splitter(family), ignore_merges, add_bos


# ----- GPT-2 byte <-> unicode mapping (unicode_byte_to_utf8_map in unicode.cpp) -------------


@functools.lru_cache(maxsize=None)
def byte_to_unicode() -> tuple[str, ...]:
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table: dict[int, str] = {b: chr(b) for b in keep}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return tuple(table[b] for b in range(256))


@functools.lru_cache(maxsize=None)
def unicode_to_byte() -> dict[str, int]:
    return {ch: b for b, ch in enumerate(byte_to_unicode())}


@functools.lru_cache(maxsize=None)
def _byte_translation() -> dict[int, str]:
    return {b: ch for b, ch in enumerate(byte_to_unicode())}


def byte_encode(word: str) -> str:
    """The GPT-2 byte-level spelling of `word` (each UTF-8 byte as one printable character)."""
    return word.encode("utf-8").decode("latin-1").translate(_byte_translation())

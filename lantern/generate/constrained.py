"""Constrained decoding: outputs that follow a JSON schema, a regular expression or a grammar.

Built on llguidance (https://github.com/guidance-ai/llguidance, MIT; what llama.cpp and vLLM use):
it compiles the constraint once and, at each step, computes the set of tokens that keep the output
valid (a bit mask over the vocabulary). `Constraint.mask(logits)` sets every other token's logit
to -inf; `Constraint.accept(token)` advances it. The `Sampler` does both (`Sampler(settings,
constraint=...)`), so single-sequence generation and the batch engine both honour it.

What can be asked for (`make_constraint(model, json_schema=..., regex=..., grammar=...)`):

- `json_schema`: a JSON schema (dict or JSON text). `{"type": "object"}` is "any JSON object"
  (OpenAI's `response_format: {"type": "json_object"}`). Whitespace between tokens is limited to
  llama.cpp's (one space, or one or two newlines and up to 20 spaces or tabs of indent), so a
  model cannot pad forever.
- `regex`: the whole output matches it (Rust `regex` syntax: https://docs.rs/regex).
- `grammar`: a context-free grammar in one of two syntaxes, told apart by the text:
  * Lark, llguidance's dialect (https://github.com/guidance-ai/llguidance/blob/main/docs/syntax.md):
    rules `name: ...`, the first rule `start:`, terminals `"text"` and `/regex/`, `%json {schema}`;
  * GBNF, llama.cpp's (https://github.com/ggml-org/llama.cpp/blob/master/grammars/README.md):
    rules `name ::= ...` with a `root` rule, converted to Lark by llguidance's `gbnf_to_lark`.
  A text with a `::=` rule and no `start:` rule is GBNF; anything else is read as Lark.

When the output is complete (nothing more can follow), only the end-of-generation tokens are
allowed, so generation ends with finish reason "stop" and the text parses. A length stop
(`max_tokens`, the context) may cut it: check `finish_reason == "stop"` before parsing.

A constraint that cannot be compiled is a one-line `LanternError` naming what is wrong.

The llguidance tokenizer (each token's bytes; SentencePiece `▁` and `<0x0A>` byte tokens, GPT-2
byte-level pieces all mapped to real bytes by `Tokenizer.token_bytes`) is built once per model.
Control tokens are marked special, so a grammar's text can never be spelled with `<|im_end|>`;
the end-of-generation ids (`tokenizer.stop_ids`) are llguidance's EOS set.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import LanternError

#: llama.cpp's JSON whitespace (json-schema-to-grammar's `space` rule), as an llguidance pattern.
JSON_WHITESPACE = r"(?: |\n{1,2}[ \t]{0,20})?"

_tokenizers: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
_tokenizers_lock = threading.Lock()


def _llguidance():
    try:
        import llguidance
    except ImportError:  # a dependency; only missing from a broken install
        raise LanternError("constrained output needs the llguidance package: pip install llguidance") from None
    return llguidance


class _VocabularyView:
    """What llguidance's `TokenizerWrapper` reads from a tokenizer: each token's bytes, the
    special ids, BOS/EOS, and a text encoder (used only to tokenize forced text)."""

    def __init__(self, tokenizer, n_vocab: int):
        n = tokenizer.vocab_size
        self.tokens = [tokenizer.token_bytes(i) for i in range(n)] + [b""] * max(0, n_vocab - n)
        stops = sorted(tokenizer.stop_ids)
        self.eos_token_id = tokenizer.eos_id if tokenizer.eos_id is not None else stops[0]
        self.bos_token_id = tokenizer.bos_id
        # Control/unknown tokens, and the ones that end generation, are never text.
        self.special_token_ids = sorted(set(i for i in range(n) if tokenizer.is_special(i)) | set(stops))
        self._tokenizer = tokenizer

    def __call__(self, text):
        """Token ids of `text` as it would continue other text: no SentencePiece phantom space
        (llguidance reads a space it did not write as part of the tokens' bytes)."""
        if isinstance(text, (bytes, bytearray)):
            raise TypeError("str only")  # tells TokenizerWrapper to pass str
        spm = getattr(self._tokenizer, "_spm", None)
        if spm is not None and text:
            from ..tokenizer.models import SPM_SPACE

            return list(spm.encode(text.replace(" ", SPM_SPACE)))
        return list(self._tokenizer.encode(text, add_bos=False, special=False))


def lltokenizer(model):
    """The llguidance `LLTokenizer` of `model`'s vocabulary, built once per tokenizer (~0.1-1 s)."""
    tokenizer = model.tokenizer
    with _tokenizers_lock:
        cached = _tokenizers.get(tokenizer)
        if cached is not None:
            return cached
    llg = _llguidance()
    n_vocab = max(int(getattr(model, "vocab_size", 0) or 0), tokenizer.vocab_size)
    view = _VocabularyView(tokenizer, n_vocab)
    built = llg.LLTokenizer(llg.TokenizerWrapper(view), n_vocab=n_vocab, eos_token=sorted(tokenizer.stop_ids))
    with _tokenizers_lock:
        return _tokenizers.setdefault(tokenizer, built)


def _one_line(message: str, limit: int = 300) -> str:
    """llguidance's error text without its source excerpt (`  3 | ...` and `^` lines), on one line."""
    lines = [ln.strip() for ln in str(message).splitlines()]
    kept = [ln for ln in lines if ln and not re.match(r"^\d+\s*\|", ln) and set(ln) != {"^"}]
    text = " ".join(" ".join(kept).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_gbnf(text: str) -> bool:
    return re.search(r"(?m)^\s*[A-Za-z][\w-]*\s*::=", text) is not None and not re.search(
        r"(?m)^\s*(%llguidance\b|start\s*:)", text)


def grammar_text(json_schema: Any = None, regex: str | None = None, grammar: str | None = None) -> tuple[str, str]:
    """The llguidance grammar for one constraint, and what it is ("JSON schema", "regex", "grammar").

    Exactly one of the three must be given. Raises LanternError for a malformed argument (the
    grammar itself is checked by `Constraint`)."""
    llg = _llguidance()
    given = [name for name, v in (("json_schema", json_schema), ("regex", regex), ("grammar", grammar))
             if v is not None]
    if len(given) != 1:
        raise LanternError(f"give exactly one of json_schema, regex and grammar, got {', '.join(given) or 'none'}")
    if json_schema is not None:
        schema = json_schema
        if isinstance(schema, (str, bytes)):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise LanternError(f"JSON schema error: the schema is not valid JSON ({exc})") from None
        if isinstance(schema, bool):
            schema = {} if schema else {"not": {}}
        if not isinstance(schema, Mapping):
            raise LanternError(f"JSON schema error: a schema must be a JSON object, got {type(schema).__name__}")
        try:
            text = llg.LLMatcher.grammar_from_json_schema(
                json.dumps(schema), defaults={"whitespace_pattern": JSON_WHITESPACE})
        except (ValueError, TypeError) as exc:
            raise LanternError(f"JSON schema error: {_one_line(str(exc))}") from None
        return text, "JSON schema"
    if regex is not None:
        if not isinstance(regex, str):
            raise LanternError(f"regex error: a regex must be a string, got {type(regex).__name__}")
        return llg.LLMatcher.grammar_from_regex(regex), "regex"
    if not isinstance(grammar, str):
        raise LanternError(f"grammar error: a grammar must be a string, got {type(grammar).__name__}")
    if not grammar.strip():
        raise LanternError("grammar error: the grammar is empty")
    if _is_gbnf(grammar):
        from llguidance.gbnf_to_lark import gbnf_to_lark

        try:
            grammar = gbnf_to_lark(grammar)
        except Exception as exc:  # GbnfToLarkError and whatever a broken text makes the converter raise
            raise LanternError(f"grammar error (GBNF): {_one_line(str(exc))}") from None
    return llg.LLMatcher.grammar_from_lark(grammar), "grammar"


class Constraint:
    """One sequence's constraint: which tokens may come next, advanced token by token.

    `mask(logits)` returns a copy of the logits (1-D, or [1, vocab]) with every token the
    constraint forbids at -inf; `accept(token)` advances the state; `reset()` starts over.
    `done` is true once the output is complete (only end-of-generation is allowed).
    Not thread-safe: one Constraint per sequence (`fresh()` makes another of the same kind).
    """

    def __init__(self, model, grammar: str, kind: str = "grammar"):
        llg = _llguidance()
        self.model = model
        self.kind = kind
        self.grammar = grammar
        self._tokenizer = lltokenizer(model)
        error = llg.LLMatcher.validate_grammar(grammar, self._tokenizer)
        if error:
            raise LanternError(f"{kind} error: {_one_line(error)}")
        self._matcher = llg.LLMatcher(self._tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise LanternError(f"{kind} error: {_one_line(self._matcher.get_error())}")
        self._n_vocab = self._tokenizer.vocab_size
        self._bitmask = torch.zeros((self._n_vocab + 31) // 32, dtype=torch.int32)
        self._stops = torch.tensor(sorted(model.tokenizer.stop_ids), dtype=torch.long)

    def fresh(self) -> "Constraint":
        """A new Constraint of the same grammar, at the start (for another sequence)."""
        other = object.__new__(Constraint)
        other.__dict__.update(self.__dict__)
        other._matcher = self._matcher.deep_copy()
        other._matcher.reset()
        other._bitmask = torch.zeros_like(self._bitmask)
        return other

    @property
    def done(self) -> bool:
        """Nothing more can follow: only end-of-generation is allowed."""
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        """What was accepted so far is a complete output (it may still go on)."""
        return self._matcher.is_accepting()

    def _allowed_bits(self) -> np.ndarray:
        """Bool numpy [vocab]: the tokens allowed next."""
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.data_ptr(), self._bitmask.numel() * 4)
        bits = np.unpackbits(self._bitmask.numpy().view(np.uint8), bitorder="little")[: self._n_vocab]
        return bits.view(np.bool_)

    def allowed(self) -> torch.Tensor:
        """Bool [vocab]: the tokens allowed next."""
        return torch.from_numpy(self._allowed_bits().copy())

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` with every forbidden token at -inf (a new float32 CPU tensor; the input is not
        changed). Done in numpy: torch's masked_fill costs milliseconds on a busy machine.

        If the constraint is in an error state (a token it forbade was accepted), only
        end-of-generation is allowed, so the sequence ends instead of producing invalid output."""
        x = logits.detach().reshape(-1).to("cpu", torch.float32).numpy()
        if self._matcher.is_error():
            keep = np.zeros(x.shape[-1], dtype=np.bool_)
            stops = self._stops.numpy()
            keep[stops[stops < x.shape[-1]]] = True
        else:
            keep = self._allowed_bits()
            if keep.shape[-1] != x.shape[-1]:  # logits rows beyond the vocabulary are never allowed
                fitted = np.zeros(x.shape[-1], dtype=np.bool_)
                n = min(x.shape[-1], keep.shape[-1])
                fitted[:n] = keep[:n]
                keep = fitted
        return torch.from_numpy(np.where(keep, x, np.float32(-np.inf)))

    def accept(self, token: int) -> bool:
        """Advance by one sampled token; False if the constraint forbade it (it is then in error
        and `mask` allows only end-of-generation). End-of-generation is always accepted."""
        token = int(token)
        if token in self.model.tokenizer.stop_ids:
            if self._matcher.is_accepting() or self._matcher.is_stopped():
                return True
        return bool(self._matcher.consume_token(token))

    def reset(self) -> None:
        self._matcher.reset()

    @property
    def error(self) -> str:
        return self._matcher.get_error()

    def __repr__(self) -> str:
        return f"Constraint({self.kind}, done={self.done})"


def make_constraint(model, *, json_schema: Any = None, regex: str | None = None,
                    grammar: str | None = None) -> Constraint | None:
    """A `Constraint` for `model` from one of `json_schema`, `regex`, `grammar` (None if none)."""
    if json_schema is None and regex is None and grammar is None:
        return None
    text, kind = grammar_text(json_schema=json_schema, regex=regex, grammar=grammar)
    return Constraint(model, text, kind)


def from_response_format(model, response_format: Mapping[str, Any] | None) -> Constraint | None:
    """The constraint for an OpenAI `response_format`: `{"type": "text"}` (none),
    `{"type": "json_object"}` (any JSON object) or `{"type": "json_schema", "json_schema":
    {"name": ..., "schema": {...}, "strict": ...}}`. Raises LanternError for anything else."""
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise LanternError("response_format must be an object such as {\"type\": \"json_object\"}")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema = response_format.get("schema") or {"type": "object"}  # llama.cpp also reads "schema" here
        return make_constraint(model, json_schema=schema)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), Mapping):
            raise LanternError("response_format json_schema must be {\"name\": ..., \"schema\": {...}}")
        return make_constraint(model, json_schema=spec.get("schema") or {"type": "object"})
    raise LanternError(f"response_format type must be text, json_object or json_schema, got {kind!r}")


def from_ollama_format(model, format: Any) -> Constraint | None:
    """The constraint for Ollama's `format`: "" or None (none), "json" (any JSON object, as
    Ollama's json grammar) or a JSON schema."""
    if format in (None, ""):
        return None
    if format == "json":
        return make_constraint(model, json_schema={"type": "object"})
    if isinstance(format, Mapping):
        return make_constraint(model, json_schema=format)
    raise LanternError(f"format must be \"json\" or a JSON schema object, got {format!r:.60}")

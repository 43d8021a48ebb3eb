"""`Tokenizer`: a GGUF file's tokenizer, rebuilt from its metadata alone, token-for-token llama.cpp.

What is reproduced, with the llama.cpp function it comes from (src/llama-vocab.cpp):

- vocabulary loading (`llama_vocab::impl::load`): token types become attributes; the special ids
  have llama.cpp's defaults (SentencePiece: BOS 1, EOS 2, UNK 0; BPE: 11/11) overridden by the
  metadata; tokens whose text marks an end of turn, a message end or a fill-in-the-middle role are
  found by text and forced to CONTROL, as llama.cpp does for files converted without them.
- the end-of-generation set (`special_eog_ids`): eos, eot, eom, the FIM pad/repo/separator tokens
  and every token whose text is one of `EOG_TEXTS`, with llama.cpp's two exceptions (`<|end|>`
  is dropped when `<|return|>`/`<|call|>` or `<|calls|>`/`<|flush|>` exist; `</s>` is dropped when
  `<|tool_response>` or `<|plamo:eos|>` exist). For Phi-3 that is {2 `</s>`, 32000
  `<|endoftext|>`, 32007 `<|end|>`}: llama.cpp does not stop on `<|assistant|>` (32001), which
  HF's generation_config lists; lantern follows llama.cpp.
- special-token splitting (`tokenizer_st_partition`): CONTROL, USER_DEFINED and UNKNOWN tokens
  written in the text are cut out first, longest text first; with `special=False` only
  USER_DEFINED ones are (as llama.cpp and HF do).
- the Phi-3 whitespace rule: when `general.name` contains "phi3" or "phi-3" (case-insensitive),
  llama.cpp sets RSTRIP on every special token except `<unk>`, `<s>` and `<|endoftext|>` (and
  on `</s>`), so whitespace after e.g. `<|end|>` or `<|user|>` in the text is swallowed. This
  mirrors the `rstrip=True` these tokens have in Phi-3's HF tokenizer configuration (transformers'
  GGUF Phi-3 converter adds them the same way), so llama.cpp and HF agree. lantern does the same, on the same condition: it is what the model was trained
  with, and parity with llama.cpp is the contract. The cost: such whitespace does not survive
  a round trip.
- SentencePiece ("llama") encoding (`tokenize`, SPM branch): a space is put in front of the
  text and in front of every text fragment that follows a special token (when
  `tokenizer.ggml.add_space_prefix`, default true), spaces become `▁`, then score-ordered merges
  with byte fallback (`models.SentencePieceBPE`).
- byte-level BPE ("gpt2") encoding: the pre-tokenizer named by `tokenizer.ggml.pre`
  (`pretokenize.py`), GPT-2 byte encoding, rank-ordered merges (`models.ByteLevelBPE`).
- pieces (`token_to_piece`): NORMAL tokens unescaped (`▁` -> space, or GPT-2 bytes), BYTE tokens
  as their byte, USER_DEFINED as written, CONTROL/UNKNOWN as written or, when special tokens are
  skipped, as nothing; UNUSED/UNDEFINED tokens as nothing.

Decoding and the leading space. SentencePiece encoding adds a phantom space at the start, so
the first text token of a sequence carries a space the user never wrote. llama.cpp's APIs remove
it differently: llama-cpp-python's `Llama.detokenize` concatenates pieces and drops one leading
space only when the ids start with BOS; llama.cpp's `llama_detokenize` drops it from the first
token only when no BOS precedes it (with `remove_special=False`); the server's streaming
(`common_token_to_piece`) never drops it. `decode(ids)` treats ids as a whole sequence, the
inverse of `encode`: it follows llama-cpp-python when the ids start with BOS and
`llama_detokenize` when they do not, so `decode(encode(text))` gives the text back with or
without BOS. Vocabularies without the phantom space (byte-level BPE, `add_space_prefix` false)
never lose a leading space: there llama-cpp-python's rule (it strips after BOS whatever the
vocabulary) would eat a space the user wrote, and lantern follows `llama_detokenize` instead.
`decode(ids, continuation=True)` (and `StreamDecoder(..., continuation=True)`) is
plain piece concatenation, for tokens that continue earlier text (generated tokens), as
llama.cpp's server and llama-cpp-python stream them. llama.cpp's `clean_spaces` post-processing
(only in `llama_detokenize`) is not applied, as llama-cpp-python does not apply it either.
"""

from __future__ import annotations

import codecs
import functools
from typing import Any, Callable, Iterable, Mapping

from ..errors import ModelFileError, UnsupportedModelError
from .models import SPM_SPACE, ByteLevelBPE, SentencePieceBPE
from .pretokenize import byte_encode, pre_tokenizer, unicode_to_byte

# gguf TokenType / llama.h llama_token_type
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = range(7)

# llama.h llama_token_attr
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_NORMALIZED = 1 << 6
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8
ATTR_SINGLE_WORD = 1 << 9

_TYPE_TO_ATTR = {
    TYPE_UNDEFINED: ATTR_UNDEFINED,
    TYPE_NORMAL: ATTR_NORMAL,
    TYPE_UNKNOWN: ATTR_UNKNOWN,
    TYPE_CONTROL: ATTR_CONTROL,
    TYPE_USER_DEFINED: ATTR_USER_DEFINED,
    TYPE_UNUSED: ATTR_UNUSED,
    TYPE_BYTE: ATTR_BYTE,
}

# Token texts that end generation (llama-vocab.cpp, "maintain a list of tokens that cause
# end-of-generation").
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
})

# Texts by which llama.cpp finds special ids the metadata did not give (same file).
_DETECT_TEXTS: dict[str, tuple[str, ...]] = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
            "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
            "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}

# metadata key -> special id slot, in llama.cpp's order (the deprecated keys come last and win)
_SPECIAL_KEYS = (
    ("tokenizer.ggml.bos_token_id", "bos"),
    ("tokenizer.ggml.eos_token_id", "eos"),
    ("tokenizer.ggml.eot_token_id", "eot"),
    ("tokenizer.ggml.eom_token_id", "eom"),
    ("tokenizer.ggml.unknown_token_id", "unk"),
    ("tokenizer.ggml.seperator_token_id", "sep"),
    ("tokenizer.ggml.padding_token_id", "pad"),
    ("tokenizer.ggml.mask_token_id", "mask"),
    ("tokenizer.ggml.fim_pre_token_id", "fim_pre"),
    ("tokenizer.ggml.fim_suf_token_id", "fim_suf"),
    ("tokenizer.ggml.fim_mid_token_id", "fim_mid"),
    ("tokenizer.ggml.fim_pad_token_id", "fim_pad"),
    ("tokenizer.ggml.fim_rep_token_id", "fim_rep"),
    ("tokenizer.ggml.fim_sep_token_id", "fim_sep"),
    ("tokenizer.ggml.prefix_token_id", "fim_pre"),
    ("tokenizer.ggml.suffix_token_id", "fim_suf"),
    ("tokenizer.ggml.middle_token_id", "fim_mid"),
)

_C_SPACE = frozenset(" \t\n\v\f\r")  # C isspace() in the "C" locale, as llama.cpp strips
_SUPPORTED_MODELS = ("llama", "gpt2")


@functools.lru_cache(maxsize=None)
def _byte_decoding() -> dict[int, str]:
    """str.translate table: GPT-2 byte-alphabet character -> the latin-1 character of its byte;
    characters outside the alphabet map to themselves, which latin-1 cannot encode when > 255."""
    table = {ord(ch): chr(b) for ch, b in unicode_to_byte().items()}
    for cp in range(256):  # a byte-alphabet character must not pass through unmapped
        table.setdefault(cp, "\U0010ffff")
    return table


class Tokenizer:
    """Encode text to token ids and back, exactly as llama.cpp does for the same GGUF."""

    # ----- construction -------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, f: Any) -> "Tokenizer":
        """Build from an open `lantern.weights.gguf_file.GGUFFile` (its metadata only)."""
        return cls.from_metadata(f.get, source=str(getattr(f, "path", "GGUF file")))

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | Callable[[str, Any], Any], source: str = "GGUF metadata") -> "Tokenizer":
        """Build from GGUF metadata: a mapping of keys to values, or a `get(key, default)`."""
        get = metadata.get if isinstance(metadata, Mapping) else metadata
        return cls(get, source)

    def __init__(self, get: Callable[[str, Any], Any], source: str = "GGUF metadata"):
        self.source = source
        model = get("tokenizer.ggml.model", None)
        if model is None:
            raise ModelFileError(f"{source}: GGUF metadata has no tokenizer (tokenizer.ggml.model is missing)")
        if model not in _SUPPORTED_MODELS:
            raise UnsupportedModelError(
                f"{source}: tokenizer model {model!r} is not supported by lantern "
                f"(supported: {', '.join(_SUPPORTED_MODELS)})"
            )
        self.model: str = model
        tokens = get("tokenizer.ggml.tokens", None)
        if not tokens:
            raise ModelFileError(f"{source}: GGUF metadata has no tokenizer.ggml.tokens; the file is not a complete model")
        n = len(tokens)
        self._texts: list[str] = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        scores = get("tokenizer.ggml.scores", None)
        self._scores: list[float] = [float(s) for s in scores] if scores is not None else [0.0] * n
        if len(self._scores) < n:
            raise ModelFileError(f"{source}: tokenizer.ggml.scores has {len(self._scores)} entries for {n} tokens")
        types = get("tokenizer.ggml.token_type", None)
        if types is not None and len(types) < n:
            raise ModelFileError(f"{source}: tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        self._attrs: list[int] = (
            [_TYPE_TO_ATTR.get(int(t), ATTR_UNDEFINED) for t in types[:n]] if types is not None else [ATTR_NORMAL] * n
        )
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self._texts)}
        self.pre: str | None = get("tokenizer.ggml.pre", None)

        ids: dict[str, int | None] = dict.fromkeys(
            ("bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask",
             "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")
        )
        add_bos = add_eos = False
        if model == "llama":
            ids.update(bos=1, eos=2, unk=0)
            self.add_space_prefix = True
            add_bos = True
            self._split = None
            ignore_merges = False
        else:
            ids.update(bos=11, eos=11)
            self.add_space_prefix = False
            self._split, ignore_merges, pre_add_bos = pre_tokenizer(self.pre)
            if pre_add_bos is not None:
                add_bos = pre_add_bos
        self.add_space_prefix = bool(get("tokenizer.ggml.add_space_prefix", self.add_space_prefix))

        for key, slot in _SPECIAL_KEYS:
            if ids[slot] is not None and ids[slot] >= n:
                ids[slot] = None  # a default outside the vocabulary is disabled
            value = get(key, None)
            if value is None:
                continue
            if 0 <= int(value) < n:
                ids[slot] = int(value)
        add_bos = bool(get("tokenizer.ggml.add_bos_token", add_bos))
        add_eos = bool(get("tokenizer.ggml.add_eos_token", add_eos))
        self.add_bos, self.add_eos = add_bos, add_eos

        self._detect_special_ids(ids)
        self._ids = ids
        self._mark_unused_controls()
        self._eog = self._build_eog(ids)
        self._apply_name_rules(str(get("general.name", "") or ""))

        # special tokens, longest text first (tokenizer_st_partition's order)
        special = [i for i, a in enumerate(self._attrs) if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        special.sort(key=lambda i: -len(self._texts[i].encode("utf-8")))
        self._special_ids = special

        self._pieces: list[bytes] = [self._piece(i) for i in range(n)]
        self._hidden = frozenset(i for i, a in enumerate(self._attrs) if a & (ATTR_UNKNOWN | ATTR_CONTROL))

        if model == "llama":
            byte_ids = [self._byte_to_token(b) for b in range(256)]
            self._spm = SentencePieceBPE(self.token_to_id, self._scores, byte_ids)
            self._bpe = None
        else:
            merges = get("tokenizer.ggml.merges", None)
            if merges is None:
                raise ModelFileError(f"{source}: GGUF metadata has no tokenizer.ggml.merges for its BPE tokenizer")
            self._bpe = ByteLevelBPE(self.token_to_id, list(merges), ignore_merges)
            self._spm = None
        self.chat_template: str | None = get("tokenizer.chat_template", None)

    def _detect_special_ids(self, ids: dict[str, int | None]) -> None:
        # llama.cpp walks an unordered_map, so when several candidate texts exist which one wins
        # is unspecified (for Phi-3 it picks <|end|>, for SmolLM2 <|endoftext|>); lantern takes
        # the first text in llama.cpp's list. Only the eot/eom/fim ids themselves can differ: the
        # eog set holds every candidate either way. The picked token is forced to CONTROL.
        for slot, texts in _DETECT_TEXTS.items():
            if ids[slot] is not None:
                continue
            for t in texts:
                if t in self.token_to_id:
                    ids[slot] = self.token_to_id[t]
                    self._attrs[ids[slot]] |= ATTR_CONTROL
                    break

    def _mark_unused_controls(self) -> None:
        for i, a in enumerate(self._attrs):
            if a & ATTR_CONTROL and "unused" in self._texts[i]:
                self._attrs[i] = a | ATTR_UNUSED

    def _build_eog(self, ids: dict[str, int | None]) -> frozenset[int]:
        eog: set[int] = {ids[s] for s in ("fim_pad", "fim_rep", "fim_sep") if ids[s] is not None}
        for text, i in self.token_to_id.items():
            if text in EOG_TEXTS:
                eog.add(i)
                self._attrs[i] |= ATTR_CONTROL
        for text in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss
            if text in self.token_to_id:
                self._attrs[self.token_to_id[text]] = ATTR_USER_DEFINED
        for slot in ("eos", "eot", "eom"):
            if ids[slot] is not None:
                eog.add(ids[slot])
        texts = {self._texts[i]: i for i in eog if 0 <= i < len(self._texts)}
        if "<|end|>" in texts and (
            ("<|return|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts))
            or (("<|call|>" in texts or "<|calls|>" in texts) and "<|flush|>" in texts)
        ):
            end = texts["<|end|>"]
            eog.discard(end)
            self._attrs[end] = ATTR_USER_DEFINED
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            s = texts["</s>"]
            eog.discard(s)
            self._attrs[s] = ATTR_NORMAL
        return frozenset(eog)

    def _apply_name_rules(self, general_name: str) -> None:
        name = general_name.lower()
        self.phi3_rstrip = "phi-3" in name or "phi3" in name
        if self.phi3_rstrip:
            for i, a in enumerate(self._attrs):
                if a & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN):
                    self._attrs[i] = a | ATTR_RSTRIP
            for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
                if text not in self.token_to_id:
                    continue  # (llama.cpp refuses such a file; lantern just skips the token)
                i = self.token_to_id[text]
                self._attrs[i] = (self._attrs[i] | ATTR_RSTRIP) if on else (self._attrs[i] & ~ATTR_RSTRIP)
        elif "modern-bert" in name and "[MASK]" in self.token_to_id:
            self._attrs[self.token_to_id["[MASK]"]] |= ATTR_LSTRIP

    def _byte_to_token(self, b: int) -> int | None:
        tid = self.token_to_id.get(f"<0x{b:02X}>")
        if tid is None and b < 0x80:
            tid = self.token_to_id.get(chr(b))
        return tid

    def _piece(self, i: int) -> bytes:
        """token_to_piece with special=True, lstrip=0."""
        a = self._attrs[i]
        text = self._texts[i]
        if a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if a & ATTR_NORMAL:
            if self.model == "llama":
                return text.replace(SPM_SPACE, " ").encode("utf-8")
            try:
                return text.translate(_byte_decoding()).encode("latin-1")
            except UnicodeEncodeError:
                pass  # a character outside the GPT-2 byte alphabet: llama.cpp's marker below
            table = unicode_to_byte()
            out = bytearray()
            for ch in text:
                b = table.get(ch)
                if b is None:
                    out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
                else:
                    out.append(b)
            return bytes(out)
        if a & ATTR_BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                return b""
        return b""

    # ----- properties ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._texts)

    @property
    def bos_id(self) -> int | None:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int | None:
        return self._ids["eos"]

    @property
    def eot_id(self) -> int | None:
        return self._ids["eot"]

    @property
    def unk_id(self) -> int | None:
        return self._ids["unk"]

    @property
    def pad_id(self) -> int | None:
        return self._ids["pad"]

    @property
    def eog_ids(self) -> frozenset[int]:
        """Token ids that end generation (llama.cpp's `llama_vocab_is_eog` set)."""
        return self._eog

    def is_eog(self, token_id: int) -> bool:
        return token_id in self._eog

    @property
    def stop_ids(self) -> frozenset[int]:
        """Token ids generation stops at: the end-of-generation set plus `<|assistant|>`.

        A model that writes `<|assistant|>` has started a new turn of its own. Phi-3's HF
        generation config stops there (eos ids 32000, 32001, 32007); llama.cpp's set lacks it."""
        extra = self.token_to_id.get("<|assistant|>")
        return self._eog | {extra} if extra is not None else self._eog

    @property
    def bos_token(self) -> str:
        return self._texts[self.bos_id] if self.bos_id is not None else ""

    @property
    def eos_token(self) -> str:
        return self._texts[self.eos_id] if self.eos_id is not None else ""

    def token_text(self, token_id: int) -> str:
        """The token as written in the vocabulary (`▁Hello`, `<0x0A>`, `Ġthe`, `<|end|>`)."""
        return self._texts[token_id]

    def token_bytes(self, token_id: int, special: bool = True) -> bytes:
        """The bytes the token stands for (llama.cpp's `token_to_piece`); special tokens give
        their text, or nothing when `special` is false."""
        if not special and token_id in self._hidden:
            return b""
        return self._pieces[token_id]

    def token_piece(self, token_id: int) -> str:
        """The text the token stands for, special tokens written out. A byte token that is
        part of a longer UTF-8 sequence gives U+FFFD here: use `token_bytes` or StreamDecoder."""
        return self._pieces[token_id].decode("utf-8", errors="replace")

    def token_attr(self, token_id: int) -> int:
        """llama.cpp's attribute bits for the token (`llama_vocab_get_attr`)."""
        return self._attrs[token_id]

    def is_special(self, token_id: int) -> bool:
        """True for control and unknown-type tokens (those `skip_special` hides)."""
        return token_id in self._hidden

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer({self.model!r}, pre={self.pre!r}, vocab_size={self.vocab_size})"

    # ----- encoding -----------------------------------------------------------------------

    def _partition(self, text: str, special: bool) -> list[int | str]:
        """tokenizer_st_partition: cut special tokens out of the text."""
        frags: list[int | tuple[int, int]] = [(0, len(text))] if text else []
        attrs = self._attrs
        for sid in self._special_ids:
            a = attrs[sid]
            if not special and a & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            stext = self._texts[sid]
            if stext not in text:
                continue
            out: list[int | tuple[int, int]] = []
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                    continue
                start, end = frag
                while True:
                    match = text.find(stext, start, end)
                    if match < 0:
                        if end > start:
                            out.append((start, end))
                        break
                    left_end = match
                    if a & ATTR_LSTRIP:
                        while left_end > start and text[left_end - 1] in _C_SPACE:
                            left_end -= 1
                    if left_end > start:
                        out.append((start, left_end))
                    out.append(sid)
                    start = match + len(stext)
                    if a & ATTR_RSTRIP:
                        while start < end and text[start] in _C_SPACE:
                            start += 1
                    if start >= end:
                        break
            frags = out
        return [f if isinstance(f, int) else text[f[0]:f[1]] for f in frags]

    def encode(self, text: str, add_bos: bool | None = None, special: bool = True, add_eos: bool | None = None) -> list[int]:
        """Token ids for `text` (llama.cpp's `llama_tokenize`).

        add_bos / add_eos: None follows `tokenizer.ggml.add_bos_token` / `add_eos_token`.
        special: recognise special tokens written in the text (`<|user|>`, `<s>`, ...).
        """
        add_bos = self.add_bos if add_bos is None else add_bos
        add_eos = self.add_eos if add_eos is None else add_eos
        out: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise ModelFileError(f"{self.source}: a BOS token was asked for but the vocabulary has none")
            out.append(self.bos_id)
        frags = self._partition(text, special)
        if self._spm is not None:
            prev_special = True  # the text starts with a space, as if a special token preceded it
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                out.extend(self._spm.encode(frag.replace(" ", SPM_SPACE)))
                prev_special = False
        else:
            assert self._bpe is not None and self._split is not None
            for frag in frags:
                if isinstance(frag, int):
                    out.append(frag)
                    continue
                out.extend(self._bpe.encode_words([byte_encode(w) for w in self._split(frag)]))
        if add_eos:
            if self.eos_id is None:
                raise ModelFileError(f"{self.source}: an EOS token was asked for but the vocabulary has none")
            out.append(self.eos_id)
        return out

    # ----- decoding -----------------------------------------------------------------------

    def detokenize(self, ids: Iterable[int], skip_special: bool = False, continuation: bool = False) -> bytes:
        """The bytes of `ids` (see the module docstring for the leading-space rule)."""
        ids = list(ids)
        hidden = self._hidden if skip_special else frozenset()
        pieces = self._pieces
        parts = [b"" if i in hidden else pieces[i] for i in ids]
        if parts and not continuation and self.add_space_prefix:
            if ids[0] == self.bos_id:
                out = b"".join(parts)
                return out[1:] if out[:1] == b" " else out
            if parts[0][:1] == b" ":
                parts[0] = parts[0][1:]
        return b"".join(parts)

    def decode(self, ids: Iterable[int], skip_special: bool = False, continuation: bool = False) -> str:
        """The text of `ids`. Special tokens are written out unless `skip_special`; bytes that do
        not form valid UTF-8 become U+FFFD. `continuation=True`: the ids continue earlier text, so
        the leading space of a SentencePiece word is kept."""
        return self.detokenize(ids, skip_special, continuation).decode("utf-8", errors="replace")


class StreamDecoder:
    """Incremental `Tokenizer.decode`: push token ids one at a time, get the newly completed text.

    Concatenating every `push` and the final `flush` gives exactly `tok.decode(ids, ...)` with the
    same options. Bytes of an unfinished UTF-8 sequence (an emoji or CJK character spread over byte
    tokens) are held back until the sequence completes; the work per token is the size of that
    token's piece, never a re-decode of the output.
    """

    def __init__(self, tok: Tokenizer, skip_special: bool = False, continuation: bool = False):
        self.tok = tok
        self.skip_special = skip_special
        self.continuation = continuation
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._count = 0
        self._strip_next_space = False  # after a leading BOS: strip the first byte if it is a space

    def push(self, token_id: int) -> str:
        tok = self.tok
        piece = tok.token_bytes(token_id, special=not self.skip_special)
        if not self.continuation and tok.add_space_prefix:
            if self._count == 0:
                if token_id == tok.bos_id:
                    self._strip_next_space = True
                elif tok.add_space_prefix and piece[:1] == b" ":
                    piece = piece[1:]
            if self._strip_next_space and piece:
                if piece[:1] == b" ":
                    piece = piece[1:]
                self._strip_next_space = False
        self._count += 1
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """The held-back bytes of an unfinished sequence, as U+FFFD (like `decode`); resets."""
        out = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._count = 0
        self._strip_next_space = False
        return out

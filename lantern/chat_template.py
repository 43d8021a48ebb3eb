"""Chat templates: turning a list of messages into the prompt text a chat model was trained on.

A GGUF file carries its template as Jinja source in `tokenizer.chat_template`. It is rendered
the way Hugging Face transformers renders it (`apply_chat_template`; llama-cpp-python does the
same), so a template written for HF gives the same text here:

- a sandbox: jinja2 `ImmutableSandboxedEnvironment` (templates come from downloaded files);
- `trim_blocks=True, lstrip_blocks=True`; the `loopcontrols` extension; a `{% generation %}`
  block that just renders its body;
- globals `raise_exception(msg)` and `strftime_now(fmt)`; a `tojson` filter that, like HF's,
  does not HTML-escape and keeps non-ASCII text (`ensure_ascii=False`);
- variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools=None`,
  `documents=None`.

A file without a template gets `DEFAULT_TEMPLATE` (ChatML, as llama.cpp falls back to) and a
`ChatTemplateWarning`. Any failure to render becomes a one-line `LanternError`.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import LanternError

TEMPLATE_KEY = "tokenizer.chat_template"

# ChatML: what llama.cpp uses for a model whose file has no template (llama-chat.cpp).
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

NO_CHAT_HINT = "use --no-chat (chat=False) to send the prompt as raw text"


class ChatTemplateWarning(UserWarning):
    """The model has no usable chat template and a default is used instead."""


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (HF's assistant-mask marker): renders the body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ChatTemplate:
    """A compiled chat template and the special-token strings it may refer to."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", *, is_default: bool = False):
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.is_default = is_default
        self._compiled = None
        self._compile_error: str | None = None
        try:
            self._compiled = _environment().from_string(source)
        except jinja2.TemplateError as exc:  # reported when (and only when) someone chats
            self._compile_error = f"{type(exc).__name__}: {exc}"

    def __repr__(self) -> str:
        kind = "default ChatML" if self.is_default else f"{len(self.source)} chars"
        return f"ChatTemplate({kind}, bos={self.bos_token!r}, eos={self.eos_token!r})"

    @classmethod
    def from_gguf(cls, gguf, tokens: Sequence[str] | None = None) -> "ChatTemplate":
        """The template of a GGUF file (a `GGUFFile`), or the ChatML default with a warning.

        `tokens` is the vocabulary (id -> token text) if the caller already has it; otherwise
        the BOS/EOS token texts are read from the file.
        """
        bos = _token_text(gguf, tokens, gguf.get("tokenizer.ggml.bos_token_id"))
        eos = _token_text(gguf, tokens, gguf.get("tokenizer.ggml.eos_token_id"))
        source = gguf.get(TEMPLATE_KEY)
        if isinstance(source, str) and source.strip():
            return cls(source, bos, eos)
        where = getattr(gguf, "path", "the model file")
        warnings.warn(
            f"{where}: no chat template in the file ({TEMPLATE_KEY}); using ChatML "
            f"(<|im_start|>role ... <|im_end|>), which may not be what this model expects; "
            f"{NO_CHAT_HINT}",
            ChatTemplateWarning,
            stacklevel=2,
        )
        return cls.default(bos, eos)

    @classmethod
    def default(cls, bos_token: str = "", eos_token: str = "") -> "ChatTemplate":
        return cls(DEFAULT_TEMPLATE, bos_token, eos_token, is_default=True)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """The prompt text for `messages` ([{"role": ..., "content": ...}, ...])."""
        messages = check_messages(messages)
        if self._compiled is None:
            raise LanternError(f"chat template failed to render: {_one_line(self._compile_error)}; {NO_CHAT_HINT}")
        variables = dict(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            tools=None,
            documents=None,
        )
        variables.update(extra)
        try:
            return self._compiled.render(**variables)
        except jinja2.TemplateError as exc:
            detail = str(exc) if type(exc) is jinja2.TemplateError else f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # template code failing on our input (e.g. None + str)
            detail = f"{type(exc).__name__}: {exc}"
        raise LanternError(f"chat template failed to render: {_one_line(detail)}; {NO_CHAT_HINT}")


def check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate a conversation: a non-empty list of {"role": str, "content": str} dicts."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise LanternError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise LanternError("messages is empty; give at least one {'role': 'user', 'content': ...} message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or "content" not in m:
            raise LanternError(f"message {i} must be a dict with a 'role' string and 'content'; got {m!r:.80}")
        if not isinstance(m["content"], str):
            raise LanternError(f"message {i} content must be a string, got {type(m['content']).__name__}")
        out.append(dict(m))
    return out


def _token_text(gguf, tokens: Sequence[str] | None, token_id) -> str:
    if not isinstance(token_id, int) or token_id < 0:
        return ""
    if tokens is not None:
        return tokens[token_id] if token_id < len(tokens) else ""
    reader = getattr(gguf, "reader", None)
    field = reader.get_field("tokenizer.ggml.tokens") if reader is not None else None
    if field is not None:
        if token_id < len(field.data):
            return field.contents(token_id)
        return ""
    vocab = gguf.get("tokenizer.ggml.tokens") or []
    return vocab[token_id] if token_id < len(vocab) else ""

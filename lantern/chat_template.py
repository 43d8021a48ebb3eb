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
`ChatTemplateWarning`. Any failure to render becomes a one-line `TemplateError` (a LanternError).

A template is a program from a downloaded file, so rendering is bounded as well as sandboxed:
`RENDER_SECONDS` of time, `MAX_OUTPUT_CHARS` of output (and of any string, list or dict it
builds), `MAX_INT_BITS` for integers (`10**(10**10)` is refused, not computed). No signal is
used, so the limits hold on any thread: the time is checked in the sandbox's hooks (every call,
attribute and item lookup, intercepted operator, and every step of every `for` loop, which the
code generator wraps), and sizes are checked before the operations that could make something
huge (`*`, `**`, `+`, `%`, width arguments, `replace`, `join`, format widths) and on what
comes out. Filters are made context-dependent so that jinja2 cannot run them (or `**`) on
constants while compiling, where no limit would apply.
"""

from __future__ import annotations

import functools
import json
import re
import string
import threading
import time
import warnings
from datetime import datetime
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

from .errors import LanternError, TemplateError

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


#: Limits on one rendering. A real chat template renders in milliseconds, into about the
#: length of the conversation, with small numbers.
RENDER_SECONDS = 1.0
MAX_OUTPUT_CHARS = 4_000_000
MAX_INT_BITS = 10_000


class _LimitBreach(Exception):
    """A template broke one of the limits; becomes a TemplateError naming it."""

    def __init__(self, limit: str):
        super().__init__(limit)
        self.limit = limit


_render = threading.local()  # the deadline of the rendering running on this thread, if any


def _check_time() -> None:
    deadline = getattr(_render, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise _LimitBreach(f"the time limit of {RENDER_SECONDS:g} s")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)) else 0


def _check_size(value: Any) -> Any:
    if _size(value) > MAX_OUTPUT_CHARS:
        raise _LimitBreach(f"the size limit of {MAX_OUTPUT_CHARS:,} characters or items")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _LimitBreach(f"the integer limit of {MAX_INT_BITS:,} bits")
    return value


def _amount(n: int) -> str:
    return f"{n:,}" if n.bit_length() <= 64 else "over 2**64"  # str() of a huge int is itself refused


def _check_width(width: Any) -> None:
    if isinstance(width, int) and width > MAX_OUTPUT_CHARS:
        raise _LimitBreach(f"the size limit of {MAX_OUTPUT_CHARS:,} characters (a width or count of {_amount(width)})")


def _check_binop(op: str, left: Any, right: Any) -> None:
    """Refuse, before computing it, a result that would break a limit."""
    if op == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if right * (abs(left).bit_length() - 1) > MAX_INT_BITS:
            raise _LimitBreach(f"the integer limit of {MAX_INT_BITS:,} bits (a power)")
    elif op == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                raise _LimitBreach(f"the integer limit of {MAX_INT_BITS:,} bits")
        else:
            count, seq = (left, right) if isinstance(left, int) else (right, left)
            if isinstance(count, int) and _size(seq) * max(count, 0) > MAX_OUTPUT_CHARS:
                raise _LimitBreach(f"the size limit of {MAX_OUTPUT_CHARS:,} characters or items "
                                   f"({_size(seq):,} times {_amount(count)})")
    elif op == "+" and _size(left) + _size(right) > MAX_OUTPUT_CHARS:
        raise _LimitBreach(f"the size limit of {MAX_OUTPUT_CHARS:,} characters or items")
    elif op == "%" and isinstance(left, str):
        _check_printf(left, right)


# Widths and precisions; more than 7 digits is over the limit whatever they say (and int() of
# thousands of digits is itself refused by Python).
_PRINTF_WIDTHS = re.compile(r"%[-#0 +]*(\*|\d{1,8})?(?:\.(\*|\d{1,8}))?")
_DIGITS = re.compile(r"\d{1,8}")


def _check_printf(fmt: str, args: Any) -> None:
    """`fmt % args` cannot make more than the limit: no huge width or precision, written in the
    format or (with `*`) taken from the arguments."""
    star = False
    for match in _PRINTF_WIDTHS.finditer(fmt):
        for number in match.groups():
            if number == "*":
                star = True
            elif number:
                _check_width(int(number))
    if star:
        for arg in args if isinstance(args, tuple) else (args,):
            _check_width(arg)


def _check_format_spec(fmt: str) -> None:
    """`fmt.format(...)` cannot make more than the limit: no huge width in a replacement field."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format will raise the same error itself
    for _literal, _name, spec, _conversion in fields:
        for number in _DIGITS.findall(spec or ""):
            _check_width(int(number))


def _check_call(func: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a str/list/bytes method call whose result would break the size limit."""
    owner = getattr(func, "__self__", None)
    if not isinstance(owner, (str, bytes, list, tuple)):
        return
    name = getattr(func, "__name__", "")
    values = list(args) + list(kwargs.values())
    if name in ("center", "ljust", "rjust", "zfill", "expandtabs"):
        for value in values:
            _check_width(value)
        if name == "expandtabs" and values and isinstance(values[0], int):
            _check_width(len(owner) + owner.count("\t") * values[0])
    elif name == "replace" and len(values) >= 2 and isinstance(owner, str):
        old, new = values[0], values[1]
        if isinstance(old, str) and isinstance(new, str):
            occurrences = len(owner) + 1 if old == "" else owner.count(old)
            _check_width(len(owner) + occurrences * len(new))
    elif name == "join" and values and isinstance(values[0], (list, tuple)):
        _check_width(sum(_size(v) for v in values[0]) + _size(owner) * len(values[0]))
    elif name in ("format", "format_map") and isinstance(owner, str):
        _check_format_spec(owner)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _check_filter(name: str, value: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a filter call whose output would break the size limit, before it runs."""
    if name in ("center", "batch", "slice"):  # a width, a group size, a number of groups
        _check_width(_arg(args, kwargs, 0, {"center": "width", "batch": "linecount", "slice": "slices"}[name]))
    elif name == "indent" and isinstance(value, str):
        width = _arg(args, kwargs, 0, "width", 4)
        per_line = width if isinstance(width, int) else _size(width)
        _check_width(len(value) + per_line * (value.count("\n") + 1))
    elif name == "wordwrap" and isinstance(value, str):
        wrapstring = _arg(args, kwargs, 2, "wrapstring", "\n")
        _check_width(len(value) * max(1, _size(wrapstring)))
    elif name == "tojson":
        indent = _arg(args, kwargs, 1, "indent")
        width = indent if isinstance(indent, int) else _size(indent)
        if width > _MAX_JSON_INDENT:  # repeated at every line and level: no bound from the width alone
            raise _LimitBreach(f"the size limit of {MAX_OUTPUT_CHARS:,} characters (a JSON indent of {width:,})")
    elif name == "format" and isinstance(value, str):
        _check_printf(value, tuple(args))
    elif name == "replace" and len(args) >= 2 and isinstance(value, str):
        _check_call(value.replace, args, kwargs)
    elif name == "join" and isinstance(value, (list, tuple)):
        separator = _arg(args, kwargs, 0, "d", "")
        _check_call((separator if isinstance(separator, str) else "").join, (value,), {})


_MAX_JSON_INDENT = 64


def _bounded_filter(name: str, func):
    """`func` (a jinja2 filter) with the limits checked around it; marked @pass_context so that
    jinja2 never evaluates it on constants at compile time, outside the limits."""
    pass_arg = _PassArg.from_obj(func)

    @functools.wraps(func)
    def bounded(context, value, *args, **kwargs):
        _check_time()
        _check_filter(name, value, args, kwargs)
        if pass_arg is _PassArg.context:
            result = func(context, value, *args, **kwargs)
        elif pass_arg is _PassArg.eval_context:
            result = func(context.eval_ctx, value, *args, **kwargs)
        elif pass_arg is _PassArg.environment:
            result = func(context.environment, value, *args, **kwargs)
        else:
            result = func(value, *args, **kwargs)
        return _check_size(result)

    bounded.jinja_pass_arg = _PassArg.context  # type: ignore[attr-defined]
    return bounded


def _bounded_lipsum(n=5, html=True, min=20, max=100):  # noqa: A002 - jinja2's own parameter names
    """jinja2's `lipsum` global, held to the size limit (it loops in Python, calling no hook)."""
    from jinja2.utils import generate_lorem_ipsum

    if isinstance(n, int) and isinstance(max, int):
        _check_width(n * max * 12)  # a word is at most about 12 characters
    return generate_lorem_ipsum(n, html, min, max)


class _BoundedCodeGenerator(CodeGenerator):
    """Makes every `for` loop iterate through `_BoundedSandbox.bounded_iteration`: a loop with an
    empty body calls no other hook, and a few nested ones can run for hours."""

    def visit_For(self, node: nodes.For, frame) -> None:
        bounded = nodes.Call(nodes.EnvironmentAttribute("bounded_iteration"), [node.iter], [], None, None,
                             lineno=node.lineno)
        wrapped = nodes.For(node.target, bounded, node.body, node.else_, node.test, node.recursive,
                            lineno=node.lineno)
        wrapped.set_environment(self.environment)
        super().visit_For(wrapped, frame)


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox with `RENDER_SECONDS`, `MAX_OUTPUT_CHARS` and `MAX_INT_BITS`."""

    code_generator_class = _BoundedCodeGenerator
    # Intercepted operators are also never folded at compile time (jinja2's BinExpr.as_const).
    intercepted_binops = frozenset(("+", "*", "**", "%"))
    intercepted_unops = frozenset(("-",))

    def call_binop(self, context, operator_name, left, right):
        _check_time()
        _check_binop(operator_name, left, right)
        return _check_size(super().call_binop(context, operator_name, left, right))

    def call_unop(self, context, operator_name, arg):
        _check_time()
        return super().call_unop(context, operator_name, arg)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's own signature
        _check_time()
        for value in list(args) + list(kwargs.values()):
            _check_size(value)
        _check_call(__obj, args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj, attribute):
        _check_time()
        return _check_size(super().getattr(obj, attribute))

    def getitem(self, obj, argument):
        _check_time()
        return _check_size(super().getitem(obj, argument))

    @staticmethod
    def bounded_iteration(iterable):
        for count, item in enumerate(iterable):
            if count % 64 == 0:
                _check_time()
            yield item

    def wrap_str_format(self, value):
        wrapper = super().wrap_str_format(value)
        if wrapper is not None:
            _check_format_spec(value.__self__)
        return wrapper


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = _BoundedSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _bounded_filter(name, func) for name, func in env.filters.items()}
    env.globals["lipsum"] = _bounded_lipsum
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
        except _LimitBreach as exc:  # reported when (and only when) someone chats
            self._compile_error = f"it broke {exc.limit} while compiling"
        except (jinja2.TemplateError, RecursionError, MemoryError) as exc:
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
            raise TemplateError(f"chat template failed to render: {_one_line(self._compile_error)}; {NO_CHAT_HINT}")
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
            return self._render_bounded(variables)
        except _LimitBreach as exc:
            raise TemplateError(f"chat template stopped: it broke {exc.limit}; {NO_CHAT_HINT}") from None
        except jinja2.TemplateError as exc:
            detail = str(exc) if type(exc) is jinja2.TemplateError else f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # template code failing on our input (e.g. None + str)
            detail = f"{type(exc).__name__}: {exc}"
        raise TemplateError(f"chat template failed to render: {_one_line(detail)[:500]}; {NO_CHAT_HINT}")

    def _render_bounded(self, variables: dict) -> str:
        """Render piece by piece, stopping at the time or output limit (see the module doc)."""
        outer = getattr(_render, "deadline", None)  # a template rendered inside another one's render
        _render.deadline = time.monotonic() + RENDER_SECONDS
        try:
            pieces, size = [], 0
            for piece in self._compiled.generate(**variables):
                size += len(piece)
                if size > MAX_OUTPUT_CHARS:
                    raise _LimitBreach(f"the output limit of {MAX_OUTPUT_CHARS:,} characters")
                _check_time()
                pieces.append(piece)
            return "".join(pieces)
        finally:
            _render.deadline = outer


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

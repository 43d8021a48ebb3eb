"""Tool calls (OpenAI's `tools` / `tool_choice`), for any chat model, without HTTP.

How a request with tools is run:

    from lantern.generate import tools

    plan = tools.prepare(model, messages, tools=[...], tool_choice="auto")
    plan.prompt_ids    # the prompt, rendered as the model expects (below)
    plan.constraint    # a Constraint (or None): pass it to the Sampler, Sampler(settings, plan.constraint)
    plan.family        # "hermes", "llama3", "generic", or "none" (no tools in play)
    parser = plan.parser()          # one per sequence (per choice when n > 1)
    for piece in generation:        # the generated text, as it streams
        for delta in parser.feed(piece):
            ...                     # delta.content (str) or delta.tool_call (ToolCallDelta)
    for delta in parser.finish():   # what was held back
        ...
    parser.content, parser.tool_calls   # the whole message: str or None, [ToolCall]
    parser.finish_reason(generation.finish_reason)   # "tool_calls" when a call was made and it stopped

`tools.generate(model, messages, tools=..., tool_choice=..., **options)` does the same for a
single-sequence `Generation` and returns `(generation, parser)`.

Families, detected from the chat template's text (as llama.cpp's common/chat.cpp does):

- "hermes" (Qwen2.5, Hermes 2/3: the template mentions `<tool_call>`): the template renders the
  tools (the `tools` variable, as HF transformers passes it); the model writes
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` after optional text.
- "llama3" (Llama 3.1-3.3: the template has an `ipython` header): the template renders the tools
  (`tools_in_user_message=False`, as llama.cpp); the model answers with one
  `{"name": ..., "parameters": {...}}`, optionally after `<|python_tag|>`.
- "generic" (every other template: Phi-3, SmolLM2, ChatML): lantern writes the tool schemas into
  the system message itself and the answer is JSON, `{"tool_call": {"name": ..., "arguments":
  {...}}}` (`{"tool_calls": [...]}` with parallel_tool_calls) or `{"response": "text"}`, as
  llama-server's generic format. Also used for any family when a `json_schema` is given with
  tools (the response must follow it).

`tool_choice`: "none" (tools are not shown, no call is made), "auto", "required" (at least one
call), or `{"type": "function", "function": {"name": ...}}` (that function). Whenever tools are
in play, decoding is constrained with llguidance: a call always names a declared function and
its arguments follow that function's parameter schema; "required" and a named function are
enforced by the grammar in every family. (In "auto", the hermes grammar leaves free text before
the first `<tool_call>`; the llama3 grammar leaves free text that does not start with `{`.)

History: assistant messages may carry OpenAI `tool_calls` (`content` None) and role "tool"
messages carry results. For hermes/llama3 templates they are passed on as HF expects (arguments
as objects); for the generic family they are rewritten as the JSON the model is asked to write
(`{"tool_calls": [...]}`) and as user messages `{"tool_response": {...}}`.

Streaming: text before a call goes to `content`; a call becomes `ToolCallDelta`s: the first with
its index, a fresh id and the name (arguments ""), then fragments of the arguments' JSON text
that concatenate to the arguments exactly as the model wrote them (valid JSON whenever the
generation finished "stop"). Tool-call markup never appears in content.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from ..errors import LanternError
from .constrained import JSON_WHITESPACE, Constraint, _llguidance, grammar_text, make_constraint

HERMES, LLAMA3, GENERIC, NONE = "hermes", "llama3", "generic", "none"
AUTO, REQUIRED = "auto", "required"

GENERIC_INSTRUCTION = ("Respond in JSON format, either with `{key}` (a request to call tools) or with "
                       "`response` (a reply to the user's request).")
GENERIC_REQUIRED_INSTRUCTION = "Respond in JSON format with `{key}` (a request to call tools)."


# ----- results -----------------------------------------------------------------------------------


@dataclass
class ToolCall:
    """One complete call: `arguments` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolCallDelta:
    """Part of call `index`: the first delta of a call has its `id` and `name` (arguments ""),
    the later ones only `arguments` fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict:
        out: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        if self.name is not None:
            function["name"] = self.name
        out["function"] = function
        return out


@dataclass
class Delta:
    """One piece of the streamed message: `content` text, or a `tool_call` delta."""

    content: str = ""
    tool_call: ToolCallDelta | None = None


def new_call_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "call_" + "".join(secrets.choice(alphabet) for _ in range(24))


# ----- requests: tools and tool_choice ----------------------------------------------------------


def normalize_tools(tools: Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """OpenAI tools, checked: [{"type": "function", "function": {"name", "description"?,
    "parameters"?}}]. A missing `parameters` is an empty object schema."""
    if tools is None:
        return []
    if isinstance(tools, (str, bytes, Mapping)) or not isinstance(tools, Sequence):
        raise LanternError("tools must be a list of {\"type\": \"function\", \"function\": {...}} objects")
    out, names = [], set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise LanternError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise LanternError(f"tools[{i}] has no \"function\" object")
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise LanternError(f"tools[{i}] function name must be 1-64 letters, digits, _ . or -, got {name!r:.40}")
        if name in names:
            raise LanternError(f"tools[{i}]: two tools are named {name!r}")
        names.add(name)
        params = fn.get("parameters")
        if params is None:
            params = {"type": "object", "properties": {}}
        if not isinstance(params, Mapping):
            raise LanternError(f"tools[{i}] ({name}) parameters must be a JSON schema object")
        function = {"name": name}
        if fn.get("description") is not None:
            function["description"] = str(fn["description"])
        function["parameters"] = dict(params)
        out.append({"type": "function", "function": function})
    return out


def normalize_tool_choice(tool_choice: Any, tools: list[dict]) -> str | dict:
    """"none", "auto", "required" or the name of the forced function as {"name": ...}."""
    if tool_choice is None:
        return AUTO if tools else NONE
    if isinstance(tool_choice, str):
        if tool_choice not in (NONE, AUTO, REQUIRED):
            raise LanternError(f"tool_choice must be none, auto, required or a function, got {tool_choice!r:.40}")
        if tool_choice != NONE and not tools:
            raise LanternError(f"tool_choice {tool_choice!r} needs tools")
        return tool_choice
    if isinstance(tool_choice, Mapping):
        fn = tool_choice.get("function") if isinstance(tool_choice.get("function"), Mapping) else tool_choice
        name = fn.get("name")
        if not isinstance(name, str):
            raise LanternError("tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}")
        if name not in {t["function"]["name"] for t in tools}:
            raise LanternError(f"tool_choice names {name!r:.40}, which is not one of the tools")
        return {"name": name}
    raise LanternError(f"tool_choice must be none, auto, required or a function, got {tool_choice!r:.40}")


# ----- families ----------------------------------------------------------------------------------


def detect_family(template_source: str) -> str:
    """The tool-call format a chat template's text implies (llama.cpp's tests, common/chat.cpp)."""
    src = template_source or ""
    if "<tool_call>" in src:
        return HERMES
    if "<|start_header_id|>ipython<|end_header_id|>" in src or (
            "<|start_header_id|>" in src and "<|python_tag|>" in src):
        return LLAMA3
    return GENERIC


# ----- messages ----------------------------------------------------------------------------------


def _text(content: Any) -> str:
    """OpenAI content (a string, None, or a list of {"type": "text", "text": ...} parts) as text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise LanternError("message content parts must be {\"type\": \"text\", \"text\": ...}")
        return "\n".join(parts)
    raise LanternError(f"message content must be a string, got {type(content).__name__}")


def _calls_of(message: Mapping[str, Any], i: int) -> list[dict]:
    """A message's OpenAI tool_calls as [{"id", "name", "arguments": object}]."""
    calls = []
    for call in message.get("tool_calls") or []:
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise LanternError(f"message {i}: each tool call must be {{\"type\": \"function\", \"function\": "
                               f"{{\"name\": ..., \"arguments\": ...}}}}")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise LanternError(f"message {i}: tool call {fn['name']!r} arguments are not valid JSON") from None
        calls.append({"id": call.get("id"), "name": fn["name"], "arguments": args})
    return calls


def template_messages(messages: Sequence[Mapping[str, Any]], family: str, parallel: bool = True) -> list[dict]:
    """Messages as the chat template gets them: content always text; tool calls and tool results
    as HF templates expect them (hermes, llama3) or as generic-format JSON (generic, none)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise LanternError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise LanternError(f"message {i} must be a dict with a 'role' string; got {m!r:.80}")
        role, content = m["role"], _text(m.get("content"))
        calls = _calls_of(m, i) if role == "assistant" else []
        if family in (HERMES, LLAMA3):
            msg = {k: v for k, v in m.items() if k not in ("content", "tool_calls")}
            msg["content"] = content
            if calls:
                msg["tool_calls"] = [{"id": c["id"], "type": "function",
                                      "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]
            out.append(msg)
        elif calls:
            items = [{"name": c["name"], "arguments": c["arguments"]} for c in calls]
            body = {"tool_calls": items} if parallel or len(items) > 1 else {"tool_call": items[0]}
            text = json.dumps(body, ensure_ascii=False)
            out.append({"role": "assistant", "content": (content + "\n" + text) if content.strip() else text})
        elif role == "tool":
            result = {"tool_response": {k: v for k, v in (("name", m.get("name")),
                                                          ("tool_call_id", m.get("tool_call_id")),
                                                          ("content", content)) if v is not None}}
            out.append({"role": "user", "content": json.dumps(result, ensure_ascii=False)})
        else:
            out.append({"role": role, "content": content})
    return out


def generic_system_prompt(tools: list[dict], tool_choice, parallel: bool) -> str:
    key = "tool_calls" if parallel else "tool_call"
    functions = [t["function"] for t in tools]
    if isinstance(tool_choice, dict):
        functions = [f for f in functions if f["name"] == tool_choice["name"]]
    listing = json.dumps(functions, indent=2, ensure_ascii=False)
    shape = ('{"tool_calls": [{"name": "<function name>", "arguments": {<arguments>}}]}' if parallel
             else '{"tool_call": {"name": "<function name>", "arguments": {<arguments>}}}')
    instruction = (GENERIC_INSTRUCTION if tool_choice == AUTO else GENERIC_REQUIRED_INSTRUCTION).format(key=key)
    answer = '' if tool_choice != AUTO else ' or {"response": "<your reply>"}'
    return (f"You can call the following tools. Each is given with a JSON schema of its arguments:\n"
            f"{listing}\n\n{instruction} For example: {shape}{answer}")


def _with_system(messages: list[dict], extra: str) -> list[dict]:
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = (first["content"] + "\n\n" + extra) if first["content"].strip() else extra
        return [first] + messages[1:]
    return [{"role": "system", "content": extra}] + messages


# ----- grammars ------------------------------------------------------------------------------------


def _call_schema(function: dict, name_key: str = "name", args_key: str = "arguments") -> dict:
    return {"type": "object",
            "properties": {name_key: {"const": function["name"]}, args_key: function["parameters"]},
            "required": [name_key, args_key], "additionalProperties": False}


def _any_of(schemas: list[dict]) -> dict:
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _lark_json(schema: dict) -> str:
    schema = dict(schema)
    schema["x-guidance"] = {"whitespace_pattern": JSON_WHITESPACE, "lenient": True}
    return "%json " + json.dumps(schema, ensure_ascii=False)


def _chosen(tools: list[dict], tool_choice) -> list[dict]:
    functions = [t["function"] for t in tools]
    if isinstance(tool_choice, dict):
        return [f for f in functions if f["name"] == tool_choice["name"]]
    return functions


def hermes_grammar(tools: list[dict], tool_choice, parallel: bool) -> str:
    call = _lark_json(_any_of([_call_schema(f) for f in _chosen(tools, tool_choice)]))
    more = '(WS "<tool_call>" call)*' if parallel else ""
    rules = [
        f"calls: call {more} WS",
        f'call: WS {call} WS "</tool_call>"',
        r"WS: /[ \t\n]{0,4}/",
    ]
    if tool_choice == AUTO:
        start = ["start: TEXT | prefix calls",
                 r"TEXT: /(.|\n)*/ & ~/(.|\n)*<tool_call>(.|\n)*/",
                 r"prefix[lazy]: /(.|\n)*<tool_call>/"]
    else:
        start = ['start: "<tool_call>" calls']
    return "\n".join(start + rules) + "\n"


def llama3_grammar(tools: list[dict], tool_choice, python_tag: bool) -> str:
    schemas = [_call_schema(f, args_key="parameters") for f in _chosen(tools, tool_choice)]
    tag = "<|python_tag|>? " if python_tag else ""
    rules = [f"call: {tag}{_lark_json(_any_of(schemas))}"]
    if tool_choice == AUTO:
        start = ["start: TEXT | call", r"TEXT: /(.|\n)*/ & ~/[ \t\n]*\{(.|\n)*/"]
    else:
        start = ["start: call"]
    return "\n".join(start + rules) + "\n"


def generic_schema(tools: list[dict], tool_choice, parallel: bool, response_schema: dict | None) -> dict:
    calls = _any_of([_call_schema(f) for f in _chosen(tools, tool_choice)])
    if parallel:
        call = {"type": "object", "properties": {"tool_calls": {"type": "array", "items": calls, "minItems": 1}},
                "required": ["tool_calls"], "additionalProperties": False}
    else:
        call = {"type": "object", "properties": {"tool_call": calls}, "required": ["tool_call"],
                "additionalProperties": False}
    if tool_choice != AUTO:
        return call
    response = {"type": "object", "properties": {"response": response_schema or {"type": "string"}},
                "required": ["response"], "additionalProperties": False}
    return {"anyOf": [call, response]}


def _tools_constraint(model, grammar: str) -> Constraint:
    """The Constraint for a tool grammar; a schema llguidance refuses is a LanternError naming it."""
    llg = _llguidance()
    try:
        return Constraint(model, llg.LLMatcher.grammar_from_lark(grammar), "tools")
    except LanternError as exc:
        raise LanternError(f"the tools' parameter schemas cannot be enforced: {exc}") from None


# ----- the plan --------------------------------------------------------------------------------------


@dataclass
class ToolPlan:
    """What `prepare` decided: the prompt, the constraint, and how to read the answer."""

    prompt_ids: list[int]
    constraint: Constraint | None
    family: str
    tools: list[dict]
    tool_choice: Any
    parallel_tool_calls: bool = True
    prompt_text: str = ""

    def parser(self) -> "ToolCallParser":
        """A fresh streaming parser for one sequence's output."""
        return ToolCallParser(self.family, parallel=self.parallel_tool_calls)

    def sampler_constraint(self) -> Constraint | None:
        """A constraint for one more sequence (n > 1): each sequence needs its own."""
        return None if self.constraint is None else self.constraint.fresh()


def prepare(model, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None,
            tool_choice: Any = None, *, json_schema: Any = None, parallel_tool_calls: bool = True,
            add_generation_prompt: bool = True, template_options: Mapping[str, Any] | None = None) -> ToolPlan:
    """Render `messages` (OpenAI shapes) with `tools` for `model` and say how to decode and parse.

    `json_schema`: the reply must follow it (OpenAI `response_format`); with tools in play the
    generic format carries it (its `response` field). Raises LanternError for malformed tools,
    tool_choice or messages, and for schemas that cannot be compiled. `template_options`: more
    variables for the chat template (see `prompts.encode_conversation`)."""
    from .prompts import checked_template_options

    tools_list = normalize_tools(tools)
    choice = normalize_tool_choice(tool_choice, tools_list)
    template = model.chat_template
    family = NONE if choice == NONE else detect_family(template.source)
    if family != NONE and json_schema is not None:
        family = GENERIC
    parallel = bool(parallel_tool_calls)
    if family == LLAMA3:
        parallel = False  # Llama 3.x templates take one call per turn
    rendered = template_messages(messages, family, parallel)
    extra = checked_template_options(template_options)
    if family in (HERMES, LLAMA3):
        extra["tools"] = tools_list
    if family == LLAMA3:
        extra["tools_in_user_message"] = False
    if family == GENERIC:
        rendered = _with_system(rendered, generic_system_prompt(tools_list, choice, parallel))
    text = _render(template, rendered, add_generation_prompt, extra)
    add_bos = False if template.bos_token and text.startswith(template.bos_token) else None
    ids = list(model.tokenizer.encode(text, add_bos=add_bos, special=True))
    if not ids:
        raise LanternError("the prompt is empty; give some text")

    if family == NONE:
        constraint = make_constraint(model, json_schema=json_schema) if json_schema is not None else None
    elif family == HERMES:
        constraint = _tools_constraint(model, hermes_grammar(tools_list, choice, parallel))
    elif family == LLAMA3:
        has_tag = "<|python_tag|>" in model.tokenizer.token_to_id
        constraint = _tools_constraint(model, llama3_grammar(tools_list, choice, has_tag))
    else:
        schema = generic_schema(tools_list, choice, parallel, _schema_dict(json_schema))
        constraint = _tools_constraint(model, "start: " + _lark_json(schema) + "\n")
    return ToolPlan(ids, constraint, family, tools_list, choice, parallel, text)


def _schema_dict(json_schema: Any) -> dict | None:
    if json_schema is None:
        return None
    grammar_text(json_schema=json_schema)  # the same checks and messages as plain structured output
    return json.loads(json_schema) if isinstance(json_schema, (str, bytes)) else dict(json_schema)


def _render(template, messages: list[dict], add_generation_prompt: bool, extra: dict) -> str:
    return template.render(messages, add_generation_prompt=add_generation_prompt, **extra)


def generate(model, messages, tools=None, tool_choice=None, *, parallel_tool_calls: bool = True,
             json_schema: Any = None, template_options: Mapping[str, Any] | None = None, **options):
    """A single-sequence `Generation` with tools, and the parser to read it with:
    `(generation, parser)`. `options` are `lantern.generate.stream.generate`'s sampling and
    stopping options (max_tokens, temperature, seed, stop, logprobs, ...)."""
    import time

    from .decode import check_fits
    from .sampling import SETTING_NAMES, Sampler, SamplerSettings
    from .stream import Generation, normalize_max_tokens, normalize_stop

    started = time.perf_counter()
    plan = prepare(model, messages, tools, tool_choice, json_schema=json_schema,
                   parallel_tool_calls=parallel_tool_calls, template_options=template_options)
    logprobs = options.pop("logprobs", None)
    max_tokens = normalize_max_tokens(options.pop("max_tokens", 256))
    stop = normalize_stop(options.pop("stop", ()))
    unknown = set(options) - set(SETTING_NAMES)
    if unknown:
        raise LanternError(f"unknown options for a generation with tools: {', '.join(sorted(unknown))}")
    settings = SamplerSettings(**options)
    check_fits(model, len(plan.prompt_ids))
    sampler = Sampler(settings, plan.constraint, logprobs=logprobs)
    gen = Generation(model, plan.prompt_ids, sampler, max_tokens=max_tokens, stop=stop,
                     build_seconds=time.perf_counter() - started, continuation=False)
    return gen, plan.parser()


# ----- reading JSON as it streams ----------------------------------------------------------------------


class _Frame:
    __slots__ = ("kind", "path", "state", "key", "index", "raw", "esc")

    def __init__(self, kind: str, path: tuple):
        self.kind, self.path = kind, path
        self.state = "start"
        self.key: Any = None
        self.index = 0
        self.raw = ""  # a key being read
        self.esc = False


class JsonStream:
    """Reads one JSON value as it arrives and says, for each piece of text, which value it is part
    of: `feed(text)` returns events `("text", path, s)` (s belongs to the value at `path`, a tuple
    of keys and indices; a container's own brackets, commas and inner whitespace belong to it) and
    `("end", path)` (that value is complete). `done` once the top value is complete; `rest` is
    the text after it; `error` if the text is not JSON."""

    _LITERAL = frozenset("0123456789+-.eEtruefalsn")

    def __init__(self):
        self.stack: list[_Frame] = []
        self.started = False
        self.done = False
        self.error = False
        self.rest = ""

    def feed(self, text: str) -> list[tuple]:
        events: list[tuple] = []
        for i, ch in enumerate(text):
            if self.done or self.error:
                self.rest += text[i:]
                break
            self._char(ch, events)
        return _merge(events)

    def finish(self) -> list[tuple]:
        """End of input: a number or literal at the very end is complete."""
        events: list[tuple] = []
        if self.stack and self.stack[-1].kind == "lit":
            self._pop(events)
        return events

    def _char(self, ch: str, events: list) -> None:
        while True:
            if not self.stack:
                if self.started:  # after the value
                    self.done = True
                    self.rest += ch
                    return
                if ch in " \t\r\n":
                    return
                self._start_value(ch, (), events)
                return
            top = self.stack[-1]
            if top.kind == "str":
                events.append(("text", top.path, ch))
                if top.esc:
                    top.esc = False
                elif ch == "\\":
                    top.esc = True
                elif ch == '"':
                    self._pop(events)
                return
            if top.kind == "lit":
                if ch in self._LITERAL:
                    events.append(("text", top.path, ch))
                    return
                self._pop(events)
                continue  # the character belongs to the container around it
            self._container_char(top, ch, events)
            return

    def _container_char(self, top: _Frame, ch: str, events: list) -> None:
        ws = ch in " \t\r\n"
        st = top.state
        if top.kind == "obj":
            if st == "key":
                events.append(("text", top.path, ch))
                if top.esc:
                    top.esc = False
                    top.raw += ch
                elif ch == "\\":
                    top.esc = True
                    top.raw += ch
                elif ch == '"':
                    try:
                        top.key = json.loads('"' + top.raw + '"')
                    except ValueError:
                        self.error = True
                    top.state = "colon"
                else:
                    top.raw += ch
            elif ws:
                events.append(("text", top.path, ch))
            elif st in ("start", "key_next") and ch == '"':
                events.append(("text", top.path, ch))
                top.state, top.raw = "key", ""
            elif st in ("start", "after") and ch == "}":
                events.append(("text", top.path, ch))
                self._pop(events)
            elif st == "colon" and ch == ":":
                events.append(("text", top.path, ch))
                top.state = "value"
            elif st == "value":
                top.state = "after"
                self._start_value(ch, top.path + (top.key,), events)
            elif st == "after" and ch == ",":
                events.append(("text", top.path, ch))
                top.state = "key_next"
            else:
                self.error = True
        else:  # array
            if ws:
                events.append(("text", top.path, ch))
            elif st in ("start", "after") and ch == "]":
                events.append(("text", top.path, ch))
                self._pop(events)
            elif st in ("start", "value"):
                top.state = "after"
                self._start_value(ch, top.path + (top.index,), events)
            elif st == "after" and ch == ",":
                events.append(("text", top.path, ch))
                top.index += 1
                top.state = "value"
            else:
                self.error = True

    def _start_value(self, ch: str, path: tuple, events: list) -> None:
        self.started = True
        kind = {"{": "obj", "[": "arr", '"': "str"}.get(ch, "lit" if ch in self._LITERAL else None)
        if kind is None:
            self.error = True
            return
        self.stack.append(_Frame(kind, path))
        events.append(("text", path, ch))

    def _pop(self, events: list) -> None:
        frame = self.stack.pop()
        events.append(("end", frame.path))
        if not self.stack:
            self.done = True


def _merge(events: list[tuple]) -> list[tuple]:
    out: list[tuple] = []
    for ev in events:
        if ev[0] == "text" and out and out[-1][0] == "text" and out[-1][1] == ev[1]:
            out[-1] = ("text", ev[1], out[-1][2] + ev[2])
        else:
            out.append(ev)
    return out


def _under(path: tuple, prefix: tuple) -> bool:
    return path[: len(prefix)] == prefix


class _CallReader:
    """One call object, `{"name": ..., "arguments"|"parameters": {...}}`, read from JSON events
    under `base`: emits the call's header once its name is known, then argument fragments."""

    ARG_KEYS = ("arguments", "parameters")

    def __init__(self, parser: "ToolCallParser", base: tuple):
        self.parser, self.base = parser, base
        self.name_raw = ""
        self.name: str | None = None
        self.args_key: str | None = None
        self.pending = ""  # argument text that came before the name
        self.args_sent = ""
        self.index: int | None = None
        self.args_done = False

    def event(self, ev: tuple, out: list[Delta]) -> None:
        path = ev[1]
        rel = path[len(self.base):]
        if not rel:
            if ev[0] == "end":
                self.close(out)
            return
        key = rel[0]
        if key == "name":
            if ev[0] == "text":
                self.name_raw += ev[2]
            elif ev[0] == "end" and len(rel) == 1:
                try:
                    name = json.loads(self.name_raw)
                except ValueError:
                    name = None
                if isinstance(name, str) and self.name is None:
                    self.name = name
                    self._open(out)
        elif key in self.ARG_KEYS and (self.args_key in (None, key)):
            self.args_key = key
            if ev[0] == "text":
                self._args(ev[2], out)
            elif ev[0] == "end" and len(rel) == 1:
                self.args_done = True

    def _open(self, out: list[Delta]) -> None:
        self.index = self.parser._new_call(self.name)
        out.append(Delta(tool_call=ToolCallDelta(self.index, self.parser.calls[self.index].id, self.name, "")))
        if self.pending:
            text, self.pending = self.pending, ""
            self._args(text, out)

    def _args(self, text: str, out: list[Delta]) -> None:
        if self.index is None:
            self.pending += text
            return
        self.args_sent += text
        self.parser.calls[self.index].arguments += text
        out.append(Delta(tool_call=ToolCallDelta(self.index, arguments=text)))

    def close(self, out: list[Delta]) -> None:
        """The call object ended: a call without arguments gets "{}"."""
        if self.index is not None and not self.args_sent:
            self._args("{}", out)


class ToolCallParser:
    """Splits a model's streamed answer into content and tool calls (see the module doc).

    `feed(text)` -> [Delta], `finish()` -> [Delta]; then `content` (None when empty and a call
    was made), `tool_calls` ([ToolCall]) and `finish_reason(reason)`."""

    HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
    PYTHON_TAG = "<|python_tag|>"

    def __init__(self, family: str, parallel: bool = True):
        self.family = family
        self.parallel = parallel
        self.calls: list[ToolCall] = []
        self._content = ""
        self._buf = ""  # text not yet decided on
        self._ws = ""  # whitespace held back at the end of content
        self._mode = "start" if family in (LLAMA3, GENERIC) else "content"
        self._json: JsonStream | None = None
        self._readers: dict[tuple, _CallReader] = {}
        self._response_raw = ""
        self._response_sent = 0

    # ----- public

    def feed(self, text: str) -> list[Delta]:
        out: list[Delta] = []
        if self.family == NONE:
            self._emit_content(text, out, hold_ws=False)
            return out
        self._buf += text
        self._step(out, final=False)
        return out

    def finish(self) -> list[Delta]:
        out: list[Delta] = []
        if self.family != NONE:
            self._step(out, final=True)
            if self._json is not None:
                for ev in self._json.finish():
                    self._json_event(ev, out)
            if self._mode in ("start", "content", "plain") and self._buf:
                self._emit_content(self._buf, out, hold_ws=False)
                self._buf = ""
        if self._ws and not self.calls:
            self._emit_content(self._ws, out, hold_ws=False, flush=True)
        return out

    @property
    def content(self) -> str | None:
        return self._content if (self._content or not self.calls) else None

    @property
    def tool_calls(self) -> list[ToolCall]:
        return list(self.calls)

    def finish_reason(self, reason: str | None) -> str | None:
        """"tool_calls" when the generation stopped on its own after making a call."""
        return "tool_calls" if self.calls and reason == "stop" else reason

    def message(self) -> dict:
        """The whole answer as an OpenAI assistant message."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.calls:
            msg["tool_calls"] = [c.to_openai() for c in self.calls]
        return msg

    # ----- internals

    def _new_call(self, name: str) -> int:
        self.calls.append(ToolCall(new_call_id(), name, ""))
        return len(self.calls) - 1

    def _emit_content(self, text: str, out: list[Delta], hold_ws: bool = True, flush: bool = False) -> None:
        """Content, holding back trailing whitespace (dropped if a tool call follows)."""
        text = self._ws + text
        self._ws = ""
        if hold_ws and not flush:
            stripped = text.rstrip(" \t\r\n")
            self._ws = text[len(stripped):]
            text = stripped
        if text:
            self._content += text
            out.append(Delta(content=text))

    def _step(self, out: list[Delta], final: bool) -> None:
        while self._buf:
            before = (self._mode, len(self._buf))
            if self._mode == "content":
                self._step_content(out, final)
            elif self._mode == "start":
                self._step_start(out, final)
            elif self._mode == "json":
                self._step_json(out)
            elif self._mode == "after_call":
                self._step_after_call(out, final)
            elif self._mode == "plain":
                text, self._buf = self._buf, ""
                self._emit_content(text, out)
            if (self._mode, len(self._buf)) == before:
                return  # waiting for more text

    def _step_start(self, out: list[Delta], final: bool) -> None:
        """llama3 / generic: a call (or the generic JSON) must come first; anything else is content."""
        s = self._buf.lstrip(" \t\r\n")
        if self.family == LLAMA3 and s.startswith(self.PYTHON_TAG):
            s = s[len(self.PYTHON_TAG):].lstrip(" \t\r\n")
            if not s:
                return
        elif self.family == LLAMA3 and self.PYTHON_TAG.startswith(s) and s and not final:
            return
        if not s:
            if final:
                self._buf = ""
            return
        if s[0] == "{":
            self._buf = s
            self._json = JsonStream()
            self._mode = "json"
        else:
            self._mode = "plain"

    def _step_content(self, out: list[Delta], final: bool) -> None:
        """hermes: text up to `<tool_call>` is content."""
        at = self._buf.find(self.HERMES_OPEN)
        if at >= 0:
            self._emit_content(self._buf[:at], out)
            self._buf = self._buf[at + len(self.HERMES_OPEN):]
            self._json = JsonStream()
            self._mode = "json"
            return
        keep = 0 if final else _partial_suffix(self._buf, self.HERMES_OPEN)
        text = self._buf[: len(self._buf) - keep]
        self._buf = self._buf[len(self._buf) - keep:]
        if text:
            self._emit_content(text, out)

    def _step_json(self, out: list[Delta]) -> None:
        assert self._json is not None
        text, self._buf = self._buf, ""
        for ev in self._json.feed(text):
            self._json_event(ev, out)
        if self._json.error:
            # Not JSON after all (an unconstrained model): what remains is content.
            self._buf = self._json.rest
            self._json = None
            self._mode = "content" if self.family == HERMES else "plain"
            return
        if self._json.done:
            self._buf = self._json.rest
            self._json = None
            self._mode = "after_call"

    def _step_after_call(self, out: list[Delta], final: bool) -> None:
        s = self._buf.lstrip(" \t\r\n;")
        if self.family == HERMES:
            if s.startswith(self.HERMES_CLOSE):
                s = s[len(self.HERMES_CLOSE):]
                self._buf = s
                self._mode = "content"
                return
            if s and self.HERMES_CLOSE.startswith(s):
                if final:  # the closing tag cut short (a length stop): the call's syntax, not content
                    self._buf = ""
                return
        elif self.family == LLAMA3 and s.startswith("{"):
            self._buf = s
            self._json = JsonStream()
            self._mode = "json"
            return
        if not s:
            if final:
                self._buf = ""
            return
        self._mode = "content" if self.family == HERMES else "plain"
        text, self._buf = self._buf, ""
        self._emit_content(text, out)

    def _json_event(self, ev: tuple, out: list[Delta]) -> None:
        path = ev[1]
        if self.family in (HERMES, LLAMA3):
            reader = self._readers.get(())
            if reader is None:
                reader = self._readers[()] = _CallReader(self, ())
            reader.event(ev, out)
            if ev[0] == "end" and path == ():
                self._readers.clear()
            return
        # generic: {"tool_call": {...}} | {"tool_calls": [{...}, ...]} | {"response": ...}
        if not path:
            return
        if path[0] == "response":
            self._response(ev, out)
        elif path[0] == "tool_call":
            base = ("tool_call",)
        elif path[0] == "tool_calls" and len(path) >= 2:
            base = ("tool_calls", path[1])
        else:
            return
        if path[0] != "response":
            reader = self._readers.get(base)
            if reader is None:
                reader = self._readers[base] = _CallReader(self, base)
            reader.event(ev, out)

    def _response(self, ev: tuple, out: list[Delta]) -> None:
        """The generic format's `response`: a string is streamed decoded; any other JSON value
        (a response schema) is streamed as its JSON text."""
        if ev[0] == "text":
            self._response_raw += ev[2]
        raw = self._response_raw
        if not raw:
            return
        if raw[0] != '"':
            new = raw[self._response_sent:]
            self._response_sent = len(raw)
            if new:
                self._emit_content(new, out, hold_ws=False)
            return
        done = ev[0] == "end" and len(ev[1]) == 1
        body = raw[1:-1] if done else raw[1:]
        decoded = _decode_json_prefix(body, complete=done)
        if len(decoded) > self._response_sent:
            self._emit_content(decoded[self._response_sent:], out, hold_ws=not done)
            self._response_sent = len(decoded)


def _decode_json_prefix(body: str, complete: bool) -> str:
    """The text of a JSON string body (without its quotes) up to the last complete character
    (not inside an escape, nor half a surrogate pair)."""
    safe, i, n = 0, 0, len(body)
    while i < n:
        if body[i] != "\\":
            i += 1
        elif i + 1 >= n:
            break
        elif body[i + 1] != "u":
            i += 2
        elif i + 6 > n:
            break
        else:
            try:
                code = int(body[i + 2:i + 6], 16)
            except ValueError:
                break
            step = 12 if 0xD800 <= code < 0xDC00 else 6
            if i + step > n:
                break
            i += step
        safe = i
    try:
        return json.loads('"' + body[:safe] + '"')
    except ValueError:
        return ""


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


def parse(family: str, text: str, parallel: bool = True) -> ToolCallParser:
    """The whole `text` parsed at once (a parser after feed + finish)."""
    parser = ToolCallParser(family, parallel)
    parser.feed(text)
    parser.finish()
    return parser


def iter_deltas(parser: ToolCallParser, pieces: Iterator[str]) -> Iterator[Delta]:
    """Every delta of `pieces` fed through `parser`, then its finish()."""
    for piece in pieces:
        yield from parser.feed(piece)
    yield from parser.finish()

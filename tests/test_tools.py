"""Tool calls (lantern.generate.tools): the three families' formats, parsed from crafted text and
from real model output, streamed, and enforced with a grammar.

Time budget: about 2 minutes on a quiet 2-core machine (SmolLM2 loaded once, some 15 short
constrained generations; a synthetic 2-layer Llama; the parsing tests take milliseconds). Under a
load average of 13 on 2 cores it took 12 minutes.

Templates: SmolLM2's own (ChatML without tool syntax: the generic family); Qwen2.5-Instruct's
and Llama 3.2-Instruct's from tests/data/templates (written out from their tokenizer_config.json),
set on a loaded model as if its file carried them. SmolLM2 speaks ChatML like Qwen2.5, so with
Qwen2.5's template it is a real model writing the Hermes format.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lantern.chat_template import ChatTemplate
from lantern.errors import LanternError
from lantern.generate import tools
from lantern.generate.tools import GENERIC, HERMES, LLAMA3, ToolCallParser

TEMPLATES = Path(__file__).parent / "data" / "templates"
QWEN25 = (TEMPLATES / "qwen2.5-instruct.jinja").read_text()
LLAMA32 = (TEMPLATES / "llama3.2-instruct.jinja").read_text()

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
TOOLS = [WEATHER, TIME]
ASK = [{"role": "user", "content": "What is the weather in Paris? Use the tools."}]


def valid_weather_args(args: dict) -> bool:
    return (set(args) == {"city", "unit"} and isinstance(args["city"], str)
            and args["unit"] in ("celsius", "fahrenheit"))


def valid_time_args(args: dict) -> bool:
    return set(args) >= {"zone"} and isinstance(args["zone"], str)


VALIDATORS = {"get_weather": valid_weather_args, "get_time": valid_time_args}


def stream(parser: ToolCallParser, text: str, rng: random.Random | None = None):
    """Feed `text` in random pieces (1-7 characters); return (content, {index: [fragments]},
    headers {index: (id, name)})."""
    rng = rng or random.Random(0)
    deltas, i = [], 0
    while i < len(text):
        n = rng.randint(1, 7)
        deltas += parser.feed(text[i:i + n])
        i += n
    deltas += parser.finish()
    content = "".join(d.content for d in deltas)
    fragments: dict[int, list[str]] = {}
    headers: dict[int, tuple] = {}
    for d in deltas:
        assert bool(d.content) != (d.tool_call is not None), d
        if d.tool_call is not None:
            tc = d.tool_call
            if tc.name is not None:
                assert tc.index not in headers, "one header per call"
                assert tc.arguments == "" and tc.id and tc.id.startswith("call_")
                headers[tc.index] = (tc.id, tc.name)
            else:
                assert tc.index in headers, "the header comes first"
                fragments.setdefault(tc.index, []).append(tc.arguments)
    return content, fragments, headers


def check_streamed(parser, text, seeds=range(5)):
    """The same text in several random chunkings gives the same message; every call's streamed
    fragments concatenate to valid JSON equal to the call's arguments."""
    results = []
    for seed in seeds:
        p = ToolCallParser(parser.family, parser.parallel)
        content, fragments, headers = stream(p, text, random.Random(seed))
        assert sorted(headers) == list(range(len(p.tool_calls)))
        for i, call in enumerate(p.tool_calls):
            joined = "".join(fragments.get(i, []))
            assert joined == call.arguments
            assert isinstance(json.loads(joined), dict)
            assert headers[i] == (call.id, call.name)
        assert content == (p.content or "")
        results.append((p.content, [(c.name, json.loads(c.arguments)) for c in p.tool_calls]))
    assert all(r == results[0] for r in results)
    return results[0]


# ----- crafted text, each family -------------------------------------------------------------------


def test_hermes_text_with_two_calls():
    text = ('Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
            '"unit": "celsius", "note": "a \\"quoted\\" }</tool_call> inside"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')
    content, calls = check_streamed(ToolCallParser(HERMES), text)
    assert content == "Let me look that up."
    assert calls == [("get_weather", {"city": "Paris", "unit": "celsius",
                                      "note": 'a "quoted" }</tool_call> inside'}),
                     ("get_time", {"zone": "CET"})]


def test_hermes_call_cut_inside_its_closing_tag_leaks_nothing():
    """A length stop can cut `</tool_call>` short: what is left of it is the call's own syntax."""
    text = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}\n}\n</tool_'
    content, calls = check_streamed(ToolCallParser(HERMES), text)
    assert content is None and calls == [("get_time", {"zone": "CET"})]


def test_hermes_plain_answer_is_all_content():
    text = "No tools needed: 2 < 3 and <tool is not a call; a <tool_call without its bracket"
    content, calls = check_streamed(ToolCallParser(HERMES), text)
    assert content == text and calls == []


def test_llama3_call_after_python_tag_and_without():
    for text in ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}',
                 ' {"type": "function", "name": "get_weather", "parameters": {"city": "Oslo", "unit": "celsius"}}'):
        content, calls = check_streamed(ToolCallParser(LLAMA3), text)
        assert content is None
        assert calls == [("get_weather", {"city": "Oslo", "unit": "celsius"})]
    text = "The weather is fine. {\"name\": 1}"
    assert check_streamed(ToolCallParser(LLAMA3), text) == (text, [])


def test_generic_formats():
    one = '{"tool_call": {"name": "get_time", "arguments": {"zone": "UTC"}}}'
    assert check_streamed(ToolCallParser(GENERIC, parallel=False), one) == (None, [("get_time", {"zone": "UTC"})])
    many = ('{"tool_calls": [{"name": "get_time", "arguments": {"zone": "UTC"}}, '
            '{"name": "get_weather", "arguments": {"city": "Rome", "unit": "celsius"}}]}')
    assert check_streamed(ToolCallParser(GENERIC), many) == (
        None, [("get_time", {"zone": "UTC"}), ("get_weather", {"city": "Rome", "unit": "celsius"})])
    reply = '{"response": "It is \\"sunny\\" \\u00e9t\\u00e9 \\ud83d\\ude00\\nbye\\\\"}'
    assert check_streamed(ToolCallParser(GENERIC), reply) == (json.loads(reply)["response"], [])


def test_a_call_without_arguments_gets_an_empty_object_and_finish_reason():
    parser = tools.parse(GENERIC, '{"tool_call": {"name": "get_time"}}', parallel=False)
    assert [(c.name, c.arguments) for c in parser.tool_calls] == [("get_time", "{}")]
    assert parser.finish_reason("stop") == "tool_calls" and parser.finish_reason("length") == "length"
    message = parser.message()
    assert message["content"] is None and message["tool_calls"][0]["function"]["name"] == "get_time"


def test_tool_and_choice_validation():
    with pytest.raises(LanternError, match="tool_choice names 'nope'"):
        tools.normalize_tool_choice({"type": "function", "function": {"name": "nope"}}, tools.normalize_tools(TOOLS))
    with pytest.raises(LanternError, match="tool_choice must be"):
        tools.normalize_tool_choice("sometimes", tools.normalize_tools(TOOLS))
    with pytest.raises(LanternError, match="two tools are named"):
        tools.normalize_tools([WEATHER, WEATHER])
    with pytest.raises(LanternError, match="function name"):
        tools.normalize_tools([{"type": "function", "function": {"name": "has space"}}])
    assert tools.normalize_tool_choice(None, []) == "none"


def test_family_detection():
    assert tools.detect_family(QWEN25) == HERMES
    assert tools.detect_family(LLAMA32) == LLAMA3
    assert tools.detect_family(ChatTemplate.default().source) == GENERIC


# ----- real models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    import lantern

    return lantern.load(smollm2_path)


@pytest.fixture
def with_template(smollm2):
    """SmolLM2 with another chat template for the test's duration."""
    original = smollm2.chat_template

    def use(source: str):
        smollm2.chat_template = ChatTemplate(source, original.bos_token, original.eos_token)
        return smollm2

    yield use
    smollm2.chat_template = original


@pytest.fixture(scope="module")
def tiny_llama():
    """A 2-layer synthetic Llama (random weights, a SentencePiece vocabulary with byte tokens)."""
    import lantern
    from lantern.testing.synthetic import Spec, cached_model

    model = lantern.load(cached_model(Spec(arch="llama", vocab_size=512, n_layers=2)))
    model.chat_template = ChatTemplate(LLAMA32, "<s>", "</s>")
    return model


def run_plan(model, plan, seed, temperature=1.0, max_tokens=80):
    gen, parser = None, plan.parser()
    from lantern.generate.sampling import Sampler, SamplerSettings
    from lantern.generate.stream import Generation

    sampler = Sampler(SamplerSettings(temperature=temperature, seed=seed), plan.sampler_constraint())
    gen = Generation(model, plan.prompt_ids, sampler, max_tokens=max_tokens, continuation=False)
    content, fragments, headers = stream(parser, "".join(gen), random.Random(seed))
    return gen, parser, content, fragments


def check_calls(parser, fragments, allowed=("get_weather", "get_time")):
    for i, call in enumerate(parser.tool_calls):
        assert call.name in allowed
        args = json.loads("".join(fragments[i]))
        assert args == json.loads(call.arguments)
        assert VALIDATORS[call.name](args), call


def test_generic_prompt_puts_the_tools_in_the_system_message(smollm2):
    plan = tools.prepare(smollm2, [{"role": "system", "content": "Be brief."}] + ASK, TOOLS, "auto")
    assert plan.family == GENERIC
    text = smollm2.detokenize(plan.prompt_ids)
    assert "Be brief.\n\nYou can call the following tools" in text
    assert '"name": "get_weather"' in text and "`response`" in text
    assert text.count("<|im_start|>system") == 1


def test_generic_required_and_named_on_smollm2(smollm2):
    """SmolLM2 (no tool syntax in its template) at temperature 1.0: every finished answer is a
    call to a declared tool with valid arguments; a named choice calls that tool."""
    for choice, allowed in (("required", ("get_weather", "get_time")),
                            ({"type": "function", "function": {"name": "get_time"}}, ("get_time",))):
        plan = tools.prepare(smollm2, ASK, TOOLS, choice)
        for seed in range(2):
            gen, parser, content, fragments = run_plan(smollm2, plan, seed)
            assert "tool_call" not in content and "{" not in content
            if gen.finish_reason == "stop":
                assert parser.tool_calls and parser.finish_reason("stop") == "tool_calls"
                check_calls(parser, fragments, allowed)


def test_generic_auto_on_smollm2_answers_or_calls(smollm2):
    plan = tools.prepare(smollm2, ASK, TOOLS, "auto")
    stops = 0
    for seed in range(3):
        gen, parser, content, fragments = run_plan(smollm2, plan, seed, temperature=0.7)
        assert '"response"' not in content and "tool_call" not in content
        if gen.finish_reason == "stop":
            stops += 1
            assert bool(parser.tool_calls) != bool(parser.content)
            check_calls(parser, fragments)
    assert stops >= 1


def test_hermes_on_smollm2_with_qwen_template(with_template):
    model = with_template(QWEN25)
    plan = tools.prepare(model, ASK, TOOLS, "auto")
    assert plan.family == HERMES
    text = plan.prompt_text
    # the template itself rendered the tools (the `tools` variable)
    assert "# Tools" in text and json.dumps(WEATHER, ensure_ascii=False) in text
    stops = 0
    for seed in range(3):
        gen, parser, content, fragments = run_plan(model, plan, seed, temperature=0.7)
        assert "<tool_call>" not in content and "</tool_call>" not in content
        if gen.finish_reason == "stop":
            stops += 1
            check_calls(parser, fragments)
    assert stops >= 1
    required = tools.prepare(model, ASK, TOOLS, "required")
    for seed in range(2):
        gen, parser, content, fragments = run_plan(model, required, seed)
        assert content == ""
        if gen.finish_reason == "stop":
            assert parser.tool_calls
            check_calls(parser, fragments)


def test_history_with_tool_calls_and_results(with_template, smollm2):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18 C, sunny"},
    ]
    generic = tools.prepare(smollm2, history, TOOLS, "auto").prompt_text
    assert '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]}' in generic
    assert '"tool_response": {"name": "get_weather", "tool_call_id": "call_1", "content": "18 C, sunny"}' in generic
    hermes = tools.prepare(with_template(QWEN25), history, TOOLS, "auto").prompt_text
    assert ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
            '</tool_call><|im_end|>') in hermes
    assert "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>" in hermes


def test_tool_choice_none_renders_no_tools(with_template):
    model = with_template(QWEN25)
    plan = tools.prepare(model, ASK, TOOLS, "none")
    assert plan.family == "none" and plan.constraint is None and "# Tools" not in plan.prompt_text
    parser = plan.parser()
    assert "".join(d.content for d in parser.feed("<tool_call>{}</tool_call>") + parser.finish()) \
        == "<tool_call>{}</tool_call>"


def test_llama3_required_and_named_on_a_synthetic_llama(tiny_llama):
    """A random-weight model writes whatever the grammar allows: every finished answer is one
    well-formed call (llama3 format) of the allowed tool with valid arguments."""
    plan = tools.prepare(tiny_llama, ASK, TOOLS, "required")
    assert plan.family == LLAMA3
    assert "You have access to the following functions" in plan.prompt_text  # tools_in_user_message=False
    finished = 0
    for choice, allowed in (("required", ("get_weather", "get_time")),
                            ({"type": "function", "function": {"name": "get_weather"}}, ("get_weather",))):
        plan = tools.prepare(tiny_llama, ASK, TOOLS, choice)
        for seed in range(3):
            gen, parser, content, fragments = run_plan(tiny_llama, plan, seed, temperature=1.0, max_tokens=120)
            assert content == ""
            if gen.finish_reason == "stop":
                finished += 1
                assert len(parser.tool_calls) == 1
                check_calls(parser, fragments, allowed)
    assert finished >= 2


def test_tools_generate_api(smollm2):
    gen, parser = tools.generate(smollm2, ASK, TOOLS, "required", temperature=0, max_tokens=80)
    deltas = list(tools.iter_deltas(parser, gen))
    assert gen.finish_reason in ("stop", "length")
    if gen.finish_reason == "stop":
        assert parser.finish_reason(gen.finish_reason) == "tool_calls"
        assert any(d.tool_call for d in deltas)
    with pytest.raises(LanternError, match="unknown options"):
        tools.generate(smollm2, ASK, TOOLS, "auto", speculate="lookup")

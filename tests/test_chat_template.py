"""Chat templates rendered as Hugging Face's apply_chat_template renders them.

Expected strings are written out by hand from the templates' text and HF's rendering rules
(transformers utils/chat_template_utils.py: ImmutableSandboxedEnvironment, trim_blocks,
lstrip_blocks, raise_exception, a tojson that does not escape, strftime_now).
"""

import warnings
from datetime import datetime

import pytest

from lantern.chat_template import DEFAULT_TEMPLATE, ChatTemplate, ChatTemplateWarning
from lantern.errors import LanternError

# microsoft/Phi-3-mini-4k-instruct, tokenizer_config.json "chat_template" (current revision).
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# The template that 2024 Phi-3 GGUF conversions embedded: BOS, no system role.
PHI3_GGUF_2024_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}"
    "{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
    "{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}"
    "{% endif %}{% endfor %}"
)

# HuggingFaceTB/SmolLM2-135M-Instruct, as stored in the GGUF (checked against the file below).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Capital of France?"},
]


def phi3():
    return ChatTemplate(PHI3_TEMPLATE, bos_token="<s>", eos_token="<|endoftext|>")


def smollm2():
    return ChatTemplate(SMOLLM2_TEMPLATE, bos_token="<|im_start|>", eos_token="<|im_end|>")


# ----- Phi-3 ---------------------------------------------------------------------------------


def test_phi3_system_multi_turn_with_generation_prompt():
    assert phi3().render(CONVERSATION, add_generation_prompt=True) == (
        "<|system|>\nYou are terse.<|end|>\n"
        "<|user|>\nHi<|end|>\n"
        "<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nCapital of France?<|end|>\n"
        "<|assistant|>\n"
    )


def test_phi3_without_generation_prompt_ends_with_eos():
    text = phi3().render(CONVERSATION[:3], add_generation_prompt=False)
    assert text == "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|endoftext|>"


def test_phi3_single_user_message():
    text = phi3().render([{"role": "user", "content": "What is the capital of France?"}])
    assert text == "<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n"


def test_phi3_2024_gguf_template_adds_bos_and_drops_system():
    t = ChatTemplate(PHI3_GGUF_2024_TEMPLATE, bos_token="<s>", eos_token="<|endoftext|>")
    assert t.render(CONVERSATION) == (
        "<s><|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n<|user|>\nCapital of France?<|end|>\n<|assistant|>\n"
    )


# ----- SmolLM2 -------------------------------------------------------------------------------


def test_smollm2_default_system_prompt_when_none_given():
    text = smollm2().render([{"role": "user", "content": "What is the capital of France?"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_system_multi_turn():
    assert smollm2().render(CONVERSATION) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_prompt = smollm2().render(CONVERSATION[:3], add_generation_prompt=False)
    assert no_prompt.endswith("<|im_start|>assistant\nHello!<|im_end|>\n")


def test_smollm2_template_read_from_the_gguf(smollm2_path):
    from lantern.weights.gguf_file import GGUFFile

    t = ChatTemplate.from_gguf(GGUFFile(smollm2_path))
    assert t.source == SMOLLM2_TEMPLATE
    assert not t.is_default
    # bos id 1 and eos id 2 of SmolLM2's vocabulary
    assert (t.bos_token, t.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert t.render(CONVERSATION) == smollm2().render(CONVERSATION)


# ----- HF rendering rules --------------------------------------------------------------------


def test_trim_blocks_and_lstrip_blocks_as_hf():
    source = (
        "{% for m in messages %}\n"
        "    {% if m['role'] == 'user' %}\n"
        "U: {{ m['content'] }}\n"
        "    {% else %}\n"
        "A: {{ m['content'] }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
    )
    text = ChatTemplate(source).render(CONVERSATION[1:3])
    assert text == "U: Hi\nA: Hello!\n"


def test_raise_exception_becomes_one_line_lantern_error():
    source = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    with pytest.raises(LanternError) as info:
        ChatTemplate(source).render(CONVERSATION)
    message = str(info.value)
    assert message.startswith("chat template failed to render: System role not supported")
    assert "--no-chat" in message and "\n" not in message


def test_syntax_error_is_reported_at_render_time():
    t = ChatTemplate("{% for m in messages %}{{ m['content'] }")  # never closed
    with pytest.raises(LanternError, match="chat template failed to render: TemplateSyntaxError"):
        t.render(CONVERSATION)


def test_template_runtime_error_and_sandbox_are_lantern_errors():
    with pytest.raises(LanternError, match="chat template failed to render"):
        ChatTemplate("{{ messages[0]['content'] + 3 }}").render(CONVERSATION)
    with pytest.raises(LanternError, match="chat template failed to render: SecurityError"):
        ChatTemplate("{{ messages.append(1) }}").render(CONVERSATION)
    with pytest.raises(LanternError, match="chat template failed to render"):
        ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}").render(CONVERSATION)


def test_tojson_does_not_escape_and_keeps_unicode():
    t = ChatTemplate("{{ messages[0] | tojson }}|{{ {'b': 1, 'a': [1, 2]} | tojson(indent=2, sort_keys=True) }}")
    text = t.render([{"role": "user", "content": "<b>café</b> & \"q\""}])
    first, second = text.split("|", 1)
    assert first == '{"role": "user", "content": "<b>café</b> & \\"q\\""}'
    assert second == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'


def test_strftime_now_loopcontrols_and_generation_block():
    t = ChatTemplate(
        "{{ strftime_now('%Y') }}:"
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% generation %}{{ m['role'] }};{% endgeneration %}{% endfor %}"
    )
    assert t.render(CONVERSATION) == f"{datetime.now().year}:system;user;"


def test_bad_messages_are_lantern_errors():
    t = smollm2()
    with pytest.raises(LanternError, match="messages is empty"):
        t.render([])
    with pytest.raises(LanternError, match="must be a dict with a 'role'"):
        t.render([{"content": "no role"}])
    with pytest.raises(LanternError, match="content must be a string"):
        t.render([{"role": "user", "content": None}])
    with pytest.raises(LanternError, match="must be a list"):
        t.render("hello")


# ----- no template in the file ---------------------------------------------------------------


class FakeFile:
    """A GGUF metadata stand-in (metadata only; not code under test)."""

    path = "nochat.gguf"

    def __init__(self, meta):
        self.meta = meta

    def get(self, key, default=None):
        return self.meta.get(key, default)


def test_missing_template_falls_back_to_chatml_with_warning():
    meta = {"tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1, "tokenizer.ggml.tokens": ["<s>", "</s>", "a"]}
    with pytest.warns(ChatTemplateWarning, match="no chat template in the file.*ChatML"):
        t = ChatTemplate.from_gguf(FakeFile(meta))
    assert t.is_default and t.source == DEFAULT_TEMPLATE
    assert (t.bos_token, t.eos_token) == ("<s>", "</s>")
    assert t.render(CONVERSATION[:2]) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_present_template_gives_no_warning():
    meta = {"tokenizer.chat_template": PHI3_TEMPLATE, "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = ChatTemplate.from_gguf(FakeFile(meta), tokens=["<s>", "<|endoftext|>"])
    assert t.eos_token == "<|endoftext|>"
    assert t.render(CONVERSATION[:2], add_generation_prompt=False).endswith("<|end|>\n<|endoftext|>")


# ----- rendered and tokenized: what the model is fed -----------------------------------------


@pytest.fixture(scope="module")
def phi3_tokenizer():
    from lantern.testing import phi3_vocab
    from lantern.tokenizer import Tokenizer

    return Tokenizer.from_metadata(phi3_vocab.phi3_tokenizer_metadata()), phi3_vocab.cached_phi3_vocab_gguf()


def test_phi3_prompt_ids_are_llama_cpps(phi3_tokenizer):
    """Phi-3's template, its real tokenizer, BOS from add_bos_token: the ids llama.cpp's server
    feeds for the same conversation (it tokenizes the rendered text with add_special)."""
    import llama_cpp

    from lantern.generate.prompts import encode_conversation

    tok, vocab_path = phi3_tokenizer
    ids = encode_conversation(tok, phi3(), CONVERSATION)
    vocab = llama_cpp.Llama(model_path=str(vocab_path), vocab_only=True, verbose=False)
    try:
        expected = vocab.tokenize(phi3().render(CONVERSATION).encode(), add_bos=True, special=True)
    finally:
        vocab.close()
    assert ids == expected
    # <s> <|system|> ... <|end|> <|user|> ... <|end|> <|assistant|> ... <|end|> <|user|> ... <|end|> <|assistant|>
    assert ids[:2] == [1, 32006] and ids[-2:] == [32007, 32001]
    assert ids.count(32007) == 4


def test_a_template_that_writes_bos_gets_no_second_one(phi3_tokenizer):
    from lantern.generate.prompts import encode_conversation

    tok, _ = phi3_tokenizer
    t = ChatTemplate(PHI3_GGUF_2024_TEMPLATE, bos_token="<s>", eos_token="<|endoftext|>")
    ids = encode_conversation(tok, t, CONVERSATION)
    assert ids[:2] == [1, 32010]
    assert ids.count(1) == 1


# ----- limits: a template is a program from a downloaded file (issue #11 item 2) ---------------

import resource  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from lantern.chat_template import MAX_INT_BITS, MAX_OUTPUT_CHARS, RENDER_SECONDS  # noqa: E402
from lantern.errors import TemplateError  # noqa: E402

HOSTILE_TEMPLATES = {
    # jinja2 folds constant arithmetic while compiling: this one used to hang in ChatTemplate().
    "huge power": ("{{ 10**(10**10) }}", "integer limit"),
    "power in a loop": ("{% set ns = namespace(x=7) %}{% for i in range(40) %}{% set ns.x = ns.x ** 3 %}"
                        "{% endfor %}{{ ns.x }}", "integer limit"),
    "nested loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "time limit"),
    "nested loops over a string": ("{% set s = 'x' * 3000 %}{% for a in s %}{% for b in s %}{% for c in s %}"
                                   "{% endfor %}{% endfor %}{% endfor %}", "time limit"),
    "exponential macro": ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
                          "{{ f(60) }}", "time limit"),
    "string times a billion": ("{{ 'ab' * 1000000000 }}", "size limit"),
    "list times a billion": ("{{ [0] * 1000000000 }}", "size limit"),
    "doubling a namespace string": ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                                    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "size limit"),
    "doubling with +": ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                        "{% set ns.s = ns.s + ns.s %}{% endfor %}", "size limit"),
    "center filter": ("{{ 'x' | center(1000000000) }}", "size limit"),
    "ljust method": ("{{ 'x'.ljust(1000000000) }}", "size limit"),
    "format width": ("{{ '{:>1000000000}'.format(1) }}", "size limit"),
    "printf width": ("{{ '%01000000000d' % 1 }}", "size limit"),
    "printf star": ("{{ '%*d' % (1000000000, 1) }}", "size limit"),
    "replace with itself": ("{% set s = 'x' * 4000 %}{{ s.replace('', s) }}", "size limit"),
    "join of a big list": ("{% set s = 'x' * 3000000 %}{{ [s, s] | join(s) }}", "size limit"),
    "batch padding": ("{{ [1] | batch(1000000000, 0) | list }}", "size limit"),
    "output of many pieces": ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "output limit"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_a_template_that_breaks_a_limit_is_one_line_naming_it(name):
    source, limit = HOSTILE_TEMPLATES[name]
    started = time.monotonic()
    with pytest.raises(TemplateError) as info:
        ChatTemplate(source).render(CONVERSATION)
    elapsed = time.monotonic() - started
    message = str(info.value)
    assert limit in message and "--no-chat" in message and "\n" not in message, message
    assert elapsed < RENDER_SECONDS + 2.0, f"{name}: stopped after {elapsed:.1f} s"


@pytest.mark.parametrize("name", ["huge power", "nested loops", "exponential macro", "string times a billion"])
def test_the_limits_hold_on_a_worker_thread(name):
    """A server renders on worker threads, where signal.alarm cannot reach: the limits do not use
    signals, so they stop the template there too."""
    source, limit = HOSTILE_TEMPLATES[name]
    outcome = []

    def render():
        try:
            ChatTemplate(source).render(CONVERSATION)
            outcome.append("rendered")
        except TemplateError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=render, daemon=True)
    worker.start()
    worker.join(timeout=RENDER_SECONDS + 10)
    assert not worker.is_alive(), f"{name} still running on its thread"
    assert len(outcome) == 1 and limit in outcome[0], outcome


def test_real_templates_and_ordinary_numbers_are_untouched():
    """Big-but-sane values a template may hold (timestamps, 2**64) and long conversations pass."""
    t = ChatTemplate("{{ '%d' | format(1700000000) }} {{ namespace(t=1700000000).t }} {{ 2**64 }} "
                     "{{ '%5d|%-3s' % (42, 'a') }} {{ '{:>6}'.format('r') }} {{ 'x' * 3 }}")
    assert t.render(CONVERSATION) == "1700000000 1700000000 18446744073709551616    42|a        r xxx"
    long_talk = [{"role": "user", "content": "word " * 100_000}] * 4  # 2 MB of conversation
    text = smollm2().render(long_talk)
    assert len(text) > 2_000_000 and text.endswith("<|im_start|>assistant\n")
    assert MAX_OUTPUT_CHARS >= 4_000_000 and MAX_INT_BITS >= 64


def test_concurrent_renders_keep_their_own_deadlines():
    """Each thread's render has its own deadline: a slow template on one thread does not stop
    a quick one on another."""
    results = {}

    def render(name, source):
        try:
            results[name] = ChatTemplate(source).render(CONVERSATION)
        except TemplateError as exc:
            results[name] = exc

    slow = threading.Thread(target=render, args=("slow", HOSTILE_TEMPLATES["nested loops"][0]))
    slow.start()
    time.sleep(0.2)
    for i in range(20):
        render(f"quick{i}", PHI3_TEMPLATE)
    slow.join()
    assert isinstance(results["slow"], TemplateError)
    assert all(results[f"quick{i}"].endswith("<|assistant|>\n") for i in range(20))


def test_fuzzed_templates_render_or_fail_cleanly_within_the_limits():
    """Property: any template built from hostile pieces (huge numbers, loops, multiplications,
    recursion, padding, sandbox escapes) either renders or raises one TemplateError, within the
    time limit plus a margin and without growing memory past a few hundred MB."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    numbers = st.sampled_from(["0", "1", "7", "-1", "100000", "1000000000", "10**10", "2**64", "(10**10)**10",
                               "9" * 30])
    sequences = st.sampled_from(["'ab'", "[1, 2]", "messages", "range(100000)", "'x' * 100000",
                                 "messages[0]['content']", "namespace(a=1)", "''.__class__",
                                 "cycler.__init__.__globals__", "lipsum.__globals__"])
    expr = st.recursive(
        numbers | sequences,
        lambda inner: st.one_of(
            st.tuples(inner, st.sampled_from(["*", "**", "+", "%", "~", "//", "-"]), inner)
            .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            st.tuples(inner, st.sampled_from(["center", "batch", "indent", "join", "list", "replace('a', 'bb')",
                                              "format", "sum", "string", "length", "attr('__class__')",
                                              "tojson", "slice"]))
            .map(lambda t: f"({t[0]} | {t[1]}{'' if '(' in t[1] else ''})"),
            st.tuples(inner, st.sampled_from(["center", "ljust", "zfill", "expandtabs", "join", "format",
                                              "replace"]), inner)
            .map(lambda t: f"{t[0]}.{t[1]}({t[2]})"),
        ),
        max_leaves=6,
    )
    body = st.recursive(
        expr.map(lambda e: "{{ " + e + " }}"),
        lambda inner: st.one_of(
            st.tuples(expr, inner).map(lambda t: "{% for v in " + t[0] + " %}" + t[1] + "{% endfor %}"),
            st.tuples(inner, inner).map(lambda t: t[0] + t[1]),
            inner.map(lambda b: "{% macro m(n) %}" + b + "{{ m(n) }}{{ m(n) }}{% endmacro %}{{ m(1) }}"),
        ),
        max_leaves=4,
    )

    @settings(max_examples=60, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(body)
    def check(source):
        started = time.monotonic()
        try:
            ChatTemplate(source).render(CONVERSATION)
        except TemplateError as exc:
            assert "\n" not in str(exc)
        elapsed = time.monotonic() - started
        assert elapsed < RENDER_SECONDS + 2.0, (source, elapsed)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    check()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500, f"peak memory grew by {grown_mb:.0f} MB"

"""`lantern serve`: a real server on an ephemeral loopback port, driven by real clients.

The server is uvicorn in a thread (and, for the command line, a `lantern serve` subprocess)
serving SmolLM2-135M on the batch engine; the clients are the official `openai` and `ollama`
Python packages and httpx for raw HTTP. Nothing is mocked.

Time budget: about 3 minutes on the 2-core development machine (most of it greedy decoding
of SmolLM2: the 8-client batch check, structured output, tools, and one CLI start/stop).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import httpx
import ollama
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

import lantern
from lantern.generate.batch import BatchEngine
from lantern.generate.prompts import encode_chat
from lantern.serve import attach, create_app

KEY = "test-key-1234"
CTX = 1024  # the main server's KV budget, and so its per-request limit


# ----- servers ------------------------------------------------------------------------------


class Server:
    """uvicorn serving `app` in a thread on 127.0.0.1:<free port>."""

    def __init__(self, app):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture(scope="module")
def model(smollm2_path):
    return lantern.load(str(smollm2_path))


@pytest.fixture(scope="module")
def engine(model):
    engine = BatchEngine(model, parallel=8, ctx_size=CTX, queue_size=64)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(model, engine):
    server = Server(create_app(model, engine, api_key=KEY))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


def metrics(http) -> dict[str, float]:
    """Every sample of /metrics, by name and labels."""
    text = http.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def wait_idle(http, timeout: float = 10.0) -> float:
    """Seconds until no sequence is running (fails past `timeout`)."""
    started = time.time()
    while metrics(http)["lantern_sequences_running"] != 0:
        assert time.time() - started < timeout, "a sequence was never freed"
        time.sleep(0.05)
    return time.time() - started


MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


# ----- OpenAI API ------------------------------------------------------------------------------


def test_chat_plain_and_streamed(client, model):
    plain = client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=12,
                                           logprobs=True, top_logprobs=2)
    choice = plain.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = plain.usage
    assert usage.prompt_tokens == len(encode_chat(model, MESSAGES))
    # One log-probability record per generated token: the usage counts them all.
    records = choice.logprobs.content
    assert usage.completion_tokens == len(records) and usage.total_tokens == usage.prompt_tokens + len(records)
    assert "".join(r.token for r in records) == choice.message.content
    assert all(len(r.top_logprobs) == 2 and r.logprob <= 0 for r in records)
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 12

    stream = client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=12,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == choice.message.content and finish == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_is_sse_ending_in_done(http):
    with http.stream("POST", "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3,
                                                           "temperature": 0, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_n_choices_and_seed(client):
    a = client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=1.0, seed=7, n=3,
                                       max_tokens=6)
    b = client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=1.0, seed=7, n=3,
                                       max_tokens=6)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.usage.completion_tokens <= 18 and a.usage.completion_tokens >= 3
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_completions(client, model):
    prompt = "The capital of France is"
    plain = client.completions.create(model="smollm2", prompt=prompt, max_tokens=8, temperature=0)
    assert plain.object == "text_completion"
    assert plain.usage.prompt_tokens == len(model.tokenize(prompt))
    assert plain.choices[0].finish_reason in ("stop", "length")
    if plain.choices[0].finish_reason == "length":
        assert plain.usage.completion_tokens == 8
    streamed = client.completions.create(model="smollm2", prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text
    # OpenAI's default for completions is 16 tokens.
    default = client.completions.create(model="smollm2", prompt=prompt, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert default.usage.completion_tokens == 16 and default.choices[0].finish_reason == "length"


def test_models_and_names(client, server):
    models = client.models.list().data
    assert len(models) == 1
    assert models[0].id == "SmolLM2-135M-Instruct.Q4_1"
    assert client.models.retrieve("smollm2").id == models[0].id
    # The model answers to its alias, its file name, and Ollama's :latest tag.
    for name in ("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2:latest"):
        out = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=1)
        assert out.model == name
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)
    assert err.value.body["code"] == "model_not_found"


def test_context_overflow_is_400_naming_both_counts(client, model):
    text = "lantern " * 1500
    n = len(encode_chat(model, [{"role": "user", "content": text}]))
    assert n > CTX
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": text}], max_tokens=4)
    assert str(n) in err.value.message and str(CTX) in err.value.message
    assert err.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=CTX + 1)
    assert str(CTX) in err.value.message


def test_wrong_or_missing_key_is_401(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=1)
    assert err.value.status_code == 401 and err.value.body["type"] == "authentication_error"
    missing = httpx.post(server.url + "/v1/chat/completions", json={"messages": MESSAGES})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health").status_code == 200  # the probe needs no key
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/api/tags").json()["error"].startswith("the request has no API key")


PROMPTS = [
    "Name three colours.",
    "What is two plus two?",
    "Write a short greeting.",
    "What is the largest planet?",
    "Name a fruit that is yellow.",
    "How many days are in a week?",
    "What do bees make?",
    "Say something about the sea.",
]


def test_eight_concurrent_clients_are_batched_and_match_single(server, http):
    def ask(prompt: str) -> str:
        c = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        out = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": prompt}],
                                        temperature=0, max_tokens=12)
        return out.choices[0].message.content

    alone = [ask(p) for p in PROMPTS]
    before = metrics(http)
    barrier = threading.Barrier(len(PROMPTS))

    def ask_together(prompt: str) -> str:
        barrier.wait()
        return ask(prompt)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(ask_together, PROMPTS))  # raises if any request failed
    after = metrics(http)
    assert together == alone
    passes = after["lantern_batch_sequences_count"] - before["lantern_batch_sequences_count"]
    single = after['lantern_batch_sequences_bucket{le=1.0}'] - before['lantern_batch_sequences_bucket{le=1.0}']
    assert passes > 0 and passes - single > 0, "no pass ran more than one sequence"
    many = after['lantern_batch_sequences_count'] - after['lantern_batch_sequences_bucket{le=4.0}'] - (
        before['lantern_batch_sequences_count'] - before['lantern_batch_sequences_bucket{le=4.0}'])
    assert many > 0, "no pass ran more than four sequences"
    ok = 'lantern_requests_total{endpoint=/v1/chat/completions,status=200}'
    assert after[ok] - before[ok] == len(PROMPTS)
    assert after["lantern_time_to_first_token_seconds_count"] > before["lantern_time_to_first_token_seconds_count"]
    assert after["lantern_inter_token_latency_seconds_count"] > before["lantern_inter_token_latency_seconds_count"]
    wait_idle(http)


def test_closing_a_stream_frees_its_sequence(client, http):
    before = metrics(http)["lantern_generation_tokens_total"]
    stream = client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=800, stream=True,
                                            extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert metrics(http)["lantern_sequences_running"] == 1
    stream.close()
    freed_after = wait_idle(http, timeout=10)
    generated = metrics(http)["lantern_generation_tokens_total"] - before
    assert generated < 200, f"the sequence ran on after the client left ({generated} tokens, freed after {freed_after:.2f} s)"
    m = metrics(http)
    assert m["lantern_kv_reserved_tokens"] == 0 and m["lantern_queue_waiting"] == 0


class Ticket(BaseModel):
    code: str = Field(pattern=r"^ZQX-[0-9]{4}$")
    priority: Literal["glacial", "volcanic"]
    copies: Literal[3, 7]


def test_structured_output_parse_at_high_temperature(client):
    # Nothing the model would write about a cat, sampled hot: only the constraint makes it valid.
    # (The JSON whitespace llguidance allows is bounded, so 200 tokens leave room to finish.)
    out = client.chat.completions.parse(
        model="smollm2", messages=[{"role": "user", "content": "Describe a cat."}], response_format=Ticket,
        temperature=1.5, seed=0, n=2, max_tokens=200)
    assert len(out.choices) == 2
    for choice in out.choices:
        assert choice.finish_reason == "stop"
        ticket = choice.message.parsed
        assert isinstance(ticket, Ticket) and re.fullmatch(r"ZQX-[0-9]{4}", ticket.code)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=5,
                                       response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                                           "type": "object", "properties": {"a": {"type": "wat"}}}}})
    assert err.value.body["param"] == "response_format"


WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}]


def test_tool_calls_streamed_and_plain(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    stream = client.chat.completions.create(model="smollm2", messages=messages, tools=WEATHER,
                                            tool_choice="required", temperature=0, max_tokens=60, stream=True)
    calls: dict[int, dict] = {}
    content, finish = "", None
    fragments = 0
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
            if call.id:
                entry["id"] = call.id
            if call.function and call.function.name:
                entry["name"] = call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
                fragments += 1
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls and all(c["id"] and c["name"] == "get_weather" for c in calls.values())
    assert fragments > 1, "the arguments were not streamed"
    for c in calls.values():
        args = json.loads(c["arguments"])
        assert set(args) == {"city", "unit"} and args["unit"] in ("celsius", "fahrenheit")
    assert "tool_call" not in content and "{" not in content

    plain = client.chat.completions.create(model="smollm2", messages=messages, tools=WEATHER, temperature=0,
                                           max_tokens=60,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = plain.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    assert choice.message.tool_calls[0].function.name == "get_weather"
    json.loads(choice.message.tool_calls[0].function.arguments)
    # The answer goes back with the call and its result; the model then replies in text.
    follow = messages + [choice.message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": choice.message.tool_calls[0].id, "content": "18 C, sunny"}]
    reply = client.chat.completions.create(model="smollm2", messages=follow, tools=WEATHER, tool_choice="none",
                                           temperature=0, max_tokens=10)
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls


# ----- hostile requests --------------------------------------------------------------------------


def _assert_openai_error(response, status: int | tuple) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, response.text[:300]
    assert "Traceback" not in response.text and 'File "' not in response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_hostile_json_gets_4xx_and_the_server_stays_up(http):
    url = "/v1/chat/completions"
    base = {"model": "smollm2", "messages": MESSAGES, "max_tokens": 2}
    cases = [
        ({**base, "temperature": "hot"}, "temperature"),
        ({**base, "max_tokens": "12"}, "max_tokens"),
        ({**base, "messages": "hello"}, "messages"),
        ({**base, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({**base, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({**base, "n": 10**6}, "n"),
        ({**base, "n": True}, "n"),
        ({**base, "max_tokens": 10**12}, "max_tokens"),
        ({**base, "max_tokens": -5}, "max_tokens"),
        ({**base, "stop": [1, 2]}, "stop"),
        ({**base, "stream": "yes"}, "stream"),
        ({**base, "seed": -1}, "seed"),
        ({**base, "top_p": 7}, "top_p"),
    ]
    for body, param in cases:
        error = _assert_openai_error(http.post(url, json=body), 400)
        assert error["param"] == param, (body, error)
    # Not JSON, not an object, NaN, deep nesting, and a 10 MB body.
    for raw in (b"{not json", b"[1, 2]", b'{"temperature": NaN, "messages": []}', b"", b"\xff\xfe"):
        _assert_openai_error(http.post(url, content=raw, headers={"content-type": "application/json"}), 400)
    deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    _assert_openai_error(http.post(url, content=deep), (400, 413))
    deep_small = json.dumps({**base, "metadata": json.loads("[" * 500 + "]" * 500)})
    assert _assert_openai_error(http.post(url, content=deep_small), 400)["message"].startswith("the JSON body nests")
    huge = json.dumps({**base, "messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)}]})
    _assert_openai_error(http.post(url, content=huge), 413)
    # Unknown endpoints and methods, in the same shape.
    _assert_openai_error(http.get("/v1/nothing"), 404)
    _assert_openai_error(http.get(url), 405)
    # Ollama's endpoints answer in Ollama's shape.
    r = http.post("/api/chat", json={"model": "smollm2", "messages": "hi"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = http.post("/api/generate", content=b"[" * 5000)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    # Still up, still right.
    assert http.get("/health").json()["status"] == "ok"
    ok = http.post(url, json={**base, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
    wait_idle(http)


# ----- Ollama API ----------------------------------------------------------------------------------


def test_ollama_endpoints(server, client):
    o = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"})
    options = {"temperature": 0, "num_predict": 10}
    reply = o.chat(model="smollm2", messages=MESSAGES, options=options, stream=False)
    assert reply.done and reply.done_reason in ("stop", "length") and reply.message.role == "assistant"
    assert reply.prompt_eval_count == client.chat.completions.create(
        model="smollm2", messages=MESSAGES, max_tokens=1).usage.prompt_tokens
    # The same greedy answer as the OpenAI API gives.
    same = client.chat.completions.create(model="smollm2", messages=MESSAGES, temperature=0, max_tokens=10)
    assert reply.message.content == same.choices[0].message.content
    assert reply.eval_count == same.usage.completion_tokens
    parts = list(o.chat(model="smollm2:latest", messages=MESSAGES, options=options, stream=True))
    assert "".join(p.message.content for p in parts) == reply.message.content
    assert parts[-1].done and not any(p.done for p in parts[:-1])

    gen = o.generate(model="smollm2", prompt="The capital of France is", raw=True, options=options)
    assert gen.done and gen.response and gen.context
    streamed = list(o.generate(model="smollm2", prompt="The capital of France is", raw=True, options=options,
                               stream=True))
    assert "".join(p.response for p in streamed) == gen.response

    tags = o.list().models
    assert [m.model for m in tags] == ["SmolLM2-135M-Instruct.Q4_1:latest"]
    assert tags[0].details.format == "gguf" and tags[0].size > 0
    shown = o.show("smollm2")
    assert shown.details.family == "llama" and shown.template and "completion" in shown.capabilities
    version = httpx.get(server.url + "/api/version", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version["version"])

    with pytest.raises(ollama.ResponseError) as err:
        o.chat(model="llama3", messages=MESSAGES)
    assert err.value.status_code == 404 and "llama3" in err.value.error
    for call in (lambda: o.pull("smollm2"), lambda: o.delete("smollm2")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 501 and "not supported" in err.value.error

    schema = {"type": "object", "properties": {"colour": {"enum": ["mauve", "teal"]}}, "required": ["colour"]}
    formatted = o.chat(model="smollm2", messages=[{"role": "user", "content": "Pick one."}], format=schema,
                       options={"temperature": 1.5, "num_predict": 30, "seed": 3})
    assert formatted.done_reason == "stop"
    assert json.loads(formatted.message.content)["colour"] in ("mauve", "teal")


# ----- the queue, timeouts, loading -----------------------------------------------------------


def test_queue_full_is_503_with_retry_after_and_timeouts(model, engine, http):
    wait_idle(http)  # the module's engine is idle: this one may use the model alone
    small = BatchEngine(model, parallel=1, queue_size=0)
    app = create_app(None, None, timeout=3.0, cors_origins=["http://ui.example"])
    one = Server(app)
    try:
        assert httpx.get(one.url + "/health").status_code == 503  # loading
        preflight = httpx.options(one.url + "/v1/chat/completions", headers={
            "Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://ui.example"
        other = httpx.options(one.url + "/v1/chat/completions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
        r = httpx.post(one.url + "/v1/chat/completions", json={"messages": MESSAGES})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        attach(app, model, small)
        assert httpx.get(one.url + "/health").json()["status"] == "ok"
        long = {"messages": MESSAGES, "max_tokens": 500, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", one.url + "/v1/chat/completions", json=long, timeout=30) as first:
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")
            busy = httpx.post(one.url + "/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 2})
            assert busy.status_code == 503 and int(busy.headers["Retry-After"]) >= 1
            assert busy.json()["error"]["code"] == "queue_full"
            # The first request runs past the 3 s timeout: its stream ends with an error event.
            rest = [line for line in lines if line]
        assert json.loads(rest[-1][6:])["error"]["code"] == "timeout"
        r = httpx.post(one.url + "/v1/chat/completions", json={**long, "stream": False}, timeout=30)
        assert r.status_code == 408 and r.json()["error"]["code"] == "timeout"
        deadline = time.time() + 10
        while small.running:
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        one.stop()
        small.close()


# ----- the command line ----------------------------------------------------------------------------


def test_cli_serve_and_sigterm(smollm2_path):
    env = {**os.environ, "LANTERN_API_KEY": "cli-key"}
    proc = subprocess.Popen([sys.executable, "-m", "lantern", "serve", "-m", str(smollm2_path), "--host", "0.0.0.0",
                             "--port", "0", "--parallel", "2", "--grace", "1", "--threads", "1", "--exact-batches"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    lines = []
    try:
        while True:
            line = proc.stderr.readline()
            assert line, f"the server exited: {''.join(lines)}"
            lines.append(line)
            found = re.search(r"listening on http://\S+:(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        assert any("warning" in l and "0.0.0.0" in l and "with an API key" in l for l in lines)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while httpx.get(url + "/health").status_code != 200:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401
        auth = {"Authorization": "Bearer cli-key"}
        body = {"messages": MESSAGES, "max_tokens": 400, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=auth, timeout=60) as r:
            events = r.iter_lines()
            assert next(events).startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            rest = [line for line in events if line]  # cancelled after the grace period
        assert json.loads(rest[-1][6:])["error"]["code"] == "shutting_down"
        assert proc.wait(timeout=30) == 0
        err = "".join(lines) + proc.stderr.read()
        assert "SIGTERM: stopping" in err and "lantern: stopped" in err
        assert "2 parallel (exact batches)" in err
        assert '"GET /health" 200' in err and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

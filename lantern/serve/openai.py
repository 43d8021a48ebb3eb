"""The OpenAI API: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`.

Requests are parsed strictly (wrong types are a 400 naming the field, never coerced); fields
lantern does not know are ignored, as most OpenAI-compatible servers do. Sampling fields:
`temperature` (0..2), `top_p`, `top_k`, `min_p`, `repeat_penalty`, `repeat_last_n`,
`frequency_penalty`, `presence_penalty` (-2..2), `seed`; a field left out takes lantern's
default (llama.cpp's: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05). `n` up to 16
choices (with a `seed`, choice i samples with seed + i). `max_tokens` (or
`max_completion_tokens`) may not exceed the per-request limit; left out, a chat answer may run
until the model stops or its share of the context is used up (finish_reason "length"), a
completion stops after 16 tokens (OpenAI's default). `ignore_eos` (an extension) makes the
model run on past its end-of-text token until `max_tokens`, for benchmarks.

`usage` counts the prompt once per prompt (not per choice) and every generated token of every
choice (the end-of-text token that ended a choice is not counted);
`usage.prompt_tokens_details.cached_tokens` says how many prompt tokens came from a cached
prefix. Streams are Server-Sent Events ending in `data: [DONE]`; with
`stream_options.include_usage` the last event before it carries the usage.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from .. import __version__
from ..errors import LanternError
from .service import (MAX_CHOICES, MAX_STOP_CHARS, MAX_STOPS, ApiError, EventStream, JobSpec, Run, Service,
                      not_supported, read_json, run_error, validation_error, watch_disconnect)

FINGERPRINT = f"lantern-{__version__}"
COMPLETION_DEFAULT_MAX_TOKENS = 16


# ----- requests -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Strict):
    type: str
    text: str | None = None


class FunctionCall(_Strict):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCall(_Strict):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    repeat_last_n: int | None = Field(None, ge=-1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, le=2**64 - 1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    user: str | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # as vLLM and llama-server take it


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES)


def parse(cls, body: dict):
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def sampler_settings(req: _Sampling):
    from ..generate.settings import SETTING_NAMES, SamplerSettings

    values = {name: getattr(req, name) for name in SETTING_NAMES if getattr(req, name, None) is not None}
    try:
        return SamplerSettings(**values)
    except LanternError as exc:
        raise ApiError(400, str(exc), code="invalid_value") from None


def per_choice(settings, n: int) -> list:
    """The settings of each of `n` choices: with a seed, choice i samples with seed + i."""
    if settings.seed is None or n == 1:
        return [settings] * n
    return [replace(settings, seed=(settings.seed + i) % 2**64) for i in range(n)]


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or ())
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop: at most {MAX_STOPS} stop strings, got {len(stops)}", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"stop: a stop string may be at most {MAX_STOP_CHARS} characters", param="stop")
    return tuple(s for s in stops if s)


def check_common(service: Service, req: _Sampling) -> None:
    service.check_model(req.model)
    if req.logit_bias:
        raise not_supported("logit_bias")


def finish_reason(job, parser=None) -> str:
    """OpenAI's finish_reason: stop, length (max_tokens or the request's share of the context),
    tool_calls (a call was made and the model stopped)."""
    reason = job.finish_reason
    if parser is not None:
        reason = parser.finish_reason(reason)
    return {"stop": "stop", "length": "length", "context": "length", "tool_calls": "tool_calls"}.get(reason, "stop")


def openai_delta(delta) -> dict:
    """A `lantern.generate.tools.Delta` as a chat chunk's delta."""
    if delta.tool_call is not None:
        return {"tool_calls": [delta.tool_call.to_openai()]}
    return {"content": delta.content}


def response_schema(response_format: dict | None):
    """The JSON schema an OpenAI `response_format` asks for (None for text), checked."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return response_format.get("schema") or {"type": "object"}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ApiError(400, 'response_format.json_schema must be {"name": ..., "schema": {...}}',
                           param="response_format")
        return spec.get("schema") or {"type": "object"}
    raise ApiError(400, f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                   param="response_format")


def usage(run: Run, prompt_tokens: int) -> dict:
    completion = run.completion_tokens
    cached = max((job.cached_tokens for job in run.jobs), default=0)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion, "prompt_tokens_details": {"cached_tokens": cached}}


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


# ----- logprobs ----------------------------------------------------------------------------------


class _Logprobs:
    """Log-probabilities of the tokens a job generated, in OpenAI's shapes."""

    def __init__(self, model):
        self.tokenizer = model.tokenizer

    def _entry(self, token: int, logprob: float) -> dict:
        raw = self.tokenizer.token_bytes(token)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    def records(self, job, start: int = 0, end: int | None = None) -> list:
        recorded = list(getattr(job.sampler, "logprobs", None) or ())
        end = len(job.generation.token_ids) if end is None else end
        return recorded[start:min(end, len(recorded))]

    def chat(self, records) -> dict:
        content = []
        for r in records:
            entry = self._entry(r.token, r.logprob)
            entry["top_logprobs"] = [self._entry(t, lp) for t, lp in r.top]
            content.append(entry)
        return {"content": content, "refusal": None}

    def completion(self, records, offset: int = 0) -> dict:
        tokens, logprobs, top, offsets = [], [], [], []
        for r in records:
            text = self._entry(r.token, r.logprob)["token"]
            tokens.append(text)
            logprobs.append(r.logprob)
            top.append({self._entry(t, lp)["token"]: lp for t, lp in r.top})
            offsets.append(offset)
            offset += len(text)
        return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets}


def sampler_factory(settings, constraint=None, logprobs: int | None = None):
    """A factory of one choice's Sampler, or None when the plain one will do."""
    if constraint is None and logprobs is None:
        return None
    from ..generate.sampling import Sampler

    def make():
        kwargs = {}
        if logprobs is not None:
            kwargs["logprobs"] = logprobs
        return Sampler(settings, constraint.fresh() if constraint is not None else None, **kwargs)

    return make


# ----- chat ----------------------------------------------------------------------------------------


def template_messages(messages: list[Message]) -> list[dict]:
    """Messages as the chat template reads them: text content, `developer` as `system`, tool
    calls with their arguments as objects (what HF templates expect)."""
    out = []
    for i, m in enumerate(messages):
        if isinstance(m.content, list):
            texts = []
            for part in m.content:
                if part.type != "text" or part.text is None:
                    raise ApiError(400, f"messages.{i}.content: only text parts are supported, got {part.type!r}",
                                   param=f"messages.{i}.content", code="not_supported")
                texts.append(part.text)
            content = "".join(texts)
        else:
            content = m.content
        entry: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                                 "content": content if content is not None else ""}
        if m.name:
            entry["name"] = m.name
        if m.tool_calls:
            calls = []
            for call in m.tool_calls:
                arguments = call.function.arguments
                if isinstance(arguments, str):
                    try:
                        arguments = json.loads(arguments) if arguments.strip() else {}
                    except ValueError:
                        pass  # a template gets the text as it was sent
                calls.append({"id": call.id, "type": "function",
                              "function": {"name": call.function.name, "arguments": arguments}})
            entry["tool_calls"] = calls
        if m.tool_call_id:
            entry["tool_call_id"] = m.tool_call_id
        out.append(entry)
    return out


async def chat_completions(request: Request, service: Service):
    service.require_ready()
    req = parse(ChatRequest, await read_json(request))
    check_common(service, req)
    model = service.model
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    service.check_max_tokens(max_tokens, "max_completion_tokens" if req.max_completion_tokens else "max_tokens")
    settings = sampler_settings(req)
    stops = stop_strings(req.stop)
    messages = template_messages(req.messages)
    top_logprobs = (req.top_logprobs or 0) if req.logprobs else None
    if req.top_logprobs and not req.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    use_tools = bool(req.tools) and req.tool_choice != "none"
    if req.tool_choice not in (None, "none") and not req.tools:
        raise ApiError(400, "tool_choice needs tools", param="tool_choice")
    variables = service.template_variables(req.chat_template_kwargs)

    def build():
        from ..generate.constrained import from_response_format
        from ..generate.prompts import encode_chat

        schema = response_schema(req.response_format)
        if use_tools:
            from ..generate import tools

            plan = tools.prepare(model, messages, req.tools, req.tool_choice, json_schema=schema,
                                 parallel_tool_calls=req.parallel_tool_calls is not False,
                                 template_options=variables)
            return plan.prompt_ids, plan.constraint, plan
        ids = encode_chat(model, messages, **variables)
        try:
            constraint = from_response_format(model, req.response_format) if schema is not None else None
        except LanternError as exc:
            raise ApiError(400, str(exc), param="response_format", code="invalid_value") from None
        return ids, constraint, None

    ids, constraint, plan = await service.tokenize(build, param="messages")
    specs = [JobSpec(ids, s, max_tokens, stops, continuation=False, ignore_eos=req.ignore_eos,
                     sampler_factory=sampler_factory(s, constraint, top_logprobs))
             for s in per_choice(settings, req.n)]
    run = await service.start(specs)
    cid, created, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), req.model or service.info.name
    logprobs = _Logprobs(model) if top_logprobs is not None else None
    parsers = [plan.parser() if plan is not None else None for _ in specs]

    def chunk(index: int, delta: dict, reason: str | None = None, lp: dict | None = None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}
        out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
               "system_fingerprint": FINGERPRINT, "choices": [choice]}
        if req.stream_options and req.stream_options.include_usage:
            out["usage"] = None
        return out

    if req.stream:
        async def events():
            sent = [0] * len(specs)
            for i in range(len(specs)):
                yield sse(chunk(i, {"role": "assistant", "content": ""}))
            try:
                async for index, piece in run.events():
                    job, parser = run.jobs[index], parsers[index]
                    lp = None
                    if logprobs is not None:
                        records = logprobs.records(job, sent[index])
                        sent[index] += len(records)
                        lp = logprobs.chat(records) if records else None
                    if piece is None:
                        if parser is not None:
                            for delta in parser.finish():
                                yield sse(chunk(index, openai_delta(delta)))
                        yield sse(chunk(index, {}, finish_reason(job, parser), lp))
                        continue
                    if parser is not None:
                        for delta in parser.feed(piece):
                            yield sse(chunk(index, openai_delta(delta), lp=lp))
                            lp = None
                        if lp is not None:
                            yield sse(chunk(index, {}, lp=lp))
                    else:
                        yield sse(chunk(index, {"content": piece}, lp=lp))
            except Exception as exc:  # noqa: BLE001  (the stream has started: the error goes in it)
                yield sse(_stream_error(exc, service))
                return
            request.state.usage = (run.prompt_tokens // len(specs), run.completion_tokens)
            if req.stream_options and req.stream_options.include_usage:
                yield sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                           "system_fingerprint": FINGERPRINT, "choices": [],
                           "usage": usage(run, len(ids))})
            yield DONE

        return EventStream(events(), "text/event-stream", run.cancel, headers=_sse_headers())

    await _complete(request, run, service)
    choices = []
    for job, parser in zip(run.jobs, parsers):
        message: dict[str, Any] = {"role": "assistant", "content": job.generation.text, "refusal": None}
        if parser is not None:
            parser.feed(job.generation.text)
            parser.finish()
            message["content"] = parser.content
            if parser.tool_calls:
                message["tool_calls"] = [call.to_openai() for call in parser.tool_calls]
        choices.append({"index": job.index, "message": message,
                        "logprobs": logprobs.chat(logprobs.records(job)) if logprobs else None,
                        "finish_reason": finish_reason(job, parser)})
    request.state.usage = (len(ids), run.completion_tokens)
    return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": name,
                         "system_fingerprint": FINGERPRINT, "choices": choices, "usage": usage(run, len(ids))})


async def _complete(request: Request, run: Run, service: Service) -> None:
    """Wait for every choice of a non-streamed request; a client that goes away cancels them."""
    watcher = asyncio.ensure_future(watch_disconnect(request.receive, run.cancel))
    try:
        async for _ in run.events():
            pass
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise run_error(exc, service.timeout) from None
    finally:
        watcher.cancel()
        run.cancel()


def _stream_error(exc: BaseException, service: Service) -> dict:
    error = run_error(exc, service.timeout)
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def _sse_headers() -> dict[str, str]:
    return {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ----- completions ------------------------------------------------------------------------------------


async def completions(request: Request, service: Service):
    service.require_ready()
    req = parse(CompletionRequest, await read_json(request))
    check_common(service, req)
    if req.suffix:
        raise not_supported("suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise not_supported("best_of other than n")
    model = service.model
    max_tokens = req.max_tokens if "max_tokens" in req.model_fields_set else COMPLETION_DEFAULT_MAX_TOKENS
    service.check_max_tokens(max_tokens)
    settings = sampler_settings(req)
    stops = stop_strings(req.stop)
    prompts: list[str | list[int]]
    if isinstance(req.prompt, str):
        prompts = [req.prompt]
    elif req.prompt and all(isinstance(p, int) for p in req.prompt):
        prompts = [list(req.prompt)]
    else:
        prompts = list(req.prompt)
    if not prompts:
        raise ApiError(400, "prompt: give some text", param="prompt")
    if len(prompts) * req.n > MAX_CHOICES:
        raise ApiError(400, f"prompts x n is {len(prompts) * req.n}; at most {MAX_CHOICES} choices per request",
                       param="n")
    logprobs_k = req.logprobs

    def build():
        from ..generate.prompts import prompt_ids_for

        out = []
        for p in prompts:
            if isinstance(p, str):
                out.append((p, prompt_ids_for(model, p, chat=False)))
            else:
                if not p:
                    raise LanternError("the prompt is empty; give some text")
                vocab = model.vocab_size
                if min(p) < 0 or max(p) >= vocab:
                    raise LanternError(f"prompt token ids must be in [0, {vocab})")
                out.append((model.tokenizer.decode(p), list(p)))
        return out

    encoded = await service.tokenize(build, param="prompt")
    specs = []
    for _, ids in encoded:
        for s in per_choice(settings, req.n):
            specs.append(JobSpec(ids, s, max_tokens, stops, continuation=True, ignore_eos=req.ignore_eos,
                                 sampler_factory=sampler_factory(s, None, logprobs_k)))
    run = await service.start(specs)
    prompt_tokens = sum(len(ids) for _, ids in encoded)
    cid, created, name = f"cmpl-{uuid.uuid4().hex}", int(time.time()), req.model or service.info.name
    logprobs = _Logprobs(model) if logprobs_k is not None else None

    def echo_text(index: int) -> str:
        return encoded[index // req.n][0] if req.echo else ""

    def chunk(index: int, text: str, reason: str | None = None, lp: dict | None = None) -> dict:
        out = {"id": cid, "object": "text_completion", "created": created, "model": name,
               "system_fingerprint": FINGERPRINT,
               "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": reason}]}
        if req.stream_options and req.stream_options.include_usage:
            out["usage"] = None
        return out

    if req.stream:
        async def events():
            sent = [0] * len(specs)
            offsets = [len(echo_text(i)) for i in range(len(specs))]
            if req.echo:
                for i in range(len(specs)):
                    yield sse(chunk(i, echo_text(i)))
            try:
                async for index, piece in run.events():
                    job = run.jobs[index]
                    lp = None
                    if logprobs is not None:
                        records = logprobs.records(job, sent[index])
                        sent[index] += len(records)
                        lp = logprobs.completion(records, offsets[index]) if records else None
                    if piece is None:
                        yield sse(chunk(index, "", finish_reason(job), lp))
                    else:
                        offsets[index] += len(piece)
                        yield sse(chunk(index, piece, lp=lp))
            except Exception as exc:  # noqa: BLE001
                yield sse(_stream_error(exc, service))
                return
            request.state.usage = (prompt_tokens, run.completion_tokens)
            if req.stream_options and req.stream_options.include_usage:
                yield sse({"id": cid, "object": "text_completion", "created": created, "model": name,
                           "system_fingerprint": FINGERPRINT, "choices": [], "usage": usage(run, prompt_tokens)})
            yield DONE

        return EventStream(events(), "text/event-stream", run.cancel, headers=_sse_headers())

    await _complete(request, run, service)
    choices = [{"index": job.index, "text": echo_text(job.index) + job.generation.text,
                "logprobs": logprobs.completion(logprobs.records(job), len(echo_text(job.index))) if logprobs else None,
                "finish_reason": finish_reason(job)} for job in run.jobs]
    request.state.usage = (prompt_tokens, run.completion_tokens)
    return JSONResponse({"id": cid, "object": "text_completion", "created": created, "model": name,
                         "system_fingerprint": FINGERPRINT, "choices": choices, "usage": usage(run, prompt_tokens)})


# ----- models ------------------------------------------------------------------------------------------


def model_entry(service: Service) -> dict:
    info = service.info
    return {"id": info.name, "object": "model", "created": int(info.modified), "owned_by": "lantern",
            "meta": {"path": str(info.path), "arch": info.arch, "context_length": info.context_length,
                     "request_limit": service.engine.request_limit, "aliases": info.names[1:]}}


def register(app, service: Service) -> None:
    for prefix in ("/v1", ""):
        app.add_api_route(f"{prefix}/chat/completions", _bind(chat_completions, service), methods=["POST"])
        app.add_api_route(f"{prefix}/completions", _bind(completions, service), methods=["POST"])

    async def list_models(request: Request):
        service.require_ready()
        return JSONResponse({"object": "list", "data": [model_entry(service)]})

    async def get_model(request: Request, model_id: str):
        service.check_model(model_id)
        return JSONResponse(model_entry(service))

    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", get_model, methods=["GET"])


def _bind(handler, service: Service):
    async def endpoint(request: Request):
        return await handler(request, service)

    endpoint.__name__ = handler.__name__
    return endpoint

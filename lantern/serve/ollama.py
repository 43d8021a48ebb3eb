"""The Ollama API: `POST /api/chat`, `POST /api/generate` (NDJSON streams, on by default as in
Ollama), `GET /api/tags`, `POST /api/show`, `GET /api/ps`, `GET /api/version`.

Shapes follow Ollama's docs/api.md, so an app written for Ollama works by changing the port.
Errors are `{"error": "..."}`. The server holds one model: it answers to the model's names
(an optional `:latest` tag is ignored) and any other name is a 404. Endpoints that manage
models (`/api/pull`, `/api/push`, `/api/create`, `/api/copy`, `/api/delete`) and embeddings
answer 501 "not supported".

`options` maps onto lantern's sampling: temperature, top_k, top_p, min_p, repeat_penalty,
repeat_last_n, frequency_penalty, presence_penalty, seed (negative: random), stop,
num_predict (-1, -2 or left out: until the model stops or the request's share of the context
is used up); options lantern has no use for (num_ctx, num_thread, mirostat, ...) are ignored.
Defaults are lantern's (llama.cpp's), not Ollama's Modelfile defaults. `format` ("json" or a
JSON schema) constrains the output as OpenAI's `response_format` does.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import __version__
from ..errors import LanternError
from .openai import _Strict, parse, sampler_factory
from .service import (ApiError, EventStream, JobSpec, Run, Service, read_json, run_error,
                      watch_disconnect)

#: The Ollama API version whose shapes this server follows (what `/api/version` reports).
OLLAMA_API_VERSION = "0.9.0"


class Options(_Strict):
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    repeat_last_n: int | None = Field(None, ge=-1)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = Field(None, le=2**64 - 1)
    num_predict: int | None = None
    stop: list[str] | str | None = None


class ChatMessage(_Strict):
    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None


class ChatRequest(_Strict):
    model: str
    messages: list[ChatMessage] = []
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    tools: list[dict[str, Any]] | None = None
    keep_alive: str | int | float | None = None
    ignore_eos: bool = False
    think: bool | None = None


class GenerateRequest(_Strict):
    model: str
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool = True
    raw: bool = False
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    images: list[str] | None = None
    keep_alive: str | int | float | None = None
    ignore_eos: bool = False
    think: bool | None = None


def _template_variables(service, think: bool | None) -> dict:
    """Ollama's `think` is the template variable `enable_thinking` (Qwen3's; templates without
    it ignore it), over the server's --chat-template-kwargs."""
    return service.template_variables(None if think is None else {"enable_thinking": think})


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _settings(service: Service, options: Options | None):
    from ..generate.settings import SETTING_NAMES, SamplerSettings

    options = options or Options()
    values = {name: getattr(options, name) for name in SETTING_NAMES if getattr(options, name, None) is not None}
    if values.get("seed") is not None and values["seed"] < 0:
        values["seed"] = None
    try:
        settings = SamplerSettings(**values)
    except LanternError as exc:
        raise ApiError(400, str(exc)) from None
    n = options.num_predict
    limit = service.engine.request_limit
    max_tokens = None if n is None or n < 0 or n >= limit else n
    stops = [options.stop] if isinstance(options.stop, str) else list(options.stop or ())
    from .openai import stop_strings

    return settings, max_tokens, stop_strings(stops)


def _constraint(model, format):
    if format in (None, ""):
        return None
    from ..generate.constrained import from_ollama_format

    return from_ollama_format(model, format)


def _stats(run: Run, started: float) -> dict:
    job = run.jobs[0]
    t = job.generation.timings
    total = time.perf_counter() - started
    prompt_seconds = t.prompt_seconds or 0.0
    return {"total_duration": int(total * 1e9), "load_duration": 0,
            "prompt_eval_count": len(job.spec.prompt_ids), "prompt_eval_duration": int(prompt_seconds * 1e9),
            "eval_count": job.completion_tokens, "eval_duration": int(max(total - prompt_seconds, 0.0) * 1e9)}


def _done_reason(job) -> str:
    return "length" if job.finish_reason in ("length", "context") else "stop"


def _line(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _template_messages(messages: list[ChatMessage]) -> list[dict]:
    out = []
    for i, m in enumerate(messages):
        if m.images:
            raise ApiError(400, f"messages[{i}]: images are not supported by this server (text models only)")
        if m.role not in ("system", "user", "assistant", "tool"):
            raise ApiError(400, f"messages[{i}]: unknown role {m.role!r}; use system, user, assistant or tool")
        entry: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            entry["tool_calls"] = [{"type": "function", "function": call.get("function", call)}
                                   for call in m.tool_calls]
        if m.tool_name:
            entry["name"] = m.tool_name
        out.append(entry)
    return out


async def chat(request: Request, service: Service):
    service.require_ready()
    req = parse(ChatRequest, await read_json(request))
    service.check_model(req.model, ollama=True)
    name = req.model
    if not req.messages:  # Ollama's way to load a model: it is loaded
        return JSONResponse({"model": name, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                             "done_reason": "load", "done": True})
    model = service.model
    settings, max_tokens, stops = _settings(service, req.options)
    messages = _template_messages(req.messages)
    variables = _template_variables(service, req.think)

    def build():
        from ..generate.prompts import encode_chat

        if req.tools:
            from ..generate import tools

            schema = req.format if isinstance(req.format, dict) else ({"type": "object"} if req.format == "json" else None)
            plan = tools.prepare(model, messages, req.tools, "auto", json_schema=schema, template_options=variables)
            return plan.prompt_ids, plan.constraint, plan
        return encode_chat(model, messages, **variables), _constraint(model, req.format), None

    ids, constraint, plan = await service.tokenize(build, param="messages")
    started = time.perf_counter()
    run = await service.start([JobSpec(ids, settings, max_tokens, stops, continuation=False,
                                       ignore_eos=req.ignore_eos,
                                       sampler_factory=sampler_factory(settings, constraint, None))])
    parser = plan.parser() if plan is not None else None

    def message(content: str, calls: list | None = None) -> dict:
        out: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            out["tool_calls"] = [{"function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                                 for c in calls]
        return out

    if req.stream:
        async def lines():
            try:
                async for _, piece in run.events():
                    if piece is None:
                        break
                    if parser is None:
                        yield _line({"model": name, "created_at": _now(), "message": message(piece), "done": False})
                        continue
                    text = "".join(d.content for d in parser.feed(piece))
                    if text:
                        yield _line({"model": name, "created_at": _now(), "message": message(text), "done": False})
            except Exception as exc:  # noqa: BLE001
                yield _line({"error": run_error(exc, service.timeout).message})
                return
            calls = None
            if parser is not None:
                tail = "".join(d.content for d in parser.finish())
                calls = parser.tool_calls
                if tail:
                    yield _line({"model": name, "created_at": _now(), "message": message(tail), "done": False})
            request.state.usage = (len(ids), run.completion_tokens)
            yield _line({"model": name, "created_at": _now(), "message": message("", calls),
                         "done_reason": _done_reason(run.jobs[0]), "done": True, **_stats(run, started)})

        return EventStream(lines(), "application/x-ndjson", run.cancel)

    await _complete(request, run, service)
    job = run.jobs[0]
    text, calls = job.generation.text, None
    if parser is not None:
        parser.feed(text)
        parser.finish()
        text, calls = parser.content, parser.tool_calls
    request.state.usage = (len(ids), run.completion_tokens)
    return JSONResponse({"model": name, "created_at": _now(), "message": message(text or "", calls),
                         "done_reason": _done_reason(job), "done": True, **_stats(run, started)})


def _arguments(arguments):
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


async def generate(request: Request, service: Service):
    service.require_ready()
    req = parse(GenerateRequest, await read_json(request))
    service.check_model(req.model, ollama=True)
    name = req.model
    if req.images:
        raise ApiError(400, "images are not supported by this server (text models only)")
    if req.suffix:
        raise ApiError(400, "suffix (fill-in-the-middle) is not supported by this server")
    if req.template:
        raise ApiError(400, "a template override is not supported by this server; use raw: true with your own text")
    if not req.prompt and not req.context:  # Ollama's way to load a model: it is loaded
        return JSONResponse({"model": name, "created_at": _now(), "response": "", "done_reason": "load", "done": True})
    model = service.model
    settings, max_tokens, stops = _settings(service, req.options)
    variables = _template_variables(service, req.think)

    def build():
        from ..generate.prompts import encode_chat, messages_for

        vocab = model.vocab_size
        context = list(req.context or [])
        if context and (min(context) < 0 or max(context) >= vocab):
            raise LanternError(f"context token ids must be in [0, {vocab})")
        if req.raw:
            text_ids = model.tokenizer.encode(req.prompt, add_bos=None if not context else False, special=True) \
                if req.prompt else []
        else:
            text_ids = encode_chat(model, messages_for(req.prompt, req.system), **variables) if req.prompt else []
        ids = context + list(text_ids)
        if not ids:
            raise LanternError("the prompt is empty; give some text")
        return ids, _constraint(model, req.format)

    ids, constraint = await service.tokenize(build, param="prompt")
    started = time.perf_counter()
    run = await service.start([JobSpec(ids, settings, max_tokens, stops, continuation=req.raw,
                                       ignore_eos=req.ignore_eos,
                                       sampler_factory=sampler_factory(settings, constraint, None))])

    def final(response: str) -> dict:
        job = run.jobs[0]
        return {"model": name, "created_at": _now(), "response": response, "done": True,
                "done_reason": _done_reason(job), "context": ids + job.generation.token_ids, **_stats(run, started)}

    if req.stream:
        async def lines():
            try:
                async for _, piece in run.events():
                    if piece is None:
                        break
                    yield _line({"model": name, "created_at": _now(), "response": piece, "done": False})
            except Exception as exc:  # noqa: BLE001
                yield _line({"error": run_error(exc, service.timeout).message})
                return
            request.state.usage = (len(ids), run.completion_tokens)
            yield _line(final(""))

        return EventStream(lines(), "application/x-ndjson", run.cancel)

    await _complete(request, run, service)
    request.state.usage = (len(ids), run.completion_tokens)
    return JSONResponse(final(run.jobs[0].generation.text))


async def _complete(request: Request, run: Run, service: Service) -> None:
    watcher = asyncio.ensure_future(watch_disconnect(request.receive, run.cancel))
    try:
        async for _ in run.events():
            pass
    except Exception as exc:  # noqa: BLE001
        raise run_error(exc, service.timeout) from None
    finally:
        watcher.cancel()
        run.cancel()


def _details(service: Service) -> dict:
    info = service.info
    return {"parent_model": "", "format": "gguf", "family": info.arch, "families": [info.arch],
            "parameter_size": info.parameter_size, "quantization_level": info.quantization}


def _modified(service: Service) -> str:
    return datetime.fromtimestamp(service.info.modified, timezone.utc).isoformat().replace("+00:00", "Z")


def _tag(service: Service) -> str:
    name = service.info.name
    return name if ":" in name else f"{name}:latest"


async def tags(request: Request, service: Service):
    service.require_ready()
    info = service.info
    entry = {"name": _tag(service), "model": _tag(service), "modified_at": _modified(service),
             "size": info.size_bytes, "digest": info.digest, "details": _details(service)}
    return JSONResponse({"models": [entry]})


async def ps(request: Request, service: Service):
    service.require_ready()
    info = service.info
    entry = {"name": _tag(service), "model": _tag(service), "size": info.size_bytes, "digest": info.digest,
             "details": _details(service), "expires_at": "2999-01-01T00:00:00Z", "size_vram": 0,
             "context_length": service.engine.request_limit}
    return JSONResponse({"models": [entry]})


async def show(request: Request, service: Service):
    service.require_ready()
    body = await read_json(request)
    name = body.get("model", body.get("name"))
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model is required")
    service.check_model(name, ollama=True)
    info = service.info
    capabilities = ["completion", "tools"]  # tools: through the template, or lantern's generic format
    model_info = {"general.architecture": info.arch, "general.parameter_count": info.parameters,
                  "general.file_type": info.quantization, f"{info.arch}.context_length": info.context_length}
    return JSONResponse({
        "license": "", "modelfile": f"# served by lantern {__version__}\nFROM {info.path}\n",
        "parameters": "", "template": info.template, "details": _details(service), "model_info": model_info,
        "capabilities": capabilities, "modified_at": _modified(service),
    })


async def version(request: Request, service: Service):
    return JSONResponse({"version": OLLAMA_API_VERSION, "lantern_version": __version__})


def _unsupported(what: str):
    async def endpoint(request: Request) -> Response:
        raise ApiError(501, f"{what} is not supported: a lantern server holds the one model it was started with "
                            f"(lantern serve -m MODEL)", code="not_supported")

    return endpoint


def register(app, service: Service) -> None:
    from .openai import _bind

    app.add_api_route("/api/chat", _bind(chat, service), methods=["POST"])
    app.add_api_route("/api/generate", _bind(generate, service), methods=["POST"])
    app.add_api_route("/api/tags", _bind(tags, service), methods=["GET"])
    app.add_api_route("/api/ps", _bind(ps, service), methods=["GET"])
    app.add_api_route("/api/show", _bind(show, service), methods=["POST"])
    app.add_api_route("/api/version", _bind(version, service), methods=["GET"])
    for path, what in (("/api/pull", "pulling models"), ("/api/push", "pushing models"),
                       ("/api/create", "creating models"), ("/api/copy", "copying models"),
                       ("/api/delete", "deleting models"), ("/api/embed", "embeddings"),
                       ("/api/embeddings", "embeddings")):
        app.add_api_route(path, _unsupported(what), methods=["POST", "DELETE"])

"""What both APIs share: the served model and its names, errors in each API's shape, reading
JSON bodies within limits, and running requests on the engine.

A request becomes one or more `Job`s (one per choice). A job submits its prompt to the
`BatchEngine` (which refuses at once a prompt over the per-request limit, a full queue or a
closed engine) and wraps the engine's handle in a `Generation` (text, stop strings, finish
reasons). A thread per job pulls the text and hands it to the event loop, so the HTTP side
never blocks on the engine. A `Run` is the jobs of one request: its `events()` yield
`(choice index, text piece)` and `(index, None)` when a choice ends. Cancelling a run (the
client went away, the request timed out, the server shuts down) cancels every handle: the
engine drops those sequences at its next step.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping, Sequence

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import ContextOverflowError, LanternError

#: Bodies larger than this are refused with 413 before they are parsed.
MAX_BODY_BYTES = 4 * 1024 * 1024
#: JSON nested deeper than this is refused with 400 before it is parsed.
MAX_JSON_DEPTH = 64
#: Choices one request may ask for (`n`).
MAX_CHOICES = 16
#: Stop strings per request, and characters per stop string.
MAX_STOPS = 16
MAX_STOP_CHARS = 1000


# ----- errors --------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in the API's own shape: OpenAI's `{"error": {message, type, param,
    code}}` or Ollama's `{"error": message}` (paths under /api/)."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code
        self.headers = headers or {}


def is_ollama_path(path: str) -> bool:
    return path.startswith("/api/") or path == "/api"


def error_body(path: str, error: ApiError) -> dict:
    if is_ollama_path(path):
        return {"error": error.message}
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def error_response(path: str, error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(path, error), status_code=error.status, headers=error.headers)


def not_supported(what: str) -> ApiError:
    return ApiError(400, f"{what} is not supported by this server", code="not_supported")


def from_lantern_error(exc: BaseException, param: str | None = None) -> ApiError:
    """The API error for an exception the engine or the prompt building raised."""
    from ..generate.batch import EngineClosed, QueueFull

    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, message, param=param or "messages", code="context_length_exceeded")
    if isinstance(exc, QueueFull):
        return ApiError(503, f"the server is busy: {message}", code="queue_full", headers={"Retry-After": "1"})
    if isinstance(exc, EngineClosed):
        return ApiError(503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "5"})
    if isinstance(exc, LanternError):
        return ApiError(400, message, param=param)
    return ApiError(500, "the model failed while generating; see the server's log", code="internal_error")


# ----- reading JSON within limits ------------------------------------------------------------


def _json_depth_ok(raw: bytes, limit: int) -> bool:
    """Whether the JSON text nests arrays/objects at most `limit` deep (strings skipped), checked
    before parsing: Python's parser recurses once per level."""
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def read_json(request: Request, max_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH) -> dict:
    """The request's JSON object, or ApiError: 413 over `max_bytes`, 400 for anything that is
    not a JSON object within `max_depth` levels (NaN and Infinity are not JSON)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, f"the request body is {int(length)} bytes; the limit is {max_bytes}",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"the request body is over the limit of {max_bytes} bytes", code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "the request has no body; send a JSON object")
    if not _json_depth_ok(raw, max_depth):
        raise ApiError(400, f"the JSON body nests deeper than {max_depth} levels")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(value).__name__}")
    return value


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "dict", "list", "none", "bytes"})


def _field_part(part) -> bool:
    if isinstance(part, int):
        return True
    part = str(part)
    return part.isidentifier() and part not in _TYPE_NAMES and not part[0].isupper()


def validation_error(exc) -> ApiError:
    """The first problem pydantic found, as a 400 naming the field."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    # pydantic names the member of a union it tried (str, list[ContentPart], ...) in the path;
    # keep the field names and list indexes only.
    path = [str(p) for p in first.get("loc", ()) if _field_part(p)]
    param = ".".join(path) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return ApiError(400, f"{param}: {msg}{more}" if param else f"{msg}{more}", param=param, code="invalid_value")


# ----- the served model --------------------------------------------------------------------


def _normalize_name(name: str) -> str:
    name = name.strip().lower()
    return name[: -len(":latest")] if name.endswith(":latest") else name


@dataclass
class ModelInfo:
    """The names a served model answers to, and facts the model listings report."""

    name: str  # the primary name: the alias or spec it was loaded by, or the file's stem
    path: Path
    names: list[str]
    arch: str
    context_length: int
    size_bytes: int
    modified: float
    parameters: int
    quantization: str
    template: str

    @classmethod
    def of(cls, model, spec: str | None = None, extra_names: Sequence[str] = ()) -> "ModelInfo":
        path = Path(model.file.path)
        from ..hub import ALIASES, resolve

        names: list[str] = []
        if spec and not any(sep in spec for sep in ("/", "\\")) and not spec.lower().endswith(".gguf"):
            names.append(spec)
        names.append(path.stem)
        names.append(path.name)
        for alias in ALIASES:
            try:
                if resolve(alias, download=False, progress=False).resolve() == path.resolve():
                    names.append(alias)
            except (LanternError, OSError):
                pass
        general = model.file.get("general.name")
        if isinstance(general, str) and general.strip():
            names.append(general.strip())
        names.extend(extra_names)
        unique: list[str] = []
        for n in names:
            if n and _normalize_name(n) not in {_normalize_name(u) for u in unique}:
                unique.append(n)
        stat = path.stat()
        return cls(name=unique[0], path=path, names=unique, arch=model.arch, context_length=model.context_length,
                   size_bytes=stat.st_size, modified=stat.st_mtime, parameters=_parameter_count(model),
                   quantization=_quantization(model), template=_template_source(model))

    def matches(self, name: str | None) -> bool:
        if name is None:
            return True
        wanted = _normalize_name(name)
        return any(_normalize_name(n) == wanted for n in self.names)

    @property
    def digest(self) -> str:
        """A stable identifier of this file (not its content hash: that would read gigabytes)."""
        text = f"{self.path.resolve()}:{self.size_bytes}:{int(self.modified)}"
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def parameter_size(self) -> str:
        n = self.parameters
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if n >= scale:
                return f"{n / scale:.1f}{unit}".replace(".0", "")
        return str(n)


def _parameter_count(model) -> int:
    try:
        import math

        return int(sum(math.prod(int(d) for d in t.shape) for t in model.file.reader.tensors))
    except Exception:  # noqa: BLE001  (a count for listings only)
        return 0


def _quantization(model) -> str:
    file_type = model.file.get("general.file_type")
    try:
        from gguf import LlamaFileType

        return LlamaFileType(int(file_type)).name.replace("MOSTLY_", "")
    except Exception:  # noqa: BLE001  (a label for listings only)
        return "unknown"


def _template_source(model) -> str:
    source = model.file.get("tokenizer.chat_template")
    return source if isinstance(source, str) else ""


# ----- running requests -------------------------------------------------------------------------


class _TimedSource:
    """The engine's handle as a Generation's token source: counts the tokens the engine
    generated and times them for /metrics. `skip_ids` (end-of-generation ids of an
    `ignore_eos` request) are counted but not passed on, so the text runs on past them."""

    def __init__(self, handle, metrics, skip_ids=frozenset()):
        self.handle = handle
        self.metrics = metrics
        self.skip_ids = skip_ids
        self.count = 0

    @property
    def finish_reason(self):
        return self.handle.finish_reason

    @property
    def prompt_tokens_run(self) -> int:
        return self.handle.prompt_tokens_run

    def tokens(self):
        inner = self.handle.tokens()
        last = None
        try:
            for token in inner:
                now = time.perf_counter()
                if self.metrics is not None:
                    if last is None:
                        first = self.handle.first_token_at or now
                        self.metrics.ttft.observe(max(first - self.handle.submitted, 0.0))
                    else:
                        self.metrics.itl.observe(now - last)
                    self.metrics.generation_tokens.inc()
                last = now
                self.count += 1
                if token in self.skip_ids:
                    continue
                yield token
        finally:
            inner.close()


@dataclass
class JobSpec:
    """One choice to generate: prompt ids and how to sample and stop."""

    prompt_ids: list[int]
    settings: Any  # SamplerSettings
    max_tokens: int | None
    stop: tuple[str, ...] = ()
    continuation: bool = False
    ignore_eos: bool = False
    sampler_factory: Callable[[], Any] | None = None  # a Sampler of its own (constraints, logprobs)


class Job:
    """One choice in flight: the engine's handle, the Generation over it, and the thread that
    pulls its text."""

    def __init__(self, service: "Service", index: int, spec: JobSpec):
        from ..generate.sampling import Sampler
        from ..generate.stream import Generation

        self.index = index
        self.spec = spec
        self.sampler = spec.sampler_factory() if spec.sampler_factory else Sampler(spec.settings)
        engine, model = service.engine, service.model
        skip = frozenset(model.tokenizer.stop_ids) if spec.ignore_eos else frozenset()
        if spec.max_tokens == 0:  # nothing to generate: checked like any prompt, never submitted
            if len(spec.prompt_ids) >= engine.request_limit:
                raise ContextOverflowError(
                    f"the prompt is {len(spec.prompt_ids)} tokens but a request may hold {engine.request_limit} "
                    f"(prompt and answer together); shorten the prompt")
            self.handle = None
            self.source = None
        else:
            self.handle = engine.submit(spec.prompt_ids, self.sampler, spec.max_tokens, spec.ignore_eos)
            self.source = _TimedSource(self.handle, service.metrics, skip)
        try:
            self.generation = Generation(model, spec.prompt_ids, self.sampler, max_tokens=spec.max_tokens,
                                         stop=spec.stop, continuation=spec.continuation,
                                         source=self.source if self.source is not None else _Nothing())
        except BaseException:
            if self.handle is not None:
                self.handle.cancel()
            raise
        self.error: BaseException | None = None

    @property
    def completion_tokens(self) -> int:
        return self.source.count if self.source is not None else 0

    @property
    def cached_tokens(self) -> int:
        if self.handle is None or self.handle.first_token_at is None:
            return 0
        return max(len(self.spec.prompt_ids) - self.handle.prompt_tokens_run, 0)

    @property
    def finish_reason(self) -> str | None:
        return self.generation.finish_reason

    def start(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        def pump() -> None:
            try:
                for piece in self.generation:
                    loop.call_soon_threadsafe(queue.put_nowait, (self.index, piece))
                item = (self.index, None)
            except BaseException as exc:  # noqa: BLE001  (handed to the request, which answers it)
                self.error = exc
                item = (self.index, exc)
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop has closed (shutdown): nobody is listening
                pass

        threading.Thread(target=pump, name=f"lantern-job-{self.index}", daemon=True).start()

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.generation.cancel()


class _Nothing:
    """The token source of a job that generates nothing (max_tokens 0)."""

    finish_reason = "length"
    prompt_tokens_run = 0

    def tokens(self):
        return iter(())


class RequestTimeout(Exception):
    """The request ran past the server's --timeout."""


class ShuttingDown(Exception):
    """The server stopped while the request ran."""


class Run:
    """The jobs of one request. `events()` yields `(index, piece)` as text arrives and
    `(index, None)` when choice `index` ends; it raises RequestTimeout past the deadline and
    re-raises a job's error. `cancel()` (idempotent) frees every sequence."""

    def __init__(self, jobs: list[Job], timeout: float | None):
        self.jobs = jobs
        self.timeout = timeout
        self.queue: asyncio.Queue = asyncio.Queue()
        self.started = time.perf_counter()
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + timeout if timeout else None
        self.aborted = False  # cancelled by the server's shutdown
        for job in jobs:
            job.start(loop, self.queue)

    async def events(self) -> AsyncIterator[tuple[int, str | None]]:
        pending = len(self.jobs)
        loop = asyncio.get_running_loop()
        try:
            while pending:
                if self.deadline is None:
                    index, value = await self.queue.get()
                else:
                    remaining = self.deadline - loop.time()
                    try:
                        index, value = await asyncio.wait_for(self.queue.get(), max(remaining, 0.0))
                    except asyncio.TimeoutError:
                        raise RequestTimeout() from None
                if isinstance(value, BaseException):
                    raise value
                if value is None:
                    pending -= 1
                    if self.aborted:
                        raise ShuttingDown()
                yield index, value
        finally:
            if pending:
                self.cancel()

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    def abort(self) -> None:
        """Cancel it because the server is stopping: `events()` then raises ShuttingDown."""
        self.aborted = True
        self.cancel()

    @property
    def prompt_tokens(self) -> int:
        return sum(len(job.spec.prompt_ids) for job in self.jobs)

    @property
    def completion_tokens(self) -> int:
        return sum(job.completion_tokens for job in self.jobs)


def run_error(exc: BaseException, timeout: float | None) -> ApiError:
    if isinstance(exc, ShuttingDown):
        return ApiError(503, "the server is shutting down; the request was cancelled", code="shutting_down",
                        headers={"Retry-After": "5"})
    if isinstance(exc, RequestTimeout):
        return ApiError(408, f"the request ran past the server's timeout of {timeout:g} s and was cancelled",
                        type="timeout_error", code="timeout")
    return from_lantern_error(exc)


async def watch_disconnect(receive, on_disconnect: Callable[[], None]) -> None:
    """Wait for the client to go away (the body has been read), then call `on_disconnect`."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


@dataclass
class Service:
    """A server's state: the model, its engine, its names, limits and metrics. `model` and
    `engine` are None while the model loads (every model endpoint answers 503 then)."""

    metrics: Any
    model: Any = None
    engine: Any = None
    info: ModelInfo | None = None
    timeout: float | None = None
    api_key: str | None = None
    template_options: dict = field(default_factory=dict)  # `serve --chat-template-kwargs`
    load_error: str | None = None
    started: float = field(default_factory=time.time)
    runs: "weakref.WeakSet[Run]" = field(default_factory=lambda: weakref.WeakSet())
    stopping: bool = False

    @property
    def ready(self) -> bool:
        return self.engine is not None

    def template_variables(self, request_options: Mapping[str, Any] | None) -> dict:
        """The chat template's extra variables for one request: the server's, then the request's."""
        from ..generate.prompts import checked_template_options

        try:
            return {**self.template_options, **checked_template_options(request_options)}
        except LanternError as exc:
            raise ApiError(400, str(exc), param="chat_template_kwargs", code="invalid_value") from None

    def attach(self, model, engine, spec: str | None = None, names: Sequence[str] = ()) -> None:
        self.info = ModelInfo.of(model, spec, names)
        self.model = model
        self.engine = engine
        self.metrics.bind(engine)

    def require_ready(self) -> None:
        if self.load_error is not None:
            raise ApiError(503, f"the model failed to load: {self.load_error}", code="model_not_loaded")
        if not self.ready:
            raise ApiError(503, "the model is still loading; try again shortly", code="model_loading",
                           headers={"Retry-After": "2"})

    def check_model(self, name: Any, *, ollama: bool = False) -> None:
        """404 unless `name` names the served model (None: the served model)."""
        self.require_ready()
        if name is None or name == "":
            if ollama:
                raise ApiError(400, "model is required")
            return
        if not isinstance(name, str):
            raise ApiError(400, "model: Input should be a valid string", param="model", code="invalid_value")
        if not self.info.matches(name):
            if ollama:
                raise ApiError(404, f"model '{name}' not found; this server runs '{self.info.name}'")
            raise ApiError(404, f"The model `{name}` does not exist; this server runs `{self.info.name}` "
                                f"(also: {', '.join(self.info.names[1:]) or 'no other names'})",
                           param="model", code="model_not_found")

    def check_max_tokens(self, value: int | None, param: str = "max_tokens") -> None:
        limit = self.engine.request_limit
        if value is not None and value > limit:
            raise ApiError(400, f"{param} is {value} but a request may hold at most {limit} tokens (prompt and "
                                f"answer together); ask for fewer", param=param, code="invalid_value")

    async def start(self, specs: list[JobSpec]) -> Run:
        """Submit every job (off the event loop: prompts may be long); all or none."""

        def submit() -> list[Job]:
            jobs: list[Job] = []
            try:
                for i, spec in enumerate(specs):
                    jobs.append(Job(self, i, spec))
            except BaseException:
                for job in jobs:
                    job.cancel()
                    job.generation.close()
                raise
            return jobs

        try:
            jobs = await anyio.to_thread.run_sync(submit)
        except LanternError as exc:
            raise from_lantern_error(exc) from None
        for spec in specs:
            self.metrics.prompt_tokens.inc(len(spec.prompt_ids))
        run = Run(jobs, self.timeout)
        self.runs.add(run)
        if self.stopping:
            run.abort()
        return run

    def abort_all(self) -> None:
        """The server is stopping: cancel every request in flight (any thread). Each ends at
        the engine's next step and answers 503 (or, once streaming, an error event)."""
        self.stopping = True
        for run in list(self.runs):
            run.abort()

    async def tokenize(self, fn: Callable, *args, param: str | None = None):
        """Run prompt building off the event loop; LanternError becomes a 400."""
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        except LanternError as exc:
            raise from_lantern_error(exc, param) from None


class EventStream(Response):
    """A streamed response (SSE or NDJSON) that stops generating when the client goes away.

    It listens for the client's disconnect while it sends, as Starlette's own StreamingResponse
    did before ASGI 2.4; `on_close` runs however the stream ends (done, client gone, server
    shutting down, an error) and cancels the request's sequences."""

    def __init__(self, chunks: AsyncIterator[bytes], media_type: str, on_close: Callable[[], None],
                 headers: dict[str, str] | None = None, status_code: int = 200):
        self.chunks = chunks
        self.on_close = on_close
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def watch() -> None:
                    await watch_disconnect(receive, self.on_close)
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        except OSError:  # the client went away mid-send
            pass
        finally:
            self.on_close()
            with anyio.CancelScope(shield=True):
                await self.chunks.aclose()

"""The FastAPI app: both APIs, health, metrics, auth, CORS, the access log and error handlers.

`create_app(model, engine, ...)` serves a loaded model; `create_app(None, None, ...)` starts
without one (every model endpoint answers 503 and `/health` 503 until `attach(app, model,
engine)`), which is how `lantern serve` answers while the model loads.

Every error is answered in the API's own shape, OpenAI's `{"error": {"message", "type",
"param", "code"}}` or, under `/api/`, Ollama's `{"error": "..."}`; never a traceback. Bodies
over `max_body_bytes` get 413 before they are parsed; `--api-key` makes every endpoint but `/`
and `/health` ask for `Authorization: Bearer KEY` (401 otherwise).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Callable, Mapping, Sequence

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .. import __version__
from .metrics import Metrics
from .service import MAX_BODY_BYTES, ApiError, Service, error_response

access_log = logging.getLogger("lantern.serve.access")
log = logging.getLogger("lantern.serve")

#: Paths that answer without the API key: a liveness probe must not need a secret.
PUBLIC_PATHS = frozenset({"/", "/health"})


class _Gate:
    """Outermost but CORS: the API key, the body-size cap (by Content-Length), the request
    metrics and one access-log line per request (written when its last byte has gone)."""

    def __init__(self, app, service: Service, max_body_bytes: int):
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        path = scope.get("path", "")

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await error_response(path, refusal)(scope, receive, send_and_note)
            else:
                await self.app(scope, receive, send_and_note)
        finally:
            seconds = time.perf_counter() - started
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            metrics = self.service.metrics
            metrics.requests.labels(endpoint=endpoint, status=str(status or 499)).inc()
            metrics.request_seconds.labels(endpoint=endpoint).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                who = f"{client[0]}:{client[1]}" if client else "-"
                query = scope.get("query_string", b"")
                target = path + ("?" + query.decode("latin-1") if query else "")
                usage = scope.get("state", {}).get("usage")
                extra = f" prompt={usage[0]} completion={usage[1]}" if usage else ""
                access_log.info('%s "%s %s" %s %.3fs%s', who, scope.get("method", "-"), target,
                                status or "499 (client gone)", seconds, extra)

    def _refusal(self, scope) -> ApiError | None:
        headers = dict(scope.get("headers") or [])
        key = self.service.api_key
        if key and scope.get("path") not in PUBLIC_PATHS and scope.get("method") != "OPTIONS":
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                what = "an invalid API key" if given else "no API key"
                return ApiError(401, f"the request has {what}; send 'Authorization: Bearer <key>'",
                                type="authentication_error", code="invalid_api_key",
                                headers={"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return ApiError(413, f"the request body is {int(length)} bytes; the limit is {self.max_body_bytes}",
                            code="request_too_large")
        return None


def create_app(model=None, engine=None, *, name: str | None = None, names: Sequence[str] = (),
               api_key: str | None = None, cors_origins: Sequence[str] = (), timeout: float | None = None,
               metrics: Metrics | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               on_shutdown: Sequence[Callable[[], None]] = (),
               template_options: Mapping[str, Any] | None = None) -> FastAPI:
    """The server's ASGI app over `model` and its `BatchEngine` (both None: not loaded yet).

    name: what the model answers to first (the spec it was loaded by; default the file's stem);
    names: more names. api_key: Bearer auth. cors_origins: origins allowed by CORS ("*" for
    any). timeout: seconds a request may run before it is cancelled (None: no limit).
    on_shutdown: callables run when the server stops (the CLI closes the engine there).
    template_options: chat template variables for every request, e.g. {"enable_thinking": False}
    (a request's chat_template_kwargs, or Ollama's think, take precedence)."""
    from . import ollama, openai

    service = Service(metrics=metrics or Metrics(), timeout=timeout, api_key=api_key or None,
                      template_options=dict(template_options or {}))

    async def lifespan(app):
        yield
        for fn in on_shutdown:
            fn()

    app = FastAPI(title="lantern", version=__version__, docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request.url.path, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(request.url.path, ApiError(exc.status_code, message, code=code))

    @app.exception_handler(RequestValidationError)
    async def validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request.url.path, ApiError(400, "the request is not valid", code="invalid_value"))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s: %r", request.method, request.url.path, exc, exc_info=exc)
        return error_response(request.url.path, ApiError(500, "internal server error; see the server's log",
                                                         code="internal_error"))

    @app.get("/")
    async def root() -> Response:
        return PlainTextResponse(f"lantern {__version__} is running (OpenAI API under /v1, Ollama API under /api)")

    @app.get("/health")
    async def health() -> Response:
        if service.load_error is not None:
            return JSONResponse({"status": "error", "error": service.load_error}, status_code=503)
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
        return JSONResponse({"status": "ok", "model": service.info.name})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    openai.register(app, service)
    ollama.register(app, service)

    app.add_middleware(_Gate, service=service, max_body_bytes=max_body_bytes)
    if cors_origins:
        origins = list(cors_origins)
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                           allow_credentials="*" not in origins, expose_headers=["Retry-After"])
    if model is not None and engine is not None:
        attach(app, model, engine, name=name, names=names)
    return app


def attach(app: FastAPI, model, engine, *, name: str | None = None, names: Sequence[str] = ()) -> None:
    """Serve `model` on its `engine` from now on (`/health` turns 200)."""
    app.state.service.attach(model, engine, name, names)


def abort_requests(app: FastAPI) -> None:
    """Cancel every request in flight (the server is stopping); safe from any thread."""
    app.state.service.abort_all()


def fail(app: FastAPI, message: str) -> None:
    """The model could not load: `/health` and the model endpoints answer 503 with `message`."""
    app.state.service.load_error = message

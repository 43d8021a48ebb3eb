"""``lantern serve -m MODEL``: an OpenAI- and Ollama-compatible HTTP server.

The server starts at once and loads the model in the background (``GET /health`` answers 503
until it is ready). One engine thread owns the model and decodes up to ``--parallel``
sequences together, one pass per step (`lantern.generate.batch`).

``--ctx-size`` is the KV budget in tokens shared by all sequences (default: ``--parallel`` x
the model's context, at most 4096 each). A request reserves its prompt plus ``max_tokens``
(without ``max_tokens``: up to the per-request limit) when it starts, and waits in the queue
until its reservation fits; sequences are never preempted and prompts never truncated. The
per-request limit is the smaller of the model's context and ``--ctx-size``: a longer prompt
gets a 400 naming both counts. More than ``--queue-size`` waiting requests get a 503 with
Retry-After. SIGINT/SIGTERM stop accepting connections, give requests in flight a few seconds
(``--grace``) to finish, cancel the rest, stop the engine and exit; a second signal stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time

from ..errors import LanternError
from . import add_device_argument, add_model_argument
from .options import non_negative_int, port, positive_float, positive_int, template_variables

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_PARALLEL = 4
DEFAULT_QUEUE = 64
#: Seconds requests in flight may take to finish once a shutdown signal arrives.
SHUTDOWN_GRACE = 5.0


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (OpenAI and Ollama APIs)",
        description="Serve MODEL over HTTP: the OpenAI API under /v1 (chat/completions, completions, models) "
        "and the Ollama API under /api (chat, generate, tags, show, version), plus /health and /metrics. "
        "Concurrent requests are decoded together in batches.",
    )
    add_model_argument(parser)
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0 "
                             "exposes the server to the network)")
    parser.add_argument("--port", type=port, default=DEFAULT_PORT,
                        help=f"TCP port (default: {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--api-key", default=os.environ.get("LANTERN_API_KEY") or None, metavar="KEY",
                        help="require 'Authorization: Bearer KEY' on every endpoint but / and /health "
                             "(default: $LANTERN_API_KEY, else no key)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser requests from ORIGIN (e.g. http://localhost:3000, or * for any); "
                             "repeatable (default: none)")
    parser.add_argument("--parallel", type=positive_int, default=DEFAULT_PARALLEL, metavar="N",
                        help=f"sequences decoded at once (default: {DEFAULT_PARALLEL})")
    parser.add_argument("--ctx-size", type=positive_int, default=None, metavar="TOKENS",
                        help="the KV budget in tokens shared by all sequences; a request reserves its prompt + "
                             "max_tokens and waits until that fits; a request may hold at most "
                             "min(model context, TOKENS) (default: N x min(model context, 4096))")
    parser.add_argument("--exact-batches", action="store_true",
                        help="keep decode tokens on 15-bit activations however many share a pass: each output "
                             "the same as alone but for last-bit near-ties; by default, from 5 sequences at once "
                             "their K-quant products take 8-bit activations, as prompts do (faster; docs/FIDELITY.md)")
    parser.add_argument("--queue-size", type=non_negative_int, default=DEFAULT_QUEUE, metavar="N",
                        help=f"requests that may wait for a slot; more get 503 with Retry-After "
                             f"(default: {DEFAULT_QUEUE})")
    parser.add_argument("--timeout", type=positive_float, default=None, metavar="SECONDS",
                        help="cancel a request that runs longer than this, queueing included (default: none)")
    parser.add_argument("--grace", type=positive_float, default=SHUTDOWN_GRACE, metavar="SECONDS",
                        help=f"on SIGINT/SIGTERM, how long requests in flight may take to finish before they are "
                             f"cancelled (default: {SHUTDOWN_GRACE:g})")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME",
                        help="another name the model answers to; repeatable")
    parser.add_argument("--chat-template-kwargs", type=template_variables, default=None, metavar="JSON",
                        help="chat template variables for every request, as a JSON object, e.g. "
                             "'{\"enable_thinking\": false}'; a request's chat_template_kwargs (OpenAI) or "
                             "think (Ollama) takes precedence")
    parser.add_argument("--quiet", action="store_true", help="no access log (one line per request on stderr)")
    add_device_argument(parser)
    parser.set_defaults(func=run)
    return parser


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port_number: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or LanternError saying why not."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port_number, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise LanternError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise LanternError(f"cannot listen on {host}:{port_number}: {exc.strerror or exc}; "
                           f"is another server using it? pick another --port") from None
    sock.set_inheritable(True)
    return sock


def note(message: str) -> None:
    print(f"lantern: {message}", file=sys.stderr, flush=True)


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("lantern: %(message)s"))
    for name in ("lantern.serve", "lantern.serve.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name == "lantern.serve" else []
        logger.setLevel(logging.INFO)
    logging.getLogger("lantern.serve.access").disabled = quiet


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from ..serve.app import abort_requests, attach, create_app, fail
    from ..serve.metrics import Metrics

    from ..generate.prompts import checked_template_options

    checked_template_options(args.chat_template_kwargs)  # a one-line error before anything starts
    if not is_loopback(args.host):
        exposure = "with an API key" if args.api_key else "WITHOUT an API key: anyone who can reach it can use it"
        note(f"warning: --host {args.host} exposes the server to the network, {exposure}")
    sock = bind(args.host, args.port)
    bound_port = sock.getsockname()[1]
    _setup_logging(args.quiet)

    state: dict = {"engine": None}
    app = create_app(api_key=args.api_key, cors_origins=args.cors_origin, timeout=args.timeout,
                     metrics=Metrics(), on_shutdown=[lambda: _close(state)], template_options=args.chat_template_kwargs)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    note(f"listening on http://{shown}:{bound_port} (OpenAI API: /v1, Ollama API: /api); loading {args.model}...")

    def load() -> None:
        try:
            import lantern
            from ..generate.batch import BatchEngine

            started = time.perf_counter()
            model = lantern.load(args.model, device=args.device)
            engine = BatchEngine(model, parallel=args.parallel, ctx_size=args.ctx_size, queue_size=args.queue_size,
                                 exact_batches=args.exact_batches)
            state["engine"] = engine
            attach(app, model, engine, name=args.model, names=args.alias)
            info = app.state.service.info
            note(f"ready: {info.name} ({model.arch}, {time.perf_counter() - started:.1f} s to load); "
                 f"{args.parallel} parallel{' (exact batches)' if args.exact_batches else ''}, KV budget "
                 f"{engine.ctx_size} tokens, at most {engine.request_limit} per request; names: {', '.join(info.names)}")
        except LanternError as exc:
            message = " ".join(str(exc).split())
            fail(app, message)
            note(f"error: {message}")
            server.should_exit = True
        except Exception as exc:  # noqa: BLE001  (a bug: the server says so and stops)
            fail(app, f"{type(exc).__name__}: {exc}")
            logging.getLogger("lantern.serve").exception("loading the model failed")
            server.should_exit = True

    # At the grace period's end lantern cancels what still runs (each request then ends with a
    # 503 or an error event); uvicorn's own cancellation, a little later, is only a backstop.
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=args.grace + 3,
                            lifespan="on", server_header=False)
    server = _Server(config, args.grace, lambda: abort_requests(app))
    threading.Thread(target=load, name="lantern-load", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        _close(state)
    if app.state.service.load_error is not None:
        return 1
    note("stopped")
    return 0


def _close(state: dict) -> None:
    engine = state.get("engine")
    if engine is not None:
        engine.close()


class _Server:
    """uvicorn's server, whose signal handling ends in a normal return (uvicorn re-raises the
    signal once it has shut down, which would kill the process before the engine is closed)."""

    def __new__(cls, config, grace: float, abort):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                handled = (signal.SIGINT, signal.SIGTERM)
                original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
                try:
                    yield
                finally:
                    for sig, handler in original.items():
                        signal.signal(sig, handler)

            def handle_exit(self, sig, frame):
                if self.should_exit:
                    self.force_exit = True
                    abort()
                    return
                note(f"{signal.Signals(sig).name}: stopping (requests in flight have {grace:g} s "
                     f"to finish; again to stop now)")
                self.should_exit = True
                timer = threading.Timer(grace, abort)
                timer.daemon = True
                timer.start()

        return Server(config)

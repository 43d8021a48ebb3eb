"""`lantern serve` beside llama-cpp-python's own server, on the same GGUF file, in the same run.

Both servers run as subprocesses with the same threads. For each number of concurrent clients
(1, 4 and 8 by default) every client streams `--requests` completions from `/v1/completions`,
one after another: a prompt of exactly `--prompt-tokens` tokens (a different slice of English
text for every request, so no server reuses another request's prefix) and exactly
`--gen-tokens` greedy tokens. Neither server may stop early: lantern gets `ignore_eos: true`,
llama-cpp-python (which has no such field) a `logit_bias` of -1e9 on every end-of-generation
token. The two servers take turns at each concurrency, so a change in the machine's load hits
both alike.

Reported per server and concurrency: aggregate generated tokens/s (all tokens of all clients
over the wall time of the phase, prompts included), p50/p95 time to first token, p50/p95
inter-token latency (between streamed events), and the ratios: lantern / llama-cpp-python at
each concurrency, and lantern at the highest concurrency / lantern with one client.

    python bench/serve.py smollm2
    python bench/serve.py phi3-mini-synthetic --clients 1,4,8 --prompt-tokens 128 --gen-tokens 128
    python bench/serve.py smollm2 --prompt-tokens 64 --gen-tokens 32 --requests 1 --json out.json
    python bench/serve.py PHI3.gguf --clients 1,8 --prompt-tokens 16 --gen-tokens 128 --requests 1

Short prompts and long answers (the last line) measure what batching does to decoding; with long
prompts the figures are mostly the prompts' time, which batching cannot share (each prompt token
is compute-bound alone or together; docs/PERFORMANCE.md).

llama-cpp-python's server needs its `server` extra (`pip install sse-starlette
starlette-context pydantic-settings`); it runs with `--interrupt_requests False` (by default a
new request cuts the one in flight short) and serves one request at a time.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PHI3_FIXTURE = "phi3-mini-synthetic"
TEXT = Path(__file__).resolve().parent.parent / "tests" / "data" / "english.txt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_path(spec: str) -> Path:
    if spec == PHI3_FIXTURE:
        from lantern.testing.synthetic import PHI3_MINI, cached_model

        return Path(cached_model(PHI3_MINI, "Q4_K_M"))
    from lantern.hub import resolve

    return Path(resolve(spec))


def prompts_for(path: Path, count: int, tokens: int) -> tuple[list[str], list[int]]:
    """`count` prompts of `tokens` tokens each (different slices of the English text), and the
    model's end-of-generation ids."""
    from lantern.tokenizer import Tokenizer
    from lantern.weights.gguf_file import GGUFFile

    tokenizer = Tokenizer.from_gguf(GGUFFile(path))
    ids = tokenizer.encode(TEXT.read_text(encoding="utf-8"), add_bos=False, special=False)
    out = []
    stride = max(1, (len(ids) - tokens) // max(count, 1))
    for i in range(count):
        start = (i * stride) % max(1, len(ids) - tokens)
        text = tokenizer.decode(ids[start:start + tokens])
        # Round trips can merge or split a token at the edges: trim until it is exact.
        n = len(tokenizer.encode(text, add_bos=None, special=False))
        k = tokens
        while n > tokens and k > 1:
            k -= 1
            text = tokenizer.decode(ids[start:start + k])
            n = len(tokenizer.encode(text, add_bos=None, special=False))
        out.append(text)
    return out, sorted(tokenizer.stop_ids)


# ----- servers -------------------------------------------------------------------------------------


class ServerProcess:
    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str, log: Path):
        self.name, self.port, self.url = name, port, f"http://127.0.0.1:{port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.ready_path = ready_path
        self.log_path = log

    def wait_ready(self, timeout: float = 900) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} server not ready after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_lantern(path: Path, port: int, threads: int, parallel: int, ctx: int, log: Path) -> ServerProcess:
    cmd = [sys.executable, "-m", "lantern", "serve", "-m", str(path), "--port", str(port), "--threads", str(threads),
           "--parallel", str(parallel), "--ctx-size", str(parallel * ctx), "--quiet"]
    return ServerProcess("lantern", cmd, port, "/health", log)


def llamacpp_server_missing() -> str | None:
    """Why llama-cpp-python's server cannot start here (its extras not installed), or None."""
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


def start_llamacpp(path: Path, port: int, threads: int, ctx: int, log: Path) -> ServerProcess:
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--port", str(port),
           "--host", "127.0.0.1", "--n_threads", str(threads), "--n_threads_batch", str(threads),
           "--n_ctx", str(ctx), "--interrupt_requests", "False", "--verbose", "False"]
    return ServerProcess("llama-cpp-python", cmd, port, "/v1/models", log)


# ----- clients -----------------------------------------------------------------------------------------


@dataclass
class RequestResult:
    ttft: float
    itls: list[float]
    tokens: int
    events: int
    finish: str | None
    seconds: float


@dataclass
class Phase:
    server: str
    clients: int
    wall: float = 0.0
    results: list[RequestResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.results)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        values = sorted(values)
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]

    def summary(self) -> dict:
        ttfts = [r.ttft for r in self.results]
        itls = [x for r in self.results for x in r.itls]
        return {"server": self.server, "clients": self.clients, "requests": len(self.results),
                "errors": len(self.errors), "tokens": self.tokens, "wall_s": round(self.wall, 3),
                "tok_s": round(self.tok_s, 2),
                "ttft_p50_ms": round(1e3 * self.pct(ttfts, 0.5), 1), "ttft_p95_ms": round(1e3 * self.pct(ttfts, 0.95), 1),
                "itl_p50_ms": round(1e3 * self.pct(itls, 0.5), 1), "itl_p95_ms": round(1e3 * self.pct(itls, 0.95), 1)}


def one_request(http, url: str, body: dict, gen_tokens: int) -> RequestResult:
    """One streamed completion on `http` (an httpx.Client: made once per client thread, since
    making one builds an SSL context, tens of milliseconds of CPU taken from the server)."""
    started = time.perf_counter()
    first = last = None
    itls: list[float] = []
    events = 0
    finish = None
    with http.stream("POST", url + "/v1/completions", json=body, timeout=3600) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:200]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(str(data["error"])[:200])
            choice = (data.get("choices") or [{}])[0]
            finish = choice.get("finish_reason") or finish
            if not choice.get("text"):
                continue
            now = time.perf_counter()
            events += 1
            if first is None:
                first = now
            else:
                itls.append(now - last)
            last = now
    end = time.perf_counter()
    if finish != "length":
        raise RuntimeError(f"finished {finish!r} after {events} events, not after {gen_tokens} tokens")
    return RequestResult(ttft=(first or end) - started, itls=itls, tokens=gen_tokens, events=events,
                         finish=finish, seconds=end - started)


def run_clients(client, clients: int) -> float:
    """Wall seconds for `client(i)`, i < clients, each on its own thread, all started together."""
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def run_phase(server: ServerProcess, clients: int, prompts: list[str], args, stop_ids: list[int]) -> Phase:
    phase = Phase(server.name, clients)

    def body(prompt: str) -> dict:
        b = {"model": args.model_name, "prompt": prompt, "max_tokens": args.gen_tokens, "temperature": 0, "stream": True}
        if server.name == "lantern":
            b["ignore_eos"] = True
        else:
            b["logit_bias"] = {str(t): -1e9 for t in stop_ids}
        return b

    import httpx

    https = [httpx.Client() for _ in range(clients)]
    one_request(https[0], server.url, body(prompts[-1]), args.gen_tokens)  # warm-up, not counted
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait()
        for k in range(args.requests):
            prompt = prompts[(i * args.requests + k) % (len(prompts) - 1)]
            try:
                result = one_request(https[i], server.url, body(prompt), args.gen_tokens)
                with lock:
                    phase.results.append(result)
            except Exception as exc:  # noqa: BLE001  (reported, and counted as a failure)
                with lock:
                    phase.errors.append(str(exc))

    phase.wall = run_clients(client, clients)
    for http in https:
        http.close()
    return phase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("model", help="a .gguf path, an alias (smollm2) or phi3-mini-synthetic")
    parser.add_argument("--clients", default="1,4,8", help="concurrencies to measure (default: 1,4,8)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prompt length in tokens (default: 128)")
    parser.add_argument("--gen-tokens", type=int, default=128, help="tokens generated per request (default: 128)")
    parser.add_argument("--requests", type=int, default=2, help="requests per client per phase (default: 2)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both servers (default: lantern's)")
    parser.add_argument("--only", choices=("lantern", "llama-cpp-python"), default=None, help="measure one server")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.only != "lantern" and (why := llamacpp_server_missing()):
        raise SystemExit(f"bench/serve.py: llama-cpp-python's server cannot start ({why}): "
                         "pip install 'llama-cpp-python[server]==0.3.36', or measure lantern alone with --only lantern")

    from lantern.cli import default_threads

    threads = args.threads or default_threads()
    path = model_path(args.model)
    args.model_name = path.stem
    prompts, stop_ids = prompts_for(path, max(clients) * args.requests + 1, args.prompt_tokens)
    ctx = args.prompt_tokens + args.gen_tokens + 64
    logs = Path(tempfile.mkdtemp(prefix="lantern-bench-serve-"))
    servers: list[ServerProcess] = []
    try:
        if args.only in (None, "lantern"):
            servers.append(start_lantern(path, free_port(), threads, max(clients), ctx, logs / "lantern.log"))
        if args.only in (None, "llama-cpp-python"):
            servers.append(start_llamacpp(path, free_port(), threads, ctx, logs / "llama-cpp-python.log"))
        for s in servers:
            s.wait_ready()
        print(f"# {path.name}: prompt {args.prompt_tokens} tok, {args.gen_tokens} generated tok per request, "
              f"{args.requests} requests per client, {threads} threads; logs in {logs}", flush=True)
        phases: list[Phase] = []
        for c in clients:
            for s in servers:
                phase = run_phase(s, c, prompts, args, stop_ids)
                phases.append(phase)
                row = phase.summary()
                print(f"{row['server']:>17} x{c}: {row['tok_s']:8.2f} tok/s  TTFT p50 {row['ttft_p50_ms']:8.1f} ms "
                      f"p95 {row['ttft_p95_ms']:8.1f} ms  ITL p50 {row['itl_p50_ms']:6.1f} ms "
                      f"p95 {row['itl_p95_ms']:6.1f} ms  errors {row['errors']}", flush=True)
                for e in phase.errors[:3]:
                    print(f"    error: {e}", flush=True)
    finally:
        for s in servers:
            s.stop()
    ratios = {}
    by = {(p.server, p.clients): p for p in phases}
    for c in clients:
        a, b = by.get(("lantern", c)), by.get(("llama-cpp-python", c))
        if a and b and b.tok_s:
            ratios[f"lantern/llama-cpp-python x{c}"] = round(a.tok_s / b.tok_s, 2)
    lo, hi = by.get(("lantern", min(clients))), by.get(("lantern", max(clients)))
    if lo and hi and lo.tok_s and hi is not lo:
        ratios[f"lantern x{max(clients)} / lantern x{min(clients)}"] = round(hi.tok_s / lo.tok_s, 2)
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(path), "threads": threads,
                                               "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
                                               "requests_per_client": args.requests,
                                               "phases": [p.summary() for p in phases], "ratios": ratios}, indent=2))
    return 1 if any(p.errors for p in phases) else 0


if __name__ == "__main__":
    sys.exit(main())

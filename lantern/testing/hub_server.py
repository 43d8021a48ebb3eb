"""A local HTTP server that speaks the Hugging Face Hub's file-download protocol.

Tests point ``HF_ENDPOINT`` (or ``huggingface_hub.constants.ENDPOINT``) at it and let the real
``huggingface_hub`` client download from it: the metadata ``HEAD``, the ``GET`` (with ``Range``
resumption), the error headers for missing repositories, files and gated repositories. What the
client sends is recorded, and a transfer can be cut off part-way to prove resumption, or held
open part-way until the test releases it (to interrupt the client mid-download, deterministically).

What it answers (as huggingface_hub 2.4's ``file_download.py`` expects):

- ``HEAD|GET /{repo_id}/resolve/{revision}/{path}``: ``X-Repo-Commit``, ``ETag`` (the git blob
  sha1 of the file; for LFS files ``X-Linked-Etag`` carries the sha256 and ``X-Linked-Size`` the
  size), ``Content-Length``, ``Accept-Ranges: bytes``; a ``Range: bytes=N-`` GET gets ``206`` with
  ``Content-Range``. With ``lfs_redirect=True`` LFS files answer ``302`` to a "CDN" URL on another
  host name (``localhost`` instead of ``127.0.0.1``), as the real Hub does.
- ``GET /api/models/{repo_id}`` and ``/api/models/{repo_id}/revision/{rev}``: model info JSON
  (``hf_hub_download`` itself does not call it; ``model_info`` does).
- ``GET /api/agent-harnesses``: the registry huggingface_hub fetches when telemetry is on (so a
  test can see whether it was asked for).
- errors: ``404`` + ``X-Error-Code: RepoNotFound`` / ``EntryNotFound`` / ``RevisionNotFound``,
  ``403`` + ``X-Error-Code: GatedRepo``.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

_CHUNK = 1 << 20


@dataclass
class _File:
    data: bytes | None
    path: Path | None
    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    def read(self, start: int, end: int):
        """Yield the bytes [start, end) in chunks."""
        if self.data is not None:
            for pos in range(start, end, _CHUNK):
                yield self.data[pos : min(end, pos + _CHUNK)]
            return
        assert self.path is not None
        with open(self.path, "rb") as fh:
            fh.seek(start)
            pos = start
            while pos < end:
                chunk = fh.read(min(_CHUNK, end - pos))
                if not chunk:
                    return
                pos += len(chunk)
                yield chunk


@dataclass
class _Repo:
    commit: str
    files: dict[str, _File] = field(default_factory=dict)
    gated: bool = False


@dataclass
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    bytes_sent: int = 0
    interrupted: bool = False

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


class HubServer:
    """A threaded fake Hub on 127.0.0.1 (a free port). Use as a context manager or start()/stop()."""

    def __init__(self, *, lfs_redirect: bool = False, chunk_delay: float = 0.0):
        self.lfs_redirect = lfs_redirect
        self.chunk_delay = chunk_delay  # seconds to wait after each 1 MiB sent: a slow network
        self._repos: dict[str, _Repo] = {}
        self._interruptions: dict[str, list[int]] = {}
        self._holds: dict[str, int] = {}
        self._held = threading.Event()  # a transfer has reached its hold point
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.requests: list[RequestRecord] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # ----- content --------------------------------------------------------------------------

    def add_file(self, repo_id: str, filename: str, content: bytes | str | Path, *, lfs: bool = True) -> str:
        """Serve `content` (bytes or a path to a file) as `filename` of model repo `repo_id`.

        Returns the file's sha256 (its ETag when it is an LFS file).
        """
        if isinstance(content, (str, Path)):
            path: Path | None = Path(content)
            data = None
            size = path.stat().st_size
            sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(_CHUNK), b""):
                    sha256.update(chunk)
                    sha1.update(chunk)
        else:
            path, data, size = None, bytes(content), len(content)
            sha256 = hashlib.sha256(data)
            sha1 = hashlib.sha1(b"blob %d\0" % size + data)
        repo = self._repos.setdefault(repo_id, _Repo(commit=hashlib.sha1(repo_id.encode()).hexdigest()))
        repo.files[filename] = _File(data, path, size, sha256.hexdigest(), sha1.hexdigest(), lfs)
        return sha256.hexdigest()

    def set_gated(self, repo_id: str, gated: bool = True) -> None:
        self._repos.setdefault(repo_id, _Repo(commit=hashlib.sha1(repo_id.encode()).hexdigest())).gated = gated

    def interrupt(self, filename: str, after_bytes: int, times: int = 1) -> None:
        """Cut the connection after `after_bytes` body bytes on the next `times` GETs of `filename`."""
        with self._lock:
            self._interruptions.setdefault(filename, []).extend([after_bytes] * times)

    def hold(self, filename: str, after_bytes: int) -> None:
        """Stop every GET of `filename` after `after_bytes` body bytes and keep the connection open,
        sending nothing more, until `release()` (or until the client goes away)."""
        with self._lock:
            self._holds[filename] = after_bytes

    def wait_until_held(self, timeout: float) -> bool:
        """Whether a transfer reached its hold point within `timeout` seconds: the client has
        received part of the file and is waiting for the rest."""
        return self._held.wait(timeout)

    def release(self) -> None:
        """Let held transfers go on (and later ones run through)."""
        with self._lock:
            self._holds.clear()
        self._release.set()

    def _hold_point(self, filename: str) -> int | None:
        with self._lock:
            return self._holds.get(filename)

    def _take_interruption(self, filename: str) -> int | None:
        with self._lock:
            pending = self._interruptions.get(filename)
            return pending.pop(0) if pending else None

    def gets(self, filename: str | None = None) -> list[RequestRecord]:
        """The GET requests for file contents received so far (optionally of one file)."""
        out = []
        for r in list(self.requests):
            if r.method != "GET" or "/api/" in r.path:
                continue
            if filename is None or r.path.endswith("/" + quote(filename)) or r.path.endswith("/" + filename):
                out.append(r)
        return out

    # ----- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.port is not None, "server not started"
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HubServer":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # a held transfer must not keep the server from shutting down
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for 'unreachable Hub' tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_RESOLVE = re.compile(r"^/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_CDN = re.compile(r"^/cdn-lfs/(?P<repo>[^/]+/[^/]+)/(?P<file>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?/?$")


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "fake-hub/1.0"

    def log_message(self, format, *args):  # keep test output clean
        pass

    # ----- dispatch -------------------------------------------------------------------------

    def do_HEAD(self):
        self._handle(head=True)

    def do_GET(self):
        self._handle(head=False)

    def _handle(self, *, head: bool) -> None:
        path = urlsplit(self.path).path
        record = RequestRecord(self.command, path, {k.lower(): v for k, v in self.headers.items()})
        with self.hub._lock:
            self.hub.requests.append(record)
        self._record = record
        if m := _RESOLVE.match(path):
            if m.group("type"):
                return self._error(404, "RepoNotFound", "Repository not found")
            return self._resolve(unquote(m.group("repo")), unquote(m.group("rev")), unquote(m.group("file")), head)
        if m := _CDN.match(path):
            repo = self.hub._repos.get(unquote(m.group("repo")))
            f = repo.files.get(unquote(m.group("file"))) if repo else None
            if f is None:
                return self._error(404, None, "Not found")
            return self._send_file(repo, f, unquote(m.group("file")), head, extra={})
        if (m := _API.match(path)) and not head:
            return self._model_info(unquote(m.group("repo")), m.group("rev"))
        if path == "/api/agent-harnesses" and not head:
            # huggingface_hub fetches this (and caches it under HF_HOME) unless telemetry is off.
            return self._json({"standardEnvVars": [], "harnesses": {}})
        return self._error(404, None, "Not found")

    # ----- responses ------------------------------------------------------------------------

    def _error(self, status: int, code: str | None, message: str, extra: dict | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._record.status = status
        if self.command != "HEAD":
            self.wfile.write(body)

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
        repo = self.hub._repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if repo.gated:
            return self._error(403, "GatedRepo", "Access to model is restricted")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
        f = repo.files.get(filename)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.commit})
        extra = {"X-Repo-Commit": repo.commit, "ETag": f'"{f.git_sha1}"'}
        if f.lfs:
            extra["X-Linked-Etag"] = f'"{f.sha256}"'
            extra["X-Linked-Size"] = str(f.size)
            if self.hub.lfs_redirect:
                location = f"http://localhost:{self.hub.port}/cdn-lfs/{quote(repo_id)}/{quote(filename)}"
                self.send_response(302)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._record.status = 302
                return
        self._send_file(repo, f, filename, head, extra)

    def _send_file(self, repo: _Repo, f: _File, filename: str, head: bool, extra: dict) -> None:
        start, end, status = 0, f.size, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= max(f.size, 1):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{f.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._record.status = 416
                return
            start = int(m.group(1))
            end = min(f.size, int(m.group(2)) + 1) if m.group(2) else f.size
            status = 206
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Disposition", f'inline; filename="{Path(filename).name}";')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{f.size}")
        self.end_headers()
        self._record.status = status
        if head:
            return
        cut = self.hub._take_interruption(filename)
        hold = self.hub._hold_point(filename)
        sent = 0
        try:
            for chunk in f.read(start, end):
                if hold is not None and sent + len(chunk) >= hold:
                    first, chunk = chunk[: hold - sent], chunk[hold - sent :]
                    self.wfile.write(first)
                    self.wfile.flush()
                    sent += len(first)
                    self._record.bytes_sent = sent
                    hold = None
                    self.hub._held.set()
                    self.hub._release.wait()
                if cut is not None and sent + len(chunk) >= cut:
                    self.wfile.write(chunk[: cut - sent])
                    sent = cut
                    self.wfile.flush()
                    self._record.bytes_sent = sent
                    self._record.interrupted = True
                    self.close_connection = True
                    # Abort the connection as a network failure would.
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
                self._record.bytes_sent = sent
                if self.hub.chunk_delay:
                    self.wfile.flush()
                    time.sleep(self.hub.chunk_delay)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        self._record.bytes_sent = sent

    def _model_info(self, repo_id: str, revision: str | None) -> None:
        repo = self.hub._repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if revision not in (None, "main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id: " + str(revision))
        info = {
            "_id": repo.commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": ["gguf"],
            "siblings": [
                {"rfilename": name, "size": f.size, **({"lfs": {"sha256": f.sha256, "size": f.size}} if f.lfs else {})}
                for name, f in repo.files.items()
            ],
        }
        self._json(info)

    def _json(self, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._record.status = 200
        self.wfile.write(body)


def write_test_gguf(path: str | Path, *, pad_bytes: int = 0, seed: int = 0) -> Path:
    """Write a small, valid GGUF file (arch llama, 2 layers) for download and `info` tests.

    Metadata follows llama.cpp's key names (context 2048, embedding 64, 4 heads / 2 KV heads, a
    gpt2 tokenizer with 32 tokens and a chat template); tensors are F32 plus one Q8_0. With
    `pad_bytes` an extra F32 tensor of about that size makes the file big enough to cut off a
    download after several chunks.
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType
    from gguf.quants import quantize

    path = Path(path)
    rng = np.random.default_rng(seed)
    n_embd, n_vocab, n_layer = 64, 32, 2
    w = GGUFWriter(path, "llama")
    w.add_name("lantern-test-tiny")
    w.add_file_type(LlamaFileType.MOSTLY_Q8_0)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(128)
    w.add_block_count(n_layer)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    tokens = ["<s>", "</s>"] + [f"t{i}" for i in range(n_vocab - 2)]
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (n_vocab - 2))
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_chat_template(
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, n_embd), dtype=np.float32))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        q = quantize(rng.standard_normal((n_embd, n_embd), dtype=np.float32), GGMLQuantizationType.Q8_0)
        w.add_tensor(f"blk.{i}.attn_q.weight", q, raw_dtype=GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    if pad_bytes > 0:
        w.add_tensor("pad.weight", rng.standard_normal(max(1, pad_bytes // 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

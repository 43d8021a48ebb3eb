"""The command-line frame and the model commands: ``lantern pull``, ``ls``, ``info``.

The commands run as subprocesses (``python -m lantern``), with HF_ENDPOINT pointing at a local
server that speaks the Hub's download protocol (lantern.testing.hub_server), a temporary
LANTERN_CACHE and a temporary HOME, so the tests see what a user would, including that nothing
is written outside lantern's cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lantern
import lantern.cli as cli
from lantern.cli import options
from lantern.errors import LanternError
from lantern.testing.hub_server import HubServer, free_port, write_test_gguf

REPO = "lantern-test/tiny-gguf"
FILE = "quant/tiny.gguf"
SPEC = f"hf:{REPO}/{FILE}"


def lantern_cmd(*args: str, cache: Path, home: Path, endpoint: str | None = None, timeout: float = 60,
                **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "LANTERN_"))}
    env.update(LANTERN_CACHE=str(cache), HOME=str(home), PYTHONDONTWRITEBYTECODE="1", HF_HUB_DISABLE_TELEMETRY="1")
    if endpoint is not None:
        env["HF_ENDPOINT"] = endpoint
    env.update(env_extra)
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "lantern", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("lantern: error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_test_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def home(tmp_path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


# ----- the frame ---------------------------------------------------------------------------


def test_version_help_and_usage_errors(cache, home, capsys):
    proc = lantern_cmd("--version", cache=cache, home=home)
    assert proc.returncode == 0 and proc.stdout.strip() == f"lantern {lantern.__version__}"
    proc = lantern_cmd("frobnicate", cache=cache, home=home)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: lantern") and "Traceback" not in proc.stderr

    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("pull", "ls", "info"):
        assert name in out
    for argv in ([], ["info"], ["ls", "--bogus"], ["pull", "a", "b"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("usage: lantern") and len([ln for ln in err.splitlines() if "error:" in ln]) == 1


def test_main_turns_errors_into_one_line_and_exit_codes(monkeypatch, capsys):
    import lantern.cli.ls as ls

    def fails(args):
        raise LanternError("something the user\ncan fix")

    monkeypatch.setattr(ls, "run", fails)
    assert cli.main(["ls"]) == 1
    assert capsys.readouterr().err == "lantern: error: something the user can fix\n"

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ls, "run", interrupted)
    assert cli.main(["ls"]) == 130
    assert capsys.readouterr().err == "\n"


def test_missing_subcommand_modules_are_skipped_but_broken_ones_are_not(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake_import(name, *a):
        if name == "lantern.cli.chat":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        if name == "lantern.cli.info":
            raise ModuleNotFoundError("No module named 'somedependency'", name="somedependency")
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(ModuleNotFoundError, match="somedependency"):
        cli.build_parser()


def test_subcommands_are_registered_in_order():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = list(sub.choices)
    assert {"pull", "ls", "info"} <= set(names)
    assert names == [n for n in cli.SUBCOMMANDS if n in names]


def test_option_types():
    assert options.positive_int("3") == 3
    assert options.non_negative_int("0") == 0
    assert options.probability("0.95") == 0.95 and options.probability("1") == 1.0
    assert options.non_negative_float("0") == 0.0
    assert options.positive_float("1.1") == 1.1
    assert options.port("8080") == 8080
    bad = [
        (options.positive_int, "0"), (options.positive_int, "-2"), (options.positive_int, "1.5"),
        (options.positive_int, "x"), (options.non_negative_int, "-1"), (options.probability, "1.01"),
        (options.probability, "-0.1"), (options.probability, "nan"), (options.non_negative_float, "-1"),
        (options.non_negative_float, "inf"), (options.positive_float, "0"), (options.port, "70000"),
    ]
    for fn, text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)


def test_model_and_device_options_validate(capsys):
    parser = argparse.ArgumentParser(prog="lantern run")
    cli.add_model_argument(parser)
    cli.add_device_argument(parser)
    parser.add_argument("--top-p", type=options.probability, default=0.9)
    args = parser.parse_args([])
    assert args.model == "phi3" and args.device == "auto" and args.threads is None
    args = parser.parse_args(["-m", "smollm2", "--device", "cpu", "--threads", "2", "--top-p", "0.5"])
    assert (args.model, args.device, args.threads, args.top_p) == ("smollm2", "cpu", 2, 0.5)
    for argv in (["--threads", "0"], ["--device", "tpu"], ["--top-p", "2"], ["--threads", "two"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err


def test_resolve_device_and_threads():
    import torch

    assert cli.resolve_device("cpu") == "cpu"
    assert cli.resolve_device("auto") in ("cpu", "cuda", "mps")
    if torch.cuda.is_available():
        assert cli.resolve_device("cuda") == "cuda"
        with pytest.raises(LanternError, match="CUDA device"):
            cli.resolve_device("cuda:99")
    else:
        with pytest.raises(LanternError, match="--device cuda") as err:
            cli.resolve_device("cuda")
        assert "\n" not in str(err.value)
    if not torch.backends.mps.is_available():
        with pytest.raises(LanternError, match="mps"):
            cli.resolve_device("mps")
    with pytest.raises(LanternError, match="unknown device"):
        cli.resolve_device("tpu")

    before = torch.get_num_threads()
    try:
        assert cli.set_threads(1) == 1 and torch.get_num_threads() == 1
        assert 1 <= cli.set_threads(None) <= cli.available_cores()
    finally:
        torch.set_num_threads(before)


def test_thread_default_leaves_busy_cores_alone():
    assert cli.threads_for(8, 0.0) == 8 and cli.threads_for(8, 2.6) == 6 and cli.threads_for(2, 5.0) == 1
    cores = cli.available_cores()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)
        assert cli.runnable_others() >= cores - 0.5
        assert cli.default_threads() == 1
    finally:
        for p in spinners:
            p.kill()
            p.wait()


# ----- pull / ls / info against a local Hub ----------------------------------------------------


def test_pull_ls_info_then_offline(tmp_path, cache, home, tiny_gguf, monkeypatch, capsys):
    with HubServer() as srv:
        sha = srv.add_file(REPO, FILE, tiny_gguf)
        # HF_HUB_DISABLE_TELEMETRY unset on purpose: lantern itself must keep huggingface_hub
        # from fetching and caching its agent registry under ~/.cache/huggingface.
        proc = lantern_cmd("pull", SPEC, cache=cache, home=home, endpoint=srv.url, HF_HUB_DISABLE_TELEMETRY=None)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        path = Path(proc.stdout.split(" (")[0].strip())
        assert path.is_file() and cache / "hub" in path.parents
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
        assert "kB" in proc.stdout and f"{tiny_gguf.stat().st_size:,} bytes" in proc.stdout
        assert [r.path for r in srv.requests if r.path.startswith("/api/")] == []
        assert list(home.rglob("*")) == [], "nothing may be written outside lantern's cache"

        proc = lantern_cmd("pull", "-q", SPEC, cache=cache, home=home, endpoint=srv.url)
        assert proc.returncode == 0 and proc.stdout.strip() == str(path)
        assert len(srv.gets(FILE)) == 1  # the second pull came from the cache

    # The Hub is gone now.
    down = f"http://127.0.0.1:{free_port()}"
    proc = lantern_cmd("pull", "-q", SPEC, cache=cache, home=home, endpoint=down)
    assert proc.returncode == 0 and proc.stdout.strip() == str(path), proc.stderr
    proc = lantern_cmd("pull", "-q", SPEC, cache=cache, home=home, endpoint=down, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0 and proc.stdout.strip() == str(path), proc.stderr

    monkeypatch.setenv("LANTERN_CACHE", str(cache))
    assert cli.main(["ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "PATH"]
    row = next(ln for ln in lines if ln.startswith(SPEC))
    assert "kB" in row and str(path) in row
    assert cli.main(["ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [{"name": SPEC, "spec": SPEC, "path": str(path), "size_bytes": tiny_gguf.stat().st_size,
                       "partial": False}]

    proc = lantern_cmd("info", SPEC, cache=cache, home=home, endpoint=down, HF_HUB_OFFLINE="1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in ("architecture:     llama", "layers:           2", "context length:   2048",
                     "Q8_0: 2", "F32:", "heads:            4 (kv heads: 2)", "vocab size:       32",
                     "tokenizer:        gpt2", "BOS:              0 '<s>'", "EOS:              1 '</s>'",
                     "file type:        Q8_0", "chat template:    4 lines"):
        assert expected in out, (expected, out)
    assert list(home.rglob("*")) == []


def test_ctrl_c_during_a_download_leaves_no_partial_file(tmp_path, cache, home):
    """The server sends the first MiB and then holds the transfer open until the test releases it,
    so the Ctrl-C always lands mid-download, however slow or busy the machine (it used to race a
    throttled transfer and sometimes lost: exit 0 instead of 130)."""
    big = write_test_gguf(tmp_path / "big.gguf", pad_bytes=4_000_000, seed=2)
    with HubServer() as srv:
        srv.add_file(REPO, "big.gguf", big)
        srv.hold("big.gguf", after_bytes=1 << 20)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LANTERN_"))}
        env.update(LANTERN_CACHE=str(cache), HOME=str(home), HF_ENDPOINT=srv.url, HF_HUB_DISABLE_TELEMETRY="1")
        proc = subprocess.Popen([sys.executable, "-m", "lantern", "pull", f"hf:{REPO}/big.gguf"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while not srv.wait_until_held(timeout=1.0):
                assert proc.poll() is None, proc.communicate()
            partial = [p for p in cache.rglob("*.incomplete") if p.is_file()]
            assert partial, "the download should be under way, in a .incomplete file"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
        finally:
            srv.release()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and out == ""
    left = [p for p in cache.rglob("*") if p.is_file() and (".incomplete" in p.name or "blobs" in p.parts)]
    assert left == []
    assert not any(p.suffix == ".gguf" for p in cache.rglob("*"))


def test_ls_on_an_empty_cache(cache, home):
    proc = lantern_cmd("ls", cache=cache, home=home)
    assert proc.returncode == 0 and "no models" in proc.stdout and "lantern pull" in proc.stdout


def test_pull_with_the_hub_unreachable(cache, home):
    proc = lantern_cmd("pull", SPEC, cache=cache, home=home, endpoint=f"http://127.0.0.1:{free_port()}", timeout=30)
    assert_one_line_error(proc, "could not reach", "smollm2")
    assert [p for p in cache.rglob("*") if p.is_file() and p.suffix in (".gguf", ".incomplete")] == []
    proc = lantern_cmd("pull", "phi3", cache=cache, home=home, endpoint=f"http://127.0.0.1:{free_port()}")
    assert_one_line_error(proc, "Phi-3-mini-4k-instruct-q4.gguf", "smollm2")


def test_pull_missing_file_or_repo(cache, home, tiny_gguf):
    with HubServer() as srv:
        srv.add_file(REPO, FILE, tiny_gguf)
        proc = lantern_cmd("pull", f"hf:{REPO}/nope.gguf", cache=cache, home=home, endpoint=srv.url)
        assert_one_line_error(proc, "not found", "nope.gguf")
        proc = lantern_cmd("pull", "hf:nobody/nothing/x.gguf", cache=cache, home=home, endpoint=srv.url)
        assert_one_line_error(proc, "nobody/nothing", "not found")
    proc = lantern_cmd("info", SPEC, cache=cache, home=home)
    assert_one_line_error(proc, "lantern pull")
    proc = lantern_cmd("info", "mystery", cache=cache, home=home)
    assert_one_line_error(proc, "phi3", "smollm2")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_gguf) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    data = tiny_gguf.read_bytes()
    (d / "notgguf.gguf").write_text("this is not a model\n" * 20)
    (d / "header.gguf").write_bytes(data[:200])  # cut inside the metadata
    (d / "data.gguf").write_bytes(data[: len(data) - 1000])  # cut inside the tensor data
    (d / "empty.gguf").write_bytes(b"")
    return {"missing": d / "missing.gguf", **{p.stem: p for p in d.iterdir()}}


BAD_FILE_ERRORS = {
    "missing": "no such file",
    "notgguf": "not a GGUF file",
    "header": "truncated",
    "data": "truncated",
    "empty": "empty",
}


def test_info_on_bad_model_files(bad_files, cache, home):
    for name, path in bad_files.items():
        proc = lantern_cmd("info", str(path), cache=cache, home=home)
        assert_one_line_error(proc, BAD_FILE_ERRORS[name])


def test_pull_on_bad_model_files(bad_files, cache, monkeypatch, capsys):
    monkeypatch.setenv("LANTERN_CACHE", str(cache))
    for name, path in [*bad_files.items(), ("directory", bad_files["missing"].parent)]:
        assert cli.main(["pull", str(path)]) == 1, name
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("lantern: error: "), captured.err
        assert BAD_FILE_ERRORS.get(name, "directory") in lines[0]
        assert captured.out == ""


# ----- the real SmolLM2 file ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_cache() -> Path:
    """lantern's default cache, shared between runs: smollm2 (98 MB) is fetched once per machine."""
    cache_dir = Path.home() / ".cache" / "lantern"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANTERN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "lantern", "pull", "-q", "smollm2"],
        env={**env, "LANTERN_CACHE": str(cache_dir)}, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.skip(f"smollm2 is not cached and could not be fetched: {proc.stderr.strip()}")
    assert proc.stdout.strip() == str(cache_dir / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    return cache_dir


def test_info_on_smollm2(smollm2_cache, monkeypatch, capsys):
    proc = lantern_cmd("info", "smollm2", cache=smollm2_cache, home=Path.home(), endpoint="http://127.0.0.1:9")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in ("architecture:     llama", "layers:           30", "context length:   8192",
                     "Q4_1: 210", "Q8_0: 1", "F32: 61", "file type:        Q4_1", "embedding length: 576",
                     "heads:            9 (kv heads: 3)", "vocab size:       49152", "tokenizer:        gpt2",
                     "BOS:              1 '<|im_start|>'", "EOS:              2 '<|im_end|>'",
                     "parameters:       134.5M", "<|im_start|>"):
        assert expected in out, (expected, out)

    monkeypatch.setenv("LANTERN_CACHE", str(smollm2_cache))
    assert cli.main(["info", "smollm2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "llama" and info["block_count"] == 30 and info["context_length"] == 8192
    assert info["quant_mix"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert (info["head_count"], info["head_count_kv"], info["vocab_size"]) == (9, 3, 49152)
    assert info["chat_template"].count("\n") >= 5

    assert cli.main(["ls"]) == 0
    out = capsys.readouterr().out
    assert any(ln.split()[:3] == ["smollm2", "98.4", "MB"] for ln in out.splitlines()), out


def test_help_and_version_do_not_import_torch():
    """`lantern --version` and `--help` answer without loading torch (about 1.5 s)."""
    code = ("import sys; from lantern.cli import main; main(['--version']); main(['--help']); "
            "main(['run', '--help']); sys.exit(3 if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "lantern" in result.stdout and "--temperature" in result.stdout


# ----- hostile flag values (issue #11 items 4 and 5) ------------------------------------------------

NUMBER_VALUES = ["", " ", "nan", "inf", "-inf", "1e309", "-1", "0", "1e-320", "3.5", "99999999999999999999999999",
                 "-99999999999999999999999999", "0x10", "1_000", "\u0663", "\x00", "--", "1" * 5000]
TEXT_VALUES = ["", " ", "\x00", "\ud800", "\u202e", "<|im_end|>", "{{ 10**(10**10) }}", "x" * 100_000]
FLAG_VALUES = {
    "--max-tokens": NUMBER_VALUES, "--temperature": NUMBER_VALUES, "--top-k": NUMBER_VALUES,
    "--top-p": NUMBER_VALUES, "--min-p": NUMBER_VALUES, "--repeat-penalty": NUMBER_VALUES,
    "--repeat-last-n": NUMBER_VALUES, "--frequency-penalty": NUMBER_VALUES, "--presence-penalty": NUMBER_VALUES,
    "--seed": NUMBER_VALUES, "--threads": NUMBER_VALUES + ["100000"], "--stop": TEXT_VALUES,
    "--system": TEXT_VALUES, "--device": ["", "cuda:99", "cpu:0", "CPU", "tpu", "\x00"],
    "--model": ["", "hf:", "hf:a/b", "hf:own er/re*po/f.gguf", "hf:o/r/..\\..\\f.gguf", "pypi:", "pypi:x/../y.gguf",
                "/dev/null", "/", "~nobody/x.gguf", "\x00"],
}
NON_FINITE = ("nan", "inf", "-inf", "1e309")
TEXT_FLAGS = ("--stop", "--system", "--model", "--device", "PROMPT")


@pytest.fixture(scope="module")
def small_model():
    from lantern.testing.synthetic import Spec, cached_model

    return cached_model(Spec(arch="llama", dim=256, n_layers=1, n_kv_heads=2, ffn_dim=256, vocab_size=300), "Q8_0")


def _flag_outcome(flag, value, small_model, capsys) -> tuple[int | None, str]:
    if flag == "PROMPT":
        argv = ["run", "-m", str(small_model), "--no-chat", "-n", "2", value or " "]
    elif flag == "--model":
        argv = ["run", "--no-chat", "-n", "2", flag, value, "hello"]
    else:
        argv = ["run", "-m", str(small_model), "-n", "2", flag, value, "hello"]
        if flag != "--system":
            argv.insert(3, "--no-chat")
    try:
        code = cli.main(argv)
    except Exception as exc:  # noqa: BLE001 - what this test looks for
        capsys.readouterr()
        return None, f"{type(exc).__name__}: {exc}"
    return code, capsys.readouterr().err


@pytest.mark.parametrize("flag", sorted(FLAG_VALUES) + ["PROMPT"])
def test_hostile_flag_values_are_one_line_or_run(flag, small_model, capsys):
    """Every value is parsed and, when accepted, used for a real 2-token run of a small model:
    the outcome is a clean run (0), one lantern error (1) or one usage error (2); never a
    traceback, and never a non-finite number accepted."""
    for value in FLAG_VALUES.get(flag, TEXT_VALUES):
        code, err = _flag_outcome(flag, value, small_model, capsys)
        accepted_non_finite = code not in (2, None) and value in NON_FINITE and flag not in TEXT_FLAGS
        assert code in (0, 1, 2), (flag, value, err)
        assert "Traceback" not in err, (flag, value, err)
        assert not accepted_non_finite, (flag, value, code, err)
        if code in (1, 2):
            errors = [ln for ln in err.splitlines() if "error:" in ln]
            assert len(errors) == 1, (flag, value, err)


def test_threads_above_the_core_count_are_capped_with_a_note(capsys):
    parser = argparse.ArgumentParser(prog="lantern run")
    cli.add_device_argument(parser)
    cores = cli.available_cores()
    assert parser.parse_args(["--threads", str(cores)]).threads == cores
    assert capsys.readouterr().err == ""
    assert parser.parse_args(["--threads", "100000"]).threads == cores
    err = capsys.readouterr().err
    assert err.strip() == (f"lantern: note: --threads 100000 is more than the {cores} CPU core{'s' if cores != 1 else ''} "
                           f"available here; using {cores}")

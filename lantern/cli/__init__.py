"""The ``lantern`` command.

Each subcommand is a module of this package that exposes

- ``add_parser(subparsers)``: calls ``subparsers.add_parser(NAME, help=...)``, adds its
  arguments and sets ``func=run`` (``parser.set_defaults(func=run)``);
- ``run(args) -> int``: does the work and returns the exit status.

`main` registers the modules that exist, in `SUBCOMMANDS` order, and owns error handling: a
`LanternError` prints ``lantern: error: <message>`` (one line, no traceback) and exits with its
``exit_code`` (1); Ctrl-C prints a newline and exits 130; bad arguments exit 2 with argparse's
usage line.

Helpers for subcommands that load models: `add_model_argument` (``-m/--model``),
`add_device_argument` (``--device`` and ``--threads``) and `resolve_device`. Before calling a
subcommand's ``run``, `main` turns ``args.device`` into a concrete, available device
("auto" -> "cuda"/"mps"/"cpu") and applies ``args.threads`` with ``torch.set_num_threads``.
Validating argument types live in `lantern.cli.options`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from .. import __version__
from ..errors import LanternError

#: Subcommand modules, in the order they are listed in ``lantern --help``.
SUBCOMMANDS = ["run", "chat", "serve", "pull", "ls", "info", "bench"]

DEFAULT_MODEL = "phi3"
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lantern",
        description="Run quantized GGUF language models (Phi-3, Llama, Qwen2) with PyTorch.",
        epilog="Models: a .gguf path, hf:owner/repo/file.gguf, or an alias (phi3, smollm2). "
        "Downloads are cached under $LANTERN_CACHE (default ~/.cache/lantern).",
    )
    parser.add_argument("--version", action="version", version=f"lantern {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subparsers.required = True
    for name in SUBCOMMANDS:
        module_name = f"{__name__}.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # that subcommand is not written yet
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lantern`` command line; returns the exit status."""
    from ..hub import configure_hf_env

    configure_hf_env()  # before any subcommand module can import huggingface_hub
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, or a usage error (status 2)
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if hasattr(args, "device"):
            args.device = resolve_device(args.device)
        if hasattr(args, "threads"):
            args.threads = set_threads(args.threads)
        return int(args.func(args) or 0)
    except LanternError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        _flush_stdout()
        print(f"lantern: error: {message}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    except KeyboardInterrupt:
        _flush_stdout()
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `lantern ... | head`: the reader went away; that is not an error of ours.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


# ----- helpers for subcommands that load a model --------------------------------------------


def add_model_argument(parser: argparse.ArgumentParser, *, default: str = DEFAULT_MODEL) -> None:
    """Add ``-m/--model SPEC`` (a .gguf path, hf:owner/repo/file.gguf or an alias)."""
    from ..hub import ALIASES

    parser.add_argument(
        "-m",
        "--model",
        default=default,
        metavar="MODEL",
        help=f"a .gguf path, hf:owner/repo/file.gguf, or an alias ({', '.join(sorted(ALIASES))}); "
        f"default: {default}",
    )


def add_device_argument(parser: argparse.ArgumentParser, *, default: str = "auto") -> None:
    """Add ``--device {auto,cpu,cuda,mps}`` and ``--threads N``."""
    from .options import thread_count

    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default=default,
        help=f"where to run the model; auto picks cuda, then mps, then cpu (default: {default})",
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        metavar="N",
        help=f"CPU threads (default: the available cores ({available_cores()} here) less those other "
        "processes are busy on right now)",
    )


def available_cores() -> int:
    """The CPU cores this process may run on (honours taskset/cpusets), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def runnable_others(samples: int = 5, interval: float = 0.002) -> float:
    """How many other threads want a CPU right now: the median of a few readings of Linux's
    `procs_running` less this process, scaled to the cores this process may use. 0 elsewhere."""
    import statistics
    import time

    readings = []
    for i in range(samples):
        try:
            with open("/proc/stat", "rb") as f:
                line = next(l for l in f if l.startswith(b"procs_running "))
        except (OSError, StopIteration):
            return 0.0
        readings.append(int(line.split()[1]) - 1)
        if i + 1 < samples:
            time.sleep(interval)
    share = available_cores() / max(available_cores(), os.cpu_count() or 1)
    return max(0.0, statistics.median(readings) * share)


def threads_for(cores: int, busy: float) -> int:
    """Threads that will not wait on each other: the cores left idle by `busy` other threads.

    A thread that shares its core with a busy process stalls every barrier of the others (a
    decode step has hundreds), so on a loaded machine fewer threads decode faster: on the 2-core
    machine with two busy processes, 1 thread was 4x faster than 2 (docs/PERFORMANCE.md)."""
    return max(1, cores - int(busy))


def default_threads() -> int:
    """The `--threads` default: the available cores that no other process is busy on."""
    return threads_for(available_cores(), runnable_others())


def set_threads(threads: int | None) -> int:
    """Set PyTorch's intra-op thread count (`default_threads()` when None); returns it."""
    n = threads if threads else default_threads()
    if n < 1:
        raise LanternError(f"--threads must be a positive integer, got {n}")
    import torch

    torch.set_num_threads(n)
    return n


def resolve_device(name: str | None) -> str:
    """A device name lantern can use: "auto" becomes cuda, mps or cpu, whichever is available.

    Asking for cuda (or ``cuda:N``) or mps when this PyTorch cannot use it raises LanternError
    with a one-line message.
    """
    name = (name or "auto").strip().lower()
    base, _, index = name.partition(":")
    if base not in DEVICE_CHOICES or (index and (base != "cuda" or not index.isdigit())):
        raise LanternError(f"unknown device {name!r}; use one of: {', '.join(DEVICE_CHOICES)}")
    if base == "cpu":
        return "cpu"
    import torch

    cuda_ok = torch.cuda.is_available()
    mps_ok = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if base == "auto":
        return "cuda" if cuda_ok else "mps" if mps_ok else "cpu"
    if base == "cuda":
        if not cuda_ok:
            why = (
                "this PyTorch was built without CUDA"
                if torch.version.cuda is None
                else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)"
            )
            raise LanternError(f"--device cuda was requested but {why}; use --device cpu or --device auto")
        if index and int(index) >= torch.cuda.device_count():
            raise LanternError(
                f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s); "
                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
        return name
    if not mps_ok:
        raise LanternError(
            "--device mps was requested but Apple's MPS backend is not available here; "
            "use --device cpu or --device auto"
        )
    return "mps"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

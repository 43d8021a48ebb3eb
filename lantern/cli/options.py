"""Validating argparse types shared by the subcommands.

Each function takes the option's text and returns the parsed value or raises
`argparse.ArgumentTypeError`, so a bad value gives argparse's one-line usage error and exit
status 2, e.g. ``lantern run: error: argument --top-p: must be between 0 and 1, got 1.5``.
"""

from __future__ import annotations

import argparse
import math
import sys

from ..generate.settings import SMALLEST_SCALE  # the Python API's limit too


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (token counts, threads, batch sizes)."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def thread_count(text: str) -> int:
    """A positive thread count, capped at the cores this process may run on: more threads than
    cores only wait on each other at every step (a note on stderr says so)."""
    from . import available_cores

    value = positive_int(text)
    cores = available_cores()
    if value > cores:
        print(f"lantern: note: --threads {text} is more than the {cores} CPU core{'s' if cores != 1 else ''} "
              f"available here; using {cores}", file=sys.stderr)
        return cores
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (top-k where 0 disables it, seeds, repeat windows)."""
    value = int(_number(text, int))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def probability(text: str) -> float:
    """A float in [0, 1] (top-p, min-p)."""
    value = float(_number(text, float))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite float (penalties that may be negative)."""
    return float(_number(text, float))




def non_negative_float(text: str) -> float:
    """A finite float >= 0 (temperature, where 0 means greedy; penalties); 0 or >= SMALLEST_SCALE."""
    value = float(_number(text, float))
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    if 0.0 < value < SMALLEST_SCALE:
        raise argparse.ArgumentTypeError(f"must be 0 or at least {SMALLEST_SCALE:g}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float >= SMALLEST_SCALE (repeat penalty, timeouts)."""
    value = float(_number(text, float))
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    if value < SMALLEST_SCALE:
        raise argparse.ArgumentTypeError(f"must be at least {SMALLEST_SCALE:g}, got {text!r}")
    return value


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: pick a free one)."""
    value = int(_number(text, int))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number between 0 and 65535, got {text!r}")
    return value


def template_variables(text: str) -> dict:
    """A JSON object of chat template variables, e.g. '{"enable_thinking": false}'."""
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"enable_thinking\": false}}', got {text!r}")
    return value

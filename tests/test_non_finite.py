"""NaN or infinity in a forward pass stops generation with an error that names where it first
appeared; nothing is ever sampled from it. Budget: a few seconds."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import lantern
from lantern.errors import NonFiniteError
from lantern.generate.batch import BatchEngine
from lantern.testing.synthetic import Spec, cached_model, rewrite


def overflowing(tmp_path_factory, ftype: str):
    """A llama-shaped model whose layer 1 feed-forward norm overflows float32 (finite weights)."""
    good = cached_model(Spec(arch="llama", name="non-finite"), ftype)

    def huge(name, qtype, values):
        return name, np.full_like(values, 3e38) if name == "blk.1.ffn_norm.weight" else values, qtype

    return rewrite(good, tmp_path_factory.mktemp("nan") / "overflow.gguf", tensor=huge)


@pytest.fixture(scope="module")
def overflowing_model(tmp_path_factory):
    return overflowing(tmp_path_factory, "Q8_0")  # the native step and the in-place kernels


@pytest.mark.parametrize("ftype,kernels", [("Q8_0", "fast"), ("Q8_0", "reference"), ("F32", "fast")])
def test_generation_stops_naming_the_layer(tmp_path_factory, ftype, kernels):
    model = lantern.load(overflowing(tmp_path_factory, ftype), kernels=kernels)
    with pytest.raises(NonFiniteError, match=r"overflow\.gguf: .*NaN or infinity, first in layer 1;"):
        model.complete("hello", chat=False, max_tokens=4, temperature=0)


def test_the_batch_engine_ends_the_request_with_the_error(overflowing_model):
    model = lantern.load(overflowing_model)
    with BatchEngine(model, parallel=2) as engine:
        handle = engine.submit(model.tokenize("hello"), max_tokens=4)
        with pytest.raises(NonFiniteError, match="first in layer 1"):
            list(handle.tokens())
        assert handle.finish_reason == "error"
        ok = engine.submit(model.tokenize("hello"), max_tokens=1)  # the engine lives on
        with pytest.raises(NonFiniteError):
            list(ok.tokens())


def test_the_cli_prints_one_line(overflowing_model):
    run = subprocess.run([sys.executable, "-m", "lantern", "run", "-m", str(overflowing_model), "--no-chat",
                          "-n", "4", "hello"], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "first in layer 1" in lines[0], run.stderr

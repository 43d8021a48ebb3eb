"""Bad model files give one-line errors that name the problem, from the API and the command line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType

import lantern
from lantern.errors import ModelFileError, UnsupportedModelError
from lantern.testing.synthetic import Spec, cached_model, rewrite

SPEC = Spec(arch="llama", n_kv_heads=2, vocab_size=300)


@pytest.fixture(scope="module")
def good_model():
    return cached_model(SPEC, "Q4_K_M")


def truncated(good_model, tmp_path):
    path = tmp_path / "truncated.gguf"
    data = good_model.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def truncated_header(good_model, tmp_path):
    path = tmp_path / "header.gguf"
    path.write_bytes(good_model.read_bytes()[:200])
    return path


def not_gguf(good_model, tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("these are not the weights you are looking for\n")
    return path


def missing(good_model, tmp_path):
    return tmp_path / "nowhere" / "model.gguf"


def unknown_architecture(good_model, tmp_path):
    def rename(key, value):
        if key == "general.architecture":
            return "mamba9"
        return value.replace("llama.", "mamba9.") if isinstance(value, str) else value

    return rewrite(good_model, tmp_path / "arch.gguf", metadata=rename)


def unsupported_type(good_model, tmp_path):
    def to_iq4_nl(name, qtype, data):
        if name != "blk.0.attn_q.weight":
            return name, data, qtype
        rows, cols = 256, 256
        blocks = np.zeros((rows, cols // 32 * 18), dtype=np.uint8)  # IQ4_NL: 32 elems in 18 bytes
        return name, blocks, GGMLQuantizationType.IQ4_NL

    return rewrite(good_model, tmp_path / "iq4.gguf", tensor=to_iq4_nl)


def missing_tensor(good_model, tmp_path):
    return rewrite(good_model, tmp_path / "missing-tensor.gguf",
                   tensor=lambda name, qtype, data: None if name == "blk.1.ffn_down.weight" else (name, data, qtype))


def shape_mismatch(good_model, tmp_path):
    return rewrite(good_model, tmp_path / "shape.gguf",
                   metadata=lambda key, value: 768 if key == "llama.feed_forward_length" else value)


CASES = {
    "missing": (missing, ModelFileError, "no such file"),
    "truncated": (truncated, ModelFileError, "truncated"),
    "truncated_header": (truncated_header, ModelFileError, "truncated or corrupt"),
    "not_gguf": (not_gguf, ModelFileError, "not a GGUF file"),
    "unknown_architecture": (unknown_architecture, UnsupportedModelError, "architecture 'mamba9' is not supported"),
    "unsupported_type": (unsupported_type, UnsupportedModelError, "type IQ4_NL"),
    "missing_tensor": (missing_tensor, ModelFileError, "'blk.1.ffn_down.weight' is missing"),
    "shape_mismatch": (shape_mismatch, ModelFileError, "has shape [512, 256], expected [768, 256]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_api_raises_one_line_error(case, good_model, tmp_path):
    make, error, words = CASES[case]
    path = make(good_model, tmp_path)
    with pytest.raises(error) as info:
        lantern.load(str(path))
    message = str(info.value)
    assert words in message
    assert "\n" not in message


@pytest.mark.parametrize("case", sorted(CASES))
def test_command_line_prints_one_line_and_exits_1(case, good_model, tmp_path):
    make, _, words = CASES[case]
    path = make(good_model, tmp_path)
    result = subprocess.run([sys.executable, "-m", "lantern", "run", "-m", str(path), "hello"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lantern: error:") and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_good_model_still_loads(good_model, tmp_path):
    copy = tmp_path / "copy.gguf"
    shutil.copy(good_model, copy)
    assert lantern.load(str(copy)).params.ffn_dim == 512


@pytest.mark.parametrize("cut,array", [(200_000, "tokenizer.ggml.tokens"), (1_000_000, "tokenizer.ggml.merges")])
def test_a_cut_inside_a_metadata_array_is_one_clean_error(smollm2_path, tmp_path, cut, array):
    """A copy of the real SmolLM2 cut inside its 49,152 tokens or its merges: the fast metadata
    reader fails as the stock one does, with one ModelFileError naming the file and the array
    (it used to escape as struct.error: a 35-line traceback from the command line)."""
    path = tmp_path / f"cut{cut}.gguf"
    with open(smollm2_path, "rb") as src:
        path.write_bytes(src.read(cut))
    with pytest.raises(ModelFileError, match=rf"cut{cut}\.gguf.*metadata array '{array}'.*past the end of the file"):
        lantern.load(path)
    run = subprocess.run([sys.executable, "-m", "lantern", "run", "-m", str(path), "hi"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and array in lines[0], run.stderr


@pytest.mark.parametrize("key,value,says", [
    ("block_count", 0, "is not a positive count"),
    ("attention.head_count", 0, "is not a positive count"),
    ("attention.head_count_kv", 0, "is not a positive count"),
    ("attention.head_count", 3, "does not divide the width 256"),
    ("rope.dimension_count", 4294967294, "is not an even count of at most the head size 64"),
    ("rope.dimension_count", 7, "is not an even count"),
    ("rope.dimension_count", 128, "at most the head size 64"),
    ("rope.freq_base", 0.0, "is not a finite positive number"),
    ("rope.freq_base", -1.0, "is not a finite positive number"),
    ("rope.freq_base", float("nan"), "is not a finite positive number"),
    ("attention.layer_norm_rms_epsilon", -1e-5, "is not a finite positive number"),
    ("attention.layer_norm_rms_epsilon", float("nan"), "is not a finite positive number"),
])
def test_hyper_parameters_that_make_no_sense_are_refused_before_anything_is_built(good_model, tmp_path, key, value,
                                                                                 says):
    """Counts of zero, heads that do not divide the width, rotary dimensions that are odd or
    larger than a head (one file asked for 17 GB of rotary tables), and rope bases or epsilons
    that are zero, negative or NaN (NaN logits, silently) are one ModelFileError naming the key
    (issue #11 item 2), where they used to be ZeroDivisionError, IndexError or RuntimeError."""
    path = rewrite(good_model, tmp_path / "bad.gguf",
                   metadata=lambda k, v: value if k == f"llama.{key}" else v)
    with pytest.raises(ModelFileError, match=rf"bad\.gguf: metadata llama\.{re.escape(key)} = .*{says}"):
        lantern.load(path)

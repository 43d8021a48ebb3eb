"""`lantern run` end to end, as a person runs it: a separate process, the real SmolLM2 model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

QUESTION = "What is the capital of France?"


def lantern_cli(*args: str, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "lantern", *args],
        input=stdin if stdin is not None else "",
        capture_output=True, text=True, encoding="utf-8", timeout=timeout, env=env,
    )


@pytest.fixture(scope="module")
def greedy_paris(smollm2_path):
    """The greedy answer through the Python API, to compare the command's output with."""
    import lantern

    model = lantern.load(smollm2_path)
    return model.complete(QUESTION, temperature=0, max_tokens=64)


def test_run_greedy_answers_paris(smollm2_path, greedy_paris):
    result = lantern_cli("run", "-m", "smollm2", "--temperature", "0", QUESTION)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    # stdout is the model's text and nothing else; the API gives the same greedy text.
    assert result.stdout == greedy_paris.text + "\n"
    err = result.stderr.strip().splitlines()
    assert any(line.startswith("lantern: load ") and "prompt" in line and line.count("tok/s") == 2 for line in err)
    assert err[-1] == "lantern: finish reason: stop (the model ended its answer)"


def test_run_reads_the_prompt_from_stdin_and_stops_at_max_tokens(smollm2_path):
    result = lantern_cli("run", "-m", "smollm2", "--temperature", "0", "-n", "2", "--verbose", "-",
                         stdin=QUESTION + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "The capital\n"
    assert "finish reason: length (--max-tokens 2 reached" in result.stderr
    assert "seed" in result.stderr and "Model(" in result.stderr
    # --verbose names the device, the kernels and which kernel runs each weight type.
    assert "device cpu; kernels: torch" in result.stderr
    from lantern.weights.kernels import native

    # in place, named by the C function that serves it (q4_1_avx2, q4_1_avx2_vnni, ...): a function
    # of a level this CPU runs (avx512 keeps avx2's for Q4_1: tests/test_kernels.py
    # TAKEN_FROM_BELOW), and the generic one only at portable
    q4_1_kernel = f"gguf-native {native.kernel_name('matmul', native.QT.Q4_1)}"
    kernel_level = q4_1_kernel.removeprefix("gguf-native q4_1_").split("_")[0]
    assert kernel_level in native.supported_isas() or (kernel_level == "generic" and native.isa() == "portable")
    # 30 layers x (q|k|v joined, output, gate|up joined, down): the file's 7 tensors in 4 layers
    assert f"Q4_1: {q4_1_kernel} x 120" in result.stderr
    assert f"native C kernels at {native.isa()}" in result.stderr
    # prompt chunks too at avx2, whose prompt route is the in-place micro-kernel (native.PROMPT_ROUTES)
    step = (f"native step (every pass in one C call, prompt chunks too, {native.isa()})" if native.isa() == "avx2"
            else f"native step (passes of up to 12 tokens in one C call, {native.isa()})")
    assert f"lantern: decode steps: {step}" in result.stderr


def test_run_stop_string_and_raw_mode(smollm2_path):
    result = lantern_cli("run", "-m", "smollm2", "--temperature", "0", "--stop", "Paris", QUESTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "The capital of France is \n"
    assert "finish reason: stop (stop string 'Paris')" in result.stderr

    raw = lantern_cli("run", "-m", "smollm2", "--no-chat", "--temperature", "0", "-n", "6", "1, 2, 3, 4,")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.startswith(" 5, 6")


@pytest.mark.parametrize("args, stdin", [(["  "], None), ([], ""), (["-"], "\n")])
def test_empty_prompt_is_a_one_line_error(args, stdin):
    result = lantern_cli("run", "-m", "smollm2", *args, stdin=stdin)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "lantern: error: the prompt is empty; give some text\n"


def test_bad_options_are_usage_errors():
    result = lantern_cli("run", "--top-p", "1.5", QUESTION)
    assert result.returncode == 2
    assert "argument --top-p: must be between 0 and 1" in result.stderr
    result = lantern_cli("run", "-n", "-5", QUESTION)
    assert result.returncode == 2
    assert "argument -n/--max-tokens" in result.stderr
    result = lantern_cli("run", "--no-chat", "--system", "be brief", QUESTION)
    assert result.returncode == 1
    assert result.stderr == "lantern: error: --system needs the chat template; drop --no-chat or --system\n"
    result = lantern_cli("run", "--chat-template-kwargs", "[1]", QUESTION)
    assert result.returncode == 2
    assert "argument --chat-template-kwargs: expected a JSON object" in result.stderr
    result = lantern_cli("run", "--chat-template-kwargs", '{"messages": []}', QUESTION)
    assert result.returncode == 1
    assert result.stderr == "lantern: error: template option 'messages' is set by lantern itself; leave it out\n"


def test_missing_model_file_is_a_one_line_error(tmp_path):
    result = lantern_cli("run", "-m", str(tmp_path / "nope.gguf"), QUESTION)
    assert result.returncode == 1
    assert result.stderr.startswith("lantern: error: ") and result.stderr.count("\n") == 1


def test_help_lists_the_flags():
    result = lantern_cli("run", "--help")
    assert result.returncode == 0
    for flag in ("--max-tokens", "--temperature", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                 "--repeat-last-n", "--seed", "--system", "--chat-template-kwargs", "--stop", "--no-chat", "--device",
                 "--threads", "--verbose"):
        assert flag in result.stdout

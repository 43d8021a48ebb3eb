"""``lantern bench``: the measurements, ``--compare`` beside llama.cpp, and its errors.

The benchmark runs as users run it (``python -m lantern bench``) on a small synthetic GGUF
quantized by llama.cpp, and once on the real SmolLM2; the sizes are tiny so the suite stays fast.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lantern.benchmark import BenchConfig, bench_ids, ratios, summarize
from lantern.cli import main
from lantern.cli.bench import prompt_lengths_type

SMALL_ARGS = ["--repeats", "1", "--prompt-lengths", "16,32", "--decode-tokens", "8", "--threads", "2"]


@pytest.fixture(scope="module")
def small_model():
    from lantern.testing.synthetic import Spec, cached_model

    return cached_model(Spec(arch="llama", n_kv_heads=2, vocab_size=1024), "Q4_K_M")


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lantern", "bench", *args],
                          capture_output=True, text=True, timeout=timeout)


def check_engine(figures: dict, prompt_lengths=("16", "32")) -> None:
    assert set(figures["prompt_tok_s"]) == set(prompt_lengths)
    for n in prompt_lengths:
        assert figures["prompt_tok_s"][n] > 0
    for key in ("decode_tok_s", "ttft_s", "load_s", "cold_start_s", "peak_rss_bytes", "rss_before_load_bytes"):
        assert figures[key] > 0, key
    assert len(figures["samples"]) == 1


def test_json_has_every_figure(small_model):
    proc = bench("-m", str(small_model), "--json", *SMALL_ARGS)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # one JSON object, nothing else on stdout
    assert report["prompt_lengths"] == [16, 32] and report["decode_tokens"] == 8
    assert report["ttft_prompt"] == 16 and report["threads"] == 2 and report["device"] == "cpu"
    assert report["file_bytes"] == small_model.stat().st_size
    check_engine(report["lantern"])
    assert "llama.cpp" not in report and "ratio" not in report
    kernels = report["lantern"]["kernels"]
    assert kernels["threads"] == 2 and kernels["cpu_capability"]
    assert {"Q4_K", "Q6_K"} <= set(kernels["weight_kernels"])
    assert "lantern bench: lantern, run 1/1" in proc.stderr  # progress


def test_compare_prints_both_engines_and_ratios(small_model):
    proc = bench("-m", str(small_model), "--compare", "--verbose", *SMALL_ARGS)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    header = next(line for line in out.splitlines() if "lantern/llama.cpp" in line)
    assert "lantern" in header and "llama.cpp" in header
    for row in ("prompt tok/s (16)", "prompt tok/s (32)", "decode tok/s (8)", "first token (16)",
                "load time", "peak RSS"):
        line = next(line for line in out.splitlines() if line.startswith(row))
        ratio = float(line.split()[-1])
        assert ratio > 0, line
    assert "higher is better" in out and "ru_maxrss" in out
    assert "CPU capability" in out and "lantern kernels (" in out and "Q4_K " in out  # --verbose
    assert "lantern decode steps: " in out
    assert "llama.cpp, run 1/1" in proc.stderr


@pytest.mark.parametrize("args, needle", [
    (["--repeats", "0"], "--repeats"),
    (["--prompt-lengths", "abc"], "--prompt-lengths"),
    (["--prompt-lengths", "256,0"], "--prompt-lengths"),
    (["--prompt-lengths", "256,"], "--prompt-lengths"),
    (["--decode-tokens", "-5"], "--decode-tokens"),
    (["--threads", "0"], "--threads"),
])
def test_nonsense_values_exit_2_with_one_line(args, needle, capsys):
    assert main(["bench", "-m", "smollm2", *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("lantern bench: error: argument") and needle in errors[0], err
    assert "Traceback" not in err


def test_prompt_longer_than_context_is_one_line(small_model, capsys):
    assert main(["bench", "-m", str(small_model), "--prompt-lengths", "5000"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lantern: error: ") and "context" in err[0], err


def test_unloadable_model_is_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    for spec in (str(bad), str(tmp_path / "missing.gguf")):
        assert main(["bench", "-m", spec, "--repeats", "1"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lantern: error: "), err


def test_smollm2_compare_json(smollm2_path):
    # Short: on the reference kernels a SmolLM2 forward pass takes about a second.
    proc = bench("-m", "smollm2", "--json", "--compare", "--repeats", "1", "--prompt-lengths", "16",
                 "--decode-tokens", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""  # --quiet, and llama.cpp's own logging stays off
    report = json.loads(proc.stdout)
    assert report["arch"] == "llama" and report["model"] == str(smollm2_path)
    for engine in ("lantern", "llama.cpp"):
        check_engine(report[engine], ("16",))
    assert report["ratio"]["prompt_tok_s"]["16"] > 0 and report["ratio"]["decode_tok_s"] > 0
    assert report["ratio"]["peak_rss_bytes"] > 0
    assert "Q4_1" in report["lantern"]["kernels"]["weight_kernels"]


def test_smollm2_speculate_times_the_grounded_task(smollm2_path):
    proc = bench("-m", "smollm2", "--json", "--compare", "--speculate", "--repeats", "1",
                 "--prompt-lengths", "16", "--decode-tokens", "16", "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert 300 < report["grounded_task_tokens"] < 700
    ours, theirs = report["lantern"], report["llama.cpp"]
    assert ours["grounded_decode_tok_s"] > 0 and theirs["grounded_decode_tok_s"] > 0
    assert 0 <= ours["acceptance_rate"] <= 1 and ours["tokens_per_pass"] >= 1
    assert report["ratio"]["grounded_decode_tok_s"] > 0


# ----- the pieces, in-process -----------------------------------------------------------------


def test_prompt_lengths_type():
    assert prompt_lengths_type("256,512") == (256, 512)
    assert prompt_lengths_type(" 64 , 64,8") == (64, 8)


def test_bench_ids_are_deterministic_and_in_range():
    ids = bench_ids(512, 1024)
    assert ids == bench_ids(512, 1024) and bench_ids(16, 1024) == ids[:16]
    assert min(ids) >= 100 and max(ids) < 1024 and len(set(ids)) > 400


def test_config_positions():
    cfg = BenchConfig(prompt_lengths=(256, 512), decode_tokens=128)
    assert cfg.ttft_prompt == 256 and cfg.max_tokens == 512
    assert BenchConfig(prompt_lengths=(512, 256), decode_tokens=128).max_tokens == 641


def test_medians_and_ratios():
    a = [{"prompt_tok_s": {"8": v}, "decode_tok_s": v, "peak_rss_bytes": 10 * v, "last_token": 3}
         for v in (1.0, 3.0, 2.0)]
    s = summarize(a)
    assert s["prompt_tok_s"]["8"] == 2.0 and s["decode_tok_s"] == 2.0 and "last_token" not in s
    r = ratios(s, {"prompt_tok_s": {"8": 4.0}, "decode_tok_s": 1.0, "peak_rss_bytes": 40.0})
    assert r == {"prompt_tok_s": {"8": 0.5}, "decode_tok_s": 2.0, "peak_rss_bytes": 0.5}

"""Speed and memory measurements: lantern alone, or beside llama.cpp on the same file.

What is measured (greedy, deterministic token ids, so no tokenizer is involved):

- **prompt tok/s** for each prompt length: a fresh KV cache, the whole prompt in one call, until
  the last position's logits are known (`model.forward(ids, cache, last_only=True)`);
- **time to first token**: a fresh cache, a prompt of the first length (256 by default), until
  the first greedy token id is known;
- **decode tok/s**: right after that first token, `decode_tokens` more greedy steps, one token
  per call on the KV cache (each step feeds the previous token and takes the argmax);
- **load time**: until the engine holds a usable model object (lantern maps the file lazily:
  pages arrive on the first forward pass, which the warm-up absorbs);
- **cold start**: load plus the first token of an 8-token prompt (the warm-up), from a fresh process;
- **peak RSS**: the measuring process's peak resident set size (`getrusage(...).ru_maxrss`), over
  the whole run, not the resident size at the end.

Every repeat of every engine runs in a fresh subprocess (``python -m lantern.benchmark``), so load
time and peak RSS belong to that engine alone; engines alternate within each repeat so drift on
a shared machine hits both. The reported figure is the median over repeats.

    from lantern.benchmark import BenchConfig, run_benchmark
    report = run_benchmark("model.gguf", BenchConfig(repeats=3), engines=("lantern", "llama.cpp"))
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from .errors import LanternError

ENGINES = ("lantern", "llama.cpp")
WARMUP_TOKENS = 8

#: Figures where a higher value is better (the others: lower is better).
HIGHER_IS_BETTER = ("prompt_tok_s", "decode_tok_s")


@dataclass
class BenchConfig:
    prompt_lengths: Sequence[int] = (256, 512)
    decode_tokens: int = 128
    repeats: int = 3
    threads: int = 1
    device: str = "cpu"
    kernels: str | None = None  # lantern's kernel policy (LANTERN_KERNELS): None = its default
    vocab_size: int = 0  # filled in from the model's metadata
    progress: bool = True
    speculate: bool = False  # also time a grounded task: lantern with prompt lookup, llama.cpp plain
    task_ids: Sequence[int] = ()  # that task's prompt, filled in by run_benchmark

    @property
    def ttft_prompt(self) -> int:
        """Time to first token and decode run after a prompt of the first length."""
        return self.prompt_lengths[0]

    @property
    def max_tokens(self) -> int:
        """The most positions any measurement holds in its KV cache."""
        return max(max(self.prompt_lengths), self.ttft_prompt + 1 + self.decode_tokens, WARMUP_TOKENS + 2,
                   len(self.task_ids) + 1 + self.decode_tokens)


# An input-grounded task for --speculate: rewriting a given text (from the Python language
# reference, PSF license). About 400 tokens with the chat template. One paragraph, as a user
# pastes it: the line breaks below are this file's, not the text's (with them, every draft
# across a line end proposed a newline the model did not write).
GROUNDED_TEXT = " ".join("""Objects are Python's abstraction for data. All data in a Python program is represented by
objects or by relations between objects. Every object has an identity, a type and a value. An
object's identity never changes once it has been created; you may think of it as the object's
address in memory. The is operator compares the identity of two objects; the id() function returns
an integer representing its identity. An object's type determines the operations that the object
supports and also defines the possible values for objects of that type. The type() function returns
an object's type, which is an object itself. Like its identity, an object's type is also
unchangeable. The value of some objects can change. Objects whose value can change are said to be
mutable; objects whose value is unchangeable once they are created are called immutable. An
object's mutability is determined by its type; for instance, numbers, strings and tuples are
immutable, while dictionaries and lists are mutable. Objects are never explicitly destroyed;
however, when they become unreachable they may be garbage-collected. An implementation is allowed
to postpone garbage collection or omit it altogether; it is a matter of implementation quality how
garbage collection is implemented, as long as no objects are collected that are still reachable.
Some objects contain references to other objects; these are called containers. Examples of
containers are tuples, lists and dictionaries. The references are part of a container's value. In
most cases, when we talk about the value of a container, we imply the values, not the identities of
the contained objects; however, when we talk about the mutability of a container, only the
identities of the immediately contained objects are implied.""".split())


def grounded_task_ids(path: str | os.PathLike) -> list[int]:
    """The chat-formatted rewriting task as the model's own tokenizer encodes it."""
    from .generate.prompts import encode_conversation, messages_for
    from .chat_template import ChatTemplate
    from .tokenizer import Tokenizer
    from .weights.gguf_file import GGUFFile

    f = GGUFFile(path)
    prompt = "Rewrite the following text, keeping every sentence:\n\n" + GROUNDED_TEXT
    return encode_conversation(Tokenizer.from_gguf(f), ChatTemplate.from_gguf(f), messages_for(prompt))


def bench_ids(n: int, vocab_size: int) -> list[int]:
    """`n` deterministic token ids, the same for every engine: a stride through the vocabulary
    that skips its first ids (control tokens in most vocabularies)."""
    start = min(100, vocab_size // 4)
    span = max(1, vocab_size - start)
    return [start + (i * 7919 + 13) % span for i in range(n)]


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def load_average() -> float | None:
    """The machine's 1-minute load average (other work competing for the cores), where known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ----- progress on stderr --------------------------------------------------------------------


class Progress:
    """A short status line on stderr: rewritten in place on a terminal, one line per stage otherwise."""

    def __init__(self, prefix: str, enabled: bool = True):
        self.prefix = prefix
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self._last = 0.0

    def stage(self, message: str) -> None:
        self._last = time.monotonic()
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write(f"\r\033[K{self.prefix}{message}")
        else:
            sys.stderr.write(f"{self.prefix}{message}\n")
        sys.stderr.flush()

    def tick(self, message: str) -> None:
        """A frequent update (decode steps): at most 4 times a second on a terminal, every 30 s
        otherwise (a log of a long run still shows it moving)."""
        now = time.monotonic()
        if now - self._last >= (0.25 if self.tty else 30.0):
            self._last = now
            self.stage(message)

    def clear(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


# ----- one engine, one repeat (runs inside the child process) --------------------------------


def measure_lantern(path: str | os.PathLike, cfg: BenchConfig, progress: Progress | None = None) -> dict:
    """Load `path` with lantern and measure everything once, in this process."""
    import torch

    import lantern
    from .generate.sampling import greedy

    progress = progress or Progress("", enabled=False)
    torch.set_num_threads(cfg.threads)
    baseline = peak_rss_bytes()  # the interpreter, torch and lantern, before any weights
    started = time.perf_counter()
    progress.stage("loading")
    model = lantern.load(str(path), device=cfg.device)
    load_s = time.perf_counter() - started
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(model.device)

    def first_token(ids: list[int]):
        cache = model.new_cache(cfg.max_tokens)
        logits = model.forward(ids, cache, last_only=True, prompt=True)  # as generation reads prompts
        return int(logits[-1].argmax()), cache  # int() waits for the device

    result: dict = {"load_s": load_s, "prompt_tok_s": {}, "rss_before_load_bytes": baseline}
    with torch.inference_mode():
        progress.stage("warm-up")
        token, cache = first_token(bench_ids(WARMUP_TOKENS, cfg.vocab_size))
        model.forward([token], cache, last_only=True)[-1].argmax().item()
        result["cold_start_s"] = time.perf_counter() - started
        del cache

        for n in cfg.prompt_lengths:
            progress.stage(f"prompt of {n} tokens")
            ids = bench_ids(n, cfg.vocab_size)
            t0 = time.perf_counter()
            _, cache = first_token(ids)
            result["prompt_tok_s"][str(n)] = n / (time.perf_counter() - t0)
            del cache

        progress.stage(f"time to first token ({cfg.ttft_prompt}-token prompt)")
        ids = bench_ids(cfg.ttft_prompt, cfg.vocab_size)
        t0 = time.perf_counter()
        token, cache = first_token(ids)
        result["ttft_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for i in range(cfg.decode_tokens):
            with model.decode_threads():  # as generation runs a step and its sampling
                token = greedy(model.forward([token], cache, last_only=True)[-1].cpu())
            progress.tick(f"decode {i + 1}/{cfg.decode_tokens}")
        result["decode_tok_s"] = cfg.decode_tokens / (time.perf_counter() - t0)
        result["last_token"] = token
        del cache

        if cfg.task_ids:
            from .generate.speculative import PromptLookup, SpeculationStats, speculative_greedy_tokens

            progress.stage(f"grounded task, speculative decode ({len(cfg.task_ids)}-token prompt)")
            stats = SpeculationStats()
            tokens = speculative_greedy_tokens(model, list(cfg.task_ids), PromptLookup(),
                                               model.new_cache(cfg.max_tokens), stats=stats)
            next(tokens)  # the prompt and the first token, as after time to first token
            t0 = time.perf_counter()
            for i, token in zip(range(cfg.decode_tokens), tokens):
                progress.tick(f"grounded decode {i + 1}/{cfg.decode_tokens}")
            result["grounded_decode_tok_s"] = cfg.decode_tokens / (time.perf_counter() - t0)
            result["grounded_last_token"] = token
            result["acceptance_rate"] = stats.acceptance_rate
            result["tokens_per_pass"] = stats.tokens_per_pass
            tokens.close()

    result["peak_rss_bytes"] = peak_rss_bytes()
    result["load_average"] = load_average()
    if cuda:
        result["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated(model.device))
    result["kernels"] = kernel_report(model)
    return result


def measure_llamacpp(path: str | os.PathLike, cfg: BenchConfig, progress: Progress | None = None) -> dict:
    """Load `path` with llama-cpp-python (CPU, same threads) and measure everything once."""
    import llama_cpp
    import numpy as np

    progress = progress or Progress("", enabled=False)
    baseline = peak_rss_bytes()
    started = time.perf_counter()
    progress.stage("loading")
    try:
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=max(1024, cfg.max_tokens + 8), n_batch=512, n_ubatch=512,
            n_threads=cfg.threads, n_threads_batch=cfg.threads, logits_all=False, verbose=False,
        )
    except (ValueError, RuntimeError) as exc:  # llama-cpp-python's "Failed to load model from file"
        raise LanternError(f"llama.cpp could not load {path}: {exc}") from None
    load_s = time.perf_counter() - started
    n_vocab = llm.n_vocab()
    if n_vocab != cfg.vocab_size:
        raise LanternError(f"llama.cpp sees {n_vocab} tokens, lantern {cfg.vocab_size}; the ids would differ")

    def argmax_last() -> int:
        # logits_all=False: llama.cpp keeps only the batch's last row; read it directly.
        row = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(row, shape=(n_vocab,))))

    def first_token(ids: list[int]) -> int:
        llm.reset()  # the next eval drops the whole KV cache
        llm.eval(ids)
        return argmax_last()

    result: dict = {"load_s": load_s, "prompt_tok_s": {}, "rss_before_load_bytes": baseline}
    progress.stage("warm-up")
    token = first_token(bench_ids(WARMUP_TOKENS, cfg.vocab_size))
    llm.eval([token])
    argmax_last()
    result["cold_start_s"] = time.perf_counter() - started

    for n in cfg.prompt_lengths:
        progress.stage(f"prompt of {n} tokens")
        ids = bench_ids(n, cfg.vocab_size)
        t0 = time.perf_counter()
        first_token(ids)
        result["prompt_tok_s"][str(n)] = n / (time.perf_counter() - t0)

    progress.stage(f"time to first token ({cfg.ttft_prompt}-token prompt)")
    ids = bench_ids(cfg.ttft_prompt, cfg.vocab_size)
    t0 = time.perf_counter()
    token = first_token(ids)
    result["ttft_s"] = time.perf_counter() - t0

    def decode(token: int, what: str) -> tuple[float, int]:
        """Greedy steps after `token`: (tok/s, the last token)."""
        t0 = time.perf_counter()
        for i in range(cfg.decode_tokens):
            llm.eval([token])
            token = argmax_last()
            progress.tick(f"{what} {i + 1}/{cfg.decode_tokens}")
        return cfg.decode_tokens / (time.perf_counter() - t0), token

    result["decode_tok_s"], result["last_token"] = decode(token, "decode")
    if cfg.task_ids:
        progress.stage(f"grounded task, plain decode ({len(cfg.task_ids)}-token prompt)")
        result["grounded_decode_tok_s"], result["grounded_last_token"] = decode(
            first_token(list(cfg.task_ids)), "grounded decode")
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["load_average"] = load_average()
    result["kernels"] = {"engine": f"llama-cpp-python {llama_cpp.__version__}", "device": "cpu",
                         "threads": cfg.threads}
    llm.close()
    return result


MEASURE: dict[str, Callable[..., dict]] = {"lantern": measure_lantern, "llama.cpp": measure_llamacpp}


def kernel_report(model) -> dict:
    """Which code runs the model: device, CPU threads and capability, and for each weight type
    the module class (and its `kernel` attribute, where it has one) that multiplies by it."""
    import torch

    info = torch.__config__.parallel_info()
    parallel = {}
    for line in info.splitlines():
        key, sep, value = line.strip().rpartition(" : ")
        if sep and key in ("at::get_num_threads()", "at::get_num_interop_threads()"):
            parallel[key.removeprefix("at::").removesuffix("()")] = int(value)
        elif line.startswith("ATen parallel backend:"):
            parallel["backend"] = line.partition(":")[2].strip()
    kernels: dict[str, set[str]] = {}
    for m in model.transformer.modules():
        qtype = getattr(m, "qtype", None)
        if qtype is None:
            continue
        name = type(m).__name__
        kernel = getattr(m, "kernel", None)
        label = getattr(m, "kernel_name", None)
        if kernel is not None and not isinstance(kernel, str):
            from .weights.kernels import kernel_function

            function = kernel_function(kernel) or type(kernel).__name__
            label = f"{label or getattr(kernel, 'name', None) or 'kernel'}: {function}"
        elif isinstance(kernel, str):
            label = kernel
        if label:
            name += f" ({label})"
        kernels.setdefault(getattr(qtype, "name", str(qtype)), set()).add(name)
    try:
        from .weights.kernels import kernel_policy, level

        policy, native_level = kernel_policy(), level()
    except (ImportError, ValueError):
        policy, native_level = None, {}
    return {
        "engine": "lantern",
        "policy": policy,
        "device": str(model.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "parallel": parallel,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa": native_level.get("isa"),  # lantern's native level: portable, avx2, avx512, neon
        "isa_supported": native_level.get("supported"),
        "native": {key: native_level.get(key) for key in ("matmul", "expand", "attention", "vector", "fallbacks")},
        "weight_kernels": {k: sorted(v) for k, v in sorted(kernels.items())},
        "decode": getattr(model.transformer, "step_description", None),
    }


# ----- the parent: fresh processes, medians, ratios ------------------------------------------


def model_facts(path: str | os.PathLike) -> dict:
    """Architecture, context length and vocabulary from the metadata alone (no weights read);
    raises the usual one-line errors for files lantern can't run."""
    from .models import architecture
    from .weights.gguf_file import GGUFFile

    f = GGUFFile(path)
    params = architecture(f.architecture, f.path).Params.from_gguf(f)
    return {"arch": f.architecture, "context_length": params.context_length, "vocab_size": params.vocab_size,
            "file_bytes": f.path.stat().st_size}


def run_child(engine: str, path: str | os.PathLike, cfg: BenchConfig, label: str = "") -> dict:
    """One repeat of one engine in a fresh `python -m lantern.benchmark` process."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # The child runs its own thread count; don't let an inherited OMP setting override it.
    env["OMP_NUM_THREADS"] = str(cfg.threads)
    if cfg.kernels:
        env["LANTERN_KERNELS"] = cfg.kernels
    with tempfile.TemporaryDirectory(prefix="lantern-bench-") as tmp:
        out = Path(tmp) / "result.json"
        conf = json.dumps({**asdict(cfg), "prompt_lengths": list(cfg.prompt_lengths)})
        proc = subprocess.run([sys.executable, "-m", "lantern.benchmark", engine, str(path), conf, str(out), label],
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        result = json.loads(out.read_text()) if out.exists() else None
    if result is not None and "error" in result:
        raise LanternError(result["error"])
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode != 0 or result is None:
        why = (f"was killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "")
               if proc.returncode < 0 else f"failed with exit status {proc.returncode}")
        raise LanternError(f"the {engine} benchmark process {why}; see its messages above")
    return result


def summarize(samples: list[dict]) -> dict:
    """Medians over repeats of each figure (prompt tok/s per length)."""
    first = samples[0]
    out: dict = {}
    for key, value in first.items():
        if key == "prompt_tok_s":
            out[key] = {n: statistics.median(s[key][n] for s in samples) for n in value}
        elif isinstance(value, (int, float)) and not key.endswith("last_token"):
            values = [s[key] for s in samples if s.get(key) is not None]
            out[key] = statistics.median(values) if values else None
    out["kernels"] = first.get("kernels")
    out["samples"] = samples
    return out


def ratios(ours: dict, theirs: dict) -> dict:
    """lantern / llama.cpp for every figure both engines have."""
    out: dict = {}
    for key, value in ours.items():
        if key == "prompt_tok_s":
            out[key] = {n: value[n] / theirs[key][n] for n in value if theirs[key].get(n)}
        elif key == "load_average":
            continue
        elif isinstance(value, (int, float)) and isinstance(theirs.get(key), (int, float)) and theirs[key]:
            out[key] = value / theirs[key]
    return out


def run_benchmark(path: str | os.PathLike, cfg: BenchConfig, engines: Sequence[str] = ("lantern",)) -> dict:
    """Measure `engines` on `path`, `cfg.repeats` times each in fresh processes (alternating), and
    return medians (and ratios lantern / llama.cpp when both ran) as a JSON-ready dict."""
    facts = model_facts(path)
    need = cfg.max_tokens
    if need > facts["context_length"]:
        raise LanternError(
            f"the benchmark needs {need} positions (prompt {max(cfg.prompt_lengths)}, or "
            f"{cfg.ttft_prompt} + 1 + {cfg.decode_tokens} decoded) but the model's context is "
            f"{facts['context_length']}; use shorter --prompt-lengths or fewer --decode-tokens"
        )
    if "llama.cpp" in engines:
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            raise LanternError("--compare needs llama-cpp-python: pip install 'llama-cpp-python==0.3.36'")
    cfg.vocab_size = facts["vocab_size"]
    if cfg.speculate:
        cfg.task_ids = grounded_task_ids(path)
        if cfg.max_tokens > facts["context_length"]:
            raise LanternError(f"the grounded task needs {cfg.max_tokens} positions; the model's context is "
                               f"{facts['context_length']}; use fewer --decode-tokens")
    samples: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(cfg.repeats):
        for engine in engines:
            label = f"lantern bench: {engine}, run {r + 1}/{cfg.repeats}: " if cfg.progress else ""
            samples[engine].append(run_child(engine, path, cfg, label))
    report = {
        "model": str(path),
        "arch": facts["arch"],
        "file_bytes": facts["file_bytes"],
        "threads": cfg.threads,
        "device": cfg.device,
        "kernel_policy": cfg.kernels or os.environ.get("LANTERN_KERNELS") or "default",
        "repeats": cfg.repeats,
        "prompt_lengths": list(cfg.prompt_lengths),
        "ttft_prompt": cfg.ttft_prompt,
        "decode_tokens": cfg.decode_tokens,
        "grounded_task_tokens": len(cfg.task_ids),
    }
    for engine in engines:
        report[engine] = summarize(samples[engine])
    if "lantern" in engines and "llama.cpp" in engines:
        report["ratio"] = ratios(report["lantern"], report["llama.cpp"])
    return report


# ----- text output ----------------------------------------------------------------------------


def _rows(report: dict) -> list[tuple[str, str, Callable[[dict], float | None]]]:
    rows = []
    for n in report["prompt_lengths"]:
        rows.append((f"prompt tok/s ({n})", "tok/s", lambda d, n=str(n): d.get("prompt_tok_s", {}).get(n)))
    rows.append((f"decode tok/s ({report['decode_tokens']})", "tok/s", lambda d: d.get("decode_tok_s")))
    if report.get("grounded_task_tokens"):
        rows.append((f"decode tok/s, rewrite task ({report['decode_tokens']})", "tok/s",
                     lambda d: d.get("grounded_decode_tok_s")))
        rows.append(("  drafts accepted", "x", lambda d: d.get("acceptance_rate")))
        rows.append(("  tokens per pass", "x", lambda d: d.get("tokens_per_pass")))
    rows.append((f"first token ({report['ttft_prompt']})", "s", lambda d: d.get("ttft_s")))
    rows.append(("load time", "s", lambda d: d.get("load_s")))
    rows.append(("cold start", "s", lambda d: d.get("cold_start_s")))
    rows.append(("peak RSS", "GiB", lambda d: None if d.get("peak_rss_bytes") is None else d["peak_rss_bytes"] / 2**30))
    rows.append(("RSS before load", "GiB", lambda d: None if d.get("rss_before_load_bytes") is None
                 else d["rss_before_load_bytes"] / 2**30))
    rows.append(("peak RSS / file", "x", lambda d: None if d.get("peak_rss_bytes") is None
                 else d["peak_rss_bytes"] / report["file_bytes"]))
    return rows


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "tok/s":
        return f"{value:.1f}" if value < 1000 else f"{value:.0f}"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "GiB":
        return f"{value:.2f} GiB"
    return f"{value:.2f}"


def _fmt_ratio(r: float) -> str:
    return f"{r:.2f}" if 0.1 <= r < 100 else f"{r:.2g}" if r < 0.1 else f"{r:.0f}"


def format_report(report: dict, verbose: bool = False) -> str:
    engines = [e for e in ENGINES if e in report]
    gib = report["file_bytes"] / 2**30
    lines = [
        f"model: {Path(report['model']).name} ({report['arch']}, {gib:.2f} GiB), device {report['device']}, "
        f"{report['threads']} threads, median of {report['repeats']} run(s), each in a fresh process",
    ]
    k = report.get("lantern", {}).get("kernels") or {}
    if k.get("weight_kernels"):
        mix = "; ".join(f"{q} {', '.join(c)}" for q, c in k["weight_kernels"].items())
        lines.append(f"lantern kernels ({k.get('policy') or 'default'} policy): {mix}")
    if k.get("decode"):
        lines.append(f"lantern decode steps: {k['decode']}")
    if verbose:
        lines += describe_kernels(report)
    compare = "ratio" in report
    width = max(len(r[0]) for r in _rows(report)) + 2
    header = f"{'':{width}}" + "".join(f"{e:>13}" for e in engines)
    if compare:
        header += f"{'lantern/llama.cpp':>19}"
    lines.append(header)
    for label, unit, get in _rows(report):
        line = f"{label:{width}}" + "".join(f"{_fmt(get(report[e]), unit):>13}" for e in engines)
        if compare:
            ours, theirs = get(report["lantern"]), get(report["llama.cpp"])
            line += f"{_fmt_ratio(ours / theirs) if ours and theirs else '-':>19}"
        lines.append(line)
    lines.append("tok/s: higher is better; times and memory: lower is better"
                 + ("; ratio = lantern / llama.cpp (above 1 is better for tok/s, below 1 for the rest)"
                    if compare else ""))
    loads = [s.get("load_average") for e in engines for s in report[e].get("samples", [])]
    loads = [x for x in loads if x is not None]
    if loads:
        lines.append(f"machine load average (1 min) during the runs: {min(loads):.1f} to {max(loads):.1f} "
                     f"on {os.cpu_count()} CPUs; other work on the machine slows both engines")
    lines.append("peak RSS is the measuring process's peak (getrusage ru_maxrss), not its size at the end; "
                 "RSS before load: the interpreter and libraries alone; "
                 "cold start = load + first token of an 8-token prompt")
    return "\n".join(lines)


def describe_kernels(report: dict) -> list[str]:
    k = report.get("lantern", {}).get("kernels") or {}
    if not k:
        return []
    par = k.get("parallel", {})
    lines = [
        f"lantern: device {k.get('device')}, torch {k.get('torch')}, {k.get('threads')} threads "
        f"(parallel_info: get_num_threads {par.get('get_num_threads', '?')}, backend {par.get('backend', '?')}), "
        f"CPU capability {k.get('cpu_capability')}, lantern level {k.get('isa')} "
        f"(this CPU runs {', '.join(k.get('isa_supported') or []) or 'none'})",
    ]
    theirs = report.get("llama.cpp", {}).get("kernels")
    if theirs:
        lines.append(f"llama.cpp: {theirs.get('engine')}, device cpu, {theirs.get('threads')} threads")
    return lines


# ----- child entry point -----------------------------------------------------------------------


def _child(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] not in MEASURE:
        print("usage: python -m lantern.benchmark {lantern,llama.cpp} MODEL.gguf CONFIG_JSON RESULT_PATH [LABEL]\n"
              "(the per-run worker of 'lantern bench'; run 'lantern bench --help' instead)", file=sys.stderr)
        return 2
    engine, path, conf, out = argv[:4]
    label = argv[4] if len(argv) > 4 else ""
    values = json.loads(conf)
    cfg = BenchConfig(**{**values, "prompt_lengths": tuple(values["prompt_lengths"])})
    progress = Progress(label, enabled=bool(label))
    try:
        import warnings

        warnings.simplefilter("ignore")  # e.g. torch's note on read-only memory maps: not ours to show
        result = MEASURE[engine](path, cfg, progress)
    except LanternError as exc:
        progress.clear()
        Path(out).write_text(json.dumps({"error": " ".join(str(exc).split())}))
        return 1
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        progress.clear()
        return 130
    progress.clear()
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))

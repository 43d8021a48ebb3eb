"""``lantern run [-m MODEL] [PROMPT]``: one completion, streamed to stdout.

The prompt comes from the argument, or from standard input when it is absent or ``-``. By
default it is sent as one user message through the model's chat template (``--system`` adds a
system message); ``--no-chat`` sends it as raw text. Text goes to stdout as it is produced;
load time, speeds and why generation stopped go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings

from ..errors import LanternError
from ..generate.prompts import checked_template_options
from ..generate.settings import SamplerSettings
from . import add_device_argument, add_model_argument
from .options import (finite_float, non_negative_float, non_negative_int, positive_float, probability,
                      template_variables)

DEFAULT_MAX_TOKENS = 256
_D = SamplerSettings()


def max_tokens_type(text: str) -> int:
    """An integer >= 0, or -1 for no limit."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < -1:
        raise argparse.ArgumentTypeError(f"must be >= 0, or -1 for no limit, got {text!r}")
    return value


def repeat_last_n_type(text: str) -> int:
    """An integer >= 0 (0 disables the penalties) below 2**31, or -1 for the whole sequence."""
    value = max_tokens_type(text)
    if value >= 2**31:
        raise argparse.ArgumentTypeError(f"must be below 2**31, or -1 for the whole sequence, got {text!r}")
    return value


def add_sampling_arguments(parser: argparse.ArgumentParser, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> None:
    """The generation flags shared by ``run`` and ``chat``."""
    g = parser.add_argument_group("generation")
    g.add_argument("-n", "--max-tokens", type=max_tokens_type, default=max_tokens, metavar="N",
                   help=f"most tokens to generate; -1: until the model stops or the context is full "
                        f"(default: {max_tokens})")
    g.add_argument("--temperature", "--temp", type=non_negative_float, default=_D.temperature, metavar="T",
                   help=f"randomness; 0 = greedy, always the most likely token (default: {_D.temperature})")
    g.add_argument("--top-k", type=non_negative_int, default=_D.top_k, metavar="K",
                   help=f"sample from the K most likely tokens; 0 = off (default: {_D.top_k})")
    g.add_argument("--top-p", type=probability, default=_D.top_p, metavar="P",
                   help=f"nucleus sampling: the most likely tokens that make up probability P; 1 = off "
                        f"(default: {_D.top_p})")
    g.add_argument("--min-p", type=probability, default=_D.min_p, metavar="P",
                   help=f"drop tokens less likely than P times the most likely one; 0 = off "
                        f"(default: {_D.min_p})")
    g.add_argument("--repeat-penalty", type=positive_float, default=_D.repeat_penalty, metavar="X",
                   help=f"penalise tokens seen recently, e.g. 1.1; 1 = off (default: {_D.repeat_penalty})")
    g.add_argument("--repeat-last-n", type=repeat_last_n_type, default=_D.repeat_last_n, metavar="N",
                   help=f"how many recent tokens the penalties look at; -1 = all (default: {_D.repeat_last_n})")
    g.add_argument("--frequency-penalty", type=finite_float, default=0.0, metavar="X",
                   help="subtract X times a token's recent count from its logit (default: 0)")
    g.add_argument("--presence-penalty", type=finite_float, default=0.0, metavar="X",
                   help="subtract X from the logit of every recently seen token (default: 0)")
    g.add_argument("--seed", type=non_negative_int, default=None, metavar="N",
                   help="random seed; the same seed gives the same text (default: a random one)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the text produces TEXT (not printed); repeatable")
    g.add_argument("--system", default=None, metavar="TEXT", help="a system message for the chat template")
    add_template_variables_argument(g)
    g.add_argument("--speculate", action="store_true",
                   help="speculative decoding for greedy runs (--temperature 0): draft tokens are looked "
                        "up in the prompt and output, or made by --draft-model; same output, fewer passes")
    g.add_argument("--draft-model", default=None, metavar="MODEL",
                   help="with --speculate: a smaller model of the same vocabulary drafts the tokens")


def add_template_variables_argument(group) -> None:
    group.add_argument("--chat-template-kwargs", type=template_variables, default=None, metavar="JSON",
                       help="more variables for the chat template, as a JSON object, e.g. "
                            "'{\"enable_thinking\": false}' (Qwen3: answer without thinking first)")


def sampling_options(args: argparse.Namespace) -> dict:
    return dict(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n,
        frequency_penalty=args.frequency_penalty, presence_penalty=args.presence_penalty,
        seed=args.seed,
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "run",
        help="generate text from a prompt",
        description="Generate a completion for PROMPT and stream it to stdout. By default the prompt "
        "is one user message formatted with the model's chat template; --no-chat sends it as raw "
        "text. Timings and the reason generation stopped are printed to stderr.",
    )
    add_model_argument(parser)
    parser.add_argument("prompt", nargs="?", default=None, metavar="PROMPT",
                        help="the prompt; read from standard input when absent or '-'")
    add_sampling_arguments(parser)
    parser.add_argument("--no-chat", action="store_true",
                        help="send the prompt as raw text, without the chat template")
    add_structured_output_arguments(parser)
    add_device_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also print the model, the seed and token counts to stderr")
    parser.set_defaults(func=run)
    return parser


def add_structured_output_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("structured output").add_mutually_exclusive_group()
    g.add_argument("--json-schema", default=None, metavar="FILE",
                   help="the answer is JSON that follows the JSON schema in FILE ('{\"type\": \"object\"}': "
                        "any JSON object)")
    g.add_argument("--grammar", default=None, metavar="FILE",
                   help="the answer follows the grammar in FILE: Lark (llguidance's dialect, a 'start:' "
                        "rule) or GBNF (llama.cpp's, a 'root ::=' rule)")


def structured_output_options(args: argparse.Namespace) -> dict:
    """`generate` options for --json-schema / --grammar: the file's text."""
    options = {}
    for flag, key in (("json_schema", "json_schema"), ("grammar", "grammar")):
        path = getattr(args, flag, None)
        if path is None:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                options[key] = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise LanternError(f"--{flag.replace('_', '-')}: cannot read {path}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    return options


def valid_text(text: str) -> str:
    """Text as UTF-8 can hold it: bytes that were not UTF-8 (Python's lone surrogates, from argv
    or stdin) become U+FFFD, as a terminal shows them."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # argv's undecodable bytes, back as bytes
    except UnicodeEncodeError:  # other lone surrogates
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def read_prompt(arg: str | None) -> str:
    if arg is not None and arg != "-":
        return valid_text(arg)
    if arg is None and sys.stdin is not None and sys.stdin.isatty():
        raise LanternError("no prompt; give it as an argument, e.g. lantern run \"Hello\", or pipe it on stdin")
    if sys.stdin is None:
        raise LanternError("no prompt; give it as an argument or on standard input")
    text = valid_text(sys.stdin.read())
    return text[:-1] if text.endswith("\n") else text


def note(message: str) -> None:
    """A line for the person at the terminal (stderr, so stdout stays the model's text)."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def warnings_to_stderr():
    """Show lantern's warnings as one 'lantern: warning: ...' line each."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        note(f"lantern: warning: {message}")

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def finish_note(gen, context_length: int) -> str:
    """'finish reason: <reason> (<what it means>)'."""
    reason = gen.finish_reason
    if reason == "stop":
        why = f"stop string {gen.stop_string!r}" if gen.stop_string else "the model ended its answer"
    elif reason == "length":
        why = f"--max-tokens {gen.max_tokens} reached; raise -n for longer answers"
    elif reason == "context":
        why = (f"the context of {context_length} tokens is full: prompt {gen.prompt_tokens} + "
               f"{len(gen.sampled_ids)} generated")
    else:
        why = "interrupted"
    return f"finish reason: {reason} ({why})"


def stats_line(load_seconds: float | None, gen) -> str:
    t = gen.timings
    parts = []
    if load_seconds is not None:
        parts.append(f"load {load_seconds:.2f} s")
    parts.append(f"prompt {t.prompt_tokens} tok, {t.prompt_tokens_per_second:.1f} tok/s")
    parts.append(f"generation {len(gen.token_ids)} tok, {t.generation_tokens_per_second:.1f} tok/s")
    return " | ".join(parts)


def load_model(args: argparse.Namespace):
    import lantern

    started = time.perf_counter()
    model = lantern.load(args.model, device=args.device)
    return model, time.perf_counter() - started


def kernel_mix(model) -> str:
    """Which kernel runs each weight type, e.g.
    "Q4_K: gguf-native q4_k_avx2 x 97, Q6_K: gguf-native q6_k_avx2 x 33"."""
    from collections import Counter

    from ..weights.kernels import kernel_function
    from ..weights.linear import QuantizedLinear

    counts = Counter((m.qtype.name, " ".join(filter(None, (m.kernel_name, kernel_function(m.kernel)))))
                     for m in model.transformer.modules() if isinstance(m, QuantizedLinear))
    return ", ".join(f"{qtype}: {kernel} x {n}" for (qtype, kernel), n in sorted(counts.items()))


def speculation(args: argparse.Namespace):
    """What --speculate and --draft-model ask for: None, "lookup", or the loaded draft model."""
    if args.draft_model and not args.speculate:
        raise LanternError("--draft-model needs --speculate")
    if not args.speculate:
        return None
    if args.draft_model is None:
        return "lookup"
    import lantern

    return lantern.load(args.draft_model, device=args.device)


def run(args: argparse.Namespace) -> int:
    from ..generate.stream import generate

    prompt = read_prompt(args.prompt)
    if not args.no_chat:
        prompt = prompt.strip()
    if not prompt.strip():
        raise LanternError("the prompt is empty; give some text")
    if args.no_chat and args.system:
        raise LanternError("--system needs the chat template; drop --no-chat or --system")
    if args.no_chat and args.chat_template_kwargs:
        raise LanternError("--chat-template-kwargs needs the chat template; drop --no-chat or --chat-template-kwargs")
    checked_template_options(args.chat_template_kwargs)  # before the model loads
    structured = structured_output_options(args)  # read before the model loads

    with warnings_to_stderr():
        model, load_seconds = load_model(args)
        gen = generate(
            model, prompt, max_tokens=args.max_tokens, stop=args.stop,
            chat=not args.no_chat, system=valid_text(args.system) if args.system else None, speculate=speculation(args),
            template_options=args.chat_template_kwargs, **sampling_options(args), **structured,
        )
        if args.verbose:
            from ..weights.kernels import describe

            note(f"lantern: {model!r}")
            note(f"lantern: device {model.device}; kernels: {describe(model.device)}; {kernel_mix(model)}")
            note(f"lantern: decode steps: {model.transformer.step_description}")
            note(f"lantern: prompt {gen.prompt_tokens} tokens, seed {gen.seed}")
        out = sys.stdout
        for piece in gen:
            out.write(piece)
            out.flush()
        if gen.text and not gen.text.endswith("\n"):
            out.write("\n")
            out.flush()
    note(f"lantern: {stats_line(load_seconds, gen)}")
    note(f"lantern: {finish_note(gen, model.context_length)}")
    if gen.speculation is not None:
        note(f"lantern: {gen.speculation.summary()}")
    if args.verbose:
        note(f"lantern: {gen.timings.summary()}")
        graphed = model.transformer.graphed
        if graphed is not None and graphed.disabled:
            note(f"lantern: {graphed.disabled}")
    return 0

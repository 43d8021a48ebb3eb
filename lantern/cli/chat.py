"""``lantern chat [-m MODEL]``: an interactive conversation in the terminal.

Type a message and press Enter; the answer streams back. Earlier turns stay in the KV cache, so
a long conversation does not slow down each answer. Commands: ``/reset`` forgets the
conversation, ``/exit`` (or Ctrl-D) quits, ``/help`` lists them. Ctrl-C while an answer is
being written stops that answer only; Ctrl-C at the prompt quits.

On a terminal the prompt is ``>>> ``; with standard input from a pipe, every line is a message
and no prompt is printed.
"""

from __future__ import annotations

import argparse
import signal
import sys

from ..chat_template import NO_CHAT_HINT
from ..errors import LanternError, TemplateError
from . import add_device_argument, add_model_argument
from .run import (add_sampling_arguments, load_model, note, sampling_options, speculation, stats_line,
                  valid_text, warnings_to_stderr)

PROMPT = ">>> "
DEFAULT_MAX_TOKENS = 1024
HELP = "commands: /reset forgets the conversation, /exit quits (or Ctrl-D); Ctrl-C stops an answer"
NO_TEMPLATE_HINT = "lantern chat needs the model's chat template; 'lantern run --no-chat PROMPT' sends raw text"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "chat",
        help="chat with a model in the terminal",
        description="An interactive chat: type a message, the answer streams back. Earlier turns are "
        "kept in the KV cache. " + HELP + ".",
    )
    add_model_argument(parser)
    add_sampling_arguments(parser, max_tokens=DEFAULT_MAX_TOKENS)
    add_device_argument(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="print speeds after each answer")
    parser.set_defaults(func=run)
    return parser


def read_message(interactive: bool) -> str | None:
    """The next line typed (None at end of input). Ctrl-C here propagates: it quits."""
    if interactive:
        try:
            return input(PROMPT)
        except EOFError:
            return None
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


def stream_answer(gen) -> None:
    """Print the answer as it comes. The first Ctrl-C stops it at the next token; a second
    one (during a long prompt, say) stops it at once."""
    pressed = []

    def on_sigint(signum, frame):
        if pressed:
            raise KeyboardInterrupt
        pressed.append(True)
        gen.cancel()

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: keep the default behaviour
        previous = None
    try:
        for piece in gen:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        gen.close()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    sys.stdout.write("\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from ..generate.chat import ChatSession

    interactive = sys.stdin is not None and sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  # line editing and history for input()
        except ImportError:
            pass
    with warnings_to_stderr():
        model, load_seconds = load_model(args)
        system = valid_text(args.system) if args.system else None
        session = ChatSession(model, system=system, max_tokens=args.max_tokens, stop=args.stop,
                              speculate=speculation(args), template_options=args.chat_template_kwargs,
                              **sampling_options(args))
        if interactive:
            name = getattr(getattr(model, "file", None), "name", None) or args.model
            note(f"lantern chat: {name} (loaded in {load_seconds:.1f} s). {HELP}.")
        while True:
            try:
                line = read_message(interactive)
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                sys.stdout.flush()
                return 0
            if line is None:
                if interactive:
                    sys.stdout.write("\n")
                return 0
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                command = text.split()[0].lower()
                if command in ("/exit", "/quit", "/bye"):
                    return 0
                if command == "/reset":
                    session.reset()
                    note("lantern: conversation cleared")
                elif command in ("/help", "/?"):
                    note(HELP)
                else:
                    note(f"lantern: unknown command {command}; {HELP}")
                continue
            try:
                gen = session.send(text)
            except TemplateError as exc:  # the template fails (or breaks a limit) on every message
                message = " ".join(str(exc).replace(NO_CHAT_HINT, NO_TEMPLATE_HINT).split())
                note(f"lantern: error: {message}")
                return 1
            except LanternError as exc:  # e.g. a message too long for the context: keep chatting
                note(f"lantern: error: {' '.join(str(exc).split())}")
                continue
            stream_answer(gen)
            if gen.finish_reason == "cancelled":
                note("lantern: answer stopped")
            elif gen.finish_reason == "context":
                note(f"lantern: the context of {model.context_length} tokens is full; the oldest turns "
                     f"will be dropped next time (or /reset)")
            elif gen.finish_reason == "length":
                note(f"lantern: answer cut at --max-tokens {gen.max_tokens}")
            if args.verbose:
                note(f"lantern: {stats_line(None, gen)} | finish reason: {gen.finish_reason}")

"""`lantern chat` driven through a pseudo-terminal the way a person types: a question, the
streamed answer, /reset, Ctrl-C in the middle of an answer, Ctrl-C at the prompt, /exit, Ctrl-D.

Uses only the standard library's `pty` (no pexpect dependency): the child gets the terminal as
its controlling terminal, so Ctrl-C typed there (byte 0x03) becomes SIGINT as it does for a person.
"""

from __future__ import annotations

import os
import platform
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

# System calls (numbers from /proc/PID/syscall) in which a program waits for its terminal:
# read, poll, select, pselect6, ppoll (x86-64: arch/x86/entry/syscalls/syscall_64.tbl; ARM64 has
# only read, pselect6 and ppoll: include/uapi/asm-generic/unistd.h).
WAITING_FOR_INPUT = {"x86_64": {"0", "7", "23", "270", "271"}, "aarch64": {"63", "72", "73"}}
READ_SYSCALLS = {"0", "63"}

QUESTION = "What is the capital of France?"
PROMPT = ">>> "
LOAD_TIMEOUT = 300
ANSWER_TIMEOUT = 300


class Terminal:
    """A program running on a pseudo-terminal, with expect-style reading."""

    def __init__(self, argv: list[str]):
        env = dict(os.environ, PYTHONIOENCODING="utf-8", TERM="dumb")
        pid, fd = pty.fork()
        if pid == 0:  # the child: the terminal is already its stdin/stdout/stderr
            try:
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = ""  # everything the program printed (and the terminal echoed)
        self.pos = 0  # how far expect() has consumed
        self.status: int | None = None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 4096)
        except OSError:  # EIO: the program closed the terminal (it exited)
            data = b""
        if not data:
            raise EOFError(f"the program ended; its output:\n{self.output}")
        self.output += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return True

    def expect(self, pattern: str, timeout: float = ANSWER_TIMEOUT) -> re.Match:
        """Wait for `pattern` (a regex) after what was already consumed; consume up to its end."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.output, self.pos)
            if match:
                self.pos = match.end()
                return match
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; output so far:\n{self.output}")
            self._read(min(left, 1.0))

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode("utf-8") + b"\r")

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def ctrl_d(self) -> None:
        os.write(self.fd, b"\x04")

    def wait_for_keyboard(self, timeout: float = LOAD_TIMEOUT) -> None:
        """Until the program's main thread is blocked waiting for the terminal (a read of fd 0, or
        select/poll, where readline waits): a key pressed before that, even by microseconds, is
        noticed by CPython only at the next keystroke, so a test must wait for this state."""
        waiting = WAITING_FOR_INPUT[platform.machine()]
        deadline = time.monotonic() + timeout
        while True:
            with open(f"/proc/{self.pid}/task/{self.pid}/syscall") as f:
                fields = f.read().split()
            if fields and fields[0] in waiting and (fields[0] not in READ_SYSCALLS or int(fields[1], 16) == 0):
                return
            assert time.monotonic() < deadline, f"the program never waited for input ({fields}):\n{self.output}"
            time.sleep(0.01)

    def wait(self, timeout: float = LOAD_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            try:
                self._read(0.2)
            except EOFError:
                pass
        raise AssertionError(f"the program did not exit; output:\n{self.output}")

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


@pytest.fixture
def chat(smollm2_path):
    terminals = []

    def start(*args: str) -> Terminal:
        t = Terminal([sys.executable, "-m", "lantern", "chat", "-m", "smollm2", *args])
        terminals.append(t)
        return t

    yield start
    for t in terminals:
        t.close()


def test_a_conversation_typed_at_the_terminal(chat):
    t = chat("--temperature", "0", "-n", "200")
    t.expect(r"/reset", LOAD_TIMEOUT)  # the banner names the commands
    t.expect(re.escape(PROMPT), LOAD_TIMEOUT)

    # A question; the answer streams back, then the prompt returns.
    t.type(QUESTION)
    answer = t.expect(re.escape(QUESTION) + r"\n(.*?)\n" + re.escape(PROMPT)).group(1)
    assert "Paris" in answer

    # /reset clears the conversation.
    t.type("/reset")
    t.expect(r"conversation cleared\n")
    t.expect(re.escape(PROMPT))

    # Ctrl-C in the middle of a long answer stops that answer only.
    t.type("Write a long story about a dragon who learns to bake bread.")
    t.expect(r"dragon who learns to bake bread\.\n")
    before = len(t.output)
    while len(t.output) - before < 40:  # some of the answer has been printed
        t._read(5.0)
    t.ctrl_c()
    t.expect(r"answer stopped\n")
    t.expect(re.escape(PROMPT))
    stopped_answer = t.output[before:]
    assert len(stopped_answer) < 2000  # it did not run on to the token limit

    # The session goes on: after /reset the same question is answered again.
    t.type("/reset")
    t.expect(re.escape(PROMPT))
    t.type(QUESTION)
    again = t.expect(re.escape(QUESTION) + r"\n(.*?)\n" + re.escape(PROMPT)).group(1)
    assert "Paris" in again

    t.type("/exit")
    assert t.wait() == 0


def test_ctrl_c_at_the_prompt_and_ctrl_d_quit_cleanly(chat):
    t = chat()
    t.expect(re.escape(PROMPT), LOAD_TIMEOUT)
    t.wait_for_keyboard()  # the state a person's key press meets, not a guess at how long it takes
    t.ctrl_c()
    assert t.wait() == 0
    assert "Traceback" not in t.output

    u = chat()
    u.expect(re.escape(PROMPT), LOAD_TIMEOUT)
    u.type("/nonsense")
    u.expect(r"unknown command /nonsense")
    u.expect(re.escape(PROMPT))
    u.wait_for_keyboard()
    u.ctrl_d()
    assert u.wait() == 0
    assert "Traceback" not in u.output


def test_chat_from_a_pipe_answers_each_line_without_prompts(smollm2_path):
    result = subprocess.run(
        [sys.executable, "-m", "lantern", "chat", "-m", "smollm2", "--temperature", "0", "-n", "40"],
        input=f"{QUESTION}\n/reset\n\n", capture_output=True, text=True, timeout=ANSWER_TIMEOUT,
        env=dict(os.environ, PYTHONIOENCODING="utf-8"),
    )
    assert result.returncode == 0, result.stderr
    assert PROMPT not in result.stdout
    assert "Paris" in result.stdout
    assert "conversation cleared" in result.stderr


# ----- a chat template that breaks a limit (issue #11 item 2) -------------------------------------


@pytest.fixture(scope="module")
def hostile_template_model(smollm2_path, tmp_path_factory):
    """SmolLM2 with a chat template that would loop for hours (two nested loops of 100,000)."""
    from lantern.testing.synthetic import rewrite

    hostile = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    return rewrite(smollm2_path, tmp_path_factory.mktemp("hostile") / "hostile-template.gguf",
                   metadata=lambda key, value: hostile if key == "tokenizer.chat_template" else value)


def test_a_template_over_the_time_limit_is_one_line_that_offers_no_chat(hostile_template_model):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    base = [sys.executable, "-m", "lantern"]
    run = subprocess.run(base + ["run", "-m", str(hostile_template_model), "-n", "4", "hi"], capture_output=True,
                         text=True, timeout=LOAD_TIMEOUT, env=env)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("lantern: error:")]
    assert len(errors) == 1 and "time limit of 1 s" in errors[0] and "--no-chat" in errors[0], run.stderr
    assert run.stdout == ""

    raw = subprocess.run(base + ["run", "-m", str(hostile_template_model), "--no-chat", "-n", "4", "--temperature",
                                 "0", "hi"], capture_output=True, text=True, timeout=LOAD_TIMEOUT, env=env)
    assert raw.returncode == 0, raw.stderr

    chat = subprocess.run(base + ["chat", "-m", str(hostile_template_model), "-n", "4"], input="hi\nhello\n",
                          capture_output=True, text=True, timeout=LOAD_TIMEOUT, env=env)
    assert chat.returncode == 1 and "Traceback" not in chat.stderr, chat.stderr
    errors = [ln for ln in chat.stderr.splitlines() if ln.startswith("lantern: error:")]
    assert len(errors) == 1 and "time limit of 1 s" in errors[0] and "lantern run --no-chat" in errors[0], chat.stderr

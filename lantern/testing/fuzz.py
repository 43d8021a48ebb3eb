"""Mutation fuzzing of GGUF files: what lantern does with a hostile model file.

Base files are small synthetic models (`lantern.testing.synthetic`) of every architecture in
lantern's registry (`lantern.models.ARCHITECTURES`, so a new architecture is fuzzed without
edits here) in several quant types. Each case mutates one base file, with knowledge of where the
GGUF header, the metadata values, the length fields and the tensor table lie, and then runs it
the way a user would: ``lantern.load(path)`` and ``model.logits(model.tokenize("Hello"))``.

Every case runs in a ``os.fork()`` of one process that has already imported torch and lantern
(a fresh interpreter per case would cost seconds), under an address-space cap (RLIMIT_AS) and a
timeout. Its outcome is one of `OUTCOMES`; the ones in `BAD` are bugs.

Run a long campaign with ``python -m lantern.testing.fuzz --cases 10000 --seed N``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import select
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: Outcome classes, in report order. "error": a LanternError (a clean refusal); "ran": loaded and
#: gave finite logits. The rest are bugs.
OUTCOMES = ("error", "ran", "exception", "nan", "memory", "crash", "hang")
BAD = frozenset(("exception", "nan", "memory", "crash", "hang"))

#: Quant types each architecture is fuzzed in: a legacy block type, the K-quant mix users
#: download most, and an 8-bit one.
QUANT_TYPES = ("Q4_0", "Q4_K_M", "Q8_0")

#: Families of mutation. "weights" changes tensor data only: the file is valid and the model
#: runs on whatever values it finds (NaN scales included), which the run-time check for NaN and
#: infinity must catch rather than the file validation; it is counted in a column of its own.
FILE_FAMILIES = ("header", "kv-value", "kv-item", "kv-length", "kv-type", "tensor-info", "bytes", "truncate",
                 "splice")
FAMILIES = FILE_FAMILIES + ("weights",)

DEFAULT_TIMEOUT = 60.0  # a case takes 0.2 s alone, up to 18 s on a machine busy with other jobs
DEFAULT_MEMORY_CAP = 3 << 30  # bytes of address space a case may add to the forked process

_U32 = [0, 1, 2, 3, 7, 31, 255, 256, 4096, 65535, 2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]
_U64 = _U32 + [2**32, 2**40, 2**48, 2**62, 2**63 - 1, 2**63, 2**64 - 33, 2**64 - 32, 2**64 - 2, 2**64 - 1]
_F32 = [0.0, -0.0, -1.0, 1e-30, 1e30, 3.4e38, -3.4e38, math.inf, -math.inf, math.nan]


@dataclass(frozen=True)
class Part:
    """A fixed-width value inside the file: where it is and how it is encoded."""

    offset: int
    size: int
    kind: str  # "u32", "u64", "i32", "f32", ... or "bytes"
    role: str  # "value", "item", "length", "count", "type", "n_dims", "dim", "tensor_type", "tensor_offset"
    owner: str  # the metadata key or tensor name


@dataclass
class BaseFile:
    """A valid GGUF file and the map of its header."""

    name: str
    path: Path
    data: bytes
    data_start: int
    parts: list[Part]
    tensor_offsets: list[int]


def base_files(arches=None, quant_types=QUANT_TYPES) -> list[BaseFile]:
    """One small synthetic model per architecture and quant type, mapped for mutation."""
    from ..models import ARCHITECTURES
    from .synthetic import Spec, cached_model

    found = []
    for arch in sorted(arches or ARCHITECTURES):
        spec = Spec(arch=arch, dim=256, n_layers=1, n_heads=4, n_kv_heads=2, ffn_dim=256, vocab_size=300,
                    context_length=512, name=f"fuzz-{arch}")
        for qtype in quant_types:
            path = cached_model(spec, qtype)
            found.append(map_file(f"{arch}-{qtype}", path))
    return found


def map_file(name: str, path: Path) -> BaseFile:
    """Where each value of `path`'s header lies, read with gguf's own reader."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    base = reader.data.ctypes.data
    parts: list[Part] = [
        Part(8, 8, "u64", "count", "tensor_count"),
        Part(16, 8, "u64", "count", "kv_count"),
        Part(4, 4, "u32", "value", "version"),
    ]

    def where(array) -> int:
        return int(array.ctypes.data - base)

    kinds = {np.uint8: "u8", np.int8: "i8", np.uint16: "u16", np.int16: "i16", np.uint32: "u32",
             np.int32: "i32", np.float32: "f32", np.uint64: "u64", np.int64: "i64", np.float64: "f64",
             np.bool_: "u8"}
    for field in reader.fields.values():
        if field.name.startswith("GGUF."):
            continue
        key_len, _key, vtype = field.parts[0], field.parts[1], field.parts[2]
        parts.append(Part(where(key_len), 8, "u64", "length", field.name))
        parts.append(Part(where(vtype), 4, "u32", "type", field.name))
        rest = field.parts[3:]
        if field.types[0] == GGUFValueType.ARRAY:
            parts.append(Part(where(rest[0]), 4, "u32", "type", field.name))
            parts.append(Part(where(rest[1]), 8, "u64", "count", field.name))
            rest = rest[2:]
        for i, item in enumerate(rest[:64]):  # string arrays: the first items are enough
            if field.types[-1] == GGUFValueType.STRING:
                if i % 2 == 0:
                    parts.append(Part(where(item), 8, "u64", "length", field.name))
                continue
            kind = kinds.get(item.dtype.type)
            if kind is not None:  # a scalar value ("value": hyper-parameters, token ids) or array item
                role = "item" if field.types[0] == GGUFValueType.ARRAY else "value"
                parts.append(Part(where(item), item.dtype.itemsize, kind, role, field.name))
    offsets = []
    for t in reader.tensors:
        name_len, _name, n_dims, dims, ttype, offset = t.field.parts
        parts.append(Part(where(name_len), 8, "u64", "length", t.name))
        parts.append(Part(where(n_dims), 4, "u32", "n_dims", t.name))
        for d in range(len(dims)):
            parts.append(Part(where(dims) + 8 * d, 8, "u64", "dim", t.name))
        parts.append(Part(where(ttype), 4, "u32", "tensor_type", t.name))
        parts.append(Part(where(offset), 8, "u64", "tensor_offset", t.name))
        offsets.append(int(offset[0]))
    data = Path(path).read_bytes()
    return BaseFile(name, Path(path), data, int(reader.data_offset), parts, offsets)


# ----- mutations -------------------------------------------------------------------------------


def _pack(kind: str, value) -> bytes:
    fmt = {"u8": "<B", "i8": "<b", "u16": "<H", "i16": "<h", "u32": "<I", "i32": "<i", "u64": "<Q",
           "i64": "<q", "f32": "<f", "f64": "<d"}[kind]
    if kind.startswith("f"):
        return struct.pack(fmt, float(value))
    bits = struct.calcsize(fmt) * 8
    value = int(value) % (1 << bits)
    if kind.startswith("i") and value >= 1 << (bits - 1):
        value -= 1 << bits
    return struct.pack(fmt, value)


def _hostile_value(rng: random.Random, part: Part, data: bytes, base: BaseFile):
    old = struct.unpack_from({4: "<I", 8: "<Q", 2: "<H", 1: "<B"}[part.size], data, part.offset)[0]
    if part.kind.startswith("f"):
        return rng.choice(_F32 + [rng.uniform(-1e6, 1e6)])
    if part.role == "tensor_offset":
        return rng.choice([
            0, old + 1, old + 32, old - 32, old + rng.randrange(1, 4096), old * 2,
            rng.choice(base.tensor_offsets), 2**64 - base.data_start, 2**64 - base.data_start + 32,
            2**64 - 32, len(data), len(data) - base.data_start, rng.randrange(0, 2**64),
        ])
    if part.role in ("dim", "n_dims"):
        return rng.choice([0, 1, 2, 3, 4, 5, old + 1, old - 1, old * 2, old // 2, 32, 33, 256, 2**31,
                           2**32, 2**62, 2**63, 2**64 - 1, rng.randrange(0, 2**64)])
    if part.role in ("type", "tensor_type"):
        return rng.choice(list(range(0, 42)) + [99, 255, 2**31, 2**32 - 1])
    near = [old + 1, old - 1, old * 2, old // 2, old + rng.randrange(1, 1 << 16)]
    table = _U32 if part.size <= 4 else _U64
    return rng.choice(table + near + [rng.randrange(0, 1 << (8 * part.size))])


def mutate(base: BaseFile, rng: random.Random, family: str) -> tuple[bytes, str]:
    """A mutated copy of `base` and a one-line description of the change."""
    data = bytearray(base.data)
    header_end = base.data_start

    def set_part(part: Part) -> str:
        value = _hostile_value(rng, part, data, base)
        data[part.offset : part.offset + part.size] = _pack(part.kind, value)
        return f"{part.role} of {part.owner} @{part.offset} = {value!r}"

    def pick(roles) -> Part:
        return rng.choice([p for p in base.parts if p.role in roles])

    if family == "header":
        what = set_part(pick(("count",)) if rng.random() < 0.5 else rng.choice(base.parts[:3]))
    elif family == "kv-value":  # a metadata scalar: hyper-parameters, token ids, flags
        what = set_part(pick(("value",)))
    elif family == "kv-item":  # an item of a metadata array: token scores and types
        what = set_part(pick(("item",)))
    elif family == "kv-length":
        what = set_part(pick(("length", "count")))
    elif family == "kv-type":
        what = set_part(pick(("type",)))
    elif family == "tensor-info":
        edits = [set_part(pick(("n_dims", "dim", "tensor_type", "tensor_offset")))
                 for _ in range(rng.choice((1, 1, 1, 2)))]
        what = "; ".join(edits)
    elif family == "bytes":
        n = rng.choice((1, 1, 2, 4, 8, 16))
        spots = sorted(rng.randrange(0, header_end) for _ in range(n))
        for spot in spots:
            data[spot] = rng.randrange(256) if rng.random() < 0.7 else data[spot] ^ (1 << rng.randrange(8))
        what = f"{n} byte(s) at {spots[:4]}{'...' if n > 4 else ''}"
    elif family == "truncate":
        cut = rng.randrange(0, header_end + 64) if rng.random() < 0.7 else rng.randrange(header_end, len(data))
        del data[cut:]
        what = f"cut at {cut} of {len(base.data)}"
    elif family == "splice":
        spot = rng.randrange(0, header_end)
        n = rng.choice((1, 2, 4, 8))
        if rng.random() < 0.5:
            del data[spot : spot + n]
            what = f"deleted {n} byte(s) at {spot}"
        else:
            data[spot:spot] = bytes(rng.randrange(256) for _ in range(n))
            what = f"inserted {n} byte(s) at {spot}"
    elif family == "weights":
        n = rng.choice((1, 4, 16, 64))
        for _ in range(n):
            spot = rng.randrange(header_end, len(data))
            data[spot] = rng.choice((0xFF, 0x7F, 0x7C, 0x00, rng.randrange(256)))
        what = f"{n} byte(s) of tensor data"
    else:
        raise ValueError(f"unknown mutation family {family!r}")
    return bytes(data), f"{family}: {what}"


# ----- running a case --------------------------------------------------------------------------


@dataclass
class Result:
    case: int
    base: str
    mutation: str
    outcome: str
    detail: str
    seconds: float


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child(path: Path, memory_cap: int) -> dict:
    """What happens when a user loads `path` and asks for logits (runs in the forked child)."""
    import torch

    import lantern
    from lantern.errors import LanternError, ModelFileError

    torch.set_num_threads(1)  # the parent's thread pools did not survive the fork; do not need them
    limit = _vm_size() + memory_cap
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        model = lantern.load(str(path))
        ids = model.tokenize("Hello")
        logits = model.logits(ids)
        if not bool(torch.isfinite(logits).all()):
            bad = int((~torch.isfinite(logits)).sum())
            return {"outcome": "nan", "detail": f"{bad} of {logits.numel()} logits are NaN or inf"}
        return {"outcome": "ran", "detail": f"logits {list(logits.shape)}"}
    except LanternError as exc:
        # A refused file must be named (an error about the prompt, e.g. a context of 1, need not be).
        message = str(exc)
        named = str(path) in message or not isinstance(exc, ModelFileError)
        return {"outcome": "error", "detail": ("" if named else "[no file name] ") + message[:300]}
    except MemoryError:
        return {"outcome": "memory", "detail": "MemoryError"}
    except BaseException as exc:  # noqa: BLE001 - every escape is what the fuzzer looks for
        text = f"{type(exc).__name__}: {exc}"
        if "can't allocate memory" in text or "not enough memory" in text:
            return {"outcome": "memory", "detail": text[:300]}
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        return {"outcome": "exception", "detail": (text[:300] + where)}


class _Running:
    """A forked case: its pid, the pipe its outcome comes back on, its deadline."""

    def __init__(self, path: Path, timeout: float, memory_cap: int):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the caller (pytest, the campaign loop)
            code = 0
            try:
                import faulthandler

                faulthandler.disable()  # a crash is reported by its signal, not a dump into the parent's output
                os.close(read_fd)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                result = _child(path, memory_cap)
                os.write(write_fd, json.dumps(result).encode())
            except BaseException:  # noqa: BLE001
                code = 3
            finally:
                os._exit(code)
        os.close(write_fd)
        self.pid, self.fd, self.timeout = pid, read_fd, timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.chunks: list[bytes] = []

    def read(self) -> bool:
        """Read what is ready; True once the child has closed its end (it is done)."""
        chunk = os.read(self.fd, 65536)
        if chunk:
            self.chunks.append(chunk)
            return False
        return True

    def finish(self, timed_out: bool) -> dict:
        os.close(self.fd)
        if timed_out:
            os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        if timed_out:
            return {"outcome": "hang", "detail": f"no answer within {self.timeout:.0f} s"}
        if os.WIFSIGNALED(status):
            return {"outcome": "crash", "detail": f"killed by {signal.Signals(os.WTERMSIG(status)).name}"}
        if self.chunks:
            return json.loads(b"".join(self.chunks))
        return {"outcome": "crash", "detail": f"exited {os.waitstatus_to_exitcode(status)} without a result"}


def run_case(path: Path, *, timeout: float = DEFAULT_TIMEOUT, memory_cap: int = DEFAULT_MEMORY_CAP) -> dict:
    """Run `_child(path)` in a fork; classify crashes (a signal) and hangs (past `timeout`)."""
    running = _Running(path, timeout, memory_cap)
    while True:
        left = running.deadline - time.monotonic()
        if left <= 0:
            return running.finish(timed_out=True)
        ready, _, _ = select.select([running.fd], [], [], left)
        if ready and running.read():
            return running.finish(timed_out=False)


def prepare(bases: list[BaseFile]) -> None:
    """Set up the parent once, so that each fork starts warm: torch and lantern imported, one
    thread, every module a load needs imported (by loading each base file). Nothing is run on
    the models here: a fork of a process whose compute thread pools have started can deadlock."""
    import warnings

    import torch

    import lantern

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for base in bases:
            lantern.load(str(base.path))


def cases(count: int, seed: int, bases: list[BaseFile], families=FAMILIES):
    """The fixed cases of `seed`: (index, base, mutated bytes, description)."""
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        base = rng.choice(bases)
        family = rng.choice(families)
        data, what = mutate(base, rng, family)
        yield i, base, data, what


def campaign(count: int, seed: int, *, families=FAMILIES, timeout: float = DEFAULT_TIMEOUT,
             memory_cap: int = DEFAULT_MEMORY_CAP, jobs: int = 2, bases: list[BaseFile] | None = None,
             workdir: Path | None = None, progress=None) -> list[Result]:
    """`count` mutated files from fixed `seed`, each run in a fork (`jobs` at a time); the results
    in case order."""
    import torch

    bases = bases or base_files()
    threads = torch.get_num_threads()
    prepare(bases)
    try:
        return _campaign(count, seed, bases, families, timeout, memory_cap, jobs, workdir, progress)
    finally:
        torch.set_num_threads(threads)  # the caller (a pytest session) gets its threads back


def _campaign(count, seed, bases, families, timeout, memory_cap, jobs, workdir, progress) -> list[Result]:
    results: dict[int, Result] = {}
    pending = cases(count, seed, bases, families)
    running: dict[int, tuple[_Running, int, BaseFile, str, Path]] = {}
    with tempfile.TemporaryDirectory(prefix="lantern-fuzz-", dir=workdir) as tmp:
        try:
            exhausted = False
            while running or not exhausted:
                while not exhausted and len(running) < jobs:
                    case = next(pending, None)
                    if case is None:
                        exhausted = True
                        break
                    i, base, data, what = case
                    path = Path(tmp) / f"case-{seed}-{i}.gguf"
                    path.write_bytes(data)
                    job = _Running(path, timeout, memory_cap)
                    running[job.fd] = (job, i, base, what, path)
                if not running:
                    break
                wait = max(0.0, min(job.deadline for job, *_ in running.values()) - time.monotonic())
                ready, _, _ = select.select(list(running), [], [], wait)
                now = time.monotonic()
                for fd in list(running):
                    job, i, base, what, path = running[fd]
                    done = fd in ready and job.read()
                    if not done and now < job.deadline:
                        continue
                    outcome = job.finish(timed_out=not done)
                    del running[fd]
                    detail = outcome["detail"].replace(str(path), "FILE")
                    result = Result(i, base.name, what, outcome["outcome"], detail, now - job.started)
                    path.unlink()
                    results[i] = result
                    if progress is not None:
                        progress(result)
        finally:  # interrupted (Ctrl-C, SIGTERM): no child outlives the campaign
            for job, *_ in running.values():
                job.finish(timed_out=True)
    return [results[i] for i in sorted(results)]


def table(results: list[Result]) -> str:
    """The counts as a Markdown table: file mutations and weight-data mutations side by side."""
    files = Counter(r.outcome for r in results if not r.mutation.startswith("weights"))
    weights = Counter(r.outcome for r in results if r.mutation.startswith("weights"))
    lines = ["| outcome | file mutations | weight-data mutations |", "|---|---|---|"]
    for outcome in OUTCOMES:
        lines.append(f"| {outcome} | {files[outcome]:,} | {weights[outcome]:,} |")
    lines.append(f"| total | {sum(files.values()):,} | {sum(weights.values()):,} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lantern.testing.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per case")
    parser.add_argument("--memory-cap-gib", type=float, default=DEFAULT_MEMORY_CAP / (1 << 30))
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated mutation families")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at the same time")
    parser.add_argument("--log", type=Path, default=None, help="write every case as a JSON line here")
    parser.add_argument("--table", type=Path, nargs="+", default=None, metavar="LOG",
                        help="print the counts table of finished (or running) campaigns' logs, and exit")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the temporary folder is removed
    if args.table:
        logged = [Result(**json.loads(line)) for log in args.table for line in open(log) if line.strip()]
        print(f"{len(logged):,} cases\n\n{table(logged)}")
        return 0
    families = tuple(args.families.split(","))
    log = open(args.log, "w") if args.log else None
    started = time.monotonic()

    done: list[int] = []

    def progress(result: Result) -> None:
        done.append(result.case)
        if log is not None:
            log.write(json.dumps(result.__dict__) + "\n")
            log.flush()
        if result.outcome in BAD:
            print(f"case {result.case} [{result.base}] {result.mutation}: {result.outcome}: {result.detail}",
                  flush=True)
        if len(done) % 500 == 0:
            print(f"{len(done)} cases, {time.monotonic() - started:.0f} s", flush=True)

    results = campaign(args.cases, args.seed, families=families, timeout=args.timeout,
                       memory_cap=int(args.memory_cap_gib * (1 << 30)), jobs=args.jobs, progress=progress)
    print(f"\n{len(results)} cases, seed {args.seed}, {time.monotonic() - started:.0f} s\n")
    print(table(results))
    return 1 if any(r.outcome in BAD for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

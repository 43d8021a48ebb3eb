"""llama.cpp (through llama-cpp-python) as the oracle for logits, and the fidelity measures.

Test and benchmark code only: lantern itself never imports llama_cpp.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

GGML_TYPE_F32 = 0


def llama_cpp_logits(path: str | os.PathLike, token_ids: Sequence[int], *, n_ctx: int | None = None,
                     f32_cache: bool = False, threads: int = 2) -> np.ndarray:
    """llama.cpp's float32 logits [len(ids), vocab] for a fresh sequence (`logits_all=True`)."""
    import llama_cpp

    n = len(token_ids)
    kwargs = dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32) if f32_cache else {}
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx or max(n, 64), n_batch=max(n, 64),
                          n_ubatch=max(n, 64), logits_all=True, n_threads=threads,
                          n_threads_batch=threads, verbose=False, **kwargs)
    try:
        llm.eval(list(token_ids))
        return np.array(llm.scores[:n], dtype=np.float32)
    finally:
        llm.close()


@dataclass
class Fidelity:
    """How close logits are to a reference: the largest difference at a position over the
    reference's standard deviation there (max over positions), and top-1 agreement."""

    distance: float
    top1_agree: int
    positions: int

    def __str__(self) -> str:
        return f"distance {self.distance:.4f} std, top-1 {self.top1_agree}/{self.positions}"


def fidelity(logits: np.ndarray, reference: np.ndarray) -> Fidelity:
    logits = np.asarray(logits, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    assert logits.shape == reference.shape, (logits.shape, reference.shape)
    per_position = np.abs(logits - reference).max(axis=1) / reference.std(axis=1)
    agree = int((logits.argmax(axis=1) == reference.argmax(axis=1)).sum())
    return Fidelity(float(per_position.max()), agree, logits.shape[0])


def reference_dir():
    """Where F32 exact-math copies are kept: lantern's test fixtures folder, never the model cache."""
    from .synthetic import fixture_dir

    return fixture_dir().parent / "references"


def cached_reference(path: str | os.PathLike):
    """The F32 exact-math copy of `path` (every tensor dequantized by gguf.quants), built once.

    It is kept under `reference_dir()`, keyed by the source's path, size and modification time,
    and not beside the source: a copy written next to a model in ``$LANTERN_CACHE/models`` is
    listed by ``lantern ls`` as one of the user's models (SmolLM2's is 540 MB).
    """
    import hashlib
    from pathlib import Path

    from .synthetic import f32_reference

    source = Path(path).resolve()
    stat = source.stat()
    key = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = reference_dir() / f"{source.stem}.{key}.ref-f32.gguf"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        f32_reference(source, target)  # written to a temporary name and renamed: never half-written
    return target

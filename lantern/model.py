"""`Model`: what `lantern.load()` returns. Ties the transformer, its KV caches, the tokenizer and
the chat template of one GGUF file together, on one device."""

from __future__ import annotations

import os
import time
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .errors import ContextOverflowError, LanternError, ModelFileError, NonFiniteError
from .models import architecture
from .models.layers import KVCache, TensorSource
from .weights.gguf_file import GGUFFile
from .weights.kernels import native, runs_on_pool, step_threads

# Prompt tokens per forward pass: bounds the transient activations ([chunk, ffn_dim] float32).
PREFILL_CHUNK = 512


def resolve_device(name: str | torch.device | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'mps' or 'auto' (the best available) as a torch.device."""
    name = str(name or "cpu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LanternError(f"unknown device {name!r}; use cpu, cuda, mps or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LanternError("device 'cuda' was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise LanternError("device 'mps' was asked for but Apple MPS is not available; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise LanternError(f"unsupported device {name!r}; use cpu, cuda, mps or auto")
    return device


class Model:
    def __init__(self, file: GGUFFile, device: torch.device, context_length: int | None = None,
                 sliding_window: bool = True, kernels: str | None = None):
        self.file = file
        self.device = device
        self.arch = file.architecture
        module = architecture(self.arch, file.path)
        overrides = {}
        if not sliding_window:
            overrides["sliding_window"] = 0
        if context_length is not None:
            if context_length <= 0:
                raise LanternError(f"context length must be positive, got {context_length}")
            overrides["context_length"] = context_length
        self.params = module.Params.from_gguf(file, **overrides)
        try:
            self.transformer = module.build(TensorSource(file, self.params, device, kernels))
        except ModelFileError as exc:  # a weight's own check knows the tensor, not the file
            if str(file.path) in str(exc) or file.path.name in str(exc):
                raise
            raise ModelFileError(f"{file.path}: {exc}") from None
        self._kernels_on_pool = runs_on_pool(self.transformer.modules())

    @classmethod
    def load(cls, spec: str | os.PathLike, device="cpu", context_length: int | None = None,
             sliding_window: bool = True, kernels: str | None = None) -> "Model":
        """`kernels`: "fast" (the native kernels on the CPU; on a GPU the file's integer codes
        kept on the device, lantern.weights.kernels.gpu), "reference" (exact float32 math,
        dequantized per call), or None (environment variable LANTERN_KERNELS, else fast)."""
        started = time.perf_counter()
        path = Path(spec) if isinstance(spec, os.PathLike) else _resolve_spec(spec)
        model = cls(GGUFFile(path), resolve_device(device), context_length, sliding_window, kernels)
        model.load_seconds = time.perf_counter() - started
        return model

    # ----- the engine -------------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        return self.params.context_length

    @property
    def vocab_size(self) -> int:
        return self.params.vocab_size

    def new_cache(self, max_length: int | None = None) -> KVCache:
        # The half-size cache goes with the fast CPU weight kernels: the reference path stays exact.
        return self.transformer.new_cache(max_length or self.context_length, self.device,
                                          half=self._kernels_on_pool)

    def forward(self, token_ids: Sequence[int] | torch.Tensor, cache: KVCache,
                last_only: bool = False, prompt: bool = False) -> torch.Tensor:
        """Feed `token_ids` after the cache's contents; float32 logits for every new token, or
        only the last one (what generation needs: skips most of the output head). prompt: the
        tokens are a prompt being read (`generate.prefill`), not sampled ones or drafts: at avx2
        (and neon with dotprod) their K-quant weight products round x to int8 per 32
        (native.prompt_int8_types, docs/FIDELITY.md); sampled tokens and drafts always keep 15 bits."""
        ids = self._as_ids(token_ids)
        start = cache.length
        chunk = min(len(ids), PREFILL_CHUNK)
        with step_threads(chunk, self._kernels_on_pool, self.transformer.runs_natively(chunk, cache, prompt)):
            if len(ids) <= PREFILL_CHUNK:  # a decode step, a draft, a short prompt: one pass, no copy
                logits = self.transformer(ids, cache, outputs="last" if last_only else "all", prompt=prompt)
            else:
                chunks = ids.split(PREFILL_CHUNK)
                parts = []
                for i, chunk in enumerate(chunks):
                    if not last_only:
                        parts.append(self.transformer(chunk, cache, outputs="all", prompt=prompt))
                    elif i == len(chunks) - 1:
                        parts.append(self.transformer(chunk, cache, outputs="last", prompt=prompt))
                    else:
                        self.transformer(chunk, cache, outputs="none", prompt=prompt)
                logits = torch.cat(parts)
        self._check_finite(logits, [(ids, cache, start)])
        return logits

    def forward_batch(self, passes: Sequence[tuple[Sequence[int], KVCache]],
                      prompts: Sequence[bool] | None = None, exact: bool = False) -> list[torch.Tensor]:
        """Feed several sequences at once: each `(token_ids, cache)` runs after its own cache's
        contents. Returns, per sequence, float32 logits [1, vocab] of its last token. prompts:
        which passes are prompts being read (as `forward`'s prompt; they must come after the
        others), so that a request's results do not depend on what shares its pass.

        Where a pass decodes at least native.BATCH_INT8_SEQUENCES sequences, their tokens take the
        prompt rows' 8-bit route too (the K-quants at avx2: 1.4x the pass's speed for Phi-3-mini;
        as close to the exact math as prompts are, docs/FIDELITY.md), unless `exact`: then decode
        tokens keep 15 bits, and a sequence's logits in a batch differ from its logits alone
        only in the last bits. On the 8-bit route each row's result depends on that row alone,
        so what a batch changes is the route, not the row's place in it.

        Where the native step runs this model, the pass is one native call: the weights are read
        once for every sequence's tokens, and each sequence attends to its own cache. Elsewhere
        (other devices, the reference kernels, passes longer than the native batch limit) each
        sequence runs alone, with the same results. A prompt chunk of more than the step's
        one-pass limit joins the decode tokens where the level has a prompt micro-kernel
        (native.kernel_name("gemm"): avx2, avx512) or reads this model's prompts in place anyway
        (`NativeStep.runs`: neon with dotprod, every weight on its 8-bit tile); elsewhere
        (portable, neon otherwise: prompts expand weights for torch's GEMM, the step would give
        the chunk to the row kernels) it runs apart on the prompt route. SmolLM2 at avx512, 8 decode
        tokens and a 56-token chunk, medians of 3: with the micro-kernel 110 ms joined, 138-210
        apart; on the row kernels it was 208 joined, 152 apart."""
        ids = [self._as_ids(tokens) for tokens, _ in passes]
        prompts = list(prompts) if prompts is not None else [False] * len(ids)
        if any(a and not b for a, b in zip(prompts, prompts[1:])):
            raise ValueError("forward_batch: prompt passes must come after the others")
        total = sum(len(i) for i in ids)
        transformer, step = self.transformer, self.transformer.native_step
        if (step is None or total > step.max_batch_tokens
                or any(cache.keys[0].dtype != torch.float16 for _, cache in passes)):
            return [self.forward(i, cache, last_only=True, prompt=p) for i, (_, cache), p in zip(ids, passes, prompts)]
        if len(passes) > 1 and native.kernel_name("gemm") is None and native.prompt_route() != "in_place":
            apart = [not step.runs(len(i), p) for i, p in zip(ids, prompts)]
            if any(apart) and not all(apart):
                joined = iter(self.forward_batch([p for p, a in zip(passes, apart) if not a],
                                                 [p for p, a in zip(prompts, apart) if not a]))
                return [self.forward(i, cache, last_only=True, prompt=p) if a else next(joined)
                        for i, (_, cache), a, p in zip(ids, passes, apart, prompts)]
        with torch.inference_mode(), step_threads(total, self._kernels_on_pool, native_pass=True):
            segments, cos, sin = [], [], []
            # the C side takes 8-bit rows only for the types the level has a tile for; the rest keep 15 bits
            int8 = not exact and sum(not p for p in prompts) >= native.BATCH_INT8_SEQUENCES
            for i, (_, cache), prompt in zip(ids, passes, prompts):
                cache.reserve(len(i))
                c, s = transformer.rotary.tables(cache.length, len(i))
                segments.append((cache, cache.length, len(i), 1, prompt or int8))
                cos.append(c)
                sin.append(s)
            x = transformer.embed(torch.cat(ids))
            logits = step.run_segments(x, segments, torch.cat(cos), torch.cat(sin))
        for cache, start, n, _, _ in segments:
            cache.length = start + n
        self._check_finite(logits, [(i, cache, start) for i, (cache, start, _, _, _) in zip(ids, segments)])
        return list(logits.split(1))

    def _check_finite(self, logits: torch.Tensor, passes) -> None:
        """Raise NonFiniteError, naming where the NaN or infinity first appeared, unless every
        logit is finite: nothing is ever sampled from NaN. `passes`: (ids, cache, start) of the
        tokens just run, re-run through the PyTorch blocks with a check after each to find it."""
        if bool(torch.isfinite(logits).all()):
            return
        where = next(filter(None, (self._first_non_finite(*p) for p in passes)), "the output head")
        raise NonFiniteError(
            f"{self.file.path.name}: the model's math produced NaN or infinity, first in {where}; the "
            f"file's weights or hyper-parameters overflow (check the file, or try another quantization)")

    @torch.inference_mode()
    def _first_non_finite(self, ids: torch.Tensor, cache: KVCache, start: int) -> str | None:
        t = self.transformer
        if not bool(torch.isfinite(t.embed(ids)).all()):
            return "the token embeddings"
        found: list[str] = []

        def check(name):
            def hook(module, args, output):
                if not found and torch.is_tensor(output) and not bool(torch.isfinite(output).all()):
                    found.append(name)
            return hook

        modules = [(f"layer {i}", block) for i, block in enumerate(t.blocks)]
        modules += [("the final norm", t.norm), ("the output head", t.output)]
        hooks = [module.register_forward_hook(check(name)) for name, module in modules]
        native, t.native_step = t.native_step, None  # the PyTorch blocks, one module at a time
        try:
            cache.truncate(start)
            t(ids, cache, outputs="all")
        finally:
            t.native_step = native
            for hook in hooks:
                hook.remove()
        return found[0] if found else None

    def decode_threads(self):
        """Context for a decode step together with the sampling of its logits: torch's own ops
        single-threaded while lantern's pool runs the weights (`step_threads`). Sampling or an
        arg-max over the vocabulary on torch's threads leaves its OpenMP workers spinning on the
        cores the next step's pool needs (SmolLM2 verify passes of 2 tokens: 30% of the time)."""
        return step_threads(1, self._kernels_on_pool)

    def logits(self, token_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """float32 [len(token_ids), vocab] next-token logits for a fresh sequence."""
        ids = self._as_ids(token_ids)
        return self.forward(ids, self.new_cache(max(len(ids), 1))).cpu()

    def _as_ids(self, token_ids) -> torch.Tensor:
        if isinstance(token_ids, (list, tuple)) and token_ids and all(type(t) is int for t in token_ids):
            # Python ints (every decode step): checked in Python, no tensor ops for the check.
            low, high = min(token_ids), max(token_ids)
        else:
            token_ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
            if token_ids.numel() == 0:
                raise LanternError("no tokens to run; the prompt is empty")
            low, high = int(token_ids.min()), int(token_ids.max())
        if low < 0 or high >= self.vocab_size:
            raise LanternError(f"token ids must be in [0, {self.vocab_size}); got {low}..{high}")
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device).reshape(-1)
        if ids.numel() > self.context_length:
            raise ContextOverflowError(
                f"{ids.numel()} tokens do not fit the context of {self.context_length}; shorten the prompt"
            )
        return ids.to(self.device)

    # ----- text -------------------------------------------------------------------------------

    @cached_property
    def tokenizer(self):
        from .tokenizer import Tokenizer

        return Tokenizer.from_gguf(self.file)

    @cached_property
    def chat_template(self):
        """The file's chat template (ChatML, with a warning, when the file has none)."""
        from .chat_template import ChatTemplate

        return ChatTemplate.from_gguf(self.file)

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def generate(self, prompt_or_messages, **options):
        """Stream a completion: iterate for text pieces; see lantern.generate.stream.generate."""
        from .generate.stream import generate

        return generate(self, prompt_or_messages, **options)

    def complete(self, prompt_or_messages, **options):
        """Run a completion to the end and return it (text, token ids, finish reason, timings)."""
        from .generate.stream import complete

        return complete(self, prompt_or_messages, **options)

    def chat(self, system: str | None = None, **options):
        """A multi-turn session that keeps earlier turns in the KV cache."""
        from .generate.chat import ChatSession

        return ChatSession(self, system=system, **options)

    def __repr__(self) -> str:
        p = self.params
        return (f"Model({self.file.path.name!r}, arch={self.arch}, layers={p.n_layers}, dim={p.dim}, "
                f"vocab={p.vocab_size}, context={p.context_length}, device={self.device})")


def _resolve_spec(spec: str) -> Path:
    from .hub import resolve

    return resolve(spec)

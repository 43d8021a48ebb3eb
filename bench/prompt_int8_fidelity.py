"""What 8-bit activations in prompt chunks would cost in fidelity, before any kernel is written:
lantern's PyTorch blocks (the same weight kernels; LANTERN_NATIVE_STEP=0) with x rounded to int8
before every K-quant weight product of a prompt chunk, with a scale per 32 (the route an int8
prompt tile would take, bench/native/int8_tile.c) or per 256 (llama.cpp's Q8_K), measured as
tests/test_fidelity.py measures: distance to the exact math in standard deviations of the
reference logits (and top-1 agreement) over a 320-token prompt, beside llama.cpp's.

    python bench/prompt_int8_fidelity.py --archs phi3,llama,qwen2 --types Q4_K_M,Q6_K

The rounding is applied in Python around `GGUFKernel` (a simulation: round to nearest, the scale
max|x| / 127 per group), so it measures the rounding itself, not a kernel.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["LANTERN_NATIVE_STEP"] = "0"  # every weight product through GGUFKernel, where x is rounded
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402

import lantern  # noqa: E402
from lantern.testing.oracle import fidelity, llama_cpp_logits  # noqa: E402
from lantern.testing.synthetic import Spec, cached_model, cached_reference  # noqa: E402
from lantern.weights.kernels import native  # noqa: E402

K_QUANTS = {QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K}
SPECS = {  # tests/test_fidelity.py's
    "phi3": Spec(arch="phi3", vocab_size=32064),
    "llama": Spec(arch="llama", n_heads=4, n_kv_heads=2, tied_output=True, vocab_size=1024),
    "qwen2": Spec(arch="qwen2", n_heads=4, n_kv_heads=2, vocab_size=1024, rope_base=1e6),
}
group = 0  # 0: x exact (lantern today); else int8 with one scale per `group` elements


def round_x(x: torch.Tensor, n: int) -> torch.Tensor:
    g = x.reshape(x.shape[0], -1, n)
    d = g.abs().amax(-1, keepdim=True) / 127
    q = torch.where(d > 0, torch.round(g / torch.where(d > 0, d, 1)), 0).clamp(-127, 127)
    return (q * d).reshape(x.shape)


def main() -> None:
    global group
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="phi3,llama,qwen2")
    ap.add_argument("--types", default="Q4_K_M,Q5_K_M,Q6_K")
    args = ap.parse_args()
    multiply = native.GGUFKernel.__call__

    def rounded(self, x):
        if group and x.shape[0] > native.GGUF_MAX_M and self.qtype in K_QUANTS:
            x = round_x(x, group)
        return multiply(self, x)

    native.GGUFKernel.__call__ = rounded
    for arch in args.archs.split(","):
        spec = SPECS[arch]
        ids = [int(i) for i in np.random.default_rng(0).integers(3, spec.vocab_size, 320)]
        for qtype in args.types.split(","):
            path = cached_model(spec, qtype)
            reference = llama_cpp_logits(cached_reference(path), ids, f32_cache=True)
            theirs = fidelity(llama_cpp_logits(path, ids), reference)
            model = lantern.load(path)
            row = [f"{arch} {qtype}: llama.cpp {theirs.distance:.3f} (top-1 {theirs.top1_agree})"]
            for group in (0, 32, 256):
                ours = fidelity(model.logits(ids).numpy(), reference)
                label = "x exact" if not group else f"x int8 per {group}"
                row.append(f"{label} {ours.distance:.3f} (top-1 {ours.top1_agree})")
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()

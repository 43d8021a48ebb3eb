"""The engine on CUDA: the fidelity rule, and the same logits as the exact math on the CPU.

On a GPU the fast kernels multiply exactly the file's weights in float32 (kernels/gpu.py), so
their logits match the CPU's reference kernels (float32 dequantize, the exact math) up to
summation order, not merely the CPU's fast kernels (whose activations are rounded: 0.002 to
0.05 std away). These run where PyTorch sees a CUDA GPU and skip, saying why, everywhere else
(CI has none). Time: about 20 s on an H200 machine once the fixtures exist.
"""

import numpy as np
import pytest
import torch

import lantern
from lantern.testing.synthetic import Spec, cached_model

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch on this machine"
)


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M",
                                   "Q4_K_M", "Q5_K_M", "Q6_K"])
def test_fidelity_on_cuda(qtype):
    from test_fidelity import SPECS, assert_at_least_as_faithful, prompt

    path = cached_model(SPECS["phi3"], qtype)
    ids = prompt(32064, 128)
    exact = lantern.load(path, kernels="reference").logits(ids)
    model = lantern.load(path, device="cuda")
    if qtype != "F16":
        kinds = {m.kernel_name for m in model.transformer.modules() if hasattr(m, "kernel_name")}
        assert kinds == {"gpu-triton"}, kinds
    gpu = model.logits(ids)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    np.testing.assert_allclose(gpu.numpy(), exact.numpy(), atol=2e-3 * float(exact.std()), rtol=0)
    assert_at_least_as_faithful(path, ids, device="cuda")


@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_kv_cache_decode_on_cuda(kernels):
    model = lantern.load(cached_model(Spec(arch="llama", n_kv_heads=2, vocab_size=1024), "Q4_K_M"),
                         device="cuda", kernels=kernels)
    ids = list(range(10, 50))
    batched = model.logits(ids)
    cache = model.new_cache()
    model.forward(ids[:30], cache)
    stepped = torch.cat([model.forward([t], cache).cpu() for t in ids[30:]])
    torch.testing.assert_close(stepped, batched[30:], atol=1e-3, rtol=1e-3)
    # Drafts of a few tokens take the Triton kernel's wider rows: the same logits again.
    cache = model.new_cache()
    model.forward(ids[:30], cache)
    drafted = torch.cat([model.forward(ids[i:i + 5], cache).cpu() for i in (30, 35)])
    torch.testing.assert_close(drafted, batched[30:], atol=1e-3, rtol=1e-3)

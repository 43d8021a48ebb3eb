"""The engine on CUDA: the fidelity rule and the same logits as the CPU.

These run where PyTorch sees a CUDA GPU and skip, saying why, everywhere else (CI has none).
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
    cpu = lantern.load(path).logits(ids)
    gpu = lantern.load(path, device="cuda").logits(ids)
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    np.testing.assert_allclose(gpu.numpy(), cpu.numpy(), atol=2e-3 * float(cpu.std()), rtol=0)
    assert_at_least_as_faithful(path, ids, device="cuda")


def test_kv_cache_decode_on_cuda():
    model = lantern.load(cached_model(Spec(arch="llama", n_kv_heads=2, vocab_size=1024), "Q4_K_M"), device="cuda")
    ids = list(range(10, 50))
    batched = model.logits(ids)
    cache = model.new_cache()
    model.forward(ids[:30], cache)
    stepped = torch.cat([model.forward([t], cache).cpu() for t in ids[30:]])
    torch.testing.assert_close(stepped, batched[30:], atol=1e-3, rtol=1e-3)

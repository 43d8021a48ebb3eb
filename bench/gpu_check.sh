#!/bin/bash
# The GPU checks of a session lent a CUDA machine (docs/PERFORMANCE.md, "CUDA"): the GPU tests,
# then Phi-3-mini-shaped Q4_K_M decode with and without CUDA graphs and `lantern bench`.
# The machine has no network: run it with gguf, diskcache and a llama-cpp-python build (the
# oracle; its lib/ holds plain shared libraries, so a CPU build from another Python works) on
# PYTHONPATH. Writes logs under $OUT (default /tmp/gpu-check). About 4 minutes on an H200 host.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__)"
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || echo "native library not built (see build.log): the CPU side runs on PyTorch"
# The full-size model (about 2 minutes with 16 cores) while the tests run.
python3 -c "from lantern.testing.synthetic import PHI3_MINI, cached_model; print(cached_model(PHI3_MINI, 'Q4_K_M'))" \
    > "$OUT/phi3.log" 2>&1 &
python3 -m pytest -p no:cacheprovider -q -rA tests/test_cuda.py tests/test_gpu_kernels.py tests/test_cuda_graph.py \
    tests/test_gpu_generation.py 2>&1 | tee "$OUT/pytest.log" | grep -E "^(FAILED|ERROR)|passed|failed"
wait
PHI3=$(tail -1 "$OUT/phi3.log")
python3 bench/cuda_graphs.py "$PHI3" 2>&1 | tee "$OUT/cuda_graphs.log"
python3 -m lantern bench -m "$PHI3" --device cuda --prompt-lengths 256,1024 --decode-tokens 128 --repeats 3 \
    2>&1 | tee "$OUT/bench.log" | tail -15

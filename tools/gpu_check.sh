#!/usr/bin/env bash
# The GPU machine's checks in one run (the device tool's working tree; see README "GPU"):
# build with the CUDA backend, then the CUDA op tests and the GPU-against-CPU model tests.
#   bash tools/gpu_check.sh [pytest args...]
# Needs: nvcc, cmake, ninja, pybind11, numpy, jinja2, tokenizers; the gguf wheel in .whl/ when the
# machine lacks it; EOQ_TEST_MODEL_GPU=path for SmolLM2 (a cut of it: ../shared/tools/cut_layers.py).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/eoq-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/eoq-site .whl/*.whl
  export PYTHONPATH=/tmp/eoq-site${PYTHONPATH:+:$PYTHONPATH}
fi
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DEOQ_CUDA=ON -DCMAKE_BUILD_TYPE=Release >"$OUT/cmake.log" 2>&1 || { tail -30 "$OUT/cmake.log"; exit 1; }
cmake --build build-gpu -j"$(nproc)" >"$OUT/build.log" 2>&1 || { grep -E "error|Error" -A3 "$OUT/build.log" | head -60; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
EOQ_BUILD_DIR=build-gpu python3 -m pytest -q -ra -p no:cacheprovider \
  tests/test_cuda_matvec.py tests/test_cuda_gemm.py tests/test_cuda_elementwise.py tests/test_cuda_attention.py tests/test_cuda_kv_codes.py \
  tests/test_gpu_model.py "$@" 2>&1 | tee "$OUT/pytest.log" | tail -60

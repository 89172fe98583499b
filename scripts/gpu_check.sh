#!/usr/bin/env bash
# One GPU check, under 8 minutes on one H100: the GPU tests, then the GPU benchmark.
# Runs on a machine that has CUDA torch, transformers, sentence-transformers and triton
# (the device image; it has no network): installs embedsvc itself, offline, without touching those.
# Results land in ${OUT:-./gpu-results}.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-./gpu-results}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels.py tests/test_attention_backends.py tests/test_families_gpu.py tests/test_index_gpu.py 2>&1 | tee "$out/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 330 python3 scripts/bench_gpu.py --json "$out/bench-gpu.json" 2>&1 | tee "$out/bench-gpu.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc, gpu bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))

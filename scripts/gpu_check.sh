#!/usr/bin/env bash
# One GPU check, under 8 minutes on one H100: the GPU tests, then the GPU benchmark.
# Runs on a machine that has CUDA torch, transformers, sentence-transformers and triton
# (the device image; it has no network): installs embedsvc itself, offline, without touching those.
# Results land in ${OUT:-./gpu-results}.
set -uo pipefail
usage="usage: scripts/gpu_check.sh   (no options; OUT=DIR picks where results go, default ./gpu-results)
Installs embedsvc into the current python3 (pip install --no-deps -e .: meant for the GPU device image,
not a development machine), runs the GPU tests and the GPU benchmark, writes DIR/gpu.txt, gpu-tests.log,
bench-gpu.json and bench-gpu.log. Exit 0 only when both pass."
case "${1:-}" in
    -h | --help) echo "$usage"; exit 0 ;;
    "") ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
if ! command -v nvidia-smi > /dev/null; then
    echo "gpu_check.sh: no nvidia-smi here: run it on a machine with an NVIDIA GPU" >&2
    exit 1
fi
cd "$(dirname "$0")/.."
out="${OUT:-./gpu-results}"
mkdir -p "$out"
# TOKENIZERS_PARALLELISM is left unset, as a served model has it: the Rust tokenizer's pool uses the
# machine's cores (the first H100 run had it false, and tokenizing took ~90 % of embed())
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels.py tests/test_attention_backends.py tests/test_families_gpu.py tests/test_index_gpu.py tests/test_host_path.py 2>&1 | tee "$out/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 330 python3 scripts/bench_gpu.py --json "$out/bench-gpu.json" 2>&1 | tee "$out/bench-gpu.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc, gpu bench rc=$bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))

#!/usr/bin/env bash
# Install a built embedsvc wheel into a Python environment: the one recipe shared by the Dockerfile and
# tests/test_packaging.py, so the container installs exactly what the test installed and checked.
#
#   scripts/install_wheel.sh PYTHON WHEEL [EXTRAS]      e.g. scripts/install_wheel.sh /venv/bin/python \
#                                                              dist/embedsvc-0.1.0-py3-none-any.whl server,index
#
# With the `server` extra, torch is installed first from TORCH_SPEC (default torch==2.13.0) and, when set,
# TORCH_INDEX_URL: https://download.pytorch.org/whl/cpu gives the CPU build, .../whl/cu128 a CUDA one.
# Without that pin pip resolves a bare `torch` from PyPI: the multi-GB CUDA build on Linux.
# No extras: the client-only install (grpcio, protobuf, numpy; no torch, transformers or faiss).
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 PYTHON WHEEL [EXTRAS]" >&2
    exit 2
fi
python=$1
wheel=$2
extras=${3:-}
torch_spec=${TORCH_SPEC:-torch==2.13.0}

if [[ ! -f $wheel ]]; then
    echo "$0: no such wheel: $wheel" >&2
    exit 2
fi

pip=("$python" -m pip install --no-input --disable-pip-version-check)
if [[ ",$extras," == *,server,* ]]; then
    "${pip[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$torch_spec"
fi
"${pip[@]}" "$wheel${extras:+[$extras]}"
# a broken resolution (a dependency missing or at a conflicting version) fails here, not at first use
"$python" -m pip check

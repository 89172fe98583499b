"""The CUDA paths (flash kernels through torch's varlen attention, Triton pooling) on every
attention shape the families use: causal, bidirectional, bidirectional sliding window (Gemma3),
local windows (ModernBERT), GQA. Checked against the CPU path, which tests/test_families.py checks
against each family's reference. GPU only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedsvc import Embedder
from tests.test_families import BUILDERS, DOCUMENTS, QUERIES, cosine_rows

pytestmark = pytest.mark.gpu

FAMILIES = {
    "e5": {},
    "qwen3": {},
    "gemma": {},
    "grit": {"profile": "gritlm"},
    "modernbert": {},
    "me5": {"profile": "e5"},
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("families-gpu")
    return {name: BUILDERS[name](root) for name in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_cuda_packed_path_matches_the_cpu_recipe(built, family, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    options = FAMILIES[family]
    cpu = Embedder.from_pretrained(built[family], device="cpu", **options)
    gpu = Embedder.from_pretrained(built[family], device="cuda", dtype=dtype, **options)
    texts = QUERIES + DOCUMENTS
    floor = 0.999 if dtype == "bfloat16" else 0.99999
    for kind in ("query", "document"):
        ours, reference = gpu.embed(texts, input_type=kind), cpu.embed(texts, input_type=kind)
        assert cosine_rows(ours, reference).min() >= floor


@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_deterministic_mode_is_batch_invariant(built, family):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    emb = Embedder.from_pretrained(built[family], device="cuda", deterministic=True, **FAMILIES[family])
    texts = QUERIES + DOCUMENTS
    batch = emb.embed(texts)
    for i, text in enumerate(texts):
        assert np.array_equal(emb.embed([text])[0], batch[i])

"""Triton kernels against their plain-torch references: on CPU via TRITON_INTERPRET=1, and on GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

CHECK = textwrap.dedent("""
    import torch
    from embedsvc.kernels.segment_pool import segment_pool, segment_pool_reference
    torch.manual_seed(0)
    device = "{device}"
    lengths = [5, 1, 17, 3, 40]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    hidden = torch.randn(int(cu[-1]), 200, device=device, dtype={dtype})
    starts = torch.tensor([0, 0, 2, 1, 5], device=device)
    ends = torch.tensor([5, 1, 16, 3, 40], device=device)
    for mode in ("cls", "last", "mean", "weighted_mean", "max"):
        for dims, norm in ((None, False), (64, True), (200, True), (130, False)):
            got = segment_pool(hidden, cu, starts, ends, mode, dimensions=dims, normalize=norm, block_d=64)
            want = segment_pool_reference(hidden, cu, starts, ends, mode, dimensions=dims, normalize=norm)
            assert got.shape == want.shape, (mode, got.shape, want.shape)
            torch.testing.assert_close(got, want, rtol={tol}, atol={tol}), (mode, dims, norm)
    print("ok")
""")


def test_segment_pool_matches_reference_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # set before triton is imported: a fresh process
    code = CHECK.format(device="cpu", dtype="torch.float32", tol="1e-5")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["torch.float32", "torch.bfloat16"])
def test_segment_pool_on_gpu(dtype):
    code = CHECK.format(device="cuda", dtype=dtype, tol="1e-5" if dtype == "torch.float32" else "2e-2")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr


@pytest.mark.gpu
def test_packed_cuda_path_matches_padded_reference(llama_dir):
    import numpy as np

    from embedsvc import Embedder
    from tests.tiny_models import corpus

    texts = corpus(30, seed=1)
    packed = Embedder.from_pretrained(llama_dir, device="cuda", dtype="float32", batching="packed")
    padded = Embedder.from_pretrained(llama_dir, device="cpu", batching="padded")
    a, b = packed.embed(texts), padded.embed(texts)
    assert ((a * b).sum(1)).min() >= 0.9999
    det = Embedder.from_pretrained(llama_dir, device="cuda", deterministic=True)
    batch = det.embed(texts)
    assert all(np.array_equal(det.embed([t])[0], batch[i]) for i, t in enumerate(texts))
    assert torch.cuda.is_available()

"""Packed attention backends against per-sequence SDPA written out here.

torch's ``varlen_attn`` changed keywords between releases (2.10: ``is_causal``; 2.11:
``window_size``; later: ``enable_gqa`` too). The CPU tests drive the adapter with stand-ins
that have each release's signature and refuse what that release refuses; the GPU test runs
the real kernel.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from embedsvc.engine import attention


def reference(q, k, v, cu, *, causal, window=None):
    """One SDPA call per sequence with an explicit boolean mask: [t, h, d] in and out."""
    groups = q.shape[1] // k.shape[1]
    out = []
    for start, stop in itertools.pairwise(cu.tolist()):
        n = stop - start
        qs, ks, vs = (x[start:stop].transpose(0, 1).float() for x in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        pos = torch.arange(n, device=q.device)
        diff = pos[:, None] - pos[None, :]
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device)
        if causal:
            mask &= diff >= 0
        if window:
            # transformers: a query sees `window` keys on its left, itself included (Mistral), and as
            # many on its right when bidirectional (Gemma3 use_bidirectional_attention: |i - j| < window)
            mask &= diff.abs() < window
        out.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).transpose(0, 1))
    return torch.cat(out).to(q.dtype)


def packed_inputs(device, dtype, heads=4, kv_heads=2, lengths=(7, 1, 19, 12, 19), head_dim=16):
    torch.manual_seed(0)
    total = sum(lengths)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)
    q = torch.randn(total, heads, head_dim, device=device, dtype=dtype)
    k = torch.randn(total, kv_heads, head_dim, device=device, dtype=dtype)
    v = torch.randn(total, kv_heads, head_dim, device=device, dtype=dtype)
    return q, k, v, cu, max(lengths)


def _mask_from(n, causal, left, right):
    """flash-attn's window semantics: keys from i - left to i + right (-1: unbounded)."""
    pos = torch.arange(n)
    diff = pos[:, None] - pos[None, :]
    mask = torch.ones(n, n, dtype=torch.bool)
    if causal:
        mask &= diff >= 0
    if left is not None and left >= 0:
        mask &= diff <= left
    if right is not None and right >= 0:
        mask &= -diff <= right
    return mask


def fake_varlen(release):
    """A varlen_attn with one release's signature, computing with flash-attn's window semantics."""

    def compute(q, k, v, cu, *, scale, causal, left, right=None):
        if k.shape[1] != q.shape[1]:
            raise RuntimeError("number of heads in key/value must equal query's")  # no GQA here
        out = []
        for start, stop in itertools.pairwise(cu.tolist()):
            mask = _mask_from(stop - start, causal, left, right)
            qs, ks, vs = (x[start:stop].transpose(0, 1) for x in (q, k, v))
            out.append(
                F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale).transpose(0, 1)
            )
        return torch.cat(out)

    if release == "2.10":

        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, scale=None):
            return compute(query, key, value, cu_seq_q, scale=scale, causal=is_causal, left=None)

    elif release == "2.11":

        def varlen_attn(  # type: ignore[misc]
            query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)
        ):
            left, right = window_size
            return compute(
                query, key, value, cu_seq_q, scale=scale, causal=right == 0, left=left, right=right
            )

    else:

        def varlen_attn(  # type: ignore[misc]
            query,
            key,
            value,
            cu_seq_q,
            cu_seq_k,
            max_q,
            max_k,
            *,
            scale=None,
            window_size=(-1, -1),
            enable_gqa=False,
        ):
            if enable_gqa:
                groups = query.shape[1] // key.shape[1]
                key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
            left, right = window_size
            return compute(
                query, key, value, cu_seq_q, scale=scale, causal=right == 0, left=left, right=right
            )

    return varlen_attn


CASES = [(True, None), (False, None), (True, 5), (False, 5)]


@pytest.mark.parametrize("release", ["2.10", "2.11", "2.13"])
@pytest.mark.parametrize(("causal", "window"), CASES)
def test_torch_varlen_adapter_for_each_release(monkeypatch, release, causal, window):
    monkeypatch.setattr(attention, "_torch_varlen", lambda: fake_varlen(release))
    attention._torch_varlen_params.cache_clear()
    try:
        q, k, v, cu, longest = packed_inputs("cpu", torch.float32)
        got = attention.varlen_attention(
            q, k, v, cu, longest, causal=causal, scale=None, backend="torch_varlen", sliding_window=window
        )
    finally:
        attention._torch_varlen_params.cache_clear()
    torch.testing.assert_close(
        got, reference(q, k, v, cu, causal=causal, window=window), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(("causal", "window"), CASES)
def test_sdpa_loop_matches_reference(causal, window):
    q, k, v, cu, longest = packed_inputs("cpu", torch.float32)
    got = attention.varlen_attention(
        q, k, v, cu, longest, causal=causal, scale=None, backend="sdpa_loop", sliding_window=window
    )
    torch.testing.assert_close(
        got, reference(q, k, v, cu, causal=causal, window=window), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("layout", ["token_major", "head_major"])
@pytest.mark.parametrize(("causal", "window"), CASES)
def test_sdpa_loop_longest_first_batches_match_reference(causal, window, layout, grouped):
    # batches are planned longest first, so sequences of one length lie back to back: those groups run
    # on strided views of the packed tensors; (12, 19, 12) keeps one group apart (the gather path)
    lengths = (19, 19, 19, 12, 19, 7, 7, 1, 12)
    q, k, v, cu, _ = packed_inputs("cpu", torch.float32, lengths=lengths)
    if layout == "head_major":  # [t, h, d] views of [h, t, d] memory, as a rotary model's states are
        q, k, v = (x.transpose(0, 1).contiguous().transpose(0, 1) for x in (q, k, v))
    got = attention.sdpa_loop(
        q, k, v, cu.tolist(), causal=causal, scale=None, sliding_window=window, group_equal_lengths=grouped
    )
    torch.testing.assert_close(
        got, reference(q, k, v, cu, causal=causal, window=window), rtol=1e-5, atol=1e-5
    )


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch_varlen", "sdpa_loop"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("causal", "window"), CASES)
def test_cuda_backends_match_reference(backend, dtype, causal, window):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if backend not in attention.available_backends(torch.device("cuda")):
        pytest.skip(f"{backend} is not available with this torch")
    q, k, v, cu, longest = packed_inputs("cuda", dtype, heads=8, kv_heads=2)
    got = attention.varlen_attention(
        q, k, v, cu, longest, causal=causal, scale=None, backend=backend, sliding_window=window
    )
    torch.testing.assert_close(
        got, reference(q, k, v, cu, causal=causal, window=window), rtol=2e-2, atol=2e-2
    )


@pytest.mark.gpu
def test_torch_varlen_is_batch_invariant_on_cuda():
    """Deterministic mode relies on it: a sequence's output bits must not depend on its neighbours."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if "torch_varlen" not in attention.available_backends(torch.device("cuda")):
        pytest.skip("torch_varlen is not available with this torch")
    q, k, v, cu, longest = packed_inputs(
        "cuda", torch.bfloat16, heads=32, kv_heads=8, lengths=(300, 5, 77, 512), head_dim=128
    )
    together = attention.varlen_attention(
        q, k, v, cu, longest, causal=True, scale=None, backend="torch_varlen"
    )
    for start, stop in itertools.pairwise(cu.tolist()):
        alone_cu = torch.tensor([0, stop - start], dtype=torch.int32, device="cuda")
        alone = attention.varlen_attention(
            q[start:stop],
            k[start:stop],
            v[start:stop],
            alone_cu,
            stop - start,
            causal=True,
            scale=None,
            backend="torch_varlen",
        )
        assert torch.equal(alone, together[start:stop])

"""Pooling functions against plain per-sequence loops, for left/right padding and packed layouts."""

from __future__ import annotations

import pytest
import torch

from embedsvc.engine.pooling import finalize, pool_packed, pool_padded

MODES = ["cls", "mean", "last", "weighted_mean", "max"]


def reference(states: torch.Tensor, mode: str, start: int, end: int) -> torch.Tensor:
    """One unpadded sequence [n, d], pooled over tokens start..end-1, written plainly."""
    span = states[start:end]
    if mode == "cls":
        return span[0]
    if mode == "last":
        return span[-1]
    if mode == "mean":
        return span.mean(0)
    if mode == "max":
        return span.max(0).values
    weights = torch.arange(start + 1, end + 1, dtype=torch.float32)  # SGPT: w_i = i / sum(j)
    return (span * weights[:, None]).sum(0) / weights.sum()


@pytest.fixture
def sequences() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(n, 8) for n in (5, 1, 9, 3)]


def spans(seqs: list[torch.Tensor], with_span: bool) -> list[tuple[int, int]]:
    if not with_span:
        return [(0, len(s)) for s in seqs]
    return [(min(1, len(s) - 1), max(len(s) - 1, min(1, len(s) - 1) + 1)) for s in seqs]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("with_span", [False, True])
def test_padded_matches_reference(sequences, mode, side, with_span):
    longest = max(len(s) for s in sequences)
    hidden = torch.full((len(sequences), longest, 8), 123.0)  # junk in padding must not leak
    mask = torch.zeros(len(sequences), longest, dtype=torch.long)
    for i, s in enumerate(sequences):
        if side == "right":
            hidden[i, : len(s)], mask[i, : len(s)] = s, 1
        else:
            hidden[i, longest - len(s) :], mask[i, longest - len(s) :] = s, 1
    sp = spans(sequences, with_span)
    got = pool_padded(hidden, mask, mode, torch.tensor([a for a, _ in sp]), torch.tensor([b for _, b in sp]))
    want = torch.stack([reference(s, mode, a, b) for s, (a, b) in zip(sequences, sp, strict=True)])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("with_span", [False, True])
def test_packed_matches_reference(sequences, mode, with_span):
    hidden = torch.cat(sequences)
    cu = torch.tensor([0, *torch.tensor([len(s) for s in sequences]).cumsum(0).tolist()], dtype=torch.int32)
    sp = spans(sequences, with_span)
    got = pool_packed(hidden, cu, mode, torch.tensor([a for a, _ in sp]), torch.tensor([b for _, b in sp]))
    want = torch.stack([reference(s, mode, a, b) for s, (a, b) in zip(sequences, sp, strict=True)])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_bf16_hidden_pools_in_float32(sequences):
    hidden = torch.cat(sequences).to(torch.bfloat16)
    cu = torch.tensor([0, 5, 6, 15, 18], dtype=torch.int32)
    assert pool_packed(hidden, cu, "mean").dtype == torch.float32


def test_unknown_mode_is_rejected(sequences):
    with pytest.raises(ValueError, match="unknown pooling 'avg'"):
        pool_packed(torch.cat(sequences), torch.tensor([0, 18]), "avg")


def test_finalize_truncates_then_normalizes():
    v = torch.tensor([[3.0, 4.0, 12.0]])
    out = finalize(v, 2, True)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8]]))
    torch.testing.assert_close(finalize(v, None, False), v)

"""Pooling: pure functions from token states to one vector per sequence.

Two layouts are supported:

* padded: ``hidden [b, s, d]`` with ``attention_mask [b, s]``; left or right padding;
* packed: ``hidden [t, d]`` holding sequences back to back, delimited by ``cu_seqlens [b + 1]``.

``starts`` / ``ends`` (per sequence, in token positions counted within the sequence)
restrict pooling to a span: prompt tokens excluded from mean pooling
(sentence-transformers' ``include_prompt=False``) or echo embeddings' second copy.
Results are float32 whatever the hidden dtype.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from embedsvc.models.profiles import check_pooling


def _positions_padded(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's index inside its own sequence (padding side agnostic), and lengths."""
    mask = attention_mask.to(torch.long)
    return mask.cumsum(dim=1) - 1, mask.sum(dim=1)


def sqrt_len_scale(mean: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """mean_sqrt_len pooling (sentence-transformers' mean_sqrt_len_tokens) from the mean:
    sum / sqrt(n) = mean * sqrt(n)."""
    counts = (ends - starts).to(device=mean.device, dtype=torch.float32).clamp(min=1)
    return mean * counts.sqrt()[:, None]


def pool_padded(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    mode: str,
    starts: torch.Tensor | None = None,
    ends: torch.Tensor | None = None,
) -> torch.Tensor:
    check_pooling(mode)
    hidden = hidden.float()
    index, lengths = _positions_padded(attention_mask)
    starts = torch.zeros_like(lengths) if starts is None else starts.to(lengths)
    ends = lengths if ends is None else ends.to(lengths)
    if mode == "mean_sqrt_len":
        return sqrt_len_scale(pool_padded(hidden, attention_mask, "mean", starts, ends), starts, ends)
    real = attention_mask.bool()
    selected = real & (index >= starts[:, None]) & (index < ends[:, None])

    if mode in ("cls", "last"):
        target = starts if mode == "cls" else ends - 1
        hit = real & (index == target[:, None])
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, hit.to(torch.int8).argmax(dim=1)]
    if mode == "max":
        filled = hidden.masked_fill(~selected[..., None], float("-inf"))
        return filled.max(dim=1).values
    if mode == "mean":
        weights = selected.to(hidden.dtype)
    else:  # weighted_mean: SGPT position weights w_i = i / sum(j), positions counted from 1
        weights = (index + 1).clamp(min=0).to(hidden.dtype) * selected
    summed = torch.einsum("bsd,bs->bd", hidden, weights)
    return summed / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)


def pool_packed(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    mode: str,
    starts: torch.Tensor | None = None,
    ends: torch.Tensor | None = None,
    *,
    per_sequence: bool = False,
) -> torch.Tensor:
    """``per_sequence``: one reduction per sequence in token order (batch-invariant, no atomics)."""
    check_pooling(mode)
    if mode == "mean_sqrt_len":
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(hidden.device, torch.long)
        lo = torch.zeros_like(lengths) if starts is None else starts.to(lengths)
        hi = lengths if ends is None else ends.to(lengths)
        mean = pool_packed(hidden, cu_seqlens, "mean", starts, ends, per_sequence=per_sequence)
        return sqrt_len_scale(mean, lo, hi)
    if per_sequence and mode in ("mean", "weighted_mean", "max"):
        return _pool_each(hidden, cu_seqlens, mode, starts, ends)
    hidden = hidden.float()
    cu = cu_seqlens.to(device=hidden.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    n_seq = lengths.shape[0]
    # no spans given: every token counts, known without reading the device (no synchronisation)
    given = starts is not None or ends is not None
    starts = torch.zeros_like(lengths) if starts is None else starts.to(lengths)
    ends = lengths if ends is None else ends.to(lengths)

    if mode == "cls":
        return hidden[cu[:-1] + starts]
    if mode == "last":
        return hidden[cu[:-1] + ends - 1]

    # one pass over the batch: each token's sequence, then a scatter into that sequence's row; spans
    # that leave tokens out zero their weight (mean) or mask them (max) instead of gathering the rest
    seq_id = torch.repeat_interleave(
        torch.arange(n_seq, device=hidden.device), lengths, output_size=hidden.shape[0]
    )
    full = not given or (bool((starts == 0).all()) and bool((ends == lengths).all()))
    index = torch.arange(hidden.shape[0], device=hidden.device) - cu[:-1][seq_id]
    selected = None if full else (index >= starts[seq_id]) & (index < ends[seq_id])
    out = hidden.new_zeros((n_seq, hidden.shape[1]))
    if mode == "max":
        rows = hidden if selected is None else hidden.masked_fill(~selected[:, None], float("-inf"))
        out.fill_(float("-inf"))
        return out.scatter_reduce(0, seq_id[:, None].expand_as(rows), rows, reduce="amax")
    if mode == "mean":
        weights = torch.ones_like(seq_id, dtype=hidden.dtype)
        rows = hidden
    else:
        weights = (index + 1).to(hidden.dtype)
        rows = hidden * weights[:, None]
    if selected is not None:
        weights = weights * selected
        rows = rows * selected[:, None]
    out.index_add_(0, seq_id, rows)
    totals = hidden.new_zeros(n_seq).index_add_(0, seq_id, weights)
    return out / totals[:, None].clamp(min=1e-9)


def _pool_each(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    mode: str,
    starts: torch.Tensor | None,
    ends: torch.Tensor | None,
) -> torch.Tensor:
    bounds = cu_seqlens.tolist()
    lo_list = [0] * (len(bounds) - 1) if starts is None else starts.tolist()
    hi_list = [b - a for a, b in itertools.pairwise(bounds)] if ends is None else ends.tolist()
    rows = []
    for base, lo, hi in zip(bounds[:-1], lo_list, hi_list, strict=True):
        span = hidden[base + lo : base + hi].float()
        if mode == "max":
            rows.append(span.max(dim=0).values)
        elif mode == "mean":
            rows.append(span.sum(dim=0) / span.shape[0])
        else:
            weights = torch.arange(lo + 1, hi + 1, device=hidden.device, dtype=torch.float32)
            rows.append((span * weights[:, None]).sum(dim=0) / weights.sum())
    return torch.stack(rows)


def finalize(vectors: torch.Tensor, dimensions: int | None, normalize: bool) -> torch.Tensor:
    """Matryoshka truncation, then L2 normalisation (sentence-transformers' order)."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if normalize:
        vectors = F.normalize(vectors, p=2, dim=-1)
    return vectors

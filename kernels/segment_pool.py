"""Fused segment pooling (+ Matryoshka truncation + L2 normalisation) over packed hidden states.

One Triton program per sequence reads its tokens once, pools them (cls, mean,
last, weighted_mean, max) over the span ``[start, end)``, keeps the first
``dimensions`` features and optionally L2-normalises, writing float32 rows.
:func:`segment_pool_reference` is the plain-torch definition it is tested against
(on CPU under ``TRITON_INTERPRET=1``, on GPU when one is present).
"""

from __future__ import annotations

import torch

from embedsvc.engine.pooling import finalize, pool_packed

MODES = {"cls": 0, "last": 1, "mean": 2, "weighted_mean": 3, "max": 4}


def segment_pool_reference(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    mode: str,
    *,
    dimensions: int | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    return finalize(pool_packed(hidden, cu_seqlens, mode, starts, ends), dimensions, normalize)


def _kernel() -> object:
    import triton
    import triton.language as tl

    @triton.jit
    def segment_pool_kernel(
        hidden_ptr,
        cu_ptr,
        start_ptr,
        end_ptr,
        out_ptr,
        stride_h,
        stride_o,
        d_out,
        MODE: tl.constexpr,
        NORMALIZE: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        seq = tl.program_id(0)
        base = tl.load(cu_ptr + seq).to(tl.int64)
        lo = tl.load(start_ptr + seq).to(tl.int64)
        hi = tl.load(end_ptr + seq).to(tl.int64)
        count = (hi - lo).to(tl.float32)
        weight_total = ((hi * (hi + 1) - lo * (lo + 1)) // 2).to(tl.float32)  # sum of positions lo+1..hi
        squares = tl.zeros([BLOCK_D], dtype=tl.float32)
        for d0 in range(0, d_out, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            dmask = offs_d < d_out
            if MODE == 0:
                acc = tl.load(hidden_ptr + (base + lo) * stride_h + offs_d, mask=dmask, other=0.0).to(
                    tl.float32
                )
            elif MODE == 1:
                acc = tl.load(hidden_ptr + (base + hi - 1) * stride_h + offs_d, mask=dmask, other=0.0).to(
                    tl.float32
                )
            else:
                if MODE == 4:
                    acc = tl.full([BLOCK_D], float("-inf"), dtype=tl.float32)
                else:
                    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
                for t0 in range(lo, hi, BLOCK_T):
                    offs_t = t0 + tl.arange(0, BLOCK_T)
                    tmask = offs_t < hi
                    ptrs = hidden_ptr + (base + offs_t)[:, None] * stride_h + offs_d[None, :]
                    m = tmask[:, None] & dmask[None, :]
                    if MODE == 4:
                        x = tl.load(ptrs, mask=m, other=float("-inf")).to(tl.float32)
                        acc = tl.maximum(acc, tl.max(x, axis=0))
                    else:
                        x = tl.load(ptrs, mask=m, other=0.0).to(tl.float32)
                        if MODE == 3:
                            w = tl.where(tmask, (offs_t + 1).to(tl.float32), 0.0)
                            x = x * w[:, None]
                        acc += tl.sum(x, axis=0)
                if MODE == 2:
                    acc = acc / count
                if MODE == 3:
                    acc = acc / weight_total
            acc = tl.where(dmask, acc, 0.0)
            tl.store(out_ptr + seq * stride_o + offs_d, acc, mask=dmask)
            squares += acc * acc
        if NORMALIZE:
            scale = 1.0 / tl.maximum(tl.sqrt(tl.sum(squares, axis=0)), 1e-12)
            for d0 in range(0, d_out, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                dmask = offs_d < d_out
                row = tl.load(out_ptr + seq * stride_o + offs_d, mask=dmask, other=0.0)
                tl.store(out_ptr + seq * stride_o + offs_d, row * scale, mask=dmask)

    return segment_pool_kernel


_COMPILED: dict[str, object] = {}


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def segment_pool(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    starts: torch.Tensor,
    ends: torch.Tensor,
    mode: str,
    *,
    dimensions: int | None = None,
    normalize: bool = False,
    block_t: int = 16,
    block_d: int = 128,
) -> torch.Tensor:
    """``hidden [t, d]`` packed states -> float32 ``[b, dimensions or d]``."""
    if "kernel" not in _COMPILED:
        _COMPILED["kernel"] = _kernel()
    kernel = _COMPILED["kernel"]
    hidden = hidden.contiguous()
    n_seq = cu_seqlens.shape[0] - 1
    width = dimensions or hidden.shape[1]
    out = torch.empty((n_seq, width), dtype=torch.float32, device=hidden.device)
    if n_seq == 0:
        return out
    kernel[(n_seq,)](  # type: ignore[index]
        hidden,
        cu_seqlens.to(torch.int32).contiguous(),
        starts.to(torch.int32).contiguous(),
        ends.to(torch.int32).contiguous(),
        out,
        hidden.stride(0),
        out.stride(0),
        width,
        MODE=MODES[mode],
        NORMALIZE=normalize,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
    )
    return out

"""Attention backends for the engine, registered with transformers as ``"embedsvc"``.

Models are loaded with ``attn_implementation="embedsvc"``. The function below
serves both batch layouts:

* padded batches (a 2D or 4D attention mask, no ``cu_seq_lens_q``): delegated to
  transformers' own SDPA path;
* packed batches (``cu_seq_lens_q`` passed through the model's kwargs): each
  sequence attends only to itself. Backend order: flash-attn varlen (if
  installed, CUDA) > torch's varlen attention (CUDA) > SDPA per sequence (any
  device; the CPU path and the reference the others are tested against).

Causality comes from each attention module's ``is_causal``: decoders converted
to bidirectional encoders (LLM2Vec style) have it switched off at load time.

Sliding windows follow transformers' convention for the ``sliding_window`` value
``w`` an attention module passes: a query sees the keys at distance ``<= w - 1``
on its left, and, when bidirectional, also on its right (Gemma3 with
``use_bidirectional_attention``: ``|i - j| < w``; ModernBERT passes half its
local window + 1). flash-attn's ``window_size=(w - 1, w - 1)`` with its causal
flag is the same rule.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from typing import Any

import torch
import torch.nn.functional as F

ATTN_IMPLEMENTATION = "embedsvc"
BACKENDS = ("auto", "flash_attn", "torch_varlen", "sdpa_loop")
FLASH_BACKENDS = ("flash_attn", "torch_varlen")
HALF_DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def _flash_attn_varlen() -> Any:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@functools.cache
def _torch_varlen() -> Any:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def _torch_varlen_params() -> frozenset[str]:
    # varlen_attn's keywords changed between releases: 2.10 takes is_causal, 2.11 window_size,
    # later ones also enable_gqa
    return frozenset(inspect.signature(_torch_varlen()).parameters)


def _torch_varlen_call(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    causal: bool,
    scale: float | None,
    sliding_window: int | None,
) -> torch.Tensor | None:
    """torch's varlen attention with the keywords this torch has; None where it cannot do the job."""
    params = _torch_varlen_params()
    kwargs: dict[str, Any] = {"scale": scale}
    if "window_size" in params:
        kwargs["window_size"] = window_size(causal, sliding_window)
    elif sliding_window:
        return None  # no window support in this torch
    else:
        kwargs["is_causal"] = causal
    if key.shape[1] != query.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:  # expand the KV heads to the query heads, as SDPA's enable_gqa does
            groups = query.shape[1] // key.shape[1]
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
    return _torch_varlen()(  # type: ignore[no-any-return]
        query, key, value, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kwargs
    )


def window_size(causal: bool, sliding_window: int | None) -> tuple[int, int]:
    """flash-attn's (left, right) window for a module's causality and ``sliding_window``."""
    reach = sliding_window - 1 if sliding_window else -1
    return (reach, 0 if causal else reach)


def window_mask(
    n: int, causal: bool, sliding_window: int | None, device: torch.device
) -> torch.Tensor | None:
    """Boolean ``[n, n]`` mask (True = attend) for a sliding window; None where none applies."""
    if not sliding_window or n <= sliding_window - 1:
        return None  # every key is within reach
    pos = torch.arange(n, device=device)
    diff = pos[:, None] - pos[None, :]
    mask = diff.abs() < sliding_window
    return mask & (diff >= 0) if causal else mask


def available_backends(device: torch.device) -> list[str]:
    """Packed-attention backends usable on ``device``, best first."""
    found = []
    if device.type == "cuda":
        if _flash_attn_varlen() is not None:
            found.append("flash_attn")
        if _torch_varlen() is not None:
            found.append("torch_varlen")
    found.append("sdpa_loop")
    return found


def flash_capable(query: torch.Tensor) -> bool:
    """Whether the flash kernels (flash-attn, torch's varlen) take these inputs: fp16/bf16, and a
    head size that is a multiple of 8 up to 256 (real checkpoints: 64 or 128; tiny test models: not)."""
    head_dim = query.shape[-1]
    return query.dtype in HALF_DTYPES and head_dim % 8 == 0 and head_dim <= 256


def sdpa_loop(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: list[int],
    *,
    causal: bool,
    scale: float | None,
    sliding_window: int | None = None,
    group_equal_lengths: bool = True,
) -> torch.Tensor:
    """Reference varlen attention: ``[t, h, d]`` in, ``[t, h, d]`` out.

    Sequences of equal length share one SDPA call (``[g, h, n, d]``); with
    ``group_equal_lengths=False`` every sequence gets a call of its own, so its
    result cannot depend on any other sequence (deterministic mode).
    """
    gqa = key.shape[1] != query.shape[1]
    groups: dict[int, list[int]] = {}
    for start, stop in itertools.pairwise(cu_seqlens):
        groups.setdefault(stop - start, []).append(start)
    if not group_equal_lengths:
        groups_list = [(n, [s]) for n, starts in groups.items() for s in starts]
    else:
        groups_list = list(groups.items())
    out = query.new_empty((query.shape[0], query.shape[1], value.shape[-1]))
    for n, starts in groups_list:
        g = len(starts)
        mask = window_mask(n, causal, sliding_window, query.device)
        if starts[-1] - starts[0] == (g - 1) * n:
            # the group's sequences lie back to back (batches are planned longest first): strided views
            # [g, h, n, d] of the packed tensors, no gather and no scatter
            lo, hi = starts[0], starts[0] + g * n
            q, k, v = (x[lo:hi].unflatten(0, (g, n)).transpose(1, 2) for x in (query, key, value))
            result = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale, enable_gqa=gqa
            )
            out[lo:hi].unflatten(0, (g, n)).copy_(result.transpose(1, 2))
            continue
        index = (
            torch.tensor(starts, device=query.device)[:, None] + torch.arange(n, device=query.device)
        ).reshape(-1)
        # [g * n, h, d] -> [g, h, n, d]; 4D: the fused CPU kernel needs the batch dimension
        q, k, v = (
            x.index_select(0, index).view(g, n, x.shape[1], -1).transpose(1, 2) for x in (query, key, value)
        )
        result = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale, enable_gqa=gqa
        )
        out.index_copy_(0, index, result.transpose(1, 2).reshape(g * n, result.shape[1], -1))
    return out


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    causal: bool,
    scale: float | None,
    backend: str = "auto",
    sliding_window: int | None = None,
    group_equal_lengths: bool = True,
) -> torch.Tensor:
    """Attention over packed sequences; ``[t, h, d]`` tensors, ``cu_seqlens [b + 1]`` int32."""
    if backend == "auto":
        backend = available_backends(query.device)[0] if flash_capable(query) else "sdpa_loop"
    if backend == "flash_attn":
        window = window_size(causal, sliding_window)
        return _flash_attn_varlen()(  # type: ignore[no-any-return]
            query,
            key,
            value,
            cu_seqlens,
            cu_seqlens,
            max_seqlen,
            max_seqlen,
            softmax_scale=scale,
            causal=causal,
            window_size=window,
        )
    if backend == "torch_varlen":
        out = _torch_varlen_call(
            query,
            key,
            value,
            cu_seqlens,
            max_seqlen,
            causal=causal,
            scale=scale,
            sliding_window=sliding_window,
        )
        if out is not None:
            return out
        backend = "sdpa_loop"
    if backend == "sdpa_loop":
        return sdpa_loop(
            query,
            key,
            value,
            cu_seqlens.tolist(),
            causal=causal,
            scale=scale,
            sliding_window=sliding_window,
            group_equal_lengths=group_equal_lengths,
        )
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def embedsvc_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention interface: ``[b, h, s, d]`` in, ``[b, s, h, d]`` out."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(  # type: ignore[no-any-return]
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    backend = getattr(module.config, "embedsvc_attention_backend", "auto")
    out = varlen_attention(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        cu_seqlens,
        int(kwargs.get("max_length_q") or 0),
        causal=_is_causal(module, kwargs),
        scale=scaling,
        backend=backend,
        sliding_window=_sliding_window(module, kwargs),
        group_equal_lengths=not getattr(module.config, "embedsvc_deterministic", False),
    )
    return out.unsqueeze(0), None


def _sliding_window(module: torch.nn.Module, kwargs: dict[str, Any]) -> int | None:
    if getattr(module.config, "embedsvc_full_attention", False):
        return None  # a decoder converted to bidirectional attends over the whole input
    return kwargs.get("sliding_window") or getattr(module, "sliding_window", None)  # type: ignore[no-any-return]


def _is_causal(module: torch.nn.Module, kwargs: dict[str, Any]) -> bool:
    # like transformers' SDPA path: an explicit is_causal keyword wins over the module's attribute
    explicit = kwargs.get("is_causal")
    return bool(getattr(module, "is_causal", True) if explicit is None else explicit)


def _embedsvc_mask(attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
    # packed batches carry no mask: sequences are separated by cu_seqlens instead
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(attention_mask=attention_mask, **kwargs)


@functools.cache
def register() -> str:
    """Register the backend with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, embedsvc_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _embedsvc_mask)
    return ATTN_IMPLEMENTATION

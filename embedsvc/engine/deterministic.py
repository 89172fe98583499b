"""Batch-invariant execution: a text's vector does not depend on what else is in its batch.

Where batch composition leaks into results, and what this module does about it:

* GEMM kernels pick code paths by the number of rows M (on CPU, M = 1, M < 8 and
  larger M give different bits). Every ``nn.Linear`` is therefore run over fixed
  tiles of ``rows`` tokens, zero-padded, copied into one reused buffer: every
  GEMM call has the same shape and alignment whatever the batch, so a token's
  output depends only on that token.
* Padding changes shapes: deterministic mode always packs sequences (no padding).
* Attention: each sequence attends only to itself through a per-sequence kernel
  (SDPA per sequence on CPU; flash-attn / torch varlen on CUDA, which process
  each sequence's blocks independently).
* Pooling: one reduction per sequence, in token order (no atomics).

Everything else in the supported models (embeddings, LayerNorm / RMSNorm,
activations, rotary embeddings) works row by row and is already invariant.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

# big enough for efficient GEMMs (on CPU 256 rows cost ~2% vs untiled, 64 rows ~20%)
DEFAULT_TILE_ROWS = {"cpu": 256, "cuda": 1024}


class FixedTileLinear(torch.nn.Module):
    """``nn.Linear`` computed over fixed-shape row tiles."""

    def __init__(self, linear: torch.nn.Linear, rows: int) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.rows = rows
        # one reused tile per thread: CPU forwards run batches side by side (engine/cpu_parallel.py)
        self._tiles = threading.local()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        n = flat.shape[0]
        tile: torch.Tensor | None = getattr(self._tiles, "tile", None)
        if tile is None or tile.dtype != x.dtype or tile.device != x.device:
            tile = self._tiles.tile = torch.empty(
                (self.rows, self.in_features), dtype=x.dtype, device=x.device
            )
        out = torch.empty((n, self.out_features), dtype=x.dtype, device=x.device)
        for start in range(0, n, self.rows):
            stop = min(start + self.rows, n)
            tile[: stop - start].copy_(flat[start:stop])
            if stop - start < self.rows:
                tile[stop - start :].zero_()
            out[start:stop] = F.linear(tile, self.weight, self.bias)[: stop - start]
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rows={self.rows}"


def make_batch_invariant(module: torch.nn.Module, rows: int) -> int:
    """Replace every ``nn.Linear`` below ``module`` in place; returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(module, name, FixedTileLinear(child, rows))
            replaced += 1
        else:
            replaced += make_batch_invariant(child, rows)
    return replaced

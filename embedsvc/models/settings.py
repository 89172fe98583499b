"""A model's effective recipe, and where each part of it came from.

Precedence, later wins:

1. the profile of the family (only what no file says: a default task, a prompt format),
2. the checkpoint's files: config.json (attention), tokenizer_config.json against what the
   tokenizer really does (BOS / EOS), the sentence-transformers files (pooling, prompts,
   normalization, max length), prompts that reveal an instruction format,
3. the profile's *forced* fields — only where a family's files are known to be wrong,
4. options given explicitly by the caller.

Every value records its source, and contradictions between files become warnings; both are
shown by ``Embedder.recipe``, ``embedsvc inspect`` and ListModels.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, fields
from typing import Any

from embedsvc.errors import InvalidInputError
from embedsvc.models.profiles import (
    CONVERSION_POOLING,
    LLM2VEC_WRAPPERS,
    ProfileChoice,
    check_attention,
    check_conversion,
    check_pooling,
)
from embedsvc.models.st_files import SentenceTransformersFiles
from embedsvc.models.tokens import TokenizerFacts

log = logging.getLogger("embedsvc.models")


@dataclass(frozen=True)
class ModelSettings:
    """Everything that decides how a text becomes a vector for one served model."""

    profile: str
    pooling: str
    normalize: bool
    max_length: int
    conversion: str = "none"
    attention: str = "causal"
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    query_prompt_name: str | None = None
    document_prompt_name: str | None = None
    instruction_template: str | None = None
    default_instruction: str | None = None
    append_eos: bool = False
    prepend_bos: bool = False
    include_prompt: bool = True
    prompt_token_skip: bool = False
    rstrip_input: bool = False  # LLM2Vec strips the wrapped input's trailing whitespace
    # in-context examples for "{examples}" in the instruction template: (instruction, query, response)
    examples: tuple[tuple[str, str, str], ...] = ()
    # setting name -> where its value came from
    sources: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


_NOT_OPTIONS = ("profile", "sources", "warnings")
# options a caller may pass to override the resolved settings
SETTING_OPTIONS = tuple(f.name for f in fields(ModelSettings) if f.name not in _NOT_OPTIONS)

# query prompts that reveal a family's instruction format: (pattern, template)
_INSTRUCTION_FORMATS = (
    (
        re.compile(r"^Instruct: (?P<task>.+)\nQuery:(?P<space> ?)$", re.DOTALL),
        "Instruct: {instruction}\nQuery:",
    ),
    (re.compile(r"^task: (?P<task>.+) \| query:(?P<space> ?)$", re.DOTALL), "task: {instruction} | query:"),
)
_QUERY_PROMPT_NAMES = ("query", "web_search_query")
_DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")


@dataclass
class _Recipe:
    values: dict[str, Any]
    sources: dict[str, str]
    warnings: list[str]

    def set(self, key: str, value: Any, source: str) -> None:
        self.values[key] = value
        self.sources[key] = source

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def _from_profile(choice: ProfileChoice, model_max_length: int) -> _Recipe:
    p = choice.profile
    origin = f"profile {p.name} ({choice.reason})"
    recipe = _Recipe({"profile": p.name, "max_length": model_max_length}, {}, [])
    recipe.sources["profile"] = choice.reason
    recipe.sources["max_length"] = "model limit (config.json / tokenizer_config.json)"
    for key in (
        "pooling",
        "normalize",
        "default_prompt_name",
        "query_prompt_name",
        "document_prompt_name",
        "instruction_template",
        "default_instruction",
        "append_eos",
        "attention",
        "include_prompt",
        "prompt_token_skip",
    ):
        value = getattr(p, key)
        if value is not None and not (key == "prompt_token_skip" and not value):
            recipe.set(key, value, origin)
    recipe.set("prompts", dict(p.prompts), origin)
    return recipe


def _attention_from_config(recipe: _Recipe, config: dict[str, Any], profile_forced: bool) -> None:
    if config.get("use_bidirectional_attention"):
        recipe.set("attention", "bidirectional", "config.json use_bidirectional_attention")
    elif config.get("is_causal") is False:
        if profile_forced and recipe.values.get("attention") == "causal":
            recipe.warn(
                "config.json sets is_causal=false, but the checkpoint's own modeling code (auto_map "
                f"{(config.get('auto_map') or {}).get('AutoModel')}) runs causal attention, which is how "
                "its published results were produced; embedding causally (option attention='bidirectional' "
                "to follow config.json instead)"
            )
        else:
            recipe.set("attention", "bidirectional", "config.json is_causal=false")


def _special_tokens_from_files(recipe: _Recipe, facts: TokenizerFacts) -> None:
    """BOS / EOS: tokenizer_config.json's add_bos_token / add_eos_token against tokenizer.json."""
    if facts.declared_add_eos and not facts.ends_with_special:
        recipe.set("append_eos", True, "tokenizer_config.json add_eos_token=true")
        recipe.warn(
            f"tokenizer_config.json sets add_eos_token=true but tokenizer.json's post-processor appends no "
            f"EOS (transformers >= 5 follows tokenizer.json); appending {facts.eos_token} after truncation, "
            "as the checkpoint's config asks"
        )
    elif facts.ends_with_special:
        recipe.set(
            "append_eos", False, f"tokenizer.json's post-processor appends {facts.appended_token} itself"
        )
    elif facts.declared_add_eos is False and recipe.values.get("append_eos") is None:
        recipe.set("append_eos", False, "tokenizer_config.json add_eos_token=false")
    if facts.declared_add_bos and not facts.adds_bos and facts.bos_token is not None:
        recipe.set("prepend_bos", True, "tokenizer_config.json add_bos_token=true")
        recipe.warn(
            f"tokenizer_config.json sets add_bos_token=true but tokenizer.json's post-processor adds no "
            f"BOS; prepending {facts.bos_token}, as the checkpoint's config asks"
        )


def _from_st_files(recipe: _Recipe, st: SentenceTransformersFiles, model_max_length: int) -> None:
    if recipe.values["profile"] in ("encoder", "decoder"):
        recipe.values["profile"] = "sentence-transformers"
        recipe.sources["profile"] = "the checkpoint's sentence-transformers files"
    if st.pooling is not None:
        recipe.set("pooling", st.pooling, "1_Pooling/config.json")
        recipe.set("include_prompt", st.include_prompt, "1_Pooling/config.json include_prompt")
    recipe.set(
        "normalize", st.normalize, "modules.json" + (" (Normalize)" if st.normalize else " (no Normalize)")
    )
    if st.prompts:
        recipe.set("prompts", {**recipe.values["prompts"], **st.prompts}, "config_sentence_transformers.json")
    if st.default_prompt_name:
        recipe.set("default_prompt_name", st.default_prompt_name, "config_sentence_transformers.json")
    query = next((n for n in _QUERY_PROMPT_NAMES if n in st.prompts), None)
    document = next((n for n in _DOCUMENT_PROMPT_NAMES if n in st.prompts), None)
    if query:
        recipe.set("query_prompt_name", query, "config_sentence_transformers.json")
    if document:
        recipe.set("document_prompt_name", document, "config_sentence_transformers.json")
    if st.max_seq_length:
        recipe.set(
            "max_length", min(st.max_seq_length, model_max_length), "sentence_bert_config.json max_seq_length"
        )


def _instruction_format_from_prompts(recipe: _Recipe) -> None:
    """A query prompt like 'Instruct: <task>\\nQuery: ' reveals the family's instruction format."""
    name = recipe.values.get("query_prompt_name")
    prompt = recipe.values.get("prompts", {}).get(name) if name else None
    if not prompt:
        return
    for pattern, template in _INSTRUCTION_FORMATS:
        match = pattern.match(prompt)
        if match:
            source = f"config_sentence_transformers.json prompt {name!r}"
            recipe.set("instruction_template", template + match["space"], source)
            recipe.set("default_instruction", match["task"], source)
            return


def _llm2vec_wrapper(recipe: _Recipe, config: dict[str, Any]) -> None:
    base = str(config.get("_name_or_path") or "")
    wrapper = LLM2VEC_WRAPPERS.get(base, "{text}")
    source = f"config.json _name_or_path {base!r}" if base in LLM2VEC_WRAPPERS else "profile llm2vec"
    recipe.set("instruction_template", wrapper.replace("{text}", "{instruction} {text}"), source)
    recipe.set("prompts", {**recipe.values["prompts"], "plain": wrapper}, source)
    recipe.set("default_prompt_name", "plain", source)
    if base in LLM2VEC_WRAPPERS:
        recipe.set("rstrip_input", True, source + " (llm2vec strips the wrapped text)")


def resolve_settings(
    choice: ProfileChoice,
    *,
    config: dict[str, Any],
    tokens: TokenizerFacts,
    st: SentenceTransformersFiles | None,
    is_decoder: bool,
    model_max_length: int,
    overrides: dict[str, Any],
) -> ModelSettings:
    profile = choice.profile
    recipe = _from_profile(choice, model_max_length)
    if is_decoder:
        recipe.values.setdefault("attention", "causal")
        recipe.sources.setdefault("attention", "decoder default")
        _attention_from_config(recipe, config, "attention" in profile.forced)
    else:
        recipe.set("attention", "bidirectional", "encoder")
    _special_tokens_from_files(recipe, tokens)
    if st is not None:
        _from_st_files(recipe, st, model_max_length)
    _instruction_format_from_prompts(recipe)
    if profile.name == "llm2vec":
        _llm2vec_wrapper(recipe, config)
    for name in profile.forced:
        value = getattr(profile, name)
        if name == "append_eos" and tokens.ends_with_special:
            continue  # the tokenizer appends it already: never a second one
        if recipe.values.get(name) != value:
            recipe.warn(f"{name}={recipe.values.get(name)!r} from {recipe.sources.get(name)} is overridden")
        recipe.set(name, value, f"profile {profile.name} (its reference recipe)")

    conversion = check_conversion(overrides.get("conversion") or "none")
    if conversion != "none":
        recipe.set("conversion", conversion, "option conversion")
        if overrides.get("pooling") is None:
            recipe.set("pooling", CONVERSION_POOLING[conversion], f"conversion {conversion}")
        if conversion == "bidirectional":
            recipe.set("attention", "bidirectional", "conversion bidirectional")
    for key, value in overrides.items():
        if value is None or key == "conversion":
            continue
        if key == "prompts":
            value = {**recipe.values.get("prompts", {}), **value}  # add to the checkpoint's prompts
        if key == "examples":
            value = _check_examples(value)
        recipe.set(key, value, f"option {key}")

    values = {k: v for k, v in recipe.values.items() if v is not None}
    values.setdefault("pooling", "mean")
    values.setdefault("normalize", True)
    settings = ModelSettings(**values, sources=dict(recipe.sources), warnings=tuple(recipe.warnings))
    _check(settings, model_max_length, tokens)
    for warning in settings.warnings:
        log.warning("%s", warning)
    return settings


def _check_examples(value: Any) -> tuple[tuple[str, str, str], ...]:
    out = []
    for i, item in enumerate(value or ()):
        if isinstance(item, dict):
            item = (item.get("instruction", ""), item.get("query"), item.get("response"))
        if len(item) != 3 or not all(isinstance(x, str) for x in item):
            raise InvalidInputError(
                f"examples[{i}] must be {{instruction, query, response}} strings", field="examples"
            )
        out.append((item[0], item[1], item[2]))
    return tuple(out)


def _check(settings: ModelSettings, model_max_length: int, tokens: TokenizerFacts) -> None:
    check_pooling(settings.pooling)
    check_attention(settings.attention)
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
    if settings.append_eos and tokens.eos_token is None:
        raise InvalidInputError("append_eos is set but the tokenizer has no EOS token", field="append_eos")
    if settings.prepend_bos and tokens.bos_token is None:
        raise InvalidInputError("prepend_bos is set but the tokenizer has no BOS token", field="prepend_bos")

"""Model profiles: the single source of defaults for known model families.

A profile says how a family is meant to be used (pooling, prompts, EOS
handling). Settings are resolved in this order, later wins:

1. the profile of the family,
2. the checkpoint's own sentence-transformers files (authoritative where present),
3. the profile's *forced* fields — only where the files are known to be wrong
   (e5-mistral's EOS, which transformers 5 tokenizers may silently drop),
4. options given explicitly by the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from embedsvc.errors import InvalidInputError

POOLING_MODES = ("cls", "mean", "last", "weighted_mean", "max")
CONVERSIONS = ("none", "echo", "prompteol", "bidirectional")

# Training-free decoder conversions. "{text}" marks where the input goes.
ECHO_TEMPLATE = "Rewrite the sentence: {text}, rewritten sentence: {text}"
PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'
CONVERSION_TEMPLATES = {"echo": ECHO_TEMPLATE, "prompteol": PROMPTEOL_TEMPLATE}
CONVERSION_POOLING = {"echo": "mean", "prompteol": "last", "bidirectional": "mean"}

E5_INSTRUCTION_TEMPLATE = "Instruct: {instruction}\nQuery: "


@dataclass(frozen=True)
class ModelProfile:
    """Defaults for one family of checkpoints."""

    name: str
    pooling: str
    normalize: bool = True
    # prompt name -> text prepended to the input
    prompts: dict[str, str] = field(default_factory=dict)
    query_prompt_name: str | None = None
    document_prompt_name: str | None = None
    # "{instruction}" is replaced by the caller's task description
    instruction_template: str | None = None
    default_instruction: str | None = None
    # append eos_token_id after truncating to max_length - 1 (e5-mistral model card)
    append_eos: bool = False
    # source-name patterns (regular expressions, case-insensitive) that select this profile
    patterns: tuple[str, ...] = ()
    # fields that win over the checkpoint's own files, because those files are known wrong
    forced: tuple[str, ...] = ()


E5_MISTRAL = ModelProfile(
    name="e5-mistral",
    pooling="last",
    instruction_template=E5_INSTRUCTION_TEMPLATE,
    default_instruction="Given a web search query, retrieve relevant passages that answer the query",
    append_eos=True,
    patterns=(r"e5-mistral",),
    forced=("append_eos",),
)

BGE_EN = ModelProfile(
    name="bge",
    pooling="cls",
    prompts={"query": "Represent this sentence for searching relevant passages: "},
    query_prompt_name="query",
    patterns=(r"bge-(small|base|large)-en",),
)

GENERIC_DECODER = ModelProfile(
    # what vLLM does to a *ForCausalLM converted to an embedder
    name="decoder",
    pooling="last",
    instruction_template=E5_INSTRUCTION_TEMPLATE,
)

GENERIC_ENCODER = ModelProfile(name="encoder", pooling="mean")

PROFILES: dict[str, ModelProfile] = {
    p.name: p for p in (E5_MISTRAL, BGE_EN, GENERIC_DECODER, GENERIC_ENCODER)
}


def select_profile(source_name: str, *, is_decoder: bool, explicit: str | None = None) -> ModelProfile:
    """The profile named explicitly, else the first whose pattern matches, else the generic one."""
    if explicit is not None:
        try:
            return PROFILES[explicit]
        except KeyError:
            raise InvalidInputError(
                f"unknown profile {explicit!r}; known profiles: {', '.join(sorted(PROFILES))}",
                field="profile",
            ) from None
    for profile in PROFILES.values():
        if any(re.search(p, source_name, re.IGNORECASE) for p in profile.patterns):
            return profile
    return GENERIC_DECODER if is_decoder else GENERIC_ENCODER


def check_pooling(mode: str) -> str:
    if mode not in POOLING_MODES:
        raise InvalidInputError(
            f"unknown pooling {mode!r}; choose one of {', '.join(POOLING_MODES)}", field="pooling"
        )
    return mode


def check_conversion(method: str) -> str:
    if method not in CONVERSIONS:
        raise InvalidInputError(
            f"unknown conversion {method!r}; choose one of {', '.join(CONVERSIONS)}", field="conversion"
        )
    return method

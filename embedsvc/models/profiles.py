"""Model families: what a checkpoint's files cannot say about how it is meant to be used.

A checkpoint's recipe (tokens, attention, pooling, prompts) is read from its files
(``embedsvc.engine.recipe``). A profile only fills what no file says — a family's
default task instruction, its prompt format, that GritLM embeds bidirectionally —
and names the rare file fields that a family's reference recipe overrides.

A profile is chosen, in this order: named explicitly (``profile=...``); detected
from the files (``detect``); matched by the checkpoint's name (``patterns``); else
the generic encoder or decoder profile.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embedsvc.errors import InvalidInputError

POOLING_MODES = ("cls", "mean", "last", "weighted_mean", "max", "mean_sqrt_len")
CONVERSIONS = ("none", "echo", "prompteol", "bidirectional")
ATTENTIONS = ("causal", "bidirectional")

# Training-free decoder conversions. "{text}" marks where the input goes.
ECHO_TEMPLATE = "Rewrite the sentence: {text}, rewritten sentence: {text}"
PROMPTEOL_TEMPLATE = 'This sentence : "{text}" means in one word:"'
CONVERSION_TEMPLATES = {"echo": ECHO_TEMPLATE, "prompteol": PROMPTEOL_TEMPLATE}
CONVERSION_POOLING = {"echo": "mean", "prompteol": "last", "bidirectional": "mean"}

E5_INSTRUCTION_TEMPLATE = "Instruct: {instruction}\nQuery: "
WEB_SEARCH_TASK = "Given a web search query, retrieve relevant passages that answer the query"
BGE_QUERY_INSTRUCTION = "Represent this sentence for searching relevant passages: "

# bge-en-icl's in-context examples, each followed by a blank line, come before the query
ICL_EXAMPLE_TEMPLATE = "<instruct>{instruction}\n<query>{query}\n<response>{response}"

# A prompt's "{text}" marks where the input goes (text after it follows the input);
# an instruction template's "{instruction}" takes the caller's task and "{examples}" the
# model's in-context examples.


@dataclass(frozen=True)
class ModelProfile:
    """Defaults for one family of checkpoints; None = no opinion, the files decide."""

    name: str
    description: str
    pooling: str | None = None
    normalize: bool = True
    # prompt name -> text around the input
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    query_prompt_name: str | None = None
    document_prompt_name: str | None = None
    instruction_template: str | None = None
    default_instruction: str | None = None
    # append eos_token_id after truncating to max_length - 1 (e5-mistral model card)
    append_eos: bool | None = None
    attention: str | None = None  # "causal" | "bidirectional"
    include_prompt: bool | None = None
    # GritLM's library: pooling skips as many leading positions as the prompt has tokens
    prompt_token_skip: bool = False
    # source-name patterns (regular expressions, case-insensitive) that select this profile
    patterns: tuple[str, ...] = ()
    # file facts -> whether this profile is the checkpoint's family
    detect: Callable[[dict[str, Any]], bool] | None = None
    # fields that win over the checkpoint's own files, because those files are known wrong
    forced: tuple[str, ...] = ()


def _is_gte_qwen2(config: dict[str, Any]) -> bool:
    # gte-Qwen2-*-instruct: native Qwen2 weights, auto_map to its own modeling_qwen.Qwen2Model
    auto_model = str((config.get("auto_map") or {}).get("AutoModel", ""))
    return config.get("model_type") == "qwen2" and auto_model.endswith(".Qwen2Model")


E5_MISTRAL = ModelProfile(
    name="e5-mistral",
    description="e5-mistral-7b-instruct and models trained on its recipe (SFR-Embedding-Mistral, "
    "SFR-Embedding-2_R, Linq-Embed-Mistral): last token, EOS appended, instruction on queries only",
    pooling="last",
    instruction_template=E5_INSTRUCTION_TEMPLATE,
    default_instruction=WEB_SEARCH_TASK,
    append_eos=True,
    patterns=(r"e5-mistral", r"sfr-embedding-(mistral|2_r)", r"linq-embed-mistral"),
    forced=("append_eos",),
)

QWEN3_EMBEDDING = ModelProfile(
    name="qwen3-embedding",
    description="Qwen3-Embedding: last token (its tokenizer appends <|endoftext|> itself), "
    "'Instruct: {task}\\nQuery:' on queries",
    pooling="last",
    instruction_template="Instruct: {instruction}\nQuery:",
    default_instruction=WEB_SEARCH_TASK,
    patterns=(r"qwen3-embedding",),
)

GTE_QWEN2 = ModelProfile(
    name="gte-qwen2",
    description="gte-Qwen2-*-instruct: last token, EOS appended (tokenizer_config add_eos_token), "
    "causal attention as its own modeling code runs it, instruction on queries only",
    pooling="last",
    instruction_template=E5_INSTRUCTION_TEMPLATE,
    default_instruction=WEB_SEARCH_TASK,
    attention="causal",
    detect=_is_gte_qwen2,
    patterns=(r"gte-qwen",),
    forced=("attention",),
)

BGE_ICL = ModelProfile(
    name="bge-icl",
    description="bge-en-icl: last token, EOS appended, '<instruct>{task}\\n<query>{query}\\n<response>' "
    "after optional in-context examples on queries",
    pooling="last",
    instruction_template="{examples}<instruct>{instruction}\n<query>{text}\n<response>",
    default_instruction=WEB_SEARCH_TASK + ".",
    append_eos=True,
    patterns=(r"bge-en-icl",),
)

GRITLM = ModelProfile(
    name="gritlm",
    description="GritLM: bidirectional attention, mean over the text (GritLM library's span), "
    "'<|user|>\\n{instruction}\\n<|embed|>\\n' on queries, '<|embed|>\\n' otherwise",
    pooling="mean",
    prompts={"embed": "<|embed|>\n"},
    default_prompt_name="embed",
    instruction_template="<|user|>\n{instruction}\n<|embed|>\n",
    attention="bidirectional",
    prompt_token_skip=True,
    patterns=(r"gritlm",),
    forced=("attention",),
)

LLM2VEC = ModelProfile(
    name="llm2vec",
    description="LLM2Vec: bidirectional attention, PEFT adapters merged at load, mean over the text "
    "(instruction excluded), the base model's chat wrapper chosen by config.json's _name_or_path",
    pooling="mean",
    default_instruction=WEB_SEARCH_TASK + ":",
    attention="bidirectional",
    include_prompt=False,
    patterns=(r"llm2vec",),
    forced=("attention",),
)

MULTILINGUAL_E5_INSTRUCT = ModelProfile(
    name="e5-instruct",
    description="multilingual-e5-large-instruct: mean, 'Instruct: {task}\\nQuery: ' on queries",
    pooling="mean",
    instruction_template=E5_INSTRUCTION_TEMPLATE,
    default_instruction=WEB_SEARCH_TASK,
    patterns=(r"multilingual-e5-[a-z]+-instruct",),
)

E5 = ModelProfile(
    name="e5",
    description="e5 / multilingual-e5 (v1, v2): mean pooling, 'query: ' and 'passage: ' prefixes",
    pooling="mean",
    prompts={"query": "query: ", "passage": "passage: "},
    query_prompt_name="query",
    document_prompt_name="passage",
    patterns=(r"(^|/)(multilingual-)?e5-(small|base|large)(-v2)?$",),
)

BGE_EN = ModelProfile(
    name="bge",
    description="bge-*-en(-v1.5): CLS pooling, a search instruction on queries",
    pooling="cls",
    prompts={"query": BGE_QUERY_INSTRUCTION},
    query_prompt_name="query",
    patterns=(r"bge-(small|base|large)-en",),
)

ARCTIC_EMBED = ModelProfile(
    name="arctic-embed",
    description="snowflake-arctic-embed (v1, v1.5): CLS pooling, a search instruction on queries",
    pooling="cls",
    prompts={"query": BGE_QUERY_INSTRUCTION},
    query_prompt_name="query",
    patterns=(r"snowflake-arctic-embed-(xs|s|m|l)(-long|-v1\.5)?$",),
)

ARCTIC_EMBED_V2 = ModelProfile(
    name="arctic-embed-v2",
    description="snowflake-arctic-embed-*-v2.0: CLS pooling, 'query: ' on queries",
    pooling="cls",
    prompts={"query": "query: "},
    query_prompt_name="query",
    patterns=(r"snowflake-arctic-embed-(m|l)-v2",),
)

NOMIC = ModelProfile(
    name="nomic",
    description="nomic-embed-text and modernbert-embed: mean pooling, 'search_query: ' / "
    "'search_document: ' prefixes",
    pooling="mean",
    prompts={"query": "search_query: ", "document": "search_document: "},
    query_prompt_name="query",
    document_prompt_name="document",
    patterns=(r"nomic-embed-text", r"modernbert-embed"),
)

GENERIC_DECODER = ModelProfile(
    # what vLLM does to a *ForCausalLM converted to an embedder
    name="decoder",
    description="any decoder without embedding files: last token of the plain tokenization, normalized",
    pooling="last",
    instruction_template=E5_INSTRUCTION_TEMPLATE,
)

GENERIC_ENCODER = ModelProfile(
    name="encoder",
    description="any encoder without embedding files: mean pooling, normalized",
    pooling="mean",
)

PROFILES: dict[str, ModelProfile] = {
    p.name: p
    for p in (
        E5_MISTRAL,
        QWEN3_EMBEDDING,
        GTE_QWEN2,
        BGE_ICL,
        GRITLM,
        LLM2VEC,
        MULTILINGUAL_E5_INSTRUCT,
        E5,
        BGE_EN,
        ARCTIC_EMBED,
        ARCTIC_EMBED_V2,
        NOMIC,
        GENERIC_DECODER,
        GENERIC_ENCODER,
    )
}

# LLM2Vec wraps every input in its base model's chat format, chosen by the base's hub id
# (config.json's _name_or_path), as llm2vec's prepare_for_tokenization does
LLM2VEC_WRAPPERS = {
    "meta-llama/Meta-Llama-3-8B-Instruct": "<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>",
    "mistralai/Mistral-7B-Instruct-v0.2": "[INST] {text} [/INST]",
    "meta-llama/Llama-2-7b-chat-hf": "[INST] {text} [/INST]",
    "google/gemma-2-9b-it": "<bos><start_of_turn>user\n{text}<end_of_turn>",
    "Qwen/Qwen2-1.5B-Instruct": "<|im_start|>user\n{text}<|im_end|>",
    "Qwen/Qwen2-7B-Instruct": "<|im_start|>user\n{text}<|im_end|>",
}


@dataclass(frozen=True)
class ProfileChoice:
    profile: ModelProfile
    reason: str  # how it was chosen, for the recipe's provenance


def select_profile(
    source_name: str,
    *,
    is_decoder: bool,
    config: dict[str, Any] | None = None,
    explicit: str | None = None,
) -> ProfileChoice:
    """The profile named explicitly, else detected from the files, else matched by name, else generic."""
    if explicit is not None:
        try:
            return ProfileChoice(PROFILES[explicit], "option profile")
        except KeyError:
            raise InvalidInputError(
                f"unknown profile {explicit!r}; known profiles: {', '.join(sorted(PROFILES))}",
                field="profile",
            ) from None
    for profile in PROFILES.values():
        if profile.detect is not None and profile.detect(config or {}):
            return ProfileChoice(profile, "detected from config.json")
    for profile in PROFILES.values():
        for pattern in profile.patterns:
            if re.search(pattern, source_name, re.IGNORECASE):
                return ProfileChoice(profile, f"name matches {pattern!r}")
    generic = GENERIC_DECODER if is_decoder else GENERIC_ENCODER
    return ProfileChoice(generic, "no family matched")


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


def check_attention(mode: str) -> str:
    if mode not in ATTENTIONS:
        raise InvalidInputError(
            f"unknown attention {mode!r}; choose one of {', '.join(ATTENTIONS)}", field="attention"
        )
    return mode

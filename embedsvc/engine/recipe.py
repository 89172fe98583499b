"""A served model's recipe as users audit it: every setting, where it came from, and sample tokens.

``Embedder.recipe``, ``embedsvc inspect SOURCE`` and ListModels all show this, so a user can
check how a checkpoint will be embedded before pushing a corpus through it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedsvc.engine.embedder import Embedder

SAMPLE_QUERY = "how much protein should a female eat"
SAMPLE_DOCUMENT = "As a general guideline, the average requirement of protein for women is 46 grams per day."

# settings shown in the recipe, in this order
_SHOWN = (
    "pooling",
    "normalize",
    "attention",
    "max_length",
    "append_eos",
    "prepend_bos",
    "include_prompt",
    "prompt_token_skip",
    "query_prompt_name",
    "document_prompt_name",
    "default_prompt_name",
    "instruction_template",
    "default_instruction",
    "prompts",
    "conversion",
    "examples",
)


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    profile: str
    profile_reason: str
    architecture: str
    model_type: str
    is_decoder: bool
    remote_code: bool
    dimension: int
    dense_layers: int
    # setting -> {"value": ..., "source": ...}
    settings: dict[str, dict[str, Any]]
    warnings: tuple[str, ...]
    notes: tuple[str, ...]
    engine: dict[str, Any]
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    task: str = "embed"  # "embed" | "rerank" | "classify"
    # rerankers and classifiers (engine/scorer.py): family, head, activation, prompt, LM-head token ids
    scoring: dict[str, Any] = field(default_factory=dict)
    # what EmbedOptions.outputs may ask for, and the sparse / multi-vector head the checkpoint declares
    outputs: tuple[str, ...] = ("dense",)
    output_heads: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_recipe(
    embedder: Embedder,
    *,
    samples: bool = True,
    query: str = SAMPLE_QUERY,
    document: str = SAMPLE_DOCUMENT,
) -> Recipe:
    s = embedder.settings
    loaded = embedder.loaded
    settings = {
        name: {"value": getattr(s, name), "source": s.sources.get(name, "default")}
        for name in _SHOWN
        if getattr(s, name) not in (None, (), {}) or name in s.sources
    }
    engine = {
        "device": str(embedder.device),
        "dtype": str(embedder.dtype).removeprefix("torch."),
        "batching": "packed" if embedder.options.packed else "padded",
        "attention_backend": embedder.options.attention_backend,
        "deterministic": embedder.options.deterministic,
        "quantize": embedder.quantization,
    }
    recipe = Recipe(
        name=embedder.name,
        source=str(loaded.source.folder),
        profile=s.profile,
        profile_reason=s.sources.get("profile", ""),
        architecture=getattr(embedder.model, "architecture", type(embedder.model).__name__),
        model_type=str(loaded.config_json.get("model_type", "")),
        is_decoder=loaded.is_decoder,
        remote_code=loaded.remote_code,
        dimension=embedder.dimension,
        dense_layers=len(loaded.st.dense) if loaded.st else 0,
        settings=settings,
        warnings=s.warnings,
        notes=loaded.notes,
        engine=engine,
        samples=_samples(embedder, query, document) if samples else {},
        outputs=embedder.outputs,
        output_heads=_describe_heads(embedder),
    )
    return recipe


def _describe_heads(embedder: Embedder) -> str:
    heads = embedder.heads
    if heads is None:
        return ""
    parts = [f"{heads.kind} heads"]
    if heads.sparse_dimension:
        parts.append(f"sparse over {heads.sparse_dimension} token ids")
    if heads.multi_vector_dimension:
        parts.append(f"{heads.multi_vector_dimension}-d token vectors")
    if heads.colbert is not None:
        c = heads.colbert.settings
        parts.append(
            f"{c.layout}: query markers {c.query_prefix!r}/{c.document_prefix!r}, query_length "
            f"{c.query_length}, document_length {c.document_length}"
        )
    return "; ".join(parts)


def _samples(embedder: Embedder, query: str, document: str) -> dict[str, dict[str, Any]]:
    """The exact tokens a sample query and document become, and which of them are pooled."""
    out = {}
    for kind, text in (("query", query), ("document", document)):
        (encoded, *_) = embedder.prepare([text], input_type=kind, outputs=embedder.outputs)
        tokens = embedder.tokenizer.convert_ids_to_tokens(encoded.ids)
        out[kind] = {
            "text": text,
            "tokens": tokens,
            "ids": list(encoded.ids),
            "pooled": [encoded.pool_start, encoded.pool_end],
        }
    return out


def render_text(recipe: Recipe) -> str:
    """Human-readable recipe for `embedsvc inspect`."""
    lines = [
        f"model       {recipe.name}  ({recipe.source})",
        f"task        {recipe.task}",
        f"family      {recipe.profile}  [{recipe.profile_reason}]",
        f"model code  {recipe.architecture} (model_type {recipe.model_type or '?'}, "
        f"{'decoder' if recipe.is_decoder else 'encoder'}"
        f"{', checkpoint code' if recipe.remote_code else ''})",
        f"dimension   {recipe.dimension}"
        + (f"  ({recipe.dense_layers} Dense layers)" if recipe.dense_layers else ""),
        f"outputs     {', '.join(recipe.outputs)}"
        + (f"  ({recipe.output_heads})" if recipe.output_heads else ""),
        "engine      " + ", ".join(f"{k}={v}" for k, v in recipe.engine.items()),
        "",
    ]
    if recipe.settings or not recipe.scoring:
        lines.append("recipe (value  <- source)")
    if recipe.scoring:
        lines.append("scoring")
        width = max(len(k) for k in recipe.scoring)
        for name, value in recipe.scoring.items():
            lines.append(f"  {name:<{width}}  {value!r}")
    width = max(len(k) for k in recipe.settings) if recipe.settings else 0
    for name, entry in recipe.settings.items():
        lines.append(f"  {name:<{width}}  {entry['value']!r}  <- {entry['source']}")
    for note in recipe.notes:
        lines.append(f"note: {note}")
    for warning in recipe.warnings:
        lines.append(f"WARNING: {warning}")
    for kind, sample in recipe.samples.items():
        lo, hi = sample["pooled"]
        lines += [
            "",
            f"sample {kind}: {sample['text']!r}",
            f"  {len(sample['tokens'])} tokens, pooled [{lo}:{hi}]:",
        ]
        lines.append("  " + " ".join(repr(t) for t in sample["tokens"]))
    return "\n".join(lines)

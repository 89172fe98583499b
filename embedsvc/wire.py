"""Every protobuf <-> plain conversion, shared by the server and the clients.

Enum tables (input types, truncations, encodings, metrics, index kinds) in both directions,
metadata values, filters, embed and score options, model and index infos, the clients' requests (split
to the per-request limits) and replies, and the one ranking order of rerank results. Nothing else
converts protobuf.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from embedsvc import codecs
from embedsvc.engine.options import EmbedOptions, ModelFacts, ScoreOptions
from embedsvc.errors import FailedPreconditionError, InvalidInputError, MissingExtraError
from embedsvc.index.filters import MAX_DEPTH as MAX_FILTER_DEPTH
from embedsvc.index.filters import RANGE_BOUNDS, All, Condition, Eq, Exists, In, Not, Range, parse_filter
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import index_pb2 as ipb

if TYPE_CHECKING:  # server-side types: a client-only install has no index package's dependencies
    from embedsvc.engine.options import Classified, Scored
    from embedsvc.index.binding import Binding
    from embedsvc.index.collection import Hit as IndexHit
    from embedsvc.index.service import IndexState, NewItem
    from embedsvc.index.service import SearchOptions as IndexSearchOptions

INPUT_TYPES: dict[str | None, int] = {
    None: pb.INPUT_TYPE_UNSPECIFIED,
    "query": pb.INPUT_TYPE_QUERY,
    "document": pb.INPUT_TYPE_DOCUMENT,
}
TRUNCATIONS = {"end": pb.TRUNCATION_END, "start": pb.TRUNCATION_START, "none": pb.TRUNCATION_NONE}
ENCODINGS = {
    "float32": pb.ENCODING_FLOAT32,
    "float16": pb.ENCODING_FLOAT16,
    "int8": pb.ENCODING_INT8,
    "binary": pb.ENCODING_BINARY,
}
METRICS = {"cosine": ipb.METRIC_COSINE, "inner_product": ipb.METRIC_INNER_PRODUCT, "l2": ipb.METRIC_L2}
KINDS = {
    "flat": ipb.INDEX_KIND_FLAT,
    "hnsw": ipb.INDEX_KIND_HNSW,
    "ivf_flat": ipb.INDEX_KIND_IVF_FLAT,
    "ivf_pq": ipb.INDEX_KIND_IVF_PQ,
}
_INPUT_TYPE_NAMES = {v: k for k, v in INPUT_TYPES.items()}
_TRUNCATION_NAMES = {pb.TRUNCATION_UNSPECIFIED: "end", **{v: k for k, v in TRUNCATIONS.items()}}
METRIC_NAMES = {ipb.METRIC_UNSPECIFIED: "cosine", **{v: k for k, v in METRICS.items()}}
KIND_NAMES = {ipb.INDEX_KIND_UNSPECIFIED: "flat", **{v: k for k, v in KINDS.items()}}
ENCODING_VALUES = {pb.ENCODING_UNSPECIFIED, *ENCODINGS.values()}
SEARCH_MODES = {
    "dense": ipb.SEARCH_MODE_DENSE,
    "sparse": ipb.SEARCH_MODE_SPARSE,
    "hybrid": ipb.SEARCH_MODE_HYBRID,
}
FUSIONS = {"rrf": ipb.FUSION_RRF, "weighted": ipb.FUSION_WEIGHTED}
SEARCH_MODE_NAMES = {ipb.SEARCH_MODE_UNSPECIFIED: "dense", **{v: k for k, v in SEARCH_MODES.items()}}
FUSION_NAMES = {ipb.FUSION_UNSPECIFIED: "rrf", **{v: k for k, v in FUSIONS.items()}}
MAX_BATCH_HITS = 100_000  # queries x k in one SearchBatch: bounds the response's size
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def lookup(table: Mapping[Any, Any], value: Any, field: str) -> Any:
    """``table[value]``, or InvalidInputError naming the field and the choices."""
    try:
        return table[value]
    except KeyError:
        choices = ", ".join(str(k) for k in table)
        raise InvalidInputError(f"unknown {field} {value!r}; choose one of {choices}", field=field) from None


# ------------------------------------------------------------------- embedding


def embed_options(request: Any) -> EmbedOptions:
    """EmbedOptions of an EmbedRequest or TokenizeRequest (fields it lacks keep their defaults)."""

    def optional(name: str) -> Any:
        return getattr(request, name) if request.HasField(name) else None

    fields = {f.name for f in request.DESCRIPTOR.fields}
    # an empty outputs list (every request before the field) keeps EmbedOptions' default: dense only
    outputs = {"outputs": request_outputs(request)} if "outputs" in fields and request.outputs else {}
    return EmbedOptions(
        **outputs,
        input_type=lookup(_INPUT_TYPE_NAMES, request.input_type, "input_type"),
        prompt_name=optional("prompt_name"),
        instruction=optional("instruction"),
        dimensions=optional("dimensions") if "dimensions" in fields else None,
        normalize=optional("normalize") if "normalize" in fields else None,
        truncation=lookup(_TRUNCATION_NAMES, request.truncation, "truncation"),
        chunked=bool(getattr(request, "chunked", False)),
    )


def embed_request_fields(
    *,
    input_type: str | None,
    prompt_name: str | None,
    instruction: str | None,
    dimensions: int | None,
    normalize: bool | None,
    truncation: str,
    chunked: bool,
    encoding: str,
) -> dict[str, Any]:
    """Keyword arguments of an EmbedRequest, from the clients' plain options."""
    fields: dict[str, Any] = {
        "input_type": lookup(INPUT_TYPES, input_type, "input_type"),
        "truncation": lookup(TRUNCATIONS, truncation, "truncation"),
        "chunked": chunked,
        "encoding": lookup(ENCODINGS, encoding, "encoding"),
    }
    for name, value in (
        ("prompt_name", prompt_name),
        ("instruction", instruction),
        ("dimensions", dimensions),
        ("normalize", normalize),
    ):
        if value is not None:
            fields[name] = value
    return fields


@dataclass(frozen=True)
class ModelInfo:
    name: str
    source: str
    dimension: int
    max_length: int
    pooling: str
    normalize: bool
    prompts: dict[str, str]
    dtype: str
    device: str
    profile: str
    conversion: str
    is_decoder: bool
    deterministic: bool
    quantize: str
    default: bool
    attention: str = "causal"
    append_eos: bool = False
    recipe_sources: dict[str, str] = field(default_factory=dict)
    recipe_warnings: tuple[str, ...] = ()
    remote_code: bool = False
    quantization: str = "none"
    fingerprint: str = ""  # 16 hex characters; "" from a server that predates fingerprints
    fingerprint_parts: dict[str, str] = field(default_factory=dict)
    task: str = "embed"  # "embed" | "rerank" | "classify"
    labels: tuple[str, ...] = ()  # a classifier's labels in output order; a reranker's one
    scoring: dict[str, str] = field(default_factory=dict)  # rerank/classify: how scores are made
    outputs: tuple[str, ...] = ("dense",)  # what ``embed(outputs=...)`` may ask of this model
    sparse_dimension: int = 0  # vocabulary size of its sparse output (0: none)
    multi_vector_dimension: int = 0  # width of its per-token vectors (0: none)


def model_info(facts: ModelFacts) -> pb.ModelInfo:
    s = facts.settings
    scoring = facts.scoring.items()
    return pb.ModelInfo(
        name=facts.name,
        source=facts.source,
        dimension=facts.dimension,
        max_length=facts.max_length,
        pooling=s.pooling,
        normalize=s.normalize,
        prompts=s.prompts,
        default_prompt_name=s.default_prompt_name or "",
        query_prompt_name=s.query_prompt_name or "",
        document_prompt_name=s.document_prompt_name or "",
        instruction_template=s.instruction_template or "",
        dtype=facts.dtype,
        device=facts.device,
        profile=s.profile,
        conversion=s.conversion,
        is_decoder=facts.is_decoder,
        deterministic=facts.deterministic,
        quantize=facts.quantize,
        quantization=facts.quantization,
        attention=s.attention,
        append_eos=s.append_eos,
        recipe_sources=s.sources,
        recipe_warnings=list(s.warnings),
        remote_code=facts.remote_code,
        fingerprint=facts.fingerprint,
        fingerprint_parts=facts.fingerprint_parts,
        task=facts.task,
        labels=list(facts.labels),
        scoring={k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in scoring},
        **output_facts(facts),
    )


def model_infos(response: pb.ListModelsResponse) -> list[ModelInfo]:
    return [
        ModelInfo(
            name=m.name,
            source=m.source,
            dimension=m.dimension,
            max_length=m.max_length,
            pooling=m.pooling,
            normalize=m.normalize,
            prompts=dict(m.prompts),
            dtype=m.dtype,
            device=m.device,
            profile=m.profile,
            conversion=m.conversion,
            is_decoder=m.is_decoder,
            deterministic=m.deterministic,
            quantize=m.quantize,
            default=m.name == response.default_model,
            attention=m.attention,
            append_eos=m.append_eos,
            recipe_sources=dict(m.recipe_sources),
            recipe_warnings=tuple(m.recipe_warnings),
            remote_code=m.remote_code,
            quantization=m.quantization,
            fingerprint=m.fingerprint,
            fingerprint_parts=dict(m.fingerprint_parts),
            task=m.task or "embed",  # servers before rerankers leave it empty
            labels=tuple(m.labels),
            scoring=dict(m.scoring),
            **plain_output_facts(m),
        )
        for m in response.models
    ]


# ------------------------------------------------------- client requests/replies


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, Any]
    text: str | None = None  # with return_text, for an index that keeps texts
    rerank_score: float | None = None  # with a rerank stage
    # the parts of a hybrid or re-ranked hit's score (None: not computed)
    dense_score: float | None = None
    sparse_score: float | None = None
    maxsim_score: float | None = None


@dataclass(frozen=True)
class IndexInfo:
    name: str
    model: str
    model_source: str
    dimension: int
    metric: str
    kind: str
    count: int
    trained: bool
    status: str
    durable: bool
    params: dict[str, int]
    store_text: bool = False
    fingerprint: str = ""  # the model fingerprint its vectors came from ("" before its first text use)
    binding: str = "unbound"  # bound, mixed or unbound
    fingerprint_parts: dict[str, str] = field(default_factory=dict)
    sparse_dimension: int = 0  # 0: no sparse vectors
    multi_vector_dimension: int = 0  # 0: no token vectors
    representation_bytes: int = 0


def split(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive slices of at most ``size`` (the per-request limit a client keeps to)."""
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def embed_requests(
    texts: Sequence[str],
    chunk: int,
    *,
    model: str | None,
    outputs: Sequence[str] | None = None,
    multi_vector_encoding: str = "float32",
    **options: Any,
) -> list[pb.EmbedRequest]:
    """EmbedRequests of at most ``chunk`` texts; ``options`` are :func:`embed_request_fields`'s,
    ``outputs`` and ``multi_vector_encoding`` :func:`output_request_fields`'."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    base = {**embed_request_fields(**options), **output_request_fields(outputs, multi_vector_encoding)}
    items = list(texts)
    if not items:
        raise ValueError("texts must hold at least one string")
    if outputs is not None and "multi_vector" in outputs:
        parts = split_by_tokens(items, chunk, MULTI_VECTOR_REQUEST_TOKENS)
    else:
        parts = split(items, chunk)
    starts = np.cumsum([0, *(len(p) for p in parts)])  # each request's id: its first text's position
    return [
        pb.EmbedRequest(id=str(start), inputs=part, model=model or "", **base)
        for start, part in zip(starts.tolist(), parts, strict=False)
    ]


def fingerprint(
    replies: Sequence[pb.EmbedResponse | pb.RerankResponse | pb.ScoreResponse | pb.ClassifyResponse],
    call: str = "embed",
) -> str:
    """The one model fingerprint the answers to a call carry ("" from servers before fingerprints);
    FailedPreconditionError when they differ: replicas serving different models answered one call, and
    their vectors or scores must not be mixed."""
    found = sorted({r.fingerprint for r in replies})
    if len(found) > 1:
        raise FailedPreconditionError(
            f"the answers to one {call} call came from models with different fingerprints "
            f"({', '.join(f or '(none)' for f in found)}): the replicas behind this target serve different "
            "models or settings; their results are not comparable. Retry once every replica serves the same"
        )
    return found[0] if found else ""


def embeddings(response: pb.EmbedResponse) -> np.ndarray:
    """An EmbedResponse's vectors as float32 ``[n, dimensions]``, whatever its encoding."""
    dims = response.dimensions
    if response.encoding in (pb.ENCODING_UNSPECIFIED, pb.ENCODING_FLOAT32):
        return float32_rows(response)  # each row's bytes read by numpy
    rows = []
    for item in response.embeddings:
        if response.encoding == pb.ENCODING_FLOAT16:
            rows.append(codecs.decode_float16(item.data))
        elif response.encoding == pb.ENCODING_INT8:
            rows.append(codecs.decode_int8(item.data, item.scale))
        elif response.encoding == pb.ENCODING_BINARY:
            rows.append(codecs.decode_binary(item.data, dims))
        else:
            rows.append(np.asarray(item.values, dtype=np.float32))
    return np.stack(rows) if rows else np.zeros((0, dims), dtype=np.float32)


def tokenize_requests(
    texts: Sequence[str], chunk: int, *, model: str | None, input_type: str | None, truncation: str
) -> list[pb.TokenizeRequest]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    fields = {
        "model": model or "",
        "input_type": lookup(INPUT_TYPES, input_type, "input_type"),
        "truncation": lookup(TRUNCATIONS, truncation, "truncation"),
    }
    return [pb.TokenizeRequest(inputs=part, **fields) for part in split(list(texts), chunk)]


def token_ids(response: pb.TokenizeResponse) -> list[list[int]]:
    return [list(item.ids) for item in response.inputs]


def create_index_request(
    name: str,
    model: str | None,
    metric: str,
    kind: str,
    params: Mapping[str, int],
    *,
    dense: bool | None = None,
    sparse: int | None = None,
    multi_vector: int | None = None,
    store_text: bool = False,
) -> ipb.CreateIndexRequest:
    """``sparse`` / ``multi_vector``: None = not kept, 0 = the model's width, else the width."""
    request = ipb.CreateIndexRequest(
        name=name,
        model=model or "",
        metric=lookup(METRICS, metric, "metric"),
        kind=lookup(KINDS, kind, "kind"),
        params=ipb.IndexParams(**params),
        store_text=store_text,
    )
    if sparse is not None:
        request.sparse = sparse
    if multi_vector is not None:
        request.multi_vector = multi_vector
    if dense is not None:
        request.dense = dense
    return request


def create_index_parts(request: ipb.CreateIndexRequest) -> dict[str, Any]:
    """What a CreateIndexRequest asks to keep, as Indexes.create takes it."""
    return {
        "dense": request.dense if request.HasField("dense") else None,
        "sparse": request.sparse if request.HasField("sparse") else None,
        "multi_vector": request.multi_vector if request.HasField("multi_vector") else None,
    }


def sparse_vector(row: Any) -> ipb.SparseVector:
    """(term ids, weights) as a SparseVector."""
    ids, weights = row
    return ipb.SparseVector(
        ids=np.asarray(ids, dtype=np.int64).tolist(), values=np.asarray(weights, dtype=np.float32).tolist()
    )


def sparse_row(message: ipb.SparseVector) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(message.ids, dtype=np.int64), np.asarray(message.values, dtype=np.float32)


def token_vectors(matrix: Any) -> ipb.TokenVectors:
    array = np.asarray(matrix, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"token vectors are a [tokens, width] array, got shape {array.shape}")
    return ipb.TokenVectors(dimension=array.shape[1], values=array.ravel().tolist())


def token_matrix(message: ipb.TokenVectors) -> np.ndarray:
    values = np.asarray(message.values, dtype=np.float32)
    if not message.dimension or len(values) % message.dimension:
        raise InvalidInputError(
            f"token vectors hold {len(values)} values, not a whole number of rows of dimension "
            f"{message.dimension}",
            field="token_vectors",
        )
    return values.reshape(-1, message.dimension)


def item_parts(item: ipb.Item) -> dict[str, Any]:
    """An Item's sparse vector and token vectors (None where unset), as NewItem takes them."""
    return {
        "sparse": sparse_row(item.sparse) if item.HasField("sparse") else None,
        "token_vectors": token_matrix(item.token_vectors) if item.HasField("token_vectors") else None,
    }


def hybrid_options(request: ipb.SearchRequest | ipb.SearchBatchRequest) -> Any:
    """The request's mode, fusion and re-ranking as embedsvc.index.fusion.HybridOptions (checked there)."""
    from embedsvc.index.fusion import HybridOptions

    given = request.hybrid
    return HybridOptions(
        mode=lookup(SEARCH_MODE_NAMES, request.mode, "mode"),
        fusion=lookup(FUSION_NAMES, given.fusion, "fusion"),
        dense_weight=given.dense_weight if given.HasField("dense_weight") else 1.0,
        sparse_weight=given.sparse_weight if given.HasField("sparse_weight") else 1.0,
        rrf_k=given.rrf_k if given.HasField("rrf_k") else 60,
        candidates=given.candidates,
        rerank=request.multi_vector_rerank,
    )


def binding_fields(binding: Binding | None) -> dict[str, Any]:
    """IndexInfo's binding fields for an index's recorded binding (None: unbound)."""
    if binding is None:
        return {"binding": "unbound"}
    return {
        "fingerprint": binding.fingerprint,
        "binding": binding.state,
        "fingerprint_parts": dict(binding.parts),
    }


def rerank_fields(message: ipb.SearchRerank) -> dict[str, Any]:
    """A SearchRerank as the index facade's RerankStage fields."""
    if not message.model:
        raise InvalidInputError("rerank.model must name a served reranker", field="rerank.model")
    return {
        "model": message.model,
        "candidates": message.candidates,
        "instruction": message.instruction if message.HasField("instruction") else None,
    }


def list_models_request() -> pb.ListModelsRequest:
    return pb.ListModelsRequest()


def delete_index_request(name: str) -> ipb.DeleteIndexRequest:
    return ipb.DeleteIndexRequest(name=name)


def list_indexes_request() -> ipb.ListIndexesRequest:
    return ipb.ListIndexesRequest()


def describe_index_request(name: str) -> ipb.DescribeIndexRequest:
    return ipb.DescribeIndexRequest(name=name)


def count_request(index: str) -> ipb.CountRequest:
    return ipb.CountRequest(index=index)


def index_infos(response: ipb.ListIndexesResponse) -> list[IndexInfo]:
    return [index_info(i) for i in response.indexes]


def index_info(message: ipb.IndexInfo) -> IndexInfo:
    return IndexInfo(
        name=message.name,
        model=message.model,
        model_source=message.model_source,
        dimension=message.dimension,
        metric=METRIC_NAMES.get(message.metric, ""),
        kind=KIND_NAMES.get(message.kind, ""),
        count=message.count,
        trained=message.trained,
        status=message.status,
        durable=message.durable,
        params={f.name: v for f, v in message.params.ListFields()},
        store_text=message.store_text,
        fingerprint=message.fingerprint,
        binding=message.binding or "unbound",
        fingerprint_parts=dict(message.fingerprint_parts),
        sparse_dimension=message.sparse_dimension,
        multi_vector_dimension=message.multi_vector_dimension,
        representation_bytes=message.representation_bytes,
    )


def upsert_requests(
    index: str,
    ids: Sequence[str],
    texts: Sequence[str] | None,
    vectors: Any,
    metadata: Sequence[Mapping[str, Any]] | None,
    chunk: int,
    fingerprint: str = "",
    *,
    sparse: Sequence[Any] | None = None,
    tokens: Sequence[Any] | None = None,
) -> list[ipb.UpsertRequest]:
    """UpsertRequests of at most ``chunk`` items; the lengths are checked before anything is sent.
    ``sparse`` ((ids, weights) per item) and ``tokens`` ([tokens, width] per item) go with vectors,
    or alone for an index without dense vectors."""
    if (texts is None) == (vectors is None and sparse is None and tokens is None):
        raise ValueError("pass exactly one of texts or vectors (with sparse / token vectors)")
    n = len(ids)
    for name, part in (("sparse vectors", sparse), ("token vectors", tokens)):
        if part is not None and len(part) != n:
            raise ValueError(f"{n} ids but {len(part)} {name}")
    if texts is not None and len(texts) != n:
        raise ValueError(f"{n} ids but {len(texts)} texts")
    array = None if vectors is None else np.asarray(vectors, dtype=np.float32)
    if array is not None and (array.ndim != 2 or len(array) != n):
        raise ValueError(f"vectors must be a [{n}, dim] array")
    if metadata is not None and len(metadata) != n:
        raise ValueError(f"{n} ids but {len(metadata)} metadata entries")
    items = []
    for i, item_id in enumerate(ids):
        meta = to_metadata(metadata[i] if metadata else None)
        if texts is not None:
            items.append(ipb.Item(id=item_id, text=texts[i], metadata=meta))
            continue
        item = ipb.Item(id=item_id, vector=[] if array is None else array[i].tolist(), metadata=meta)
        if sparse is not None:
            item.sparse.CopyFrom(sparse_vector(sparse[i]))
        if tokens is not None:
            item.token_vectors.CopyFrom(token_vectors(tokens[i]))
        items.append(item)
    return [
        ipb.UpsertRequest(index=index, items=part, fingerprint=fingerprint) for part in split(items, chunk)
    ]


def get_requests(
    index: str, ids: Sequence[str], chunk: int, return_text: bool = False
) -> list[ipb.GetRequest]:
    if isinstance(ids, str):
        raise ValueError("ids must be a list of strings, not a single string")
    return [
        ipb.GetRequest(index=index, ids=list(part), return_text=return_text)
        for part in split(list(ids), chunk)
    ]


def delete_requests(index: str, ids: Sequence[str], chunk: int) -> list[ipb.DeleteRequest]:
    if isinstance(ids, str):
        raise ValueError("ids must be a list of strings, not a single string")
    return [ipb.DeleteRequest(index=index, ids=list(part)) for part in split(list(ids), chunk)]


def _set_filter(request: Any, filter: Mapping[str, Any] | None) -> None:
    """Plain equality goes in the `filter` map (which every server version reads); anything richer is
    parsed here, so mistakes fail before sending, and sent as `where`."""
    if not filter:
        return
    condition = parse_filter(filter)  # mistakes (a list as a value, an unknown operator) fail here
    if all(not isinstance(v, Mapping) and not k.startswith("$") for k, v in filter.items()):
        for key, value in to_metadata(filter).items():
            request.filter[key].CopyFrom(value)
        return
    if condition is not None:
        request.where.CopyFrom(filter_to_proto(condition))


@dataclass(frozen=True)
class SearchOptions:
    """What a search asks besides its queries: top ``k``, a filter, and the index's knobs."""

    k: int = 10
    filter: Mapping[str, Any] | None = None
    ef_search: int | None = None
    nprobe: int | None = None
    instruction: str | None = None
    return_text: bool = False
    rerank: Rerank | None = None
    mode: str = "dense"  # dense | sparse | hybrid
    fusion: str = "rrf"  # rrf | weighted
    dense_weight: float | None = None  # None: the server's default (1)
    sparse_weight: float | None = None
    rrf_k: int | None = None  # None: 60
    candidates: int = 0  # 0: max(k, 100) for hybrid / re-ranked searches
    multi_vector_rerank: bool = False  # MaxSim over the index's token vectors

    def apply(self, request: Any) -> Any:
        request.k = self.k
        _set_filter(request, self.filter)
        for name in ("ef_search", "nprobe", "instruction"):
            if getattr(self, name) is not None:
                setattr(request, name, getattr(self, name))
        request.return_text = self.return_text
        if self.rerank is not None:
            request.rerank.CopyFrom(self.rerank.to_proto())
        request.mode = lookup(SEARCH_MODES, self.mode, "mode")
        request.multi_vector_rerank = self.multi_vector_rerank
        request.hybrid.fusion = lookup(FUSIONS, self.fusion, "fusion")
        request.hybrid.candidates = self.candidates
        for name in ("dense_weight", "sparse_weight", "rrf_k"):
            if getattr(self, name) is not None:
                setattr(request.hybrid, name, getattr(self, name))
        return request


@dataclass(frozen=True)
class Rerank:
    """A search's rerank stage: the served reranker ``model`` scores the ``candidates`` nearest items'
    stored texts (0: the server's default, max(k, 50)) against the text query."""

    model: str
    candidates: int = 0
    instruction: str | None = None

    def to_proto(self) -> ipb.SearchRerank:
        if not self.model:
            raise ValueError("rerank needs the name of a served reranker model")
        if self.candidates < 0:
            raise ValueError(f"rerank candidates must be 0 (the default) or more, got {self.candidates}")
        message = ipb.SearchRerank(model=self.model, candidates=self.candidates)
        if self.instruction is not None:
            message.instruction = self.instruction
        return message


def rerank_stage(rerank: str | Rerank | Mapping[str, Any] | None) -> Rerank | None:
    """A client's ``rerank=`` argument: a model name, a Rerank, or its fields as a mapping."""
    if rerank is None or isinstance(rerank, Rerank):
        return rerank
    if isinstance(rerank, str):
        return Rerank(rerank)
    return Rerank(**rerank)


def search_request(
    index: str,
    text: str | None,
    vector: Any,
    options: SearchOptions,
    *,
    sparse: Any = None,
    tokens: Any = None,
) -> ipb.SearchRequest:
    if (text is None) == (vector is None and sparse is None and tokens is None):
        raise ValueError("pass exactly one of text or vector (or a sparse query)")
    request = options.apply(ipb.SearchRequest(index=index))
    if text is not None:
        request.text = text
    elif vector is not None:
        request.vector.values.extend(np.asarray(vector, dtype=np.float32).ravel().tolist())
    if sparse is not None:
        request.sparse.CopyFrom(sparse_vector(sparse))
    if tokens is not None:
        request.token_vectors.CopyFrom(token_vectors(tokens))
    return request


def query_parts(request: ipb.SearchRequest) -> dict[str, Any]:
    """A SearchRequest's sparse query and token vectors (None where unset)."""
    return {
        "sparse": sparse_row(request.sparse) if request.HasField("sparse") else None,
        "tokens": token_matrix(request.token_vectors) if request.HasField("token_vectors") else None,
    }


def batch_query_parts(request: ipb.SearchBatchRequest) -> dict[str, Any]:
    return {
        "sparse": [sparse_row(s) for s in request.sparse],
        "tokens": [token_matrix(t) for t in request.token_vectors],
    }


def search_batch_requests(
    index: str,
    texts: Sequence[str] | None,
    vectors: Any,
    options: SearchOptions,
    chunk: int,
    *,
    sparse: Sequence[Any] | None = None,
    tokens: Sequence[Any] | None = None,
) -> list[ipb.SearchBatchRequest]:
    """One request per ``chunk`` queries (fewer when k is large: a response holds at most MAX_BATCH_HITS)."""
    if sparse is not None or tokens is not None:
        return _parted_batch_requests(index, texts, vectors, options, chunk, sparse, tokens)
    if (texts is None) == (vectors is None):
        raise ValueError("pass exactly one of texts or vectors")
    if isinstance(texts, str):
        raise ValueError("texts is a list of strings; for one text use search()")
    array = None if vectors is None else np.asarray(vectors, dtype=np.float32)
    if array is not None and array.ndim != 2:
        raise ValueError(f"vectors must be a [queries, dim] array, got shape {array.shape}")
    per_request = max(1, min(chunk, MAX_BATCH_HITS // max(options.k, 1)))
    requests = []
    for part in split(list(texts) if array is None else array, per_request):  # type: ignore[arg-type]
        request = options.apply(ipb.SearchBatchRequest(index=index))
        if array is None:
            request.texts.extend(part)
        else:
            request.vectors.extend(ipb.Vector(values=row.tolist()) for row in part)
        requests.append(request)
    return requests


def _parted_batch_requests(
    index: str,
    texts: Sequence[str] | None,
    vectors: Any,
    options: SearchOptions,
    chunk: int,
    sparse: Sequence[Any] | None,
    tokens: Sequence[Any] | None,
) -> list[ipb.SearchBatchRequest]:
    """Queries given as vectors, sparse vectors and/or token vectors, one of each per query."""
    if texts is not None:
        raise ValueError("pass texts, or vectors / sparse / token vectors, not both")
    array = None if vectors is None else np.asarray(vectors, dtype=np.float32)
    lengths = {len(p) for p in (array, sparse, tokens) if p is not None}
    if len(lengths) != 1:
        raise ValueError("vectors, sparse and token vectors are one per query: their lengths differ")
    n = lengths.pop()
    per_request = max(1, min(chunk, MAX_BATCH_HITS // max(options.k, 1)))
    requests = []
    for start in range(0, n, per_request):
        request = options.apply(ipb.SearchBatchRequest(index=index))
        stop = min(n, start + per_request)
        if array is not None:
            request.vectors.extend(ipb.Vector(values=row.tolist()) for row in array[start:stop])
        if sparse is not None:
            request.sparse.extend(sparse_vector(row) for row in sparse[start:stop])
        if tokens is not None:
            request.token_vectors.extend(token_vectors(m) for m in tokens[start:stop])
        requests.append(request)
    return requests


@dataclass(frozen=True)
class IdPage:
    ids: list[str]
    next_page_token: str  # "" after the last page
    count: int  # items in the index when the page was read


def list_ids_request(index: str, page_size: int, page_token: str) -> ipb.ListIdsRequest:
    if page_size < 0:
        raise InvalidInputError(
            f"page_size must be 0 (the server's default) or more, got {page_size}", field="page_size"
        )
    return ipb.ListIdsRequest(index=index, page_size=page_size, page_token=page_token)


def id_page(response: ipb.ListIdsResponse) -> IdPage:
    return IdPage(list(response.ids), response.next_page_token, response.count)


def hits(response: ipb.SearchResponse) -> list[Hit]:
    return [
        Hit(
            h.id,
            h.score,
            from_metadata(h.metadata),
            h.text if h.HasField("text") else None,
            h.rerank_score if h.HasField("rerank_score") else None,
            dense_score=h.dense_score if h.HasField("dense_score") else None,
            sparse_score=h.sparse_score if h.HasField("sparse_score") else None,
            maxsim_score=h.maxsim_score if h.HasField("maxsim_score") else None,
        )
        for h in response.hits
    ]


def hit(found: Any) -> ipb.Hit:
    """An embedsvc.index.spec.Hit as the proto Hit (its stored text and its parts' and reranker's scores
    where given)."""
    message = ipb.Hit(id=found.id, score=found.score, metadata=to_metadata(found.metadata))
    for name in ("text", "rerank_score", "dense_score", "sparse_score", "maxsim_score"):
        if getattr(found, name) is not None:
            setattr(message, name, getattr(found, name))
    return message


def batch_hits(response: ipb.SearchBatchResponse) -> list[list[Hit]]:
    return [hits(result) for result in response.results]


def got_item(
    item_id: str, vector: np.ndarray, metadata: Any, text: str | None, sparse: Any, tokens: Any
) -> ipb.Item:
    """A stored item as the proto Item: its vector, metadata, stored text (None: unset), and sparse /
    token vectors if kept."""
    item = ipb.Item(id=item_id, vector=vector.tolist(), metadata=to_metadata(metadata), text=text)
    if sparse is not None:
        item.sparse.CopyFrom(sparse_vector(sparse))
    if tokens is not None:
        item.token_vectors.CopyFrom(token_vectors(tokens))
    return item


def got_parts(response: ipb.GetResponse) -> dict[str, tuple[Any, Any]]:
    """``{id: (sparse (ids, weights) or None, token vectors or None)}`` of a GetResponse."""
    parts = {i.id: item_parts(i) for i in response.items}
    return {item_id: (p["sparse"], p["token_vectors"]) for item_id, p in parts.items()}


def got(response: ipb.GetResponse, return_text: bool = False) -> dict[str, tuple[Any, ...]]:
    """``{id: (vector, metadata)}``, or ``(vector, metadata, text or None)`` with ``return_text``."""
    return {
        i.id: (np.asarray(i.vector, dtype=np.float32), from_metadata(i.metadata))
        + ((i.text if i.HasField("text") else None,) if return_text else ())
        for i in response.items
    }


@dataclass(frozen=True)
class Reembedded:
    reembedded: int  # items embedded again
    fingerprint: str  # what the index is bound to now
    rounds: int  # catch-up passes over writes made meanwhile


def reembedded(response: ipb.ReembedResponse) -> Reembedded:
    return Reembedded(response.reembedded, response.fingerprint, response.rounds)


# ---------------------------------------------------------------------- index


def _scalar_value(value: Any) -> ipb.MetadataValue:
    if isinstance(value, bool):
        return ipb.MetadataValue(bool_value=value)
    if isinstance(value, int):
        return ipb.MetadataValue(int_value=value)
    if isinstance(value, float):
        return ipb.MetadataValue(double_value=value)
    if isinstance(value, str):
        return ipb.MetadataValue(string_value=value)
    raise ValueError(
        f"metadata values must be str, int, float, bool or a list of them, got {type(value).__name__}"
    )


def to_metadata_value(value: Any) -> ipb.MetadataValue:
    """A value as the proto holds it; a list (or tuple) of scalars becomes ``list_value``."""
    if isinstance(value, list | tuple):
        message = ipb.MetadataValue()
        message.list_value.SetInParent()  # set even when the list is empty
        message.list_value.values.extend(_scalar_value(v) for v in value)
        return message
    return _scalar_value(value)


def to_metadata(values: Mapping[str, Any] | None) -> dict[str, ipb.MetadataValue]:
    return {k: to_metadata_value(v) for k, v in (values or {}).items()}


def metadata_value(value: ipb.MetadataValue, key: str) -> Any:
    """The plain form of one item's value (a list for ``list_value``); an empty value or a list in a
    list is InvalidInputError naming its key."""
    which = value.WhichOneof("kind")
    if which is None:
        raise InvalidInputError(
            f"metadata value of {key!r} is empty: set one of its fields", field="metadata"
        )
    if which != "list_value":
        return getattr(value, which)
    out = []
    for element in value.list_value.values:
        kind = element.WhichOneof("kind")
        if kind is None or kind == "list_value":
            raise InvalidInputError(
                f"metadata value of {key!r}: list elements are strings, integers, doubles or booleans, "
                f"got {'an empty value' if kind is None else 'a list'}",
                field="metadata",
            )
        out.append(getattr(element, kind))
    return out


def from_metadata(values: Mapping[str, ipb.MetadataValue]) -> dict[str, Any]:
    """Plain metadata; an empty value (no field set) is InvalidInputError naming its key."""
    return {key: metadata_value(value, key) for key, value in values.items()}


# ------------------------------------------------------------------ ListIds
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 1000, 10_000
_TOKEN_PREFIX = "ids1:"


def page_size(requested: int) -> int:
    """A ListIds page size: 0 means the default; beyond the maximum is InvalidInputError."""
    if requested > MAX_PAGE_SIZE:
        raise InvalidInputError(
            f"page_size {requested} is over the limit of {MAX_PAGE_SIZE}: ask for smaller pages",
            field="page_size",
        )
    return requested or DEFAULT_PAGE_SIZE


def page_position(token: str) -> int:
    """Where a ListIds page token says to continue ("" = the start)."""
    if not token:
        return 0
    number = token.removeprefix(_TOKEN_PREFIX)
    if token == number or not number.isdigit():
        raise InvalidInputError(
            f"page_token {token[:40]!r} is not one this server gave: pass next_page_token as returned, "
            "or an empty token for the first page",
            field="page_token",
        )
    return int(number)


def page_token(position: int | None) -> str:
    return "" if position is None else f"{_TOKEN_PREFIX}{position}"


# ------------------------------------------------------- index server replies
INDEX_PARAM_FIELDS = tuple(ipb.IndexParams.DESCRIPTOR.fields_by_name)


def index_params(message: ipb.IndexParams) -> dict[str, int]:
    """The ANN parameters a CreateIndexRequest sets (0 = unset: the kind's default)."""
    return {name: getattr(message, name) for name in INDEX_PARAM_FIELDS if getattr(message, name)}


def index_info_message(described: IndexState) -> ipb.IndexInfo:
    spec, state = described.collection.spec, described.state
    return ipb.IndexInfo(
        name=spec.name,
        model=described.model,
        model_source=spec.model_source,
        dimension=spec.dimension,
        metric=METRICS[spec.metric],
        kind=KINDS[spec.kind],
        params=ipb.IndexParams(**spec.params.for_kind(spec.kind)),  # only what this kind uses
        count=state["count"],
        trained=state["trained"],
        status=described.status,
        durable=state["durable"],
        device=state["device"],
        store_text=spec.store_text,
        **binding_fields(described.collection.binding),
        sparse_dimension=spec.sparse_dimension,
        multi_vector_dimension=spec.multi_vector_dimension,
        representation_bytes=state["representation_bytes"],
    )


def damaged_index_info(name: str, damage: Exception) -> ipb.IndexInfo:
    """A damaged index described, not raised: the caller learns what is wrong."""
    return ipb.IndexInfo(name=name, status=f"error: {damage}")


def list_indexes_response(
    described: Sequence[IndexState], broken: Mapping[str, Exception]
) -> ipb.ListIndexesResponse:
    infos = [index_info_message(d) for d in described]
    infos += [damaged_index_info(name, exc) for name, exc in broken.items()]
    return ipb.ListIndexesResponse(indexes=infos)


def new_items(request: ipb.UpsertRequest) -> list[NewItem]:
    from embedsvc.index.service import NewItem

    return [
        NewItem(
            id=item.id,
            text=item.text if item.HasField("text") else None,
            vector=item.vector or None,
            metadata=from_metadata(item.metadata),
            **item_parts(item),
        )
        for item in request.items
    ]


def delete_index_response() -> ipb.DeleteIndexResponse:
    return ipb.DeleteIndexResponse()


def upsert_response(upserted: int, count: int) -> ipb.UpsertResponse:
    return ipb.UpsertResponse(upserted=upserted, count=count)


def delete_response(deleted: int, count: int) -> ipb.DeleteResponse:
    return ipb.DeleteResponse(deleted=deleted, count=count)


def get_response(
    found: Sequence[tuple[str, np.ndarray, Mapping[str, Any], str | None]],
    missing: Sequence[str],
    parts: Mapping[str, tuple[Any, Any]] | None = None,
) -> ipb.GetResponse:
    """(id, vector, metadata, stored text or None) per item found; ``parts``: the items' sparse and token
    vectors, where the index keeps them."""
    items = [got_item(i, v, m, t, *(parts or {}).get(i, (None, None))) for i, v, m, t in found]
    return ipb.GetResponse(items=items, missing=missing)


def search_response(found: Sequence[IndexHit]) -> ipb.SearchResponse:
    return ipb.SearchResponse(hits=[hit(h) for h in found])


def search_batch_response(results: Sequence[Sequence[IndexHit]]) -> ipb.SearchBatchResponse:
    return ipb.SearchBatchResponse(results=[search_response(found) for found in results])


def list_ids_response(ids: Sequence[str], following: int | None, count: int) -> ipb.ListIdsResponse:
    return ipb.ListIdsResponse(ids=ids, next_page_token=page_token(following), count=count)


def count_response(count: int) -> ipb.CountResponse:
    return ipb.CountResponse(count=count)


def check_filter_size(where: ipb.Filter, max_leaves: int) -> None:
    """InvalidInputError when a filter holds more than ``max_leaves`` conditions and listed values;
    stops counting there, so the check costs at most that many steps."""
    leaves = 0
    stack = [where]
    while stack:
        node = stack.pop()
        which = node.WhichOneof("condition")
        if which == "field":
            match = node.field.WhichOneof("match")
            leaves += len(getattr(node.field, match).values) if match in ("in", "not_in") else 1
        elif which is not None:
            children = getattr(node, which).filters
            leaves += 1 if not children else 0
            if len(children) + len(stack) + leaves <= max_leaves:  # len() first: O(1) on a huge list
                stack.extend(children)
            else:
                leaves = max_leaves + 1
        if leaves > max_leaves:
            raise InvalidInputError(
                f"the filter holds more than {max_leaves} conditions and listed values (max_filter_leaves): "
                "narrow it, or split the search",
                field="where",
            )


def index_search_options(
    request: ipb.SearchRequest | ipb.SearchBatchRequest, max_leaves: int
) -> IndexSearchOptions:
    """k (0: 10), the filters (the equality map and `where`, both must hold), ef_search, nprobe,
    return_text and a rerank stage; the filter's size is checked (bounded) before it is converted."""
    from embedsvc.index.service import RerankStage
    from embedsvc.index.service import SearchOptions as IndexSearchOptions

    where = None
    if request.HasField("where"):
        check_filter_size(request.where, max_leaves)
        where = filter_from_proto(request.where)
    return IndexSearchOptions(
        k=request.k or 10,
        filter=from_metadata(request.filter),
        where=parse_filter(where),
        ef_search=request.ef_search if request.HasField("ef_search") else None,
        nprobe=request.nprobe if request.HasField("nprobe") else None,
        return_text=request.return_text,
        rerank=RerankStage(**rerank_fields(request.rerank)) if request.HasField("rerank") else None,
        hybrid=hybrid_options(request),
    )


def reembed_response(reembedded: int, fingerprint: str, rounds: int) -> ipb.ReembedResponse:
    return ipb.ReembedResponse(reembedded=reembedded, fingerprint=fingerprint, rounds=rounds)


def rebind_request(index: str) -> ipb.RebindRequest:
    return ipb.RebindRequest(index=index)


def reembed_request(index: str) -> ipb.ReembedRequest:
    return ipb.ReembedRequest(index=index)


# --------------------------------------------------------------------- filters


def filter_to_proto(condition: Condition) -> ipb.Filter:
    """A parsed filter (embedsvc.index.filters) as the proto Filter."""
    if isinstance(condition, Eq):
        return ipb.Filter(field=ipb.FieldCondition(key=condition.key, eq=to_metadata_value(condition.value)))
    if isinstance(condition, In):
        field_condition = ipb.FieldCondition(key=condition.key)
        getattr(field_condition, "in").SetInParent()  # set even when the list is empty
        getattr(field_condition, "in").values.extend(to_metadata_value(v) for v in condition.values)
        return ipb.Filter(field=field_condition)  # `in` is a Python keyword: no keyword argument
    if isinstance(condition, Range):
        bounds: dict[str, Any] = {}
        for b in RANGE_BOUNDS:
            value = getattr(condition, b)
            if value is None:
                continue
            bounds[b] = float(value)  # what servers before the integer fields read
            if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
                bounds[f"{b}_int"] = value  # exact: a double rounds integers beyond 2^53
        return ipb.Filter(field=ipb.FieldCondition(key=condition.key, range=ipb.Range(**bounds)))
    if isinstance(condition, Exists):
        return ipb.Filter(field=ipb.FieldCondition(key=condition.key, exists=condition.present))
    if isinstance(condition, Not):
        inner = condition.inner
        if isinstance(inner, Eq):
            return ipb.Filter(field=ipb.FieldCondition(key=inner.key, ne=to_metadata_value(inner.value)))
        if isinstance(inner, In):
            values = ipb.MetadataValueList(values=[to_metadata_value(v) for v in inner.values])
            return ipb.Filter(field=ipb.FieldCondition(key=inner.key, not_in=values))
        return ipb.Filter(none=ipb.FilterList(filters=[filter_to_proto(inner)]))
    parts = ipb.FilterList(filters=[filter_to_proto(c) for c in condition.parts])
    return ipb.Filter(all=parts) if isinstance(condition, All) else ipb.Filter(any=parts)


def _plain_value(value: ipb.MetadataValue, key: str) -> Any:
    which = value.WhichOneof("kind")
    if which is None:
        raise InvalidInputError(f"filter on {key!r}: a value is empty: set one of its fields", field="filter")
    if which == "list_value":
        raise InvalidInputError(
            f"filter on {key!r}: a filter value is one string, number or boolean, not a list (eq matches "
            "items whose list holds the value; use in to match any of several)",
            field="filter",
        )
    return getattr(value, which)


def filter_from_proto(message: ipb.Filter, depth: int = 0) -> dict[str, Any]:
    """The proto Filter in the plain form embedsvc.index.filters.parse_filter validates and parses."""
    if depth > MAX_FILTER_DEPTH:
        raise InvalidInputError(f"filters nest at most {MAX_FILTER_DEPTH} levels", field="filter")
    which = message.WhichOneof("condition")
    if which is None:
        raise InvalidInputError(
            "a filter (or one nested in it) is empty: set one of its fields", field="filter"
        )
    if which != "field":
        inner = [filter_from_proto(f, depth + 1) for f in getattr(message, which).filters]
        if not inner:
            raise InvalidInputError(f"filter {which} needs at least one filter in it", field="filter")
        if which == "all":
            return {"$and": inner}
        if which == "any":
            return {"$or": inner}
        return {"$not": inner[0] if len(inner) == 1 else {"$or": inner}}
    field_condition = message.field
    key = field_condition.key
    match = field_condition.WhichOneof("match")
    if match is None:
        raise InvalidInputError(f"filter on {key!r} sets no condition (eq, in, range, ...)", field="filter")
    if match in ("eq", "ne"):
        spec: Any = _plain_value(getattr(field_condition, match), key)
    elif match in ("in", "not_in"):
        spec = [_plain_value(v, key) for v in getattr(field_condition, match).values]
    elif match == "range":
        bounds = field_condition.range
        # the exact integer form of a bound wins over its double (set beside it for older servers)
        spec = {
            b: getattr(bounds, f"{b}_int") if bounds.HasField(f"{b}_int") else getattr(bounds, b)
            for b in RANGE_BOUNDS
            if bounds.HasField(f"{b}_int") or bounds.HasField(b)
        }
        if not spec:
            raise InvalidInputError(f"filter on {key!r}: a range needs at least one bound", field="filter")
        return {key: spec}
    else:
        spec = field_condition.exists
    return {key: {match: spec}}


# ----------------------------------------------------------------- float32 embeddings as arrays
# An Embedding with float32 values is, on the wire, field 1 (packed floats: the array's little-endian
# bytes) then field 4 (tokens, a varint). Responses are built from the [n, d] array in one pass and
# parsed by protobuf's own C code; clients read each row's bytes back with numpy. No per-element Python.
_VARINT_WIDTH = 5  # a uint32 as a fixed 5-byte varint: protobuf parsers accept non-minimal varints


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if not value:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def pack_float32_embeddings(vectors: np.ndarray, token_counts: Sequence[int]) -> bytes:
    """Serialized ``repeated Embedding embeddings = 3`` entries (float32 values + tokens), ready for
    ``EmbedResponse.MergeFromString``: every row laid out by numpy, the same bytes width for each."""
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    n, dims = rows.shape
    values_head = b"\x0a" + _varint(4 * dims)
    body_len = len(values_head) + 4 * dims + 1 + _VARINT_WIDTH
    head = b"\x1a" + _varint(body_len) + values_head
    out = np.empty((n, len(head) + body_len - len(values_head)), dtype=np.uint8)
    out[:, : len(head)] = np.frombuffer(head, dtype=np.uint8)
    out[:, len(head) : len(head) + 4 * dims] = rows.view(np.uint8).reshape(n, 4 * dims)
    tokens = np.asarray(token_counts, dtype=np.uint64).reshape(n)
    out[:, -_VARINT_WIDTH - 1] = 0x20  # field 4, varint
    for k in range(_VARINT_WIDTH):
        byte = (tokens >> np.uint64(7 * k)) & np.uint64(0x7F)
        out[:, -_VARINT_WIDTH + k] = byte | np.uint64(0x80 if k < _VARINT_WIDTH - 1 else 0)
    return out.tobytes()


def embed_response(
    *,
    request_id: str,
    model: str,
    vectors: np.ndarray,
    token_counts: Sequence[int],
    encoding: pb.Encoding,
    total_tokens: int,
    fingerprint: str = "",
) -> pb.EmbedResponse:
    """The EmbedResponse for ``vectors`` (float32 [n, d]) in ``encoding``: float32 rows packed in
    bulk; the byte encodings (float16, int8, binary) one ``data`` field per row. ENCODING_UNSPECIFIED
    answers float32."""
    encoding = encoding or pb.ENCODING_FLOAT32
    response = pb.EmbedResponse(
        id=request_id,
        model=model,
        dimensions=vectors.shape[1],
        encoding=encoding,
        usage=pb.Usage(total_tokens=total_tokens, inputs=len(token_counts)),
        fingerprint=fingerprint,
    )
    add = response.embeddings.add
    if not vectors.shape[1]:  # dense was not asked: each embedding carries its token count only
        for n_tokens in token_counts:
            add(tokens=n_tokens)
        return response
    if encoding == pb.ENCODING_FLOAT32:
        if len(token_counts):
            response.MergeFromString(pack_float32_embeddings(vectors, token_counts))
        return response
    for vector, n_tokens in zip(vectors, token_counts, strict=True):
        if encoding == pb.ENCODING_FLOAT16:
            add(data=codecs.encode_float16(vector), tokens=n_tokens)
        elif encoding == pb.ENCODING_INT8:
            data, scale = codecs.encode_int8(vector)
            add(data=data, scale=scale, tokens=n_tokens)
        else:
            add(data=codecs.encode_binary(vector), tokens=n_tokens)
    return response


def stream_response(request_id: str, response: pb.EmbedResponse) -> pb.EmbedStreamResponse:
    return pb.EmbedStreamResponse(id=request_id, response=response)


def stream_error(request_id: str, code: int, message: str, field: str) -> pb.EmbedStreamResponse:
    """One failed request of an EmbedStream: the stream itself stays open."""
    return pb.EmbedStreamResponse(id=request_id, error=pb.Error(code=code, message=message, field=field))


def tokenize_response(
    model: str, tokenized: Sequence[tuple[Sequence[int], Sequence[str]]]
) -> pb.TokenizeResponse:
    return pb.TokenizeResponse(
        model=model, inputs=[pb.TokenizedInput(ids=ids, tokens=tokens) for ids, tokens in tokenized]
    )


def list_models_response(facts: Sequence[ModelFacts], default_model: str) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(models=[model_info(f) for f in facts], default_model=default_model)


def float32_rows(response: pb.EmbedResponse) -> np.ndarray:
    """The float32 values of every embedding as one [n, dimensions] array, read from each row's
    serialized bytes (protobuf writes field 1 first: tag, length, the floats)."""
    dims = response.dimensions
    out = np.empty((len(response.embeddings), dims), dtype=np.float32)
    head = b"\x0a" + _varint(4 * dims)
    for i, item in enumerate(response.embeddings):
        raw = item.SerializeToString()
        if dims and raw.startswith(head) and len(raw) >= len(head) + 4 * dims:
            out[i] = np.frombuffer(raw, dtype="<f4", count=dims, offset=len(head))
        elif len(item.values) == dims:  # no values (dims 0), or an unexpected layout: read them one by one
            out[i] = np.asarray(item.values, dtype=np.float32)
        else:
            raise ValueError(f"embedding {i} has {len(item.values)} values, the response says {dims}")
    return out


# ------------------------------------------------------------ rerank, score, classify


@dataclass(frozen=True)
class RerankResult:
    """One ranked document: its position in the request, its score, its text when asked for."""

    index: int
    score: float
    document: str | None = None
    tokens: int = 0


@dataclass(frozen=True)
class Classification:
    """Every label's score for each text: ``scores[i, j]`` is text i's score for ``labels[j]``."""

    labels: tuple[str, ...]  # the model's labels, in the order of its outputs
    scores: np.ndarray  # float32 [texts, labels]

    @property
    def predicted(self) -> list[str]:
        """The best label of each text."""
        return [self.labels[j] for j in np.argmax(self.scores, axis=1)] if len(self.labels) else []


def ranked(scores: Any, top_n: int | None) -> list[int]:
    """Positions of ``scores``, highest first (ties in input order), the first ``top_n`` of them: the
    order every door returns rerank results in."""
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise InvalidInputError(f"top_n must be an integer of at least 1, got {top_n!r}", field="top_n")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [int(i) for i in order[:top_n]]


def score_options(request: Any) -> ScoreOptions:
    """ScoreOptions of a RerankRequest, ScoreRequest or ClassifyRequest."""
    names = {f.name for f in request.DESCRIPTOR.fields}
    instruction = request.instruction if "instruction" in names and request.HasField("instruction") else None
    cut = "max_tokens_per_doc" in names and request.HasField("max_tokens_per_doc")
    return ScoreOptions(
        instruction=instruction,
        truncation=lookup(_TRUNCATION_NAMES, request.truncation, "truncation"),
        raw=request.raw_scores,
        max_document_tokens=request.max_tokens_per_doc if cut else None,
    )


def _score_fields(instruction: str | None, truncation: str, raw_scores: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "truncation": lookup(TRUNCATIONS, truncation, "truncation"),
        "raw_scores": raw_scores,
    }
    if instruction is not None:
        fields["instruction"] = instruction
    return fields


def _strings(items: Any, what: str) -> list[str]:
    if isinstance(items, str | bytes):
        raise ValueError(f"{what} must be a list of strings, not a single string")
    out = list(items)
    if not out:
        raise ValueError(f"{what} must hold at least one string")
    return out


def rerank_requests(
    query: str,
    documents: Sequence[str],
    chunk: int,
    *,
    model: str | None,
    top_n: int | None,
    return_documents: bool,
    instruction: str | None,
    truncation: str,
    raw_scores: bool,
    max_tokens_per_doc: int | None = None,
) -> list[pb.RerankRequest]:
    """RerankRequests of at most ``chunk`` documents each; ``id`` is the position of its first document.
    Each asks for its own ``top_n``: the best ``top_n`` overall are among them."""
    if not isinstance(query, str):
        raise ValueError("query must be a string")
    items = _strings(documents, "documents")
    fields = _score_fields(instruction, truncation, raw_scores)
    if top_n is not None:
        ranked([], top_n)  # checked before sending
        fields["top_n"] = top_n
    cut = max_tokens_per_doc
    if cut is not None:
        # checked before sending, like top_n: a negative one cannot travel as a uint32
        if isinstance(cut, bool) or not isinstance(cut, int) or cut < 1:
            raise ValueError(f"max_tokens_per_doc must be an integer of at least 1, got {cut!r}")
        fields["max_tokens_per_doc"] = cut
    size = max(1, chunk)
    return [
        pb.RerankRequest(
            id=str(i * size),
            model=model or "",
            query=query,
            documents=part,
            return_documents=return_documents,
            **fields,
        )
        for i, part in enumerate(split(items, size))
    ]


def rerank_response(
    *, request_id: str, model: str, scored: Scored, top_n: int | None, documents: Sequence[str] | None
) -> pb.RerankResponse:
    """Results in :func:`ranked` order; each document's text copied in when ``documents`` is given."""
    response = pb.RerankResponse(
        id=request_id,
        model=model,
        fingerprint=scored.fingerprint,
        usage=pb.Usage(total_tokens=scored.total_tokens, inputs=len(scored.token_counts)),
    )
    scores = scored.scores
    for i in ranked(scores, top_n):
        result = response.results.add(index=i, score=float(scores[i]), tokens=scored.token_counts[i])
        if documents is not None:
            result.document = documents[i]
    return response


def rerank_results(
    requests: Sequence[pb.RerankRequest], replies: Sequence[pb.RerankResponse], top_n: int | None
) -> list[RerankResult]:
    """The replies to :func:`rerank_requests` merged: indexes into the whole list, ranked again."""
    merged = [
        RerankResult(
            index=int(request.id) + r.index,
            score=r.score,
            document=r.document if r.HasField("document") else None,
            tokens=r.tokens,
        )
        for request, reply in zip(requests, replies, strict=True)
        for r in reply.results
    ]
    return [merged[i] for i in ranked([r.score for r in merged], top_n)] if merged else []


def _pairs(pairs: Any) -> list[tuple[str, str]]:
    if isinstance(pairs, str | bytes):
        raise ValueError("pairs must be a list of (query, document) pairs, not a single string")
    out = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, str | bytes) or len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            raise ValueError(f"pairs[{i}] must be a (query, document) pair of strings, got {pair!r}")
        out.append((pair[0], pair[1]))
    if not out:
        raise ValueError("pairs must hold at least one pair")
    return out


def score_requests(
    pairs: Sequence[tuple[str, str]],
    chunk: int,
    *,
    model: str | None,
    instruction: str | None,
    truncation: str,
    raw_scores: bool,
) -> list[pb.ScoreRequest]:
    """ScoreRequests of at most ``chunk`` pairs each."""
    fields = _score_fields(instruction, truncation, raw_scores)
    return [
        pb.ScoreRequest(
            model=model or "", pairs=[pb.ScorePair(query=q, document=d) for q, d in part], **fields
        )
        for part in split(_pairs(pairs), chunk)
    ]


def score_pairs(request: pb.ScoreRequest) -> list[tuple[str, str]]:
    return [(p.query, p.document) for p in request.pairs]


def score_response(*, request_id: str, model: str, scored: Scored) -> pb.ScoreResponse:
    return pb.ScoreResponse(
        id=request_id,
        model=model,
        scores=np.asarray(scored.scores, dtype=np.float32).tolist(),
        tokens=scored.token_counts,
        usage=pb.Usage(total_tokens=scored.total_tokens, inputs=len(scored.token_counts)),
        fingerprint=scored.fingerprint,
    )


def scores(response: pb.ScoreResponse) -> np.ndarray:
    return np.asarray(response.scores, dtype=np.float32)


def classify_requests(
    texts: Sequence[str], chunk: int, *, model: str | None, truncation: str, raw_scores: bool
) -> list[pb.ClassifyRequest]:
    """ClassifyRequests of at most ``chunk`` texts each."""
    fields = _score_fields(None, truncation, raw_scores)
    return [
        pb.ClassifyRequest(model=model or "", inputs=part, **fields)
        for part in split(_strings(texts, "texts"), chunk)
    ]


def classify_response(*, request_id: str, model: str, classified: Classified) -> pb.ClassifyResponse:
    """Each text's labels, highest score first (ties in the model's label order)."""
    response = pb.ClassifyResponse(
        id=request_id,
        model=model,
        labels=classified.labels,
        fingerprint=classified.fingerprint,
        usage=pb.Usage(total_tokens=sum(classified.token_counts), inputs=len(classified.token_counts)),
    )
    for row, n_tokens in zip(classified.scores, classified.token_counts, strict=True):
        result = response.results.add(tokens=n_tokens)
        for j in ranked(row, None):
            result.labels.add(label=classified.labels[j], score=float(row[j]))
    return response


def classification(replies: Sequence[pb.ClassifyResponse]) -> Classification:
    """The replies to :func:`classify_requests` as one [texts, labels] array in the model's label order."""
    labels = tuple(replies[0].labels) if replies else ()
    column = {label: j for j, label in enumerate(labels)}
    rows = []
    for reply in replies:
        for result in reply.results:
            row = np.zeros(len(labels), dtype=np.float32)
            for item in result.labels:
                row[column[item.label]] = item.score
            rows.append(row)
    return Classification(labels, np.stack(rows) if rows else np.zeros((0, len(labels)), dtype=np.float32))


# ------------------------------------------------------- outputs: sparse and multi-vector
OUTPUT_KINDS = {
    "dense": pb.OUTPUT_KIND_DENSE,
    "sparse": pb.OUTPUT_KIND_SPARSE,
    "multi_vector": pb.OUTPUT_KIND_MULTI_VECTOR,
}
OUTPUT_KIND_NAMES = {v: k for k, v in OUTPUT_KINDS.items()}
MULTI_VECTOR_ENCODINGS = {"float32": pb.ENCODING_FLOAT32, "float16": pb.ENCODING_FLOAT16}
_MULTI_VECTOR_DTYPES: dict[int, np.dtype[Any]] = {
    pb.ENCODING_FLOAT32: np.dtype("<f4"),
    pb.ENCODING_FLOAT16: np.dtype("<f2"),
}


def request_outputs(request: pb.EmbedRequest) -> tuple[str, ...]:
    """The output kinds an EmbedRequest names, as EmbedOptions spells them (what the model offers is
    the facade's to check); a number that is no kind is InvalidInputError."""
    names = []
    for i, kind in enumerate(request.outputs):
        if kind not in OUTPUT_KIND_NAMES:
            raise InvalidInputError(
                f"outputs[{i}] is {kind}, not an output kind: use OUTPUT_KIND_DENSE, OUTPUT_KIND_SPARSE "
                "or OUTPUT_KIND_MULTI_VECTOR",
                field="outputs",
            )
        names.append(OUTPUT_KIND_NAMES[kind])
    return tuple(names)


def multi_vector_encoding(request: pb.EmbedRequest) -> pb.Encoding:
    """The encoding an EmbedRequest asks for its multi-vectors: float32 (unspecified) or float16."""
    value = request.multi_vector_encoding or pb.ENCODING_FLOAT32
    if value not in _MULTI_VECTOR_DTYPES:
        raise InvalidInputError(
            f"multi_vector_encoding {value} is not served: use ENCODING_FLOAT32 or ENCODING_FLOAT16",
            field="multi_vector_encoding",
        )
    return value


# Texts per multi-vector request, by the server's own estimate (UTF-8 bytes / 3 + 2 tokens, uncapped
# here, so never under the server's): 16 384 tokens x bge-m3's 1 024 floats is half the server's default
# bound (max_multi_vector_values), so a client's requests fit it whatever the chunk size.
MULTI_VECTOR_REQUEST_TOKENS = 16_384


def split_by_tokens(items: Sequence[str], size: int, tokens: int) -> list[Sequence[str]]:
    """``items`` in consecutive slices of at most ``size`` texts and about ``tokens`` estimated tokens
    (a longer text goes alone)."""
    parts: list[Sequence[str]] = []
    start, total = 0, 0
    for i, text in enumerate(items):
        estimate = len(text.encode("utf-8", "surrogatepass")) // 3 + 2
        if i > start and (i - start >= max(1, size) or total + estimate > tokens):
            parts.append(items[start:i])
            start, total = i, 0
        total += estimate
    parts.append(items[start:])
    return parts


def output_request_fields(outputs: Sequence[str] | None, multi_vector_encoding: str) -> dict[str, Any]:
    """EmbedRequest fields for the clients' ``outputs`` (None: the field stays unset, and any server
    answers dense as before) and ``multi_vector_encoding``."""
    fields: dict[str, Any] = {}
    if outputs is not None:
        if isinstance(outputs, str):
            raise ValueError(f"outputs is a list of kinds, such as [{outputs!r}], not a single string")
        if not outputs:
            raise ValueError("outputs must name at least one of dense, sparse, multi_vector (or be None)")
        fields["outputs"] = [lookup(OUTPUT_KINDS, name, "outputs") for name in outputs]
    encoding = lookup(MULTI_VECTOR_ENCODINGS, multi_vector_encoding, "multi_vector_encoding")
    if encoding != pb.ENCODING_FLOAT32:
        fields["multi_vector_encoding"] = encoding
    return fields


def add_outputs(
    response: pb.EmbedResponse,
    *,
    sparse: Sequence[tuple[np.ndarray, np.ndarray]] | None,
    sparse_dimension: int,
    multi_vectors: Sequence[np.ndarray] | None,
    encoding: pb.Encoding,
) -> pb.EmbedResponse:
    """The sparse vectors (token ids, weights) and multi-vectors (float32 [tokens, dim]) of each input
    into ``response.embeddings`` (already one per input): each message is set even when empty, so a
    client tells an answer from a server that ignored the field."""
    items = response.embeddings
    if sparse is not None:
        for item, (ids, weights) in zip(items, sparse, strict=True):
            item.sparse.SetInParent()
            item.sparse.indices.extend(np.asarray(ids, dtype=np.uint32).tolist())
            item.sparse.values.extend(np.asarray(weights, dtype=np.float32).tolist())
            item.sparse.dimension = sparse_dimension
    if multi_vectors is not None:
        dtype = _MULTI_VECTOR_DTYPES[encoding]
        for item, matrix in zip(items, multi_vectors, strict=True):
            rows, dims = matrix.shape
            item.multi_vector.SetInParent()
            item.multi_vector.rows = rows
            item.multi_vector.dimensions = dims
            item.multi_vector.encoding = encoding
            item.multi_vector.data = np.ascontiguousarray(matrix, dtype=dtype).tobytes()
    return response


@dataclass(frozen=True)
class SparseVector:
    """One input's sparse output: the weights of the vocabulary ids it lights up."""

    indices: np.ndarray  # int32 token ids, ascending
    values: np.ndarray  # float32 weights, one per id
    dimension: int  # vocabulary size: every index is below it

    def as_dict(self) -> dict[int, float]:
        """``{token id: weight}``."""
        return dict(zip(self.indices.tolist(), self.values.tolist(), strict=True))


@dataclass(frozen=True)
class EmbedOutputs:
    """What ``embed(texts, outputs=[...])`` returns: each kind asked, in input order (None if not asked)."""

    dense: np.ndarray | None  # float32 [inputs, dimensions]
    sparse: list[SparseVector] | None
    multi_vectors: list[np.ndarray] | None  # per input float32 [tokens, dimensions]
    tokens: list[int]  # per input, as the model saw it

    def __len__(self) -> int:
        return len(self.tokens)

    def sparse_matrix(self) -> Any:
        """The sparse outputs as one ``scipy.sparse.csr_array`` [inputs, vocabulary size]."""
        if self.sparse is None:
            raise ValueError("no sparse output here: ask for it with outputs=[..., 'sparse']")
        try:
            from scipy import sparse as scipy_sparse
        except ImportError as exc:
            raise MissingExtraError("sparse_matrix needs scipy: pip install scipy") from exc
        lengths = np.array([len(v.indices) for v in self.sparse], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        empty_i, empty_v = np.zeros(0, np.int32), np.zeros(0, np.float32)
        indices = np.concatenate([empty_i, *(v.indices for v in self.sparse)])
        values = np.concatenate([empty_v, *(v.values for v in self.sparse)])
        width = max((v.dimension for v in self.sparse), default=0)
        return scipy_sparse.csr_array((values, indices, indptr), shape=(len(self.sparse), width))

    @staticmethod
    def joined(parts: Sequence[EmbedOutputs]) -> EmbedOutputs:
        """One result of several requests' results, in order."""

        def each(name: str) -> Any:
            lists = [getattr(p, name) for p in parts]
            return None if not lists or lists[0] is None else [x for part in lists for x in part]

        dense = [p.dense for p in parts if p.dense is not None]
        return EmbedOutputs(
            dense=np.concatenate(dense) if dense else None,
            sparse=each("sparse"),
            multi_vectors=each("multi_vectors"),
            tokens=[n for p in parts for n in p.tokens],
        )


def embed_outputs(response: pb.EmbedResponse, outputs: Sequence[str]) -> EmbedOutputs:
    """An EmbedResponse's outputs as plain arrays (bytes read by numpy); asked kinds the response lacks
    mean the server predates them: FailedPreconditionError, not a silent dense answer."""
    items = response.embeddings
    for kind in ("sparse", "multi_vector"):
        if kind in outputs and any(not item.HasField(kind) for item in items):  # type: ignore[arg-type]
            raise FailedPreconditionError(
                f"the server answered without the {kind} output: it predates output kinds "
                "(EmbedRequest.outputs); upgrade it"
            )
    sparse = None
    if "sparse" in outputs:
        sparse = [
            SparseVector(
                np.asarray(item.sparse.indices, dtype=np.int32),
                np.asarray(item.sparse.values, dtype=np.float32),
                item.sparse.dimension,
            )
            for item in items
        ]
    multi = (
        [_multi_vector(item.multi_vector, i) for i, item in enumerate(items)]
        if "multi_vector" in outputs
        else None
    )
    return EmbedOutputs(
        dense=embeddings(response) if "dense" in outputs else None,
        sparse=sparse,
        multi_vectors=multi,
        tokens=[item.tokens for item in items],
    )


def _multi_vector(message: pb.MultiVector, i: int) -> np.ndarray:
    dtype = _MULTI_VECTOR_DTYPES.get(message.encoding or pb.ENCODING_FLOAT32)
    if dtype is None:
        raise ValueError(f"multi-vector {i} has encoding {message.encoding}, which this client cannot read")
    shape = (message.rows, message.dimensions)
    if len(message.data) != shape[0] * shape[1] * dtype.itemsize:
        raise ValueError(f"multi-vector {i} holds {len(message.data)} bytes, not the {shape} it says")
    return np.frombuffer(message.data, dtype=dtype).reshape(shape).astype(np.float32)


def output_facts(facts: ModelFacts) -> dict[str, Any]:
    """ModelInfo fields saying which outputs a served model offers, and their widths."""
    return {
        "outputs": [OUTPUT_KINDS[name] for name in facts.outputs],
        "sparse_dimension": facts.sparse_dimension or 0,
        "multi_vector_dimension": facts.multi_vector_dimension or 0,
    }


def plain_output_facts(message: pb.ModelInfo) -> dict[str, Any]:
    """:class:`ModelInfo`'s output fields; a server before them offers dense only."""
    names = tuple(OUTPUT_KIND_NAMES[k] for k in message.outputs if k in OUTPUT_KIND_NAMES)
    return {
        "outputs": names or ("dense",),
        "sparse_dimension": message.sparse_dimension,
        "multi_vector_dimension": message.multi_vector_dimension,
    }

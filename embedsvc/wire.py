"""Every protobuf <-> plain conversion, shared by the server and the clients.

Enum tables (input types, truncations, encodings, metrics, index kinds) in both directions,
metadata values, filters, embed options, model and index infos, and the clients' requests (split to
the per-request limits) and replies. Nothing else converts protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from embedsvc import codecs
from embedsvc.engine.options import EmbedOptions, ModelFacts
from embedsvc.errors import InvalidInputError
from embedsvc.index.filters import MAX_DEPTH as MAX_FILTER_DEPTH
from embedsvc.index.filters import RANGE_BOUNDS, All, Condition, Eq, Exists, In, Not, Range, parse_filter
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import index_pb2 as ipb

if TYPE_CHECKING:  # server-side types: a client-only install has no index package's dependencies
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
    return EmbedOptions(
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


def model_info(facts: ModelFacts) -> pb.ModelInfo:
    s = facts.settings
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
        )
        for m in response.models
    ]


# ------------------------------------------------------- client requests/replies


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, Any]


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


def split(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive slices of at most ``size`` (the per-request limit a client keeps to)."""
    size = max(1, size)
    return [items[i : i + size] for i in range(0, len(items), size)]


def embed_requests(
    texts: Sequence[str], chunk: int, *, model: str | None, **options: Any
) -> list[pb.EmbedRequest]:
    """EmbedRequests of at most ``chunk`` texts; ``options`` are :func:`embed_request_fields`'s."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    base = embed_request_fields(**options)
    items = list(texts)
    if not items:
        raise ValueError("texts must hold at least one string")
    return [
        pb.EmbedRequest(id=str(i * max(1, chunk)), inputs=part, model=model or "", **base)
        for i, part in enumerate(split(items, chunk))
    ]


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
    name: str, model: str | None, metric: str, kind: str, params: Mapping[str, int]
) -> ipb.CreateIndexRequest:
    return ipb.CreateIndexRequest(
        name=name,
        model=model or "",
        metric=lookup(METRICS, metric, "metric"),
        kind=lookup(KINDS, kind, "kind"),
        params=ipb.IndexParams(**params),
    )


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
    )


def upsert_requests(
    index: str,
    ids: Sequence[str],
    texts: Sequence[str] | None,
    vectors: Any,
    metadata: Sequence[Mapping[str, Any]] | None,
    chunk: int,
) -> list[ipb.UpsertRequest]:
    """UpsertRequests of at most ``chunk`` items; the lengths are checked before anything is sent."""
    if (texts is None) == (vectors is None):
        raise ValueError("pass exactly one of texts or vectors")
    n = len(ids)
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
        if array is None:
            items.append(ipb.Item(id=item_id, text=texts[i], metadata=meta))  # type: ignore[index]
        else:
            items.append(ipb.Item(id=item_id, vector=array[i].tolist(), metadata=meta))
    return [ipb.UpsertRequest(index=index, items=part) for part in split(items, chunk)]


def get_requests(index: str, ids: Sequence[str], chunk: int) -> list[ipb.GetRequest]:
    if isinstance(ids, str):
        raise ValueError("ids must be a list of strings, not a single string")
    return [ipb.GetRequest(index=index, ids=list(part)) for part in split(list(ids), chunk)]


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

    def apply(self, request: Any) -> Any:
        request.k = self.k
        _set_filter(request, self.filter)
        for name in ("ef_search", "nprobe", "instruction"):
            if getattr(self, name) is not None:
                setattr(request, name, getattr(self, name))
        return request


def search_request(index: str, text: str | None, vector: Any, options: SearchOptions) -> ipb.SearchRequest:
    if (text is None) == (vector is None):
        raise ValueError("pass exactly one of text or vector")
    request = options.apply(ipb.SearchRequest(index=index))
    if text is not None:
        request.text = text
    else:
        request.vector.values.extend(np.asarray(vector, dtype=np.float32).ravel().tolist())
    return request


def search_batch_requests(
    index: str, texts: Sequence[str] | None, vectors: Any, options: SearchOptions, chunk: int
) -> list[ipb.SearchBatchRequest]:
    """One request per ``chunk`` queries (fewer when k is large: a response holds at most MAX_BATCH_HITS)."""
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
    return [Hit(h.id, h.score, from_metadata(h.metadata)) for h in response.hits]


def batch_hits(response: ipb.SearchBatchResponse) -> list[list[Hit]]:
    return [hits(result) for result in response.results]


def got(response: ipb.GetResponse) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    return {i.id: (np.asarray(i.vector, dtype=np.float32), from_metadata(i.metadata)) for i in response.items}


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
    found: Sequence[tuple[str, np.ndarray, Mapping[str, Any]]], missing: Sequence[str]
) -> ipb.GetResponse:
    items = [ipb.Item(id=i, vector=v.tolist(), metadata=to_metadata(m)) for i, v, m in found]
    return ipb.GetResponse(items=items, missing=missing)


def search_response(found: Sequence[IndexHit]) -> ipb.SearchResponse:
    return ipb.SearchResponse(
        hits=[ipb.Hit(id=h.id, score=h.score, metadata=to_metadata(h.metadata)) for h in found]
    )


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
    """k (0: 10), the filters (the equality map and `where`, both must hold), ef_search and nprobe;
    the filter's size is checked (bounded) before it is converted."""
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
    )


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
    )
    if encoding == pb.ENCODING_FLOAT32:
        if len(token_counts):
            response.MergeFromString(pack_float32_embeddings(vectors, token_counts))
        return response
    add = response.embeddings.add
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

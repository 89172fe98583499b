"""Index methods shared by the sync and async clients: request building and response decoding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedsvc.index.filters import parse_filter
from embedsvc.v1 import index_pb2 as ipb
from embedsvc.wire import KINDS, MAX_BATCH_HITS, METRICS, filter_to_proto, metadata_value, to_metadata

_METRIC_NAMES = {v: k for k, v in METRICS.items()}
_KIND_NAMES = {v: k for k, v in KINDS.items()}


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


@dataclass(frozen=True)
class IdPage:
    ids: list[str]
    next_page_token: str  # "" after the last page
    count: int  # items in the index when the page was read


def list_ids_request(index: str, page_size: int, page_token: str) -> Any:
    if page_size < 0:
        raise ValueError(f"page_size must be 0 (the server's default) or more, got {page_size}")
    return ipb.ListIdsRequest(index=index, page_size=page_size, page_token=page_token)


def id_page(response: ipb.ListIdsResponse) -> IdPage:
    return IdPage(list(response.ids), response.next_page_token, response.count)


def from_metadata(values: Mapping[str, ipb.MetadataValue]) -> dict[str, Any]:
    return {k: metadata_value(v, k) for k, v in values.items() if v.WhichOneof("kind")}


def create_request(name: str, model: str | None, metric: str, kind: str, params: Mapping[str, int]) -> Any:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    return ipb.CreateIndexRequest(
        name=name,
        model=model or "",
        metric=METRICS[metric],
        kind=KINDS[kind],
        params=ipb.IndexParams(**params),
    )


def info(message: ipb.IndexInfo) -> IndexInfo:
    return IndexInfo(
        name=message.name,
        model=message.model,
        model_source=message.model_source,
        dimension=message.dimension,
        metric=_METRIC_NAMES.get(message.metric, ""),
        kind=_KIND_NAMES.get(message.kind, ""),
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
) -> list[Any]:
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
        if texts is not None:
            items.append(ipb.Item(id=item_id, text=texts[i], metadata=meta))
        else:
            items.append(ipb.Item(id=item_id, vector=array[i].tolist(), metadata=meta))  # type: ignore[index]
    return [ipb.UpsertRequest(index=index, items=items[i : i + chunk]) for i in range(0, n, chunk)]


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


def _set_search_options(
    request: Any, ef_search: int | None, nprobe: int | None, instruction: str | None
) -> None:
    if ef_search is not None:
        request.ef_search = ef_search
    if nprobe is not None:
        request.nprobe = nprobe
    if instruction is not None:
        request.instruction = instruction


def search_request(
    index: str,
    text: str | None,
    vector: Any,
    k: int,
    filter: Mapping[str, Any] | None,
    ef_search: int | None,
    nprobe: int | None,
    instruction: str | None,
) -> Any:
    if (text is None) == (vector is None):
        raise ValueError("pass exactly one of text or vector")
    request = ipb.SearchRequest(index=index, k=k)
    _set_filter(request, filter)
    if text is not None:
        request.text = text
    else:
        request.vector.values.extend(np.asarray(vector, dtype=np.float32).ravel().tolist())
    _set_search_options(request, ef_search, nprobe, instruction)
    return request


def search_batch_requests(
    index: str,
    texts: Sequence[str] | None,
    vectors: Any,
    k: int,
    filter: Mapping[str, Any] | None,
    ef_search: int | None,
    nprobe: int | None,
    instruction: str | None,
    chunk: int,
) -> list[Any]:
    """One request per ``chunk`` queries (fewer when k is large: a response holds at most MAX_BATCH_HITS)."""
    if (texts is None) == (vectors is None):
        raise ValueError("pass exactly one of texts or vectors")
    if isinstance(texts, str):
        raise ValueError("texts is a list of strings; for one text use search()")
    array = None if vectors is None else np.asarray(vectors, dtype=np.float32)
    if array is not None and array.ndim != 2:
        raise ValueError(f"vectors must be a [queries, dim] array, got shape {array.shape}")
    n = len(texts) if texts is not None else len(array)  # type: ignore[arg-type]
    per_request = max(1, min(chunk, MAX_BATCH_HITS // max(k, 1)))
    requests = []
    for start in range(0, n, per_request):
        request = ipb.SearchBatchRequest(index=index, k=k)
        _set_filter(request, filter)
        if texts is not None:
            request.texts.extend(texts[start : start + per_request])
        else:
            rows = array[start : start + per_request]  # type: ignore[index]
            request.vectors.extend(ipb.Vector(values=row.tolist()) for row in rows)
        _set_search_options(request, ef_search, nprobe, instruction)
        requests.append(request)
    return requests


def hits(response: ipb.SearchResponse) -> list[Hit]:
    return [Hit(h.id, h.score, from_metadata(h.metadata)) for h in response.hits]


def batch_hits(response: ipb.SearchBatchResponse) -> list[list[Hit]]:
    return [hits(result) for result in response.results]


def got(response: ipb.GetResponse) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    return {i.id: (np.asarray(i.vector, dtype=np.float32), from_metadata(i.metadata)) for i in response.items}

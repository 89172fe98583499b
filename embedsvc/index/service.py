"""The index facade: every door (gRPC, the pipeline's local sink, any later one) calls this, and the
checks happen here once: texts vs vectors, emptiness, per-request limits, dimensions, whether the
index's model is served (and UNAVAILABLE while models load). Doors convert their wire format into
the plain values below and back; embedding goes through a callable the door passes (the server's
scheduler with the caller's deadline and tenant, or the pipeline's in-process model)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from embedsvc.engine.options import EmbedOptions
from embedsvc.errors import FailedPreconditionError, InvalidInputError
from embedsvc.index.ann import KIND_PARAMS, AnnParams
from embedsvc.index.collection import Collection, Hit, IndexSpec
from embedsvc.index.filters import Condition
from embedsvc.index.manager import IndexManager

DOCUMENTS = EmbedOptions(input_type="document")


class Served(Protocol):
    """A served model as the facade sees it (engine.service.ModelService fits)."""

    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def dimension(self) -> int: ...


class Models(Protocol):
    """The served models (server.registry.ModelRegistry fits): ``state`` is loading, serving or
    draining; ``get`` raises UnavailableError unless serving, ModelNotFoundError for an unknown name."""

    state: str

    @property
    def models(self) -> Mapping[str, Any]: ...
    def get(self, name: str) -> Any: ...
    def serving(self, source: str) -> Any: ...


# (the served model, texts, options) -> vectors [len(texts), dimension]
Embed = Callable[[Any, list[str], EmbedOptions], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class NewItem:
    """One item to write: exactly one of ``text`` (embedded as a document) or ``vector``."""

    id: str
    text: str | None = None
    vector: Sequence[float] | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SearchOptions:
    """k, the filters (the equality map and ``where``, both must hold), ef_search and nprobe."""

    k: int = 10
    filter: Mapping[str, Any] | None = None
    where: Condition | None = None
    ef_search: int | None = None
    nprobe: int | None = None

    def kwargs(self) -> dict[str, Any]:
        return {
            "filter": self.filter,
            "where": self.where,
            "ef_search": self.ef_search,
            "nprobe": self.nprobe,
        }


@dataclass(frozen=True)
class IndexState:
    """What describe reports: the collection, the name it is served under ("" if its model is not),
    and its status (which says when text queries are unavailable)."""

    collection: Collection
    model: str
    status: str
    state: Mapping[str, Any]


class Indexes:
    """Create, drop, describe, write and search the collections of one IndexManager."""

    def __init__(
        self, manager: IndexManager, models: Models, *, max_inputs: int, max_batch_hits: int
    ) -> None:
        self.manager = manager
        self.models = models
        self.max_inputs = max_inputs
        self.max_batch_hits = max_batch_hits

    # ------------------------------------------------------------ checks
    def check_batch(self, n: int, what: str) -> None:
        if n == 0:
            raise InvalidInputError(f"{what} must not be empty", field=what)
        if n > self.max_inputs:
            raise InvalidInputError(
                f"{n} {what} in one request; the limit is {self.max_inputs} "
                "(max_inputs_per_request): split the request",
                field=what,
            )

    def served(self, collection: Collection) -> Any:
        """The served model an index embeds texts with, or None."""
        return self.models.serving(collection.spec.model_source)

    def require_model(self, collection: Collection) -> Any:
        if self.models.state != "serving":
            self.models.get("")  # UNAVAILABLE while loading or draining: the model may yet be served
        served = self.served(collection)
        if served is None:
            raise FailedPreconditionError(
                f"index {collection.spec.name!r} was built with model {collection.spec.model_source}, "
                f"which this server does not serve (it serves: {', '.join(self.models.models)}); "
                "start the server with "
                f"--model NAME={collection.spec.model_source} to embed texts for it"
            )
        return served

    @staticmethod
    def _check_vector(values: Sequence[float], dimension: int, what: str) -> None:
        if len(values) != dimension:
            raise InvalidInputError(
                f"{what} has {len(values)} dimensions, the index {dimension}",
                field="vector" if what == "vector" else "vectors",
            )

    # --------------------------------------------------------- lifecycle
    def create(
        self, name: str, model: str, *, metric: str, kind: str, params: Mapping[str, Any] | None = None
    ) -> Collection:
        """A new index bound to the served ``model`` ("" for the default); ``params`` only those given."""
        served = self.models.get(model)
        given = dict(params or {})
        stray = sorted(set(given) - set(KIND_PARAMS.get(kind, given)))
        if stray:
            uses = ", ".join(KIND_PARAMS[kind]) or "no parameters"
            raise InvalidInputError(
                f"{', '.join(stray)} do(es) not apply to a {kind} index (it takes {uses}): "
                "drop them or choose the kind they belong to",
                field=f"params.{stray[0]}",
            )
        spec = IndexSpec(
            name=name,
            model=served.name,
            model_source=served.source,
            dimension=served.dimension,
            metric=metric,
            kind=kind,
            params=AnnParams(**given),
        )
        return self.manager.create(spec)

    def drop(self, name: str) -> None:
        self.manager.delete(name)

    def collection(self, name: str) -> Collection:
        """The open index ``name``: NOT_FOUND if none, DATA_LOSS if damaged."""
        return self.manager.get(name)

    def damage(self, name: str) -> Exception | None:
        """What is wrong with a damaged index (None: not damaged)."""
        return self.manager.broken.get(name)

    def exists(self, name: str) -> bool:
        return name in self.manager.collections or name in self.manager.broken

    def describe(self, collection: Collection) -> IndexState:
        state = collection.describe()
        served = self.served(collection)
        status = (
            state["status"] if served else f"{state['status']}; model not served: text queries unavailable"
        )
        return IndexState(collection, served.name if served else "", status, state)

    def listing(self) -> tuple[list[IndexState], dict[str, Exception]]:
        """Open indexes by name, and the damaged ones with what is wrong."""
        states = [self.describe(c) for _, c in sorted(self.manager.collections.items())]
        return states, dict(sorted(self.manager.broken.items()))

    # -------------------------------------------------------------- data
    async def upsert(self, index: str, items: Sequence[NewItem], embed: Embed) -> tuple[int, int]:
        """Write items (texts embedded through ``embed``); all or nothing. (written, size afterwards)."""
        collection = self.manager.get(index)
        self.check_batch(len(items), "items")
        dimension = collection.spec.dimension
        texts: list[tuple[int, str]] = []
        vectors = np.zeros((len(items), dimension), dtype=np.float32)
        for i, item in enumerate(items):
            has_text, has_vector = item.text is not None, item.vector is not None and len(item.vector) > 0
            if has_text == has_vector:
                raise InvalidInputError(
                    f"item {i} ({item.id!r}) must have exactly one of text or vector", field="items"
                )
            if item.vector is not None and has_vector:
                if len(item.vector) != dimension:
                    raise InvalidInputError(
                        f"item {i} ({item.id!r}): vector has {len(item.vector)} dimensions, the index "
                        f"{dimension}",
                        field="vector",
                    )
                vectors[i] = item.vector
            else:
                texts.append((i, item.text or ""))
        if texts:
            served = self.require_model(collection)
            vectors[[i for i, _ in texts]] = await embed(served, [t for _, t in texts], DOCUMENTS)
        ids, metadata = [item.id for item in items], [dict(item.metadata or {}) for item in items]
        count = await asyncio.to_thread(collection.upsert, ids, vectors, metadata)
        return len(ids), count

    async def upsert_vectors(
        self, index: str, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[Mapping[str, Any]]
    ) -> tuple[int, int]:
        """Write embedded items (a [n, dimension] array): the same checks as ``upsert``'s vectors."""
        collection = self.manager.get(index)
        self.check_batch(len(ids), "items")
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim == 2 and len(ids) and array.shape[1] != collection.spec.dimension:
            raise InvalidInputError(  # every row has this width: item 0 is named, as upsert does
                f"item 0 ({ids[0]!r}): vector has {array.shape[1]} dimensions, the index "
                f"{collection.spec.dimension}",
                field="vector",
            )
        count = await asyncio.to_thread(collection.upsert, list(ids), array, list(metadata))
        return len(ids), count

    async def delete(self, index: str, ids: Sequence[str]) -> tuple[int, int]:
        """(removed, size afterwards); unknown ids are ignored."""
        collection = self.manager.get(index)
        self.check_batch(len(ids), "ids")
        return await asyncio.to_thread(collection.delete, list(ids))

    async def get(
        self, index: str, ids: Sequence[str]
    ) -> tuple[list[tuple[str, np.ndarray, dict[str, Any]]], list[str]]:
        collection = self.manager.get(index)
        self.check_batch(len(ids), "ids")
        return await asyncio.to_thread(collection.get, list(ids))

    def count(self, index: str) -> int:
        return self.manager.get(index).count()

    async def list_ids(self, index: str, after: int, size: int) -> tuple[list[str], int | None, int]:
        """A page of ids from label ``after`` on, where the next page starts (None: the last), the size."""
        collection = self.manager.get(index)
        ids, following = await asyncio.to_thread(collection.ids_page, after, size)
        return ids, following, collection.count()

    async def _queries(
        self, collection: Collection, texts: list[str], instruction: str | None, embed: Embed
    ) -> np.ndarray:
        served = self.require_model(collection)
        return await embed(served, texts, EmbedOptions(input_type="query", instruction=instruction))

    async def search(
        self,
        index: str,
        options: SearchOptions,
        embed: Embed,
        *,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        instruction: str | None = None,
    ) -> list[Hit]:
        """One query: a text (embedded as a query) or a vector."""
        collection = self.manager.get(index)
        if (text is None) == (vector is None):
            raise InvalidInputError("set exactly one of text or vector", field="query")
        if text is not None:
            query = (await self._queries(collection, [text], instruction, embed))[0]
        else:
            assert vector is not None
            self._check_vector(vector, collection.spec.dimension, "vector")
            query = np.asarray(vector, dtype=np.float32)
        return await asyncio.to_thread(collection.search, query, options.k, **options.kwargs())

    async def search_many(
        self,
        index: str,
        options: SearchOptions,
        embed: Embed,
        *,
        texts: Sequence[str] = (),
        vectors: Sequence[Sequence[float]] = (),
        instruction: str | None = None,
    ) -> list[list[Hit]]:
        """Many queries with one k and filter: texts or vectors (one of them, not empty)."""
        collection = self.manager.get(index)
        if bool(texts) == bool(vectors):
            raise InvalidInputError("set texts or vectors (one of them, not empty)", field="query")
        n, k = len(texts) or len(vectors), options.k
        self.check_batch(n, "texts" if texts else "vectors")
        if n * k > self.max_batch_hits:
            raise InvalidInputError(
                f"{n} queries x k={k} asks for {n * k} hits; at most {self.max_batch_hits} per request: "
                "send fewer queries per request",
                field="k",
            )
        if texts:
            queries = await self._queries(collection, list(texts), instruction, embed)
        else:
            for i, vector in enumerate(vectors):
                self._check_vector(vector, collection.spec.dimension, f"vector {i}")
            queries = np.asarray(vectors, dtype=np.float32)
        return await asyncio.to_thread(collection.search_many, queries, k, **options.kwargs())

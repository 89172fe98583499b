"""The index facade: every door (gRPC, the pipeline's local sink, any later one) calls this, and the
checks happen here once: texts vs vectors, emptiness, per-request limits, dimensions, whether the
index's model is served (and UNAVAILABLE while models load). Doors convert their wire format into
the plain values below and back; embedding goes through a callable the door passes (the server's
scheduler with the caller's deadline and tenant, or the pipeline's in-process model)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from embedsvc.engine.options import Embedded, EmbedOptions
from embedsvc.errors import FailedPreconditionError, InvalidInputError
from embedsvc.index.ann import KIND_PARAMS, AnnParams
from embedsvc.index.collection import Collection, Hit, IndexSpec
from embedsvc.index.filters import Condition
from embedsvc.index.fusion import HybridOptions
from embedsvc.index.manager import IndexManager
from embedsvc.index.retrieval import Query

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


# (the served model, texts, options) -> what the model gives: dense vectors [len(texts), dimension], and
# the sparse / multi-vector outputs when options.outputs asks for them
Embed = Callable[[Any, list[str], EmbedOptions], Awaitable[Embedded]]


@dataclass(frozen=True)
class NewItem:
    """One item to write: ``text`` (embedded as a document, into every representation the index
    keeps) or the representations themselves: ``vector``, ``sparse`` (term ids, weights) and
    ``token_vectors`` ([tokens, width]), each exactly when the index keeps it."""

    id: str
    text: str | None = None
    vector: Sequence[float] | None = None
    metadata: Mapping[str, Any] | None = None
    sparse: tuple[Sequence[int], Sequence[float]] | None = None
    token_vectors: Any = None


@dataclass(frozen=True)
class SearchOptions:
    """k, the filters (the equality map and ``where``, both must hold), ef_search and nprobe."""

    k: int = 10
    filter: Mapping[str, Any] | None = None
    where: Condition | None = None
    ef_search: int | None = None
    nprobe: int | None = None
    hybrid: HybridOptions = field(
        default_factory=HybridOptions
    )  # dense, sparse or hybrid; fusion; MaxSim re-ranking

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

    @staticmethod
    def _check_dense(collection: Collection) -> None:
        if not collection.spec.dense:
            raise InvalidInputError(
                f"index {collection.spec.name!r} keeps no dense vectors: search it with a sparse query "
                "(mode sparse)",
                field="vector",
            )

    # --------------------------------------------------------- lifecycle
    def create(
        self,
        name: str,
        model: str,
        *,
        metric: str,
        kind: str,
        params: Mapping[str, Any] | None = None,
        dense: bool | None = None,
        sparse: int | None = None,
        multi_vector: int | None = None,
    ) -> Collection:
        """A new index bound to the served ``model`` ("" for the default); ``params`` only those given.

        ``sparse`` / ``multi_vector`` (None: not kept): the vocabulary size / token vector width,
        0 for the model's own; ``dense`` None: whether the model gives dense output (SPLADE does not)."""
        served = self.models.get(model)
        facts = getattr(served, "facts", None)
        if dense is None:
            dense = "dense" in getattr(facts, "outputs", ("dense",))
            if not dense and sparse is None:
                raise InvalidInputError(
                    f"model {served.name!r} gives no dense output: create the index with sparse (0: the "
                    "model's vocabulary) to keep its sparse vectors",
                    field="sparse",
                )
        sparse_dimension = _width(sparse, getattr(facts, "sparse_dimension", 0) or 0, served.name, "sparse")
        multi_dimension = _width(
            multi_vector, getattr(facts, "multi_vector_dimension", 0) or 0, served.name, "multi_vector"
        )
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
            dimension=served.dimension if dense else 0,
            metric=metric,
            kind=kind,
            params=AnnParams(**given),
            dense=dense,
            sparse=sparse is not None,
            sparse_dimension=sparse_dimension,
            multi_vector=multi_vector is not None,
            multi_vector_dimension=multi_dimension,
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
        spec = collection.spec
        dimension = spec.dimension
        texts: list[tuple[int, str]] = []
        vectors = np.zeros((len(items), dimension), dtype=np.float32)
        sparse: list[Any] = [item.sparse for item in items]
        tokens: list[Any] = [item.token_vectors for item in items]
        for i, item in enumerate(items):
            has_text, has_vector = item.text is not None, item.vector is not None and len(item.vector) > 0
            has_parts = item.sparse is not None or item.token_vectors is not None
            if has_text == (has_vector or has_parts):
                raise InvalidInputError(
                    f"item {i} ({item.id!r}) must have exactly one of text or vector"
                    + (
                        " (with its sparse vector / token vectors)"
                        if spec.sparse or spec.multi_vector
                        else ""
                    ),
                    field="items",
                )
            if not has_text and spec.dense and not has_vector:
                raise InvalidInputError(
                    f"item {i} ({item.id!r}): index {spec.name!r} keeps dense vectors: give the vector too",
                    field="vector",
                )
            if has_vector and not spec.dense:
                raise InvalidInputError(
                    f"item {i} ({item.id!r}): index {spec.name!r} keeps no dense vectors: leave vector empty",
                    field="vector",
                )
            if item.vector is not None and has_vector:
                if len(item.vector) != dimension:
                    raise InvalidInputError(
                        f"item {i} ({item.id!r}): vector has {len(item.vector)} dimensions, the index "
                        f"{dimension}",
                        field="vector",
                    )
                vectors[i] = item.vector
            elif item.text is not None:
                texts.append((i, item.text))
        if texts:
            served = self.require_model(collection)
            outputs = self._outputs(served, spec.dense, spec.sparse, spec.multi_vector)
            options = EmbedOptions(input_type="document", outputs=outputs)
            embedded = await embed(served, [t for _, t in texts], options)
            for j, (i, _) in enumerate(texts):
                if spec.dense:
                    vectors[i] = embedded.vectors[j]
                if spec.sparse and embedded.sparse is not None:
                    sparse[i] = embedded.sparse[j]
                if spec.multi_vector and embedded.multi_vectors is not None:
                    tokens[i] = embedded.multi_vectors[j]
        ids, metadata = [item.id for item in items], [dict(item.metadata or {}) for item in items]
        count = await asyncio.to_thread(
            collection.upsert,
            ids,
            vectors,
            metadata,
            sparse=sparse if spec.sparse or any(r is not None for r in sparse) else None,
            tokens=tokens if spec.multi_vector or any(t is not None for t in tokens) else None,
        )
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

    async def parts(self, index: str, ids: Sequence[str]) -> dict[str, tuple[Any, Any]]:
        """The sparse vector and token vectors of the ids that exist, where the index keeps them."""
        collection = self.manager.get(index)
        if not (collection.spec.sparse or collection.spec.multi_vector) or not ids:
            return {}
        return await asyncio.to_thread(collection.parts, list(ids))

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
        options = EmbedOptions(input_type="query", instruction=instruction)
        return (await embed(served, texts, options)).vectors

    @staticmethod
    def _outputs(served: Any, dense: bool, sparse: bool, multi_vector: bool) -> tuple[str, ...]:
        """The model outputs a write or search needs; FailedPreconditionError if the model lacks one."""
        wanted = tuple(
            name
            for name, needed in (("dense", dense), ("sparse", sparse), ("multi_vector", multi_vector))
            if needed
        )
        offered = getattr(getattr(served, "facts", None), "outputs", ("dense",))
        missing = [name for name in wanted if name not in offered]
        if missing:
            raise FailedPreconditionError(
                f"model {served.name!r} gives no {' or '.join(missing)} output "
                f"(it gives {', '.join(offered)}): "
                "send the vectors themselves (vector, sparse, token_vectors) instead of text"
            )
        return wanted

    async def search(
        self,
        index: str,
        options: SearchOptions,
        embed: Embed,
        *,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        instruction: str | None = None,
        sparse: tuple[Sequence[int], Sequence[float]] | None = None,
        tokens: Any = None,
    ) -> list[Hit]:
        """One query: a text (embedded as a query, into what the search mode needs), or a vector, a
        sparse vector and token vectors as the mode and re-ranking need them."""
        collection = self.manager.get(index)
        given = vector is not None or sparse is not None or tokens is not None
        if (text is None) == (not given):
            raise InvalidInputError("set exactly one of text or vector (or the sparse query)", field="query")
        if vector is not None:
            self._check_dense(collection)
            self._check_vector(vector, collection.spec.dimension, "vector")
        if self._plain(options, sparse, tokens):
            if text is not None:
                query = (await self._queries(collection, [text], instruction, embed))[0]
            else:
                query = np.asarray(vector, dtype=np.float32)
            return await asyncio.to_thread(collection.search, query, options.k, **options.kwargs())
        if text is not None:
            queries = await self._query_parts(collection, [text], instruction, embed, options.hybrid)
        else:
            queries = [Query(dense=vector, sparse=sparse, tokens=tokens)]
        return (
            await asyncio.to_thread(
                collection.retrieve, queries, options.k, options.hybrid, **options.kwargs()
            )
        )[0]

    @staticmethod
    def _plain(options: SearchOptions, sparse: Any, tokens: Any) -> bool:
        """A dense search without re-ranking: the batched FAISS path."""
        return (
            options.hybrid.mode == "dense" and not options.hybrid.rerank and sparse is None and tokens is None
        )

    async def _query_parts(
        self,
        collection: Collection,
        texts: list[str],
        instruction: str | None,
        embed: Embed,
        hybrid: HybridOptions,
    ) -> list[Query]:
        """Text queries embedded (as queries) into the representations the search needs."""
        served = self.require_model(collection)
        use_dense, use_sparse = hybrid.mode in ("dense", "hybrid"), hybrid.mode in ("sparse", "hybrid")
        outputs = self._outputs(served, use_dense, use_sparse, hybrid.rerank)
        options = EmbedOptions(input_type="query", instruction=instruction, outputs=outputs)
        embedded = await embed(served, texts, options)
        return [
            Query(
                dense=embedded.vectors[i] if use_dense else None,
                sparse=embedded.sparse[i] if embedded.sparse is not None else None,
                tokens=embedded.multi_vectors[i] if embedded.multi_vectors is not None else None,
            )
            for i in range(len(texts))
        ]

    async def search_many(
        self,
        index: str,
        options: SearchOptions,
        embed: Embed,
        *,
        texts: Sequence[str] = (),
        vectors: Sequence[Sequence[float]] = (),
        instruction: str | None = None,
        sparse: Sequence[tuple[Sequence[int], Sequence[float]]] = (),
        tokens: Sequence[Any] = (),
    ) -> list[list[Hit]]:
        """Many queries with one k and filter: texts, or vectors / sparse vectors / token vectors (as
        the mode needs them, one per query)."""
        collection = self.manager.get(index)
        given = [len(part) for part in (vectors, sparse, tokens) if len(part)]
        if bool(texts) == bool(given):
            raise InvalidInputError("set texts or vectors (one of them, not empty)", field="query")
        if len(set(given)) > 1:
            raise InvalidInputError(
                "vectors, sparse vectors and token vectors are one per query: got "
                f"{', '.join(map(str, given))}",
                field="query",
            )
        n, k = len(texts) or given[0], options.k
        self.check_batch(n, "texts" if texts else "vectors")
        if n * k > self.max_batch_hits:
            raise InvalidInputError(
                f"{n} queries x k={k} asks for {n * k} hits; at most {self.max_batch_hits} per request: "
                "send fewer queries per request",
                field="k",
            )
        if len(vectors):
            self._check_dense(collection)
        for i, vector in enumerate(vectors):
            self._check_vector(vector, collection.spec.dimension, f"vector {i}")
        plain = self._plain(options, sparse or None, tokens or None)
        if plain:
            if texts:
                queries = await self._queries(collection, list(texts), instruction, embed)
            else:
                queries = np.asarray(vectors, dtype=np.float32)
            return await asyncio.to_thread(collection.search_many, queries, k, **options.kwargs())
        if texts:
            parts = await self._query_parts(collection, list(texts), instruction, embed, options.hybrid)
        else:
            parts = [
                Query(
                    dense=vectors[i] if vectors else None,
                    sparse=sparse[i] if sparse else None,
                    tokens=tokens[i] if tokens else None,
                )
                for i in range(n)
            ]
        return await asyncio.to_thread(collection.retrieve, parts, k, options.hybrid, **options.kwargs())


def _width(requested: int | None, models: int, model: str, what: str) -> int:
    """The vocabulary size / token width an index keeps: the request's, else the model's."""
    if requested is None:
        return 0
    if requested and models and requested != models:
        raise InvalidInputError(
            f"{what}={requested}, but model {model!r} gives {models}: leave it 0 to take the model's",
            field=what,
        )
    width = requested or models
    if not width:
        raise InvalidInputError(
            f"model {model!r} gives no {what} output: give the width ({what}=N: the vocabulary size or token "
            "vector width) to store vectors you compute yourself",
            field=what,
        )
    return width

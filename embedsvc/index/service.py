"""The index facade: every door (gRPC, the pipeline's local sink, any later one) calls this, and the
checks happen here once: texts vs vectors, emptiness, per-request limits, dimensions, whether the
index's model is served (and UNAVAILABLE while models load). Doors convert their wire format into
the plain values below and back; embedding goes through a callable the door passes (the server's
scheduler with the caller's deadline and tenant, or the pipeline's in-process model)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from embedsvc.engine.options import Embedded, EmbedOptions
from embedsvc.errors import FailedPreconditionError, InvalidInputError
from embedsvc.index.ann import KIND_PARAMS, AnnParams
from embedsvc.index.binding import Binding
from embedsvc.index.collection import Collection, Hit, IndexSpec, RetiredError
from embedsvc.index.filters import Condition
from embedsvc.index.fusion import HybridOptions
from embedsvc.index.gate import WriteGates
from embedsvc.index.manager import IndexManager
from embedsvc.index.retrieval import Query

DOCUMENTS = EmbedOptions(input_type="document")
log = logging.getLogger("embedsvc.index")


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
# (the served reranker, query, documents, instruction) -> one score per document, in their order
Rerank = Callable[[Any, str, list[str], "str | None"], Awaitable[np.ndarray]]
DEFAULT_CANDIDATES = 50  # a rerank stage's candidates when not given: max(k, this)
REEMBED_BATCH = 256  # texts per embedding call while re-embedding
# catch-up passes over concurrent writes before a re-embed holds writes for its last copy and the swap
REEMBED_FREE_ROUNDS = 4


@dataclass(frozen=True)
class RerankStage:
    """Rerank the ``candidates`` nearest items' stored texts with the served reranker ``model``."""

    model: str
    candidates: int = 0  # 0: max(k, DEFAULT_CANDIDATES)
    instruction: str | None = None


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
    return_text: bool = False  # hits carry their stored texts
    rerank: RerankStage | None = None
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
        self._reembedding: set[str] = set()  # indexes being re-embedded now
        self._gates = WriteGates()  # every write passes; a re-embed's last copy and swap hold it

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
        store_text: bool = False,
    ) -> Collection:
        """A new index bound to the served ``model`` ("" for the default); ``params`` only those given.

        ``sparse`` / ``multi_vector`` (None: not kept): the vocabulary size / token vector width,
        0 for the model's own; ``dense`` None: whether the model gives dense output (SPLADE does not);
        ``store_text``: keep each item's text (returned on request; reranking and re-embedding need it)."""
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
            store_text=store_text,
            dense=dense,
            sparse=sparse is not None,
            sparse_dimension=sparse_dimension,
            multi_vector=multi_vector is not None,
            multi_vector_dimension=multi_dimension,
        )
        collection = self.manager.create(spec)
        fingerprint = getattr(served, "fingerprint", None)
        if fingerprint is not None:  # bound from the start: the first text write need not bind it
            collection.bind(Binding(fingerprint.digest, dict(fingerprint.parts)))
        return collection

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
        binding = collection.binding
        if collection.spec.name in self._reembedding:
            status += "; re-embedding" + (
                " (writes held for the swap)" if self.writes_held(collection.spec.name) else ""
            )
        elif binding is not None and binding.state == "mixed":
            status += (
                f"; mixed: may hold vectors of two models (embedsvc index reembed {collection.spec.name})"
            )
        return IndexState(collection, served.name if served else "", status, state)

    def listing(self) -> tuple[list[IndexState], dict[str, Exception]]:
        """Open indexes by name, and the damaged ones with what is wrong."""
        states = [self.describe(c) for _, c in sorted(self.manager.collections.items())]
        return states, dict(sorted(self.manager.broken.items()))

    def writes_held(self, name: str) -> bool:
        """Whether writes to ``name`` wait now (a re-embed's last copy and swap)."""
        return self._gates.held_now(name)

    # -------------------------------------------------------------- data
    async def _write(self, index: str, write: Callable[[Collection], Any]) -> Any:
        """Run a write on the index's collection, after waiting out a re-embed's hold; one swapped out by
        a re-embed meanwhile refuses it (RetiredError) and the write goes to the one that replaced it."""
        while True:
            async with self._gates.writing(index):
                collection = self.manager.get(index)
                try:
                    return await asyncio.to_thread(write, collection)
                except RetiredError:
                    continue

    async def upsert(
        self, index: str, items: Sequence[NewItem], embed: Embed, *, fingerprint: str = ""
    ) -> tuple[int, int]:
        """Write items (texts embedded through ``embed``); all or nothing. (written, size afterwards).
        ``fingerprint``: the model fingerprint the vector items were made with, checked if given."""
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
        if fingerprint and len(texts) < len(items):
            self.check_vectors_fingerprint(collection, fingerprint)
        if texts:
            served = self.require_model(collection)
            self.check_binding(collection, served)
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
        kept = [item.text for item in items]
        given_sparse = sparse if spec.sparse or any(r is not None for r in sparse) else None
        given_tokens = tokens if spec.multi_vector or any(t is not None for t in tokens) else None
        count = await self._write(
            index,
            lambda c: c.upsert(ids, vectors, metadata, kept, sparse=given_sparse, tokens=given_tokens),
        )
        return len(ids), count

    async def upsert_vectors(
        self,
        index: str,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[Mapping[str, Any]],
        *,
        texts: Sequence[str] | None = None,
        fingerprint: str = "",
    ) -> tuple[int, int]:
        """Write embedded items (a [n, dimension] array): the same checks as ``upsert``'s vectors;
        ``texts`` (what was embedded) are kept when the index keeps texts."""
        collection = self.manager.get(index)
        self.check_batch(len(ids), "items")
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim == 2 and len(ids) and array.shape[1] != collection.spec.dimension:
            raise InvalidInputError(  # every row has this width: item 0 is named, as upsert does
                f"item 0 ({ids[0]!r}): vector has {array.shape[1]} dimensions, the index "
                f"{collection.spec.dimension}",
                field="vector",
            )
        if fingerprint:
            self.check_vectors_fingerprint(collection, fingerprint)
        count = await self._write(index, lambda c: c.upsert(list(ids), array, list(metadata), texts))
        return len(ids), count

    async def delete(self, index: str, ids: Sequence[str]) -> tuple[int, int]:
        """(removed, size afterwards); unknown ids are ignored."""
        self.manager.get(index)
        self.check_batch(len(ids), "ids")
        removed: tuple[int, int] = await self._write(index, lambda c: c.delete(list(ids)))
        return removed

    async def get(
        self, index: str, ids: Sequence[str], *, return_text: bool = False
    ) -> tuple[list[tuple[str, np.ndarray, dict[str, Any], str | None]], list[str]]:
        """(id, vector, metadata, stored text or None) for the ids found, and the missing ids."""
        collection = self.manager.get(index)
        self.check_batch(len(ids), "ids")

        def read() -> tuple[list[tuple[str, np.ndarray, dict[str, Any], str | None]], list[str]]:
            found, missing = collection.get(list(ids))
            texts = collection.texts([i for i, _, _ in found]) if return_text else [None] * len(found)
            return [(i, v, m, t) for (i, v, m), t in zip(found, texts, strict=True)], missing

        return await asyncio.to_thread(read)

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
        self.check_binding(collection, served)
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
        rerank: Rerank | None = None,
        sparse: tuple[Sequence[int], Sequence[float]] | None = None,
        tokens: Any = None,
    ) -> list[Hit]:
        """One query: a text (embedded as a query, into what the search mode needs), or a vector, a
        sparse vector and token vectors as the mode and re-ranking need them; a rerank stage reranks
        the nearest candidates' texts against the text query through ``rerank``."""
        collection = self.manager.get(index)
        given = vector is not None or sparse is not None or tokens is not None
        if (text is None) == (not given):
            raise InvalidInputError("set exactly one of text or vector (or the sparse query)", field="query")
        reranker = self._reranker(collection, options, rerank, has_texts=text is not None)
        if vector is not None:
            self._check_dense(collection)
            self._check_vector(vector, collection.spec.dimension, "vector")
        width = self._candidates(options)
        if self._plain(options, sparse, tokens):
            if text is not None:
                query = (await self._queries(collection, [text], instruction, embed))[0]
            else:
                query = np.asarray(vector, dtype=np.float32)
            found = await asyncio.to_thread(
                self._search_with_texts, collection, query[None, :], width, options
            )
        else:
            if text is not None:
                queries = await self._query_parts(collection, [text], instruction, embed, options.hybrid)
            else:
                queries = [Query(dense=vector, sparse=sparse, tokens=tokens)]
            found = await asyncio.to_thread(self._retrieve_with_texts, collection, queries, width, options)
        if reranker is not None:
            assert rerank is not None and text is not None and options.rerank is not None
            return await self._reranked(reranker, rerank, text, found[0], options)
        return found[0]

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
        self.check_binding(collection, served)
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
        rerank: Rerank | None = None,
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
        reranker = self._reranker(collection, options, rerank, has_texts=bool(texts))
        width = self._candidates(options)
        if reranker is not None and n * width > self.max_batch_hits:
            raise InvalidInputError(
                f"{n} queries x {width} rerank candidates is {n * width}; at most {self.max_batch_hits} per "
                "request: send fewer queries per request, or fewer candidates",
                field="rerank.candidates",
            )
        if len(vectors):
            self._check_dense(collection)
        for i, vector in enumerate(vectors):
            self._check_vector(vector, collection.spec.dimension, f"vector {i}")
        if self._plain(options, sparse or None, tokens or None):
            if texts:
                queries = await self._queries(collection, list(texts), instruction, embed)
            else:
                queries = np.asarray(vectors, dtype=np.float32)
            found = await asyncio.to_thread(self._search_with_texts, collection, queries, width, options)
        else:
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
            found = await asyncio.to_thread(self._retrieve_with_texts, collection, parts, width, options)
        if reranker is None:
            return found
        assert rerank is not None
        return list(
            await asyncio.gather(
                *(
                    self._reranked(reranker, rerank, q, hits, options)
                    for q, hits in zip(texts, found, strict=True)
                )
            )
        )

    # ------------------------------------------------------ texts, rerank
    @staticmethod
    def _candidates(options: SearchOptions) -> int:
        if options.rerank is None:
            return options.k
        return max(options.k, options.rerank.candidates or DEFAULT_CANDIDATES)

    def _reranker(
        self, collection: Collection, options: SearchOptions, rerank: Rerank | None, *, has_texts: bool
    ) -> Any:
        """The served reranker a search's rerank stage names (None: no stage), after its checks."""
        stage = options.rerank
        if stage is None:
            return None
        if rerank is None:
            raise InvalidInputError("this door does not rerank", field="rerank")
        if not has_texts:
            raise InvalidInputError("a rerank stage needs a text query (it scores texts)", field="rerank")
        if not collection.spec.store_text:
            raise FailedPreconditionError(
                f"index {collection.spec.name!r} does not keep texts, which reranking scores: create an "
                "index with store_text and fill it again to rerank its hits"
            )
        if stage.candidates and stage.candidates > self.max_inputs:
            raise InvalidInputError(
                f"rerank.candidates is {stage.candidates}; at most {self.max_inputs} "
                "(max_inputs_per_request)",
                field="rerank.candidates",
            )
        reranker = self.models.get(stage.model)
        task = getattr(reranker, "task", "embed")
        if task != "rerank":
            raise InvalidInputError(
                f"model {reranker.name!r} is a {task} model, not a reranker: name a served model whose task "
                "is rerank",
                field="rerank.model",
            )
        return reranker

    @classmethod
    def _search_with_texts(
        cls, collection: Collection, queries: np.ndarray, width: int, options: SearchOptions
    ) -> list[list[Hit]]:
        """The nearest ``width`` per query (FAISS), with their stored texts when asked or reranked."""
        return cls._with_texts(
            collection, collection.search_many(queries, width, **options.kwargs()), options
        )

    @classmethod
    def _retrieve_with_texts(
        cls, collection: Collection, queries: list[Query], width: int, options: SearchOptions
    ) -> list[list[Hit]]:
        """The best ``width`` per query by the search mode (sparse, hybrid, MaxSim re-ranked), with their
        stored texts when asked or reranked."""
        found = collection.retrieve(queries, width, options.hybrid, **options.kwargs())
        return cls._with_texts(collection, found, options)

    @staticmethod
    def _with_texts(
        collection: Collection, found: list[list[Hit]], options: SearchOptions
    ) -> list[list[Hit]]:
        if not (options.return_text or options.rerank is not None):
            return found
        texts = collection.texts([h.id for hits in found for h in hits])
        out, at = [], 0
        for hits in found:
            out.append(
                [
                    dataclasses.replace(h, text=t)
                    for h, t in zip(hits, texts[at : at + len(hits)], strict=True)
                ]
            )
            at += len(hits)
        return out

    @staticmethod
    async def _reranked(
        reranker: Any, rerank: Rerank, query: str, hits: list[Hit], options: SearchOptions
    ) -> list[Hit]:
        """The best k of ``hits`` by the reranker's score; candidates without a text follow, in vector
        order. Texts are dropped unless asked for."""
        assert options.rerank is not None
        scored = [h for h in hits if h.text is not None]
        rest = [h for h in hits if h.text is None]
        if scored:
            scores = await rerank(reranker, query, [h.text or "" for h in scored], options.rerank.instruction)
            order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
            scored = [dataclasses.replace(scored[i], rerank_score=float(scores[i])) for i in order]
        best = (scored + rest)[: options.k]
        return best if options.return_text else [dataclasses.replace(h, text=None) for h in best]

    # ------------------------------------------------------------ binding
    def check_binding(self, collection: Collection, served: Any) -> None:
        """An index's vectors and a new text's must come from one model fingerprint: an unbound index
        binds to the served model's now; another fingerprint is refused, saying what differs."""
        fingerprint = getattr(served, "fingerprint", None)
        if fingerprint is None:
            return
        binding = collection.binding
        if binding is None:
            collection.bind(Binding(fingerprint.digest, dict(fingerprint.parts)))
            log.info(
                "index bound to a model fingerprint",
                extra={"index": collection.spec.name, "fingerprint": fingerprint.digest},
            )
            return
        if binding.fingerprint == fingerprint.digest:
            return
        changed = fingerprint.differences(binding.parts) if binding.parts else []
        name = collection.spec.name
        raise FailedPreconditionError(
            f"index {name!r} holds vectors of model fingerprint {binding.fingerprint}, but model "
            f"{served.name!r} now has fingerprint {fingerprint.digest} "
            f"({'; '.join(changed) or 'the index recorded no details'}): their vectors are not comparable. "
            f"Serve the model as it was, or re-embed the index's stored texts with `embedsvc index reembed "
            f"{name}`, or accept mixed vectors with `embedsvc index rebind {name}`"
        )

    def check_vectors_fingerprint(self, collection: Collection, given: str) -> None:
        """Vectors made with fingerprint ``given`` may join the index only if it is bound to that one
        (an unbound index binds to it)."""
        served = self.served(collection)
        current = getattr(served, "fingerprint", None) if served is not None else None
        parts = dict(current.parts) if current is not None and current.digest == given else {}
        binding = collection.binding
        if binding is None:
            collection.bind(Binding(given, parts))
            return
        if binding.fingerprint == given:
            return
        changed = current.differences(binding.parts) if parts and binding.parts and current else []
        what = f" ({'; '.join(changed)})" if changed else ""
        name = collection.spec.name
        raise FailedPreconditionError(
            f"the vectors were made with model fingerprint {given}, but index {name!r} holds vectors of "
            f"fingerprint {binding.fingerprint}{what}: make them with the model the index was built with, "
            f"or re-embed the index (`embedsvc index reembed {name}`) or re-bind it "
            f"(`embedsvc index rebind {name}`) first"
        )

    def rebind(self, index: str) -> Collection:
        """Bind the index to its model's fingerprint as served now, marked mixed if it held another."""
        collection = self.manager.get(index)
        served = self.require_model(collection)
        fingerprint = getattr(served, "fingerprint", None)
        if fingerprint is None:
            raise FailedPreconditionError(f"model {served.name!r} reports no fingerprint to bind to")
        binding = collection.binding
        if binding is None or binding.fingerprint != fingerprint.digest:
            state = "bound" if binding is None or collection.count() == 0 else "mixed"
            collection.bind(Binding(fingerprint.digest, dict(fingerprint.parts), state))
            log.warning(
                "index re-bound to a model fingerprint",
                extra={"index": index, "fingerprint": fingerprint.digest, "state": state},
            )
        return collection

    async def reembed(self, index: str, embed: Embed) -> tuple[int, str, int]:
        """Embed every stored text again with the index's model as served now, into a new collection
        swapped in when it has every item: searches and writes go on meanwhile (writes are copied
        again). After ``REEMBED_FREE_ROUNDS`` catch-up passes, writes are held (they wait, none is
        refused) while the last ones are copied and the new collection swapped in, so a re-embed
        finishes under any write load. (items re-embedded, the fingerprint bound now, catch-up rounds)."""
        collection = self.manager.get(index)
        name = collection.spec.name
        if not collection.spec.store_text:
            raise FailedPreconditionError(
                f"index {name!r} does not keep texts (created without store_text): nothing to re-embed "
                "from; build it again from its source (embedsvc index build --restart)"
            )
        if index in self._reembedding:
            raise FailedPreconditionError(f"index {name!r} is being re-embedded already")
        served = self.require_model(collection)
        fingerprint = getattr(served, "fingerprint", None)
        self._reembedding.add(index)
        fresh = await asyncio.to_thread(self.manager.staging, collection.spec)
        swapped, previous, wrote = False, collection.binding, False
        try:
            if fingerprint is not None:  # searches and writes meanwhile use the model as served now
                if collection.binding is None or collection.binding.fingerprint != fingerprint.digest:
                    collection.bind(Binding(fingerprint.digest, dict(fingerprint.parts), "mixed"))
                fresh.bind(Binding(fingerprint.digest, dict(fingerprint.parts)))
            await asyncio.to_thread(collection.track_writes, True)
            copied = await self._copy(
                collection, fresh, await asyncio.to_thread(collection.ids), served, embed
            )
            # the bulk written to disk now, while writes go on: the swap then only moves files (it
            # holds old's lock, and writes are held for it), whatever the index's size
            await asyncio.to_thread(fresh.snapshot)
            rounds = 0
            while rounds < REEMBED_FREE_ROUNDS:
                written = await asyncio.to_thread(collection.take_written)
                wrote = wrote or bool(written)
                if written:
                    copied += await self._copy(collection, fresh, written, served, embed)
                elif await asyncio.to_thread(self.manager.swap, index, collection, fresh, snapshot=False):
                    swapped = True
                    break
                rounds += 1
            if not swapped:
                began = time.monotonic()
                async with self._gates.held(index):
                    while not swapped:  # once, unless a write whose caller gave up landed meanwhile
                        written = await asyncio.to_thread(collection.take_written)
                        wrote = wrote or bool(written)
                        if written:
                            copied += await self._copy(collection, fresh, written, served, embed)
                        swapped = await asyncio.to_thread(
                            self.manager.swap, index, collection, fresh, snapshot=False
                        )
                        rounds += 1
                log.info(
                    "re-embed: writes held for its last copy and swap",
                    extra={"index": name, "held_ms": round(1000 * (time.monotonic() - began), 1)},
                )
        finally:
            self._reembedding.discard(index)
            if not swapped:  # a failed re-embed accepts no model: the binding goes back to what it was,
                # marked mixed if texts were written meanwhile (embedded by the model served now)
                wrote = wrote or bool(await asyncio.to_thread(collection.take_written))
                await asyncio.to_thread(collection.track_writes, False)
                await asyncio.to_thread(self.manager.discard, fresh)
                if collection.binding != previous and not (wrote and previous is None):
                    collection.bind(
                        dataclasses.replace(previous, state="mixed") if wrote and previous else previous
                    )
        return copied, fingerprint.digest if fingerprint is not None else "", rounds

    async def _copy(
        self, source: Collection, fresh: Collection, ids: Sequence[str], served: Any, embed: Embed
    ) -> int:
        """Embed ``ids``' stored texts into ``fresh`` (ids gone from ``source`` are deleted there)."""
        done = 0
        for at in range(0, len(ids), REEMBED_BATCH):
            found, gone = await asyncio.to_thread(source.items_for_reembed, ids[at : at + REEMBED_BATCH])
            lacking = [i for i, text, _ in found if text is None]
            if lacking:
                raise FailedPreconditionError(
                    f"index {source.spec.name!r}: {len(lacking)} item(s) have no stored text (written as "
                    f"vectors, or before store_text), e.g. {lacking[0]!r}: upsert them as texts or delete "
                    "them, then re-embed"
                )
            if found:
                texts = [text or "" for _, text, _ in found]
                spec = source.spec
                outputs = self._outputs(served, spec.dense, spec.sparse, spec.multi_vector)
                embedded = await embed(served, texts, EmbedOptions(input_type="document", outputs=outputs))
                await asyncio.to_thread(
                    fresh.upsert,
                    [i for i, _, _ in found],
                    embedded.vectors,
                    [m for _, _, m in found],
                    texts,
                    sparse=embedded.sparse if spec.sparse else None,
                    tokens=embedded.multi_vectors if spec.multi_vector else None,
                )
                done += len(found)
            if gone:
                await asyncio.to_thread(fresh.delete, gone)
        return done


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

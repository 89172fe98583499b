"""IndexService: collections bound to served models, searchable by text or vector."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np

from embedsvc import wire
from embedsvc.config import ServerConfig
from embedsvc.engine.options import EmbedOptions
from embedsvc.engine.service import ModelService
from embedsvc.errors import FailedPreconditionError, InvalidInputError
from embedsvc.index.ann import KIND_PARAMS, AnnParams
from embedsvc.index.collection import Collection, Hit, IndexSpec
from embedsvc.index.filters import parse_filter
from embedsvc.index.manager import IndexManager
from embedsvc.server.metrics import Metrics
from embedsvc.server.registry import ModelRegistry
from embedsvc.server.rpc import GuardedServicer
from embedsvc.server.tenants import tenant_of
from embedsvc.v1 import index_pb2 as pb
from embedsvc.v1 import index_pb2_grpc as pb_grpc

_PARAM_FIELDS = (
    "hnsw_m",
    "hnsw_ef_construction",
    "hnsw_ef_search",
    "ivf_nlist",
    "ivf_nprobe",
    "pq_m",
    "pq_bits",
    "rerank",
)


def _damaged(metrics: Metrics) -> set[str]:
    return {sample.labels["index"] for family in metrics.index_damaged.collect() for sample in family.samples}


def check_filter_size(where: pb.Filter, max_leaves: int) -> None:
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


class IndexServicer(GuardedServicer, pb_grpc.IndexServiceServicer):
    def __init__(
        self,
        registry: ModelRegistry,
        manager: IndexManager,
        config: ServerConfig,
        metrics: Metrics,
    ) -> None:
        super().__init__(metrics)
        self.registry = registry
        self.manager = manager
        self.config = config

    # ------------------------------------------------------------- helpers
    def _model_for(self, collection: Collection) -> ModelService | None:
        return self.registry.serving(collection.spec.model_source)

    def _require_model(self, collection: Collection) -> ModelService:
        if self.registry.state != "serving":
            self.registry.get("")  # UNAVAILABLE while loading or draining: the model may yet be served
        served = self._model_for(collection)
        if served is None:
            raise FailedPreconditionError(
                f"index {collection.spec.name!r} was built with model {collection.spec.model_source}, "
                f"which this server does not serve (it serves: {', '.join(self.registry.models)}); "
                "start the server with "
                f"--model NAME={collection.spec.model_source} to embed texts for it"
            )
        return served

    def _info(self, collection: Collection) -> pb.IndexInfo:
        spec, state = collection.spec, collection.describe()
        served = self._model_for(collection)
        status = (
            state["status"] if served else f"{state['status']}; model not served: text queries unavailable"
        )
        return pb.IndexInfo(
            name=spec.name,
            model=served.name if served else "",
            model_source=spec.model_source,
            dimension=spec.dimension,
            metric=wire.METRICS[spec.metric],
            kind=wire.KINDS[spec.kind],
            params=pb.IndexParams(**spec.params.for_kind(spec.kind)),  # only what this kind uses
            count=state["count"],
            trained=state["trained"],
            status=status,
            durable=state["durable"],
            device=state["device"],
        )

    def _check_batch(self, n: int, what: str) -> None:
        if n == 0:
            raise InvalidInputError(f"{what} must not be empty", field=what)
        if n > self.config.max_inputs_per_request:
            raise InvalidInputError(
                f"{n} {what} in one request; the limit is {self.config.max_inputs_per_request} "
                "(max_inputs_per_request): split the request",
                field=what,
            )

    # ---------------------------------------------------------- lifecycle
    async def CreateIndex(
        self, request: pb.CreateIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.IndexInfo:
        async def work() -> pb.IndexInfo:
            served = self.registry.get(request.model)
            given = {f: getattr(request.params, f) for f in _PARAM_FIELDS if getattr(request.params, f)}
            kind = wire.lookup(wire.KIND_NAMES, request.kind, "kind")
            stray = sorted(set(given) - set(KIND_PARAMS[kind]))
            if stray:
                uses = ", ".join(KIND_PARAMS[kind]) or "no parameters"
                raise InvalidInputError(
                    f"{', '.join(stray)} do(es) not apply to a {kind} index (it takes {uses}): "
                    "drop them or choose the kind they belong to",
                    field=f"params.{stray[0]}",
                )
            spec = IndexSpec(
                name=request.name,
                model=served.name,
                model_source=served.source,
                dimension=served.dimension,
                metric=wire.lookup(wire.METRIC_NAMES, request.metric, "metric"),
                kind=kind,
                params=AnnParams(**given),
            )
            return self._info(await asyncio.to_thread(self.manager.create, spec))

        return await self._guard("CreateIndex", request.model, context, work)

    async def DeleteIndex(self, request: pb.DeleteIndexRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.DeleteIndexResponse:
            await asyncio.to_thread(self.manager.delete, request.name)
            if request.name in _damaged(self.metrics):
                self.metrics.index_damaged.remove(request.name)
            return pb.DeleteIndexResponse()

        return await self._guard("DeleteIndex", "", context, work)

    async def ListIndexes(self, request: pb.ListIndexesRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.ListIndexesResponse:
            infos = [self._info(c) for _, c in sorted(self.manager.collections.items())]
            infos += [
                pb.IndexInfo(name=name, status=f"error: {exc}")
                for name, exc in sorted(self.manager.broken.items())
            ]
            return pb.ListIndexesResponse(indexes=infos)

        return await self._guard("ListIndexes", "", context, work)

    async def DescribeIndex(self, request: pb.DescribeIndexRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.IndexInfo:
            damage = self.manager.broken.get(request.name)
            if damage is not None:  # described, not raised: the caller learns what is wrong
                return pb.IndexInfo(name=request.name, status=f"error: {damage}")
            return self._info(self.manager.get(request.name))

        return await self._guard("DescribeIndex", "", context, work)

    # --------------------------------------------------------------- data
    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        async def work() -> pb.UpsertResponse:
            collection = self.manager.get(request.index)
            self._check_batch(len(request.items), "items")
            texts: list[tuple[int, str]] = []
            vectors = np.zeros((len(request.items), collection.spec.dimension), dtype=np.float32)
            for i, item in enumerate(request.items):
                has_text, has_vector = item.HasField("text"), len(item.vector) > 0
                if has_text == has_vector:
                    raise InvalidInputError(
                        f"item {i} ({item.id!r}) must have exactly one of text or vector", field="items"
                    )
                if has_vector:
                    if len(item.vector) != collection.spec.dimension:
                        raise InvalidInputError(
                            f"item {i} ({item.id!r}): vector has {len(item.vector)} dimensions, the index "
                            f"{collection.spec.dimension}",
                            field="vector",
                        )
                    vectors[i] = item.vector
                else:
                    texts.append((i, item.text))
            metadata = [wire.from_metadata(item.metadata) for item in request.items]
            ids = [item.id for item in request.items]
            if texts:
                served = self._require_model(collection)
                embedded = await served.embed(
                    [t for _, t in texts],
                    EmbedOptions(input_type="document"),
                    timeout=context.time_remaining(),
                    tenant=tenant_of(context),
                )
                vectors[[i for i, _ in texts]] = embedded.vectors
            count = await asyncio.to_thread(collection.upsert, ids, vectors, metadata)
            return pb.UpsertResponse(upserted=len(ids), count=count)

        return await self._guard("Upsert", "", context, work)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        async def work() -> pb.DeleteResponse:
            collection = self.manager.get(request.index)
            self._check_batch(len(request.ids), "ids")
            deleted, count = await asyncio.to_thread(collection.delete, list(request.ids))
            return pb.DeleteResponse(deleted=deleted, count=count)

        return await self._guard("Delete", "", context, work)

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        async def work() -> pb.GetResponse:
            collection = self.manager.get(request.index)
            self._check_batch(len(request.ids), "ids")
            found, missing = await asyncio.to_thread(collection.get, list(request.ids))
            items = [pb.Item(id=i, vector=v.tolist(), metadata=wire.to_metadata(m)) for i, v, m in found]
            return pb.GetResponse(items=items, missing=missing)

        return await self._guard("Get", "", context, work)

    async def _embed_queries(
        self,
        collection: Collection,
        texts: list[str],
        instruction: str | None,
        context: grpc.aio.ServicerContext,
    ) -> np.ndarray:
        served = self._require_model(collection)
        options = EmbedOptions(input_type="query", instruction=instruction)
        embedded = await served.embed(
            texts, options, timeout=context.time_remaining(), tenant=tenant_of(context)
        )
        return embedded.vectors

    @staticmethod
    def _check_vector(values: Any, dimension: int, what: str) -> None:
        if len(values) != dimension:
            raise InvalidInputError(
                f"{what} has {len(values)} dimensions, the index {dimension}",
                field="vector" if what == "vector" else "vectors",
            )

    async def _search_options(self, request: pb.SearchRequest | pb.SearchBatchRequest) -> dict[str, Any]:
        """The filters, ef_search and nprobe: converted on a thread, after a bounded check of their size
        (a 10 MB filter once held the event loop, /health included, for 11 s)."""
        return await asyncio.to_thread(self._convert_search_options, request, self.config.max_filter_leaves)

    @staticmethod
    def _convert_search_options(
        request: pb.SearchRequest | pb.SearchBatchRequest, max_leaves: int
    ) -> dict[str, Any]:
        """k, the filters (the equality map and `where`, both must hold), ef_search and nprobe."""
        if request.HasField("where"):
            check_filter_size(request.where, max_leaves)
        where = wire.filter_from_proto(request.where) if request.HasField("where") else None
        return {
            "filter": wire.from_metadata(request.filter),
            "where": parse_filter(where),
            "ef_search": request.ef_search if request.HasField("ef_search") else None,
            "nprobe": request.nprobe if request.HasField("nprobe") else None,
        }

    @staticmethod
    def _hits(hits: list[Hit]) -> pb.SearchResponse:
        return pb.SearchResponse(
            hits=[pb.Hit(id=h.id, score=h.score, metadata=wire.to_metadata(h.metadata)) for h in hits]
        )

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        async def work() -> pb.SearchResponse:
            collection = self.manager.get(request.index)
            options = await self._search_options(request)
            which = request.WhichOneof("query")
            if which is None:
                raise InvalidInputError("set exactly one of text or vector", field="query")
            if which == "text":
                instruction = request.instruction if request.HasField("instruction") else None
                query = (await self._embed_queries(collection, [request.text], instruction, context))[0]
            else:
                self._check_vector(request.vector.values, collection.spec.dimension, "vector")
                query = np.asarray(request.vector.values, dtype=np.float32)
            hits = await asyncio.to_thread(collection.search, query, request.k or 10, **options)
            return self._hits(hits)

        return await self._guard("Search", "", context, work)

    async def SearchBatch(
        self, request: pb.SearchBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchBatchResponse:
        async def work() -> pb.SearchBatchResponse:
            collection = self.manager.get(request.index)
            options = await self._search_options(request)
            texts, vectors = list(request.texts), request.vectors
            if bool(texts) == bool(vectors):
                raise InvalidInputError("set texts or vectors (one of them, not empty)", field="query")
            n, k = len(texts) or len(vectors), request.k or 10
            self._check_batch(n, "texts" if texts else "vectors")
            if n * k > wire.MAX_BATCH_HITS:
                raise InvalidInputError(
                    f"{n} queries x k={k} asks for {n * k} hits; at most {wire.MAX_BATCH_HITS} per request: "
                    "send fewer queries per request",
                    field="k",
                )
            if texts:
                instruction = request.instruction if request.HasField("instruction") else None
                queries = await self._embed_queries(collection, texts, instruction, context)
            else:
                for i, vector in enumerate(vectors):
                    self._check_vector(vector.values, collection.spec.dimension, f"vector {i}")
                queries = np.asarray([v.values for v in vectors], dtype=np.float32)
            results = await asyncio.to_thread(collection.search_many, queries, k, **options)
            return pb.SearchBatchResponse(results=[self._hits(hits) for hits in results])

        return await self._guard("SearchBatch", "", context, work)

    async def ListIds(
        self, request: pb.ListIdsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListIdsResponse:
        async def work() -> pb.ListIdsResponse:
            collection = self.manager.get(request.index)
            size, after = wire.page_size(request.page_size), wire.page_position(request.page_token)
            ids, following = await asyncio.to_thread(collection.ids_page, after, size)
            return pb.ListIdsResponse(
                ids=ids, next_page_token=wire.page_token(following), count=collection.count()
            )

        return await self._guard("ListIds", "", context, work)

    async def Count(self, request: pb.CountRequest, context: grpc.aio.ServicerContext) -> pb.CountResponse:
        async def work() -> pb.CountResponse:
            return pb.CountResponse(count=self.manager.get(request.index).count())

        return await self._guard("Count", "", context, work)

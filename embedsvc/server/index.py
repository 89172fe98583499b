"""IndexService: the gRPC door of the index facade (embedsvc.index.service); it only converts."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from embedsvc import wire
from embedsvc.config import ServerConfig
from embedsvc.engine.options import Embedded, EmbedOptions
from embedsvc.engine.service import ModelService
from embedsvc.errors import InvalidInputError
from embedsvc.index.collection import Hit
from embedsvc.index.filters import parse_filter
from embedsvc.index.manager import IndexManager
from embedsvc.index.service import Embed, Indexes, IndexState, NewItem, SearchOptions
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
    """Converts requests (wire.py) and calls the index facade, which checks and does the work."""

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
        self.indexes = Indexes(
            manager, registry, max_inputs=config.max_inputs_per_request, max_batch_hits=wire.MAX_BATCH_HITS
        )

    # ------------------------------------------------------------- helpers
    @staticmethod
    def _embed(context: grpc.aio.ServicerContext) -> Embed:
        """The served model's scheduler, within the caller's deadline and for its tenant."""

        async def embed(served: ModelService, texts: list[str], options: EmbedOptions) -> Embedded:
            embedded = await served.embed(
                texts, options, timeout=context.time_remaining(), tenant=tenant_of(context)
            )
            return embedded

        return embed

    @staticmethod
    def _info(described: IndexState) -> pb.IndexInfo:
        spec, state = described.collection.spec, described.state
        return pb.IndexInfo(
            name=spec.name,
            model=described.model,
            model_source=spec.model_source,
            dimension=spec.dimension,
            metric=wire.METRICS[spec.metric],
            kind=wire.KINDS[spec.kind],
            params=pb.IndexParams(**spec.params.for_kind(spec.kind)),  # only what this kind uses
            count=state["count"],
            trained=state["trained"],
            status=described.status,
            durable=state["durable"],
            device=state["device"],
            sparse_dimension=spec.sparse_dimension,
            multi_vector_dimension=spec.multi_vector_dimension,
            representation_bytes=state["representation_bytes"],
        )

    # ---------------------------------------------------------- lifecycle
    async def CreateIndex(
        self, request: pb.CreateIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.IndexInfo:
        async def work() -> pb.IndexInfo:
            given = {f: getattr(request.params, f) for f in _PARAM_FIELDS if getattr(request.params, f)}
            collection = await asyncio.to_thread(
                self.indexes.create,
                request.name,
                request.model,
                metric=wire.lookup(wire.METRIC_NAMES, request.metric, "metric"),
                kind=wire.lookup(wire.KIND_NAMES, request.kind, "kind"),
                params=given,
                **wire.create_index_parts(request),
            )
            return self._info(self.indexes.describe(collection))

        return await self._guard("CreateIndex", request.model, context, work)

    async def DeleteIndex(self, request: pb.DeleteIndexRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.DeleteIndexResponse:
            await asyncio.to_thread(self.indexes.drop, request.name)
            if request.name in _damaged(self.metrics):
                self.metrics.index_damaged.remove(request.name)
            return pb.DeleteIndexResponse()

        return await self._guard("DeleteIndex", "", context, work)

    async def ListIndexes(self, request: pb.ListIndexesRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.ListIndexesResponse:
            described, broken = self.indexes.listing()
            infos = [self._info(d) for d in described]
            infos += [pb.IndexInfo(name=name, status=f"error: {exc}") for name, exc in broken.items()]
            return pb.ListIndexesResponse(indexes=infos)

        return await self._guard("ListIndexes", "", context, work)

    async def DescribeIndex(self, request: pb.DescribeIndexRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.IndexInfo:
            damage = self.indexes.damage(request.name)
            if damage is not None:  # described, not raised: the caller learns what is wrong
                return pb.IndexInfo(name=request.name, status=f"error: {damage}")
            return self._info(self.indexes.describe(self.indexes.collection(request.name)))

        return await self._guard("DescribeIndex", "", context, work)

    # --------------------------------------------------------------- data
    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        async def work() -> pb.UpsertResponse:
            items = [
                NewItem(
                    id=item.id,
                    text=item.text if item.HasField("text") else None,
                    vector=item.vector or None,
                    metadata=wire.from_metadata(item.metadata),
                    **wire.item_parts(item),
                )
                for item in request.items
            ]
            upserted, count = await self.indexes.upsert(request.index, items, self._embed(context))
            return pb.UpsertResponse(upserted=upserted, count=count)

        return await self._guard("Upsert", "", context, work)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        async def work() -> pb.DeleteResponse:
            deleted, count = await self.indexes.delete(request.index, list(request.ids))
            return pb.DeleteResponse(deleted=deleted, count=count)

        return await self._guard("Delete", "", context, work)

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        async def work() -> pb.GetResponse:
            found, missing = await self.indexes.get(request.index, list(request.ids))
            parts = await self.indexes.parts(request.index, [i for i, _, _ in found])
            items = [wire.got_item(i, v, m, *parts.get(i, (None, None))) for i, v, m in found]
            return pb.GetResponse(items=items, missing=missing)

        return await self._guard("Get", "", context, work)

    async def _search_options(self, request: pb.SearchRequest | pb.SearchBatchRequest) -> SearchOptions:
        """The filters, ef_search and nprobe: converted on a thread, after a bounded check of their size
        (a 10 MB filter once held the event loop, /health included, for 11 s)."""
        return await asyncio.to_thread(self._convert_search_options, request, self.config.max_filter_leaves)

    @staticmethod
    def _convert_search_options(
        request: pb.SearchRequest | pb.SearchBatchRequest, max_leaves: int
    ) -> SearchOptions:
        """k (0: 10), the filters (the equality map and `where`, both must hold), ef_search and nprobe."""
        if request.HasField("where"):
            check_filter_size(request.where, max_leaves)
        where = wire.filter_from_proto(request.where) if request.HasField("where") else None
        return SearchOptions(
            k=request.k or 10,
            filter=wire.from_metadata(request.filter),
            where=parse_filter(where),
            ef_search=request.ef_search if request.HasField("ef_search") else None,
            nprobe=request.nprobe if request.HasField("nprobe") else None,
            hybrid=wire.hybrid_options(request),
        )

    @staticmethod
    def _hits(hits: list[Hit]) -> pb.SearchResponse:
        return pb.SearchResponse(hits=[wire.hit(h) for h in hits])

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        async def work() -> pb.SearchResponse:
            self.indexes.collection(request.index)  # an unknown index is named before a bad filter
            which = request.WhichOneof("query")
            hits = await self.indexes.search(
                request.index,
                await self._search_options(request),
                self._embed(context),
                text=request.text if which == "text" else None,
                vector=list(request.vector.values) if which == "vector" else None,
                instruction=request.instruction if request.HasField("instruction") else None,
                **wire.query_parts(request),
            )
            return self._hits(hits)

        return await self._guard("Search", "", context, work)

    async def SearchBatch(
        self, request: pb.SearchBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchBatchResponse:
        async def work() -> pb.SearchBatchResponse:
            self.indexes.collection(request.index)  # an unknown index is named before a bad filter
            results = await self.indexes.search_many(
                request.index,
                await self._search_options(request),
                self._embed(context),
                texts=list(request.texts),
                vectors=[v.values for v in request.vectors],
                instruction=request.instruction if request.HasField("instruction") else None,
                **wire.batch_query_parts(request),
            )
            return pb.SearchBatchResponse(results=[self._hits(hits) for hits in results])

        return await self._guard("SearchBatch", "", context, work)

    async def ListIds(
        self, request: pb.ListIdsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListIdsResponse:
        async def work() -> pb.ListIdsResponse:
            size, after = wire.page_size(request.page_size), wire.page_position(request.page_token)
            ids, following, count = await self.indexes.list_ids(request.index, after, size)
            return pb.ListIdsResponse(ids=ids, next_page_token=wire.page_token(following), count=count)

        return await self._guard("ListIds", "", context, work)

    async def Count(self, request: pb.CountRequest, context: grpc.aio.ServicerContext) -> pb.CountResponse:
        async def work() -> pb.CountResponse:
            return pb.CountResponse(count=self.indexes.count(request.index))

        return await self._guard("Count", "", context, work)

"""IndexService: the gRPC door of the index facade (embedsvc.index.service); it only converts."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np

from embedsvc import wire
from embedsvc.config import ServerConfig
from embedsvc.engine.options import EmbedOptions
from embedsvc.engine.service import ModelService
from embedsvc.index.manager import IndexManager
from embedsvc.index.service import Embed, Indexes, SearchOptions
from embedsvc.server.metrics import Metrics
from embedsvc.server.registry import ModelRegistry
from embedsvc.server.rpc import GuardedServicer
from embedsvc.server.tenants import tenant_of
from embedsvc.v1 import index_pb2 as pb
from embedsvc.v1 import index_pb2_grpc as pb_grpc


def _damaged(metrics: Metrics) -> set[str]:
    return {sample.labels["index"] for family in metrics.index_damaged.collect() for sample in family.samples}


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

        async def embed(served: ModelService, texts: list[str], options: EmbedOptions) -> np.ndarray:
            embedded = await served.embed(
                texts, options, timeout=context.time_remaining(), tenant=tenant_of(context)
            )
            return embedded.vectors

        return embed

    # ---------------------------------------------------------- lifecycle
    async def CreateIndex(
        self, request: pb.CreateIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.IndexInfo:
        async def work() -> pb.IndexInfo:
            collection = await asyncio.to_thread(
                self.indexes.create,
                request.name,
                request.model,
                metric=wire.lookup(wire.METRIC_NAMES, request.metric, "metric"),
                kind=wire.lookup(wire.KIND_NAMES, request.kind, "kind"),
                params=wire.index_params(request.params),
            )
            return wire.index_info_message(self.indexes.describe(collection))

        return await self._guard("CreateIndex", request.model, context, work)

    async def DeleteIndex(self, request: pb.DeleteIndexRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.DeleteIndexResponse:
            await asyncio.to_thread(self.indexes.drop, request.name)
            if request.name in _damaged(self.metrics):
                self.metrics.index_damaged.remove(request.name)
            return wire.delete_index_response()

        return await self._guard("DeleteIndex", "", context, work)

    async def ListIndexes(self, request: pb.ListIndexesRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.ListIndexesResponse:
            return wire.list_indexes_response(*self.indexes.listing())

        return await self._guard("ListIndexes", "", context, work)

    async def DescribeIndex(self, request: pb.DescribeIndexRequest, context: grpc.aio.ServicerContext) -> Any:
        async def work() -> pb.IndexInfo:
            damage = self.indexes.damage(request.name)
            if damage is not None:
                return wire.damaged_index_info(request.name, damage)
            return wire.index_info_message(self.indexes.describe(self.indexes.collection(request.name)))

        return await self._guard("DescribeIndex", "", context, work)

    # --------------------------------------------------------------- data
    async def Upsert(self, request: pb.UpsertRequest, context: grpc.aio.ServicerContext) -> pb.UpsertResponse:
        async def work() -> pb.UpsertResponse:
            items = wire.new_items(request)
            upserted, count = await self.indexes.upsert(request.index, items, self._embed(context))
            return wire.upsert_response(upserted, count)

        return await self._guard("Upsert", "", context, work)

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        async def work() -> pb.DeleteResponse:
            deleted, count = await self.indexes.delete(request.index, list(request.ids))
            return wire.delete_response(deleted, count)

        return await self._guard("Delete", "", context, work)

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        async def work() -> pb.GetResponse:
            found, missing = await self.indexes.get(request.index, list(request.ids))
            return wire.get_response(found, missing)

        return await self._guard("Get", "", context, work)

    async def _search_options(self, request: pb.SearchRequest | pb.SearchBatchRequest) -> SearchOptions:
        """Converted on a thread, after a bounded check of the filter's size (a 10 MB filter once held
        the event loop, /health included, for 11 s)."""
        return await asyncio.to_thread(wire.index_search_options, request, self.config.max_filter_leaves)

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
            )
            return wire.search_response(hits)

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
            )
            return wire.search_batch_response(results)

        return await self._guard("SearchBatch", "", context, work)

    async def ListIds(
        self, request: pb.ListIdsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListIdsResponse:
        async def work() -> pb.ListIdsResponse:
            size, after = wire.page_size(request.page_size), wire.page_position(request.page_token)
            ids, following, count = await self.indexes.list_ids(request.index, after, size)
            return wire.list_ids_response(ids, following, count)

        return await self._guard("ListIds", "", context, work)

    async def Count(self, request: pb.CountRequest, context: grpc.aio.ServicerContext) -> pb.CountResponse:
        async def work() -> pb.CountResponse:
            return wire.count_response(self.indexes.count(request.index))

        return await self._guard("Count", "", context, work)

"""Python clients: :class:`EmbedClient` (blocking) and :class:`AsyncEmbedClient` (asyncio).

Both return numpy float32 arrays and raise :class:`EmbedServiceError` (carrying
the gRPC status code and message) on failure. Large input lists are sent as
several requests transparently, a few at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from embedsvc import codecs, wire
from embedsvc import index_client as ic
from embedsvc.index_client import Hit, IndexInfo
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc
from embedsvc.v1 import index_pb2 as ipb
from embedsvc.v1 import index_pb2_grpc as ipb_grpc
from embedsvc.wire import ModelInfo

__all__ = ["AsyncEmbedClient", "EmbedClient", "EmbedServiceError", "Hit", "IndexInfo", "ModelInfo"]

DEFAULT_CHUNK = 256  # inputs per request the client sends
IN_FLIGHT = 4  # requests of one call in flight at once


class EmbedServiceError(Exception):
    """A failed RPC: ``code`` is the grpc.StatusCode, ``details`` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> EmbedServiceError:
        return cls(error.code(), error.details() or "")  # type: ignore[attr-defined]


def build_requests(
    texts: Sequence[str],
    chunk: int,
    *,
    model: str | None,
    input_type: str | None,
    prompt_name: str | None,
    instruction: str | None,
    dimensions: int | None,
    normalize: bool | None,
    truncation: str,
    encoding: str,
    chunked: bool,
) -> list[pb.EmbedRequest]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    base = wire.embed_request_fields(
        input_type=input_type,
        prompt_name=prompt_name,
        instruction=instruction,
        dimensions=dimensions,
        normalize=normalize,
        truncation=truncation,
        chunked=chunked,
        encoding=encoding,
    )
    base["model"] = model or ""
    items = list(texts)
    return [
        pb.EmbedRequest(id=str(i), inputs=items[i : i + chunk], **base) for i in range(0, len(items), chunk)
    ]


def decode_response(response: pb.EmbedResponse) -> np.ndarray:
    dims = response.dimensions
    if response.encoding in (pb.ENCODING_UNSPECIFIED, pb.ENCODING_FLOAT32):
        return wire.float32_rows(response)  # each row's bytes read by numpy
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


def _credentials(api_key: str | None, tls: bool, root_certificates: bytes | None) -> tuple[Any, ...]:
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    creds = grpc.ssl_channel_credentials(root_certificates) if (tls or root_certificates) else None
    return metadata, creds


_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    # a connection of its own: the server shares its queue fairly per connection (or API key), and
    # gRPC would otherwise let every channel of this process to the same server share one
    ("grpc.use_local_subchannel_pool", 1),
]


class EmbedClient:
    """Blocking client. ``with EmbedClient("127.0.0.1:50051") as c: c.embed([...])``."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        api_key: str | None = None,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        self._metadata, creds = _credentials(api_key, tls, root_certificates)
        self._channel = (
            grpc.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
            if creds
            else grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        )
        self._stub = pb_grpc.EmbeddingServiceStub(self._channel)
        self._index = ipb_grpc.IndexServiceStub(self._channel)
        self.timeout = timeout
        self.chunk_size = chunk_size

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise EmbedServiceError.from_rpc(exc) from None

    # ---------------------------------------------------------------- index
    def create_index(
        self,
        name: str,
        *,
        model: str | None = None,
        metric: str = "cosine",
        kind: str = "flat",
        **params: int,
    ) -> IndexInfo:
        return ic.info(
            self._call(self._index.CreateIndex, ic.create_request(name, model, metric, kind, params))
        )

    def delete_index(self, name: str) -> None:
        self._call(self._index.DeleteIndex, ipb.DeleteIndexRequest(name=name))

    def list_indexes(self) -> list[IndexInfo]:
        return [ic.info(i) for i in self._call(self._index.ListIndexes, ipb.ListIndexesRequest()).indexes]

    def describe_index(self, name: str) -> IndexInfo:
        return ic.info(self._call(self._index.DescribeIndex, ipb.DescribeIndexRequest(name=name)))

    def upsert(
        self,
        index: str,
        ids: Sequence[str],
        texts: Sequence[str] | None = None,
        vectors: Any = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Insert or replace; returns the index's size afterwards. Each request is all or nothing."""
        count = 0
        for request in ic.upsert_requests(index, ids, texts, vectors, metadata, self.chunk_size):
            count = self._call(self._index.Upsert, request).count
        return int(count)

    def delete(self, index: str, ids: Sequence[str]) -> int:
        """Returns how many of ``ids`` existed."""
        return int(self._call(self._index.Delete, ipb.DeleteRequest(index=index, ids=list(ids))).deleted)

    def get(self, index: str, ids: Sequence[str]) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        """``{id: (vector, metadata)}`` for the ids that exist."""
        return ic.got(self._call(self._index.Get, ipb.GetRequest(index=index, ids=list(ids))))

    def search(
        self,
        index: str,
        text: str | None = None,
        vector: Any = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        instruction: str | None = None,
    ) -> list[Hit]:
        """Top ``k`` for a text or a vector; ``filter`` in the plain filter language (README: Filters),
        checked here before sending."""
        request = ic.search_request(index, text, vector, k, filter, ef_search, nprobe, instruction)
        return ic.hits(self._call(self._index.Search, request))

    def search_batch(
        self,
        index: str,
        texts: Sequence[str] | None = None,
        vectors: Any = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        instruction: str | None = None,
    ) -> list[list[Hit]]:
        """Top ``k`` for each of many queries (texts or a [queries, dim] array), in order; sent
        ``chunk_size`` queries per SearchBatch call, each searched in one pass through the index."""
        requests = ic.search_batch_requests(
            index, texts, vectors, k, filter, ef_search, nprobe, instruction, self.chunk_size
        )
        results: list[list[Hit]] = []
        for request in requests:
            results += ic.batch_hits(self._call(self._index.SearchBatch, request))
        return results

    def count(self, index: str) -> int:
        return int(self._call(self._index.Count, ipb.CountRequest(index=index)).count)

    # ------------------------------------------------------------ embedding
    def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        input_type: str | None = None,
        prompt_name: str | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        normalize: bool | None = None,
        truncation: str = "end",
        encoding: str = "float32",
        chunked: bool = False,
        timeout: float | None = None,
    ) -> np.ndarray:
        requests = build_requests(
            texts,
            self.chunk_size,
            model=model,
            input_type=input_type,
            prompt_name=prompt_name,
            instruction=instruction,
            dimensions=dimensions,
            normalize=normalize,
            truncation=truncation,
            encoding=encoding,
            chunked=chunked,
        )
        if not requests:
            raise ValueError("texts must hold at least one string")
        results: list[np.ndarray] = []
        try:
            for start in range(0, len(requests), IN_FLIGHT):
                futures = [
                    self._stub.Embed.future(r, timeout=timeout or self.timeout, metadata=self._metadata)
                    for r in requests[start : start + IN_FLIGHT]
                ]
                results.extend(decode_response(f.result()) for f in futures)
        except grpc.RpcError as exc:
            raise EmbedServiceError.from_rpc(exc) from None
        return np.concatenate(results)

    def tokenize(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        input_type: str | None = None,
        truncation: str = "end",
    ) -> list[list[int]]:
        request = pb.TokenizeRequest(
            model=model or "",
            inputs=list(texts),
            input_type=wire.lookup(wire.INPUT_TYPES, input_type, "input_type"),
            truncation=wire.lookup(wire.TRUNCATIONS, truncation, "truncation"),
        )
        try:
            response = self._stub.Tokenize(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise EmbedServiceError.from_rpc(exc) from None
        return [list(item.ids) for item in response.inputs]

    def list_models(self) -> list[ModelInfo]:
        try:
            response = self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise EmbedServiceError.from_rpc(exc) from None
        return wire.model_infos(response)

    def health(self, service: str = "", timeout: float | None = None) -> int:
        """grpc.health.v1 status of the server (or one of its services): SERVING = 1, NOT_SERVING = 2
        while it loads models or drains. Raises EmbedServiceError when it cannot be reached."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout or self.timeout
            )
        except grpc.RpcError as exc:
            raise EmbedServiceError.from_rpc(exc) from None
        return int(reply.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> EmbedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEmbedClient:
    """asyncio client with the same methods as :class:`EmbedClient`, as coroutines."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        api_key: str | None = None,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        self._metadata, creds = _credentials(api_key, tls, root_certificates)
        self._channel = (
            grpc.aio.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
            if creds
            else grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        )
        self._stub = pb_grpc.EmbeddingServiceStub(self._channel)
        self._index = ipb_grpc.IndexServiceStub(self._channel)
        self.timeout = timeout
        self.chunk_size = chunk_size

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise EmbedServiceError.from_rpc(exc) from None

    # ---------------------------------------------------------------- index
    async def create_index(
        self,
        name: str,
        *,
        model: str | None = None,
        metric: str = "cosine",
        kind: str = "flat",
        **params: int,
    ) -> IndexInfo:
        request = ic.create_request(name, model, metric, kind, params)
        return ic.info(await self._call(self._index.CreateIndex, request))

    async def delete_index(self, name: str) -> None:
        await self._call(self._index.DeleteIndex, ipb.DeleteIndexRequest(name=name))

    async def list_indexes(self) -> list[IndexInfo]:
        return [
            ic.info(i) for i in (await self._call(self._index.ListIndexes, ipb.ListIndexesRequest())).indexes
        ]

    async def describe_index(self, name: str) -> IndexInfo:
        return ic.info(await self._call(self._index.DescribeIndex, ipb.DescribeIndexRequest(name=name)))

    async def upsert(
        self,
        index: str,
        ids: Sequence[str],
        texts: Sequence[str] | None = None,
        vectors: Any = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        count = 0
        for request in ic.upsert_requests(index, ids, texts, vectors, metadata, self.chunk_size):
            count = (await self._call(self._index.Upsert, request)).count
        return int(count)

    async def delete(self, index: str, ids: Sequence[str]) -> int:
        return int(
            (await self._call(self._index.Delete, ipb.DeleteRequest(index=index, ids=list(ids)))).deleted
        )

    async def get(self, index: str, ids: Sequence[str]) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
        return ic.got(await self._call(self._index.Get, ipb.GetRequest(index=index, ids=list(ids))))

    async def search(
        self,
        index: str,
        text: str | None = None,
        vector: Any = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        instruction: str | None = None,
    ) -> list[Hit]:
        """Top ``k`` for a text or a vector; ``filter`` in the plain filter language (README: Filters),
        checked here before sending."""
        request = ic.search_request(index, text, vector, k, filter, ef_search, nprobe, instruction)
        return ic.hits(await self._call(self._index.Search, request))

    async def search_batch(
        self,
        index: str,
        texts: Sequence[str] | None = None,
        vectors: Any = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        *,
        ef_search: int | None = None,
        nprobe: int | None = None,
        instruction: str | None = None,
    ) -> list[list[Hit]]:
        """Top ``k`` for each of many queries (texts or a [queries, dim] array), in order; sent
        ``chunk_size`` queries per SearchBatch call, each searched in one pass through the index."""
        requests = ic.search_batch_requests(
            index, texts, vectors, k, filter, ef_search, nprobe, instruction, self.chunk_size
        )
        results: list[list[Hit]] = []
        for request in requests:
            results += ic.batch_hits(await self._call(self._index.SearchBatch, request))
        return results

    async def count(self, index: str) -> int:
        return int((await self._call(self._index.Count, ipb.CountRequest(index=index))).count)

    # ------------------------------------------------------------ embedding
    async def embed(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        input_type: str | None = None,
        prompt_name: str | None = None,
        instruction: str | None = None,
        dimensions: int | None = None,
        normalize: bool | None = None,
        truncation: str = "end",
        encoding: str = "float32",
        chunked: bool = False,
        timeout: float | None = None,
    ) -> np.ndarray:
        requests = build_requests(
            texts,
            self.chunk_size,
            model=model,
            input_type=input_type,
            prompt_name=prompt_name,
            instruction=instruction,
            dimensions=dimensions,
            normalize=normalize,
            truncation=truncation,
            encoding=encoding,
            chunked=chunked,
        )
        if not requests:
            raise ValueError("texts must hold at least one string")
        window = asyncio.Semaphore(IN_FLIGHT)

        async def one(request: pb.EmbedRequest) -> np.ndarray:
            async with window:
                response = await self._stub.Embed(
                    request, timeout=timeout or self.timeout, metadata=self._metadata
                )
            return decode_response(response)

        try:
            results = await asyncio.gather(*(one(r) for r in requests))
        except grpc.RpcError as exc:
            raise EmbedServiceError.from_rpc(exc) from None
        return np.concatenate(results)

    async def tokenize(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        input_type: str | None = None,
        truncation: str = "end",
    ) -> list[list[int]]:
        request = pb.TokenizeRequest(
            model=model or "",
            inputs=list(texts),
            input_type=wire.lookup(wire.INPUT_TYPES, input_type, "input_type"),
            truncation=wire.lookup(wire.TRUNCATIONS, truncation, "truncation"),
        )
        try:
            response = await self._stub.Tokenize(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise EmbedServiceError.from_rpc(exc) from None
        return [list(item.ids) for item in response.inputs]

    async def list_models(self) -> list[ModelInfo]:
        try:
            response = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise EmbedServiceError.from_rpc(exc) from None
        return wire.model_infos(response)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncEmbedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

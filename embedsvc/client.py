"""Python clients: :class:`AsyncEmbedClient` (asyncio) and :class:`EmbedClient` (blocking).

Every method is written once, in the async client; the blocking client runs it on an event loop of its
own (a private thread). Both return numpy float32 arrays and raise :class:`EmbedServiceError` (the gRPC
status code and message) on failure. Lists are sent as several requests of at most ``chunk_size`` items,
a few at a time. A refusal for load (RESOURCE_EXHAUSTED) is backpressure, not failure: the client
sends fewer requests at once, waits what the server asks and tries again until the call's ``timeout``
(see :mod:`embedsvc.pacing`); UNAVAILABLE is retried the same way for calls safe to repeat.

``target`` may name several servers (``ipv4:10.0.0.1:50051,10.0.0.2:50051``, or ``dns:///name:50051``
for every address a DNS name has, such as a Kubernetes headless service): calls are spread over them
round-robin, and a replica that goes away is left out while its calls are retried on the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

import grpc
import grpc.aio
import numpy as np

from embedsvc import pacing, wire
from embedsvc.errors import EmbedsvcError
from embedsvc.server.errors import category_for
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc
from embedsvc.v1 import index_pb2_grpc as ipb_grpc
from embedsvc.wire import (
    Classification,
    EmbedOutputs,
    Hit,
    IdPage,
    IndexInfo,
    ModelInfo,
    Reembedded,
    Rerank,
    RerankResult,
    SearchOptions,
    SparseVector,
)

__all__ = [
    "AsyncEmbedClient",
    "Classification",
    "EmbedClient",
    "EmbedOutputs",
    "EmbedServiceError",
    "Hit",
    "IndexInfo",
    "ModelInfo",
    "Reembedded",
    "Rerank",
    "RerankResult",
    "SparseVector",
]

DEFAULT_CHUNK = 256  # items per request the client sends (embed texts, upsert items, get/delete ids)
IN_FLIGHT = 4  # requests of one call in flight at once
MAX_IN_FLIGHT = 64  # requests of one client in flight at once, before any refusal narrows it
RETRY_WITHOUT_TIMEOUT = 300.0  # how long a call without a timeout keeps retrying refusals

P = ParamSpec("P")
R = TypeVar("R")


class EmbedServiceError(EmbedsvcError):
    """A failed RPC: ``code`` is the grpc.StatusCode, ``details`` the server's message, ``category`` the
    kind of failure that code stands for (the reverse of the server's table)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.category = category_for(code)

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, tries: int = 1) -> EmbedServiceError:
        details = error.details() or ""  # type: ignore[attr-defined]
        if tries > 1:
            details += f" (gave up after {tries} tries)"
        return cls(error.code(), details)  # type: ignore[attr-defined]


def _search_options(arguments: Mapping[str, Any]) -> SearchOptions:
    """The SearchOptions of ``search`` / ``search_batch``'s arguments (their ``locals()``): both take
    every field of SearchOptions as a keyword of the same name, spelled out for their users."""
    values = {f.name: arguments[f.name] for f in dataclasses.fields(SearchOptions)}
    values["rerank"] = wire.rerank_stage(values["rerank"])
    return SearchOptions(**values)


def _credentials(api_key: str | None, tls: bool, root_certificates: bytes | None) -> tuple[Any, ...]:
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    creds = grpc.ssl_channel_credentials(root_certificates) if (tls or root_certificates) else None
    return metadata, creds


# Methods gRPC may send again by itself on UNAVAILABLE (it does so only before the server answered):
# all but CreateIndex and DeleteIndex, which would answer ALREADY_EXISTS / NOT_FOUND the second time.
_IDEMPOTENT_INDEX_METHODS = (
    "ListIndexes",
    "DescribeIndex",
    "Upsert",
    "Delete",
    "Get",
    "Search",
    "SearchBatch",
    "Count",
    "Rebind",
)
_SERVICE_CONFIG = {
    # every address of the target takes calls in turn; a dead one is skipped until it reconnects
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [
                {"service": "embedsvc.v1.EmbeddingService"},
                *({"service": "embedsvc.v1.IndexService", "method": m} for m in _IDEMPOTENT_INDEX_METHODS),
            ],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    # a connection of its own: the server shares its queue fairly per connection (or API key), and
    # gRPC would otherwise let every channel of this process to the same server share one
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
]


class AsyncEmbedClient:
    """asyncio client. ``async with AsyncEmbedClient("127.0.0.1:50051") as c: await c.embed([...])``.

    ``timeout`` bounds each request in seconds, its retries included. ``retry=False`` surfaces
    refusals (RESOURCE_EXHAUSTED, UNAVAILABLE) at once instead of pacing and retrying them.

    ``last_fingerprint``: the model fingerprint of the latest ``embed``, ``rerank``, ``score`` or
    ``classify`` answer (16 hex characters; "" before any, or from a server without fingerprints).
    Vectors (scores) with equal fingerprints are comparable; a call whose parts come from replicas
    with different fingerprints fails."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        api_key: str | None = None,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        retry: bool = True,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._metadata, creds = _credentials(api_key, tls, root_certificates)
        self._channel = (
            grpc.aio.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
            if creds
            else grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        )
        self._stub = pb_grpc.EmbeddingServiceStub(self._channel)
        self._index = ipb_grpc.IndexServiceStub(self._channel)
        self.target = target
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.retry = retry
        self.window = pacing.Window(max_in_flight)
        self.last_fingerprint = ""

    # ------------------------------------------------------------ plumbing
    async def _call(
        self, method: Any, request: Any, *, idempotent: bool = True, timeout: float | None = None
    ) -> Any:
        """One request, paced by the window and retried while the server refuses it for load (or is
        unavailable, for an idempotent call), until ``timeout`` has passed since it was first sent."""
        timeout = timeout or self.timeout
        deadline: float | None = None  # set when first sent: waiting for a slot is not the server's time
        attempt = unavailable = 0  # tries so far, and how many of them found the server unavailable
        while True:
            try:
                async with self.window.slot():
                    if deadline is None:
                        deadline = time.monotonic() + (timeout or RETRY_WITHOUT_TIMEOUT)
                    remaining = None if timeout is None else max(0.001, deadline - time.monotonic())
                    reply = await method(request, timeout=remaining, metadata=self._metadata)
                self.window.succeeded()
                return reply
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.window.refused()
                elif code == grpc.StatusCode.UNAVAILABLE:
                    unavailable += 1
                if not self.retry or not pacing.retryable(
                    code.name, exc.details() or "", idempotent=idempotent, attempt=max(0, unavailable - 1)
                ):
                    raise EmbedServiceError.from_rpc(exc, attempt + 1) from None
                delay = pacing.backoff(attempt, pacing.retry_after(exc.trailing_metadata()))  # type: ignore[arg-type]
                if deadline is None or time.monotonic() + delay >= deadline:
                    raise EmbedServiceError.from_rpc(exc, attempt + 1) from None
                attempt += 1
                await asyncio.sleep(delay)

    async def _each(
        self, method: Any, requests: Sequence[Any], *, in_flight: int = IN_FLIGHT, **call: Any
    ) -> list[Any]:
        """Replies to ``requests`` in order, at most ``in_flight`` at once; the first failure cancels
        the rest."""
        if in_flight <= 1 or len(requests) <= 1:
            return [await self._call(method, r, **call) for r in requests]
        gate = asyncio.Semaphore(in_flight)

        async def one(request: Any) -> Any:
            async with gate:
                return await self._call(method, request, **call)

        tasks = [asyncio.ensure_future(one(r)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # collected: no "never retrieved"
            raise

    # ---------------------------------------------------------------- index
    async def create_index(
        self,
        name: str,
        *,
        model: str | None = None,
        metric: str = "cosine",
        kind: str = "flat",
        store_text: bool = False,
        dense: bool | None = None,
        sparse: int | None = None,
        multi_vector: int | None = None,
        **params: int,
    ) -> IndexInfo:
        """``store_text``: keep each item's text (Get / search with ``return_text``; reranking needs it).
        ``sparse`` / ``multi_vector``: keep sparse vectors / token vectors too (0: the model's
        vocabulary size / token width, else that width); ``dense=False``: no dense vectors (None: as
        the model gives dense output or not)."""
        request = wire.create_index_request(
            name,
            model,
            metric,
            kind,
            params,
            dense=dense,
            sparse=sparse,
            multi_vector=multi_vector,
            store_text=store_text,
        )
        return wire.index_info(await self._call(self._index.CreateIndex, request, idempotent=False))

    async def delete_index(self, name: str) -> None:
        await self._call(self._index.DeleteIndex, wire.delete_index_request(name), idempotent=False)

    async def list_indexes(self) -> list[IndexInfo]:
        return wire.index_infos(await self._call(self._index.ListIndexes, wire.list_indexes_request()))

    async def describe_index(self, name: str) -> IndexInfo:
        return wire.index_info(await self._call(self._index.DescribeIndex, wire.describe_index_request(name)))

    async def upsert(
        self,
        index: str,
        ids: Sequence[str],
        texts: Sequence[str] | None = None,
        vectors: Any = None,
        metadata: Sequence[Mapping[str, Any]] | None = None,
        *,
        fingerprint: str = "",
        sparse: Sequence[Any] | None = None,
        token_vectors: Sequence[Any] | None = None,
    ) -> int:
        """Insert or replace; returns the index's size afterwards. Each request is all or nothing; they
        go one after another, so a later duplicate id wins. ``fingerprint``: the model fingerprint that
        made ``vectors`` (ModelInfo.fingerprint), checked against the index's. ``sparse``: (term ids,
        weights) per item; ``token_vectors``: a [tokens, width] array per item (with vectors, or alone
        without dense)."""
        requests = wire.upsert_requests(
            index,
            ids,
            texts,
            vectors,
            metadata,
            self.chunk_size,
            fingerprint,
            sparse=sparse,
            tokens=token_vectors,
        )
        replies = await self._each(self._index.Upsert, requests, in_flight=1)
        return int(replies[-1].count) if replies else 0

    async def delete(self, index: str, ids: Sequence[str]) -> int:
        """Returns how many of ``ids`` existed."""
        requests = wire.delete_requests(index, ids, self.chunk_size)
        return sum(int(r.deleted) for r in await self._each(self._index.Delete, requests, in_flight=1))

    async def get(
        self, index: str, ids: Sequence[str], *, return_text: bool = False
    ) -> dict[str, tuple[Any, ...]]:
        """``{id: (vector, metadata)}`` for the ids that exist; with ``return_text``
        ``(vector, metadata, text)`` (None for an item without a stored text)."""
        found: dict[str, tuple[Any, ...]] = {}
        requests = wire.get_requests(index, ids, self.chunk_size, return_text)
        for reply in await self._each(self._index.Get, requests):
            found.update(wire.got(reply, return_text))
        return found

    async def get_parts(self, index: str, ids: Sequence[str]) -> dict[str, tuple[Any, Any]]:
        """``{id: (sparse (ids, weights) or None, token vectors or None)}`` for the ids that exist."""
        found: dict[str, tuple[Any, Any]] = {}
        for reply in await self._each(self._index.Get, wire.get_requests(index, ids, self.chunk_size)):
            found.update(wire.got_parts(reply))
        return found

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
        return_text: bool = False,
        rerank: str | Rerank | Mapping[str, Any] | None = None,
        sparse: Any = None,
        token_vectors: Any = None,
        mode: str = "dense",
        fusion: str = "rrf",
        dense_weight: float | None = None,
        sparse_weight: float | None = None,
        rrf_k: int | None = None,
        candidates: int = 0,
        multi_vector_rerank: bool = False,
    ) -> list[Hit]:
        """Top ``k`` for a text or a vector; ``filter`` in the plain filter language (docs/search.md),
        checked here before sending. ``return_text``: hits carry their stored texts. ``rerank``: a served
        reranker's name (or ``Rerank(model, candidates, instruction)``) that reorders the nearest
        candidates by their stored texts; hits then carry ``rerank_score`` beside ``score``. ``mode``
        sparse / hybrid searches with ``sparse`` ((term ids, weights)) and fuses by ``fusion``;
        ``multi_vector_rerank`` re-ranks by MaxSim over the items' token vectors (``token_vectors``: the
        query's, for a query given as vectors)."""
        options = _search_options(locals())
        request = wire.search_request(index, text, vector, options, sparse=sparse, tokens=token_vectors)
        return wire.hits(await self._call(self._index.Search, request))

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
        return_text: bool = False,
        rerank: str | Rerank | Mapping[str, Any] | None = None,
        sparse: Sequence[Any] | None = None,
        token_vectors: Sequence[Any] | None = None,
        mode: str = "dense",
        fusion: str = "rrf",
        dense_weight: float | None = None,
        sparse_weight: float | None = None,
        rrf_k: int | None = None,
        candidates: int = 0,
        multi_vector_rerank: bool = False,
    ) -> list[list[Hit]]:
        """Top ``k`` for each of many queries (texts or a [queries, dim] array), in order; sent
        ``chunk_size`` queries per SearchBatch call, each searched in one pass through the index.
        ``return_text``, ``rerank`` and the rest as for :meth:`search`; ``sparse`` / ``token_vectors``:
        one per query."""
        options = _search_options(locals())
        requests = wire.search_batch_requests(
            index, texts, vectors, options, self.chunk_size, sparse=sparse, tokens=token_vectors
        )
        return [
            hits
            for reply in await self._each(self._index.SearchBatch, requests)
            for hits in wire.batch_hits(reply)
        ]

    async def count(self, index: str) -> int:
        return int((await self._call(self._index.Count, wire.count_request(index))).count)

    async def list_ids(self, index: str, page_size: int = 0, page_token: str = "") -> IdPage:
        """One page of the ids ``index`` holds, in write order; pass ``page.next_page_token`` for the next
        (empty after the last). ``page_size`` 0 = the server's default (1000)."""
        request = wire.list_ids_request(index, page_size, page_token)
        return wire.id_page(await self._call(self._index.ListIds, request))

    async def rebind(self, index: str) -> IndexInfo:
        """Bind the index to its model's fingerprint as served now (``mixed`` if it held another's
        vectors): text writes and searches through the changed model are accepted from then on."""
        return wire.index_info(await self._call(self._index.Rebind, wire.rebind_request(index)))

    async def reembed(self, index: str, *, timeout: float | None = None) -> Reembedded:
        """Embed every stored text of the index again with its model as served now, into a new index
        swapped in when done (searchable and writable throughout). ``timeout`` for this call alone."""
        request = wire.reembed_request(index)
        return wire.reembedded(
            await self._call(self._index.Reembed, request, idempotent=False, timeout=timeout)
        )

    async def iter_ids(self, index: str, page_size: int = 0) -> AsyncIterator[str]:
        """Every id ``index`` holds, fetched a page at a time."""
        token = ""
        while True:
            page = await self.list_ids(index, page_size, token)
            for item_id in page.ids:
                yield item_id
            if not page.next_page_token:
                return
            token = page.next_page_token

    # ------------------------------------------------------------ embedding
    @overload
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
        outputs: None = None,
        multi_vector_encoding: str = "float32",
    ) -> np.ndarray: ...

    @overload
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
        outputs: Sequence[str],
        multi_vector_encoding: str = "float32",
    ) -> EmbedOutputs: ...

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
        outputs: Sequence[str] | None = None,
        multi_vector_encoding: str = "float32",
    ) -> np.ndarray | EmbedOutputs:
        """float32 ``[inputs, dimensions]``; with ``outputs`` (any of "dense", "sparse", "multi_vector")
        an :class:`EmbedOutputs` holding each kind asked, from one forward pass. ``encoding`` is the
        dense vectors' wire encoding, ``multi_vector_encoding`` ("float32" | "float16") the
        multi-vectors'; both are decoded to float32."""
        requests = wire.embed_requests(
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
            outputs=outputs,
            multi_vector_encoding=multi_vector_encoding,
        )
        replies = await self._each(self._stub.Embed, requests, timeout=timeout)
        self.last_fingerprint = wire.fingerprint(replies)
        if outputs is not None:
            return EmbedOutputs.joined([wire.embed_outputs(r, outputs) for r in replies])
        return np.concatenate([wire.embeddings(r) for r in replies])

    async def tokenize(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        input_type: str | None = None,
        truncation: str = "end",
    ) -> list[list[int]]:
        requests = wire.tokenize_requests(
            texts, self.chunk_size, model=model, input_type=input_type, truncation=truncation
        )
        return [
            ids for reply in await self._each(self._stub.Tokenize, requests) for ids in wire.token_ids(reply)
        ]

    # ------------------------------------------------- rerank, score, classify
    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        model: str | None = None,
        top_n: int | None = None,
        return_documents: bool = False,
        instruction: str | None = None,
        truncation: str = "end",
        raw_scores: bool = False,
        max_tokens_per_doc: int | None = None,
        timeout: float | None = None,
    ) -> list[RerankResult]:
        """``documents`` scored against ``query`` by a reranker model, highest score first (ties in
        document order), the best ``top_n`` of them; ``index`` is each one's position in ``documents``.
        ``max_tokens_per_doc``: each document cut to its first N tokens before scoring (Cohere's option).
        More documents than ``chunk_size`` go in several requests, ranked together here."""
        requests = wire.rerank_requests(
            query,
            documents,
            self.chunk_size,
            model=model,
            top_n=top_n,
            return_documents=return_documents,
            instruction=instruction,
            truncation=truncation,
            raw_scores=raw_scores,
            max_tokens_per_doc=max_tokens_per_doc,
        )
        replies = await self._each(self._stub.Rerank, requests, timeout=timeout)
        self.last_fingerprint = wire.fingerprint(replies, "rerank")
        return wire.rerank_results(requests, replies, top_n)

    async def score(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        model: str | None = None,
        instruction: str | None = None,
        truncation: str = "end",
        raw_scores: bool = False,
        timeout: float | None = None,
    ) -> np.ndarray:
        """A reranker's score of each (query, document) pair, float32 ``[pairs]`` in their order."""
        requests = wire.score_requests(
            pairs,
            self.chunk_size,
            model=model,
            instruction=instruction,
            truncation=truncation,
            raw_scores=raw_scores,
        )
        replies = await self._each(self._stub.Score, requests, timeout=timeout)
        self.last_fingerprint = wire.fingerprint(replies, "score")
        return np.concatenate([wire.scores(r) for r in replies])

    async def classify(
        self,
        texts: Sequence[str],
        *,
        model: str | None = None,
        truncation: str = "end",
        raw_scores: bool = False,
        timeout: float | None = None,
    ) -> Classification:
        """A classifier's score of every label for each text: ``.scores`` float32 ``[texts, labels]`` in
        the order of ``.labels``; ``.predicted`` the best label of each text."""
        requests = wire.classify_requests(
            texts, self.chunk_size, model=model, truncation=truncation, raw_scores=raw_scores
        )
        replies = await self._each(self._stub.Classify, requests, timeout=timeout)
        self.last_fingerprint = wire.fingerprint(replies, "classify")
        return wire.classification(replies)

    async def list_models(self) -> list[ModelInfo]:
        return wire.model_infos(await self._call(self._stub.ListModels, wire.list_models_request()))

    async def health(self, service: str = "", timeout: float | None = None) -> int:
        """grpc.health.v1 status of the server (or one of its services): SERVING = 1, NOT_SERVING = 2
        while it loads models or drains. Raises EmbedServiceError when it cannot be reached (at once:
        health is asked to learn that, so it is not retried)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout or self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise EmbedServiceError.from_rpc(exc) from None
        return int(reply.status)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncEmbedClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _LoopThread:
    """An event loop running in a daemon thread: the blocking client's async core lives there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="embedsvc-client", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, R]) -> R:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C (or a failure) in the caller's thread: stop the call too
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _shut(loop: _LoopThread, core: AsyncEmbedClient) -> None:
    """Close the channel on its loop, then end the loop's thread (close(), garbage collection or exit)."""
    if loop.loop.is_closed():
        return
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(core.close(), loop.loop).result(timeout=10)
    loop.stop()


def _blocking(
    method: Callable[Concatenate[AsyncEmbedClient, P], Awaitable[R]],
) -> Callable[Concatenate[EmbedClient, P], R]:
    """The blocking form of an AsyncEmbedClient method: the same signature, run on the client's loop."""

    @functools.wraps(method)
    def call(self: EmbedClient, *args: P.args, **kwargs: P.kwargs) -> R:
        async def run() -> R:
            return await method(self._core, *args, **kwargs)

        return self._loop.run(run())

    return call


class EmbedClient:
    """Blocking client with :class:`AsyncEmbedClient`'s methods and arguments, for threads and scripts.
    ``with EmbedClient("127.0.0.1:50051") as c: c.embed([...])``. Safe to share between threads."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        api_key: str | None = None,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        retry: bool = True,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._loop = _LoopThread()

        async def make() -> AsyncEmbedClient:  # an asyncio channel belongs to the loop it is made on
            return AsyncEmbedClient(
                target,
                api_key,
                tls=tls,
                root_certificates=root_certificates,
                timeout=timeout,
                chunk_size=chunk_size,
                retry=retry,
                max_in_flight=max_in_flight,
            )

        self._core = self._loop.run(make())
        # a client dropped without close() must not leave its thread and connections behind
        self._shut = weakref.finalize(self, _shut, self._loop, self._core)

    # the settings live in the core: changing them here changes the calls
    @property
    def timeout(self) -> float | None:
        return self._core.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._core.timeout = value

    @property
    def chunk_size(self) -> int:
        return self._core.chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int) -> None:
        self._core.chunk_size = value

    @property
    def target(self) -> str:
        return self._core.target

    @property
    def last_fingerprint(self) -> str:
        """The model fingerprint of the latest embed/rerank/score/classify answer (see
        :class:`AsyncEmbedClient`)."""
        return self._core.last_fingerprint

    create_index = _blocking(AsyncEmbedClient.create_index)
    delete_index = _blocking(AsyncEmbedClient.delete_index)
    list_indexes = _blocking(AsyncEmbedClient.list_indexes)
    describe_index = _blocking(AsyncEmbedClient.describe_index)
    upsert = _blocking(AsyncEmbedClient.upsert)
    delete = _blocking(AsyncEmbedClient.delete)
    get = _blocking(AsyncEmbedClient.get)
    get_parts = _blocking(AsyncEmbedClient.get_parts)
    search = _blocking(AsyncEmbedClient.search)
    search_batch = _blocking(AsyncEmbedClient.search_batch)
    count = _blocking(AsyncEmbedClient.count)
    list_ids = _blocking(AsyncEmbedClient.list_ids)
    rebind = _blocking(AsyncEmbedClient.rebind)
    reembed = _blocking(AsyncEmbedClient.reembed)
    embed = _blocking(AsyncEmbedClient.embed)
    tokenize = _blocking(AsyncEmbedClient.tokenize)
    rerank = _blocking(AsyncEmbedClient.rerank)
    score = _blocking(AsyncEmbedClient.score)
    classify = _blocking(AsyncEmbedClient.classify)
    list_models = _blocking(AsyncEmbedClient.list_models)
    health = _blocking(AsyncEmbedClient.health)

    def iter_ids(self, index: str, page_size: int = 0) -> Iterator[str]:
        """Every id ``index`` holds, fetched a page at a time."""
        token = ""
        while True:
            page = self.list_ids(index, page_size, token)
            yield from page.ids
            if not page.next_page_token:
                return
            token = page.next_page_token

    def close(self) -> None:
        self._shut()

    def __enter__(self) -> EmbedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

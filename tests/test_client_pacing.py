"""The clients' backpressure: what they do with refusals, against an in-process gRPC server whose
refusals the test controls exactly (the real server's refusals are tested in test_client_load.py)."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from embedsvc import pacing
from embedsvc.client import AsyncEmbedClient, EmbedClient, EmbedServiceError
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc
from embedsvc.v1 import index_pb2 as ipb
from embedsvc.v1 import index_pb2_grpc as ipb_grpc


class Refusing(pb_grpc.EmbeddingServiceServicer):
    """Embeds "n" as [n, 1]; refuses the first ``refuse_first`` calls, and any call that arrives while
    more than ``max_concurrent`` are in flight, with RESOURCE_EXHAUSTED and a ``retry-after-ms`` hint."""

    def __init__(self, *, refuse_first: int = 0, max_concurrent: int = 1000, hint_ms: str | None = "300"):
        self.refuse_first = refuse_first
        self.max_concurrent = max_concurrent
        self.hint_ms = hint_ms
        self.lock = threading.Lock()
        self.in_flight = 0
        self.calls: list[tuple[float, str, bool]] = []  # (time, request id, refused)

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        with self.lock:
            self.in_flight += 1
            refuse = len(self.calls) < self.refuse_first or self.in_flight > self.max_concurrent
            self.calls.append((time.monotonic(), request.id, refuse))
        try:
            if refuse:
                if self.hint_ms is not None:
                    context.set_trailing_metadata(((pacing.RETRY_AFTER_KEY, self.hint_ms),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full; retry with backoff")
            time.sleep(0.02)  # long enough for concurrent requests to overlap
            return pb.EmbedResponse(
                dimensions=2,
                encoding=pb.ENCODING_FLOAT32,
                embeddings=[pb.Embedding(values=[float(t), 1.0]) for t in request.inputs],
            )
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def serve():
    servers = []

    def start(servicer: Refusing) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(16))
        pb_grpc.add_EmbeddingServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


TEXTS = [str(i) for i in range(40)]


def _check(vectors: np.ndarray) -> None:
    assert vectors.shape == (40, 2)
    assert vectors[:, 0].tolist() == [float(i) for i in range(40)]  # in order, none lost


def test_a_refusal_is_retried_after_the_servers_hint(serve):
    servicer = Refusing(refuse_first=1, hint_ms="300")
    with EmbedClient(serve(servicer), timeout=30, chunk_size=40) as client:
        _check(client.embed(TEXTS))
    (first, first_id, refused), (second, second_id, accepted) = servicer.calls
    assert refused and not accepted and first_id == second_id
    assert 0.3 <= second - first < 3.0  # waited at least what the server asked


def test_without_a_hint_the_client_backs_off_exponentially(serve):
    servicer = Refusing(refuse_first=4, hint_ms=None)
    with EmbedClient(serve(servicer), timeout=30, chunk_size=40) as client:
        _check(client.embed(TEXTS))
    times = [t for t, _, _ in servicer.calls]
    assert len(times) == 5 and [r for _, _, r in servicer.calls] == [True] * 4 + [False]
    gaps = np.diff(times)
    assert gaps.sum() >= pacing.FIRST_BACKOFF / 2 * 4 and gaps.max() < pacing.MAX_BACKOFF + 2


def test_refusals_narrow_the_requests_in_flight(serve):
    """A server that takes one request at a time: the client's four in flight become one, and every
    chunk of the call arrives (the old client failed the whole call on the first refusal)."""
    servicer = Refusing(max_concurrent=1, hint_ms="20")
    with EmbedClient(serve(servicer), timeout=60, chunk_size=4) as client:
        _check(client.embed(TEXTS))
        assert client._core.window.limit <= 3  # from 64
    accepted = [i for _, i, refused in servicer.calls if not refused]
    assert sorted(accepted, key=int) == [str(i) for i in range(0, 40, 4)]
    refusals = sum(refused for _, _, refused in servicer.calls)
    assert 0 < refusals < 40  # it slowed down instead of hammering


def test_async_client_paces_the_same(serve):
    servicer = Refusing(refuse_first=3, max_concurrent=2, hint_ms="50")
    target = serve(servicer)

    async def run() -> np.ndarray:
        async with AsyncEmbedClient(target, timeout=30, chunk_size=5) as client:
            return await client.embed(TEXTS)

    _check(asyncio.run(run()))
    assert sum(refused for _, _, refused in servicer.calls) >= 3


def test_the_deadline_bounds_the_retries_and_retry_off_surfaces_refusals(serve):
    target = serve(Refusing(refuse_first=10**6, hint_ms="200"))
    with EmbedClient(target, timeout=1.5) as client:
        started = time.monotonic()
        with pytest.raises(EmbedServiceError) as caught:
            client.embed(["1"])
        assert 0.2 <= time.monotonic() - started < 5
        assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "queue full" in caught.value.details and "tries" in caught.value.details
    with EmbedClient(target, timeout=30, retry=False) as client:
        started = time.monotonic()
        with pytest.raises(EmbedServiceError) as caught:
            client.embed(["1"])
        assert time.monotonic() - started < 1.0 and caught.value.details == "queue full; retry with backoff"


def test_retry_rules():
    assert pacing.retry_after([("other", "5"), ("retry-after-ms", "250")]) == 0.25
    assert pacing.retry_after([("retry-after-ms", b"1500")]) == 1.5
    assert pacing.retry_after([("retry-after-ms", "soon")]) is None
    assert pacing.retry_after(None) is None
    assert 0.25 <= pacing.backoff(0, 0.25) <= 0.25 * 1.25
    assert all(pacing.backoff(10, None) <= pacing.MAX_BACKOFF for _ in range(100))
    assert pacing.retryable("RESOURCE_EXHAUSTED", "queue full", idempotent=False, attempt=50)
    # gRPC's message-size refusal is RESOURCE_EXHAUSTED too; resending cannot help
    assert not pacing.retryable(
        "RESOURCE_EXHAUSTED", "Received message larger than max (200 vs. 100)", idempotent=True, attempt=0
    )
    assert pacing.retryable("UNAVAILABLE", "", idempotent=True, attempt=0)
    assert not pacing.retryable("UNAVAILABLE", "", idempotent=False, attempt=0)
    assert not pacing.retryable("UNAVAILABLE", "", idempotent=True, attempt=pacing.UNAVAILABLE_RETRIES)
    assert not pacing.retryable("INVALID_ARGUMENT", "", idempotent=True, attempt=0)
    # no server of the target reachable at all: said at once (gRPC has retried the connection)
    assert not pacing.retryable(
        "UNAVAILABLE", "connections to all backends failing; last error: ...", idempotent=True, attempt=0
    )


def test_window_is_aimd():
    async def run() -> None:
        window = pacing.Window(8)
        assert window.limit == 8
        async with window.slot(), window.slot(), window.slot(), window.slot():
            window.refused()  # four were in flight: halve those, not the ceiling
        assert window.limit == 2
        window.refused()  # nothing in flight: never below one
        assert window.limit == 1
        for _ in range(3):
            window.succeeded()
        assert window.limit == 3  # +1 per window's worth of successes
        for _ in range(100):
            window.succeeded()
        assert window.limit == 8  # up to the ceiling, no further

    asyncio.run(run())


class RefusingIndex(ipb_grpc.IndexServiceServicer):
    """An index service that takes one Upsert at a time and refuses each batch six times before it
    takes it: what a busy server does to a build that sends four at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.attempts: dict[str, int] = {}  # tries per batch (by its first id)
        self.refusals = 0
        self.items: dict[str, str] = {}

    def ListIndexes(self, request, context):
        return ipb.ListIndexesResponse()

    def CreateIndex(self, request, context):
        return ipb.IndexInfo(name=request.name, dimension=2)

    def Upsert(self, request, context):
        with self.lock:
            self.in_flight += 1
            batch = request.items[0].id
            self.attempts[batch] = self.attempts.get(batch, 0) + 1
            refuse = self.attempts[batch] <= 6 or self.in_flight > 1
            self.refusals += refuse
        try:
            if refuse:
                context.set_trailing_metadata(((pacing.RETRY_AFTER_KEY, "20"),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full; retry with backoff")
            time.sleep(0.02)
            with self.lock:
                self.items.update((item.id, item.text) for item in request.items)
                return ipb.UpsertResponse(count=len(self.items))
        finally:
            with self.lock:
                self.in_flight -= 1


def test_remote_build_slows_to_what_the_server_takes(tmp_path):
    """The old sink retried a refused batch five times with a fixed backoff, then stopped the build
    (exit 3: "failed 6 times in a row"); now the build's upserts narrow to what the server takes, wait
    what it asks, and every document arrives."""
    from embedsvc.models.loading import DEFAULT_MODEL_SOURCE
    from embedsvc.pipeline import build_index

    servicer = RefusingIndex()
    server = grpc.server(futures.ThreadPoolExecutor(8))
    ipb_grpc.add_IndexServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"d{i}", "text": f"document number {i}"}) + "\n" for i in range(200))
    )
    try:
        summary = build_index(
            [str(corpus)],
            index="docs",
            target=f"127.0.0.1:{port}",
            tokenizer=DEFAULT_MODEL_SOURCE,
            progress=False,
            batch_size=10,
            in_flight=4,
            checkpoint=str(tmp_path / "ck.json"),
            rejects=str(tmp_path / "rj.jsonl"),
        )
    finally:
        server.stop(None)
    assert summary.documents == 200
    assert set(servicer.items) == {f"d{i}" for i in range(200)}
    assert servicer.refusals >= 6 * 20 and all(n >= 7 for n in servicer.attempts.values())


def test_blocking_clients_leave_no_thread_behind(serve):
    target = serve(Refusing())

    def loops() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "embedsvc-client"]

    for _ in range(10):
        client = EmbedClient(target, timeout=30)
        assert client.embed(["3"])[0].tolist() == [3.0, 1.0]
        assert len(loops()) == 1
        del client  # dropped without close(): its loop thread and channel go with it
        gc.collect()
    closed = EmbedClient(target)
    closed.close()
    closed.close()  # twice is fine
    deadline = time.monotonic() + 10
    while loops() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not loops()

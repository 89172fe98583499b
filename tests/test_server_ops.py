"""Operations: auth, TLS, metrics, limits and overload, graceful shutdown, proto-only clients."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from embedsvc import EmbedClient
from embedsvc.client import EmbedServiceError
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc
from tests.server_utils import ServerProcess, free_port
from tests.tiny_models import corpus


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory, tls_files):
    cert, key = tls_files
    metrics_port = free_port()
    server = ServerProcess(
        "--api-key",
        "s3cret",
        "--api-key",
        "other-key",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--metrics-port",
        str(metrics_port),
        log_path=tmp_path_factory.mktemp("secure") / "server.log",
    )
    server.metrics_port = metrics_port  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_api_key_and_tls(secure_server, tls_files):
    root = tls_files[0].read_bytes()
    with EmbedClient(secure_server.target, api_key="s3cret", root_certificates=root, timeout=30) as c:
        assert c.embed(["hello"]).shape == (1, 384)
    with EmbedClient(secure_server.target, api_key="other-key", root_certificates=root, timeout=30) as c:
        assert c.list_models()[0].dimension == 384
    for key in (None, "wrong"):
        with EmbedClient(secure_server.target, api_key=key, root_certificates=root, timeout=30) as c:
            with pytest.raises(EmbedServiceError) as info:
                c.embed(["hello"])
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in info.value.details
    # the stream RPC is guarded too
    channel = grpc.secure_channel(secure_server.target, grpc.ssl_channel_credentials(root))
    with pytest.raises(grpc.RpcError) as info:
        list(pb_grpc.EmbeddingServiceStub(channel).EmbedStream(iter([pb.EmbedRequest(inputs=["x"])])))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # health stays open without a key
    from grpc_health.v1 import health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()
    # plaintext is refused by a TLS server
    with (
        EmbedClient(secure_server.target, api_key="s3cret", timeout=5) as c,
        pytest.raises(EmbedServiceError),
    ):
        c.embed(["x"])


def test_metrics_endpoint(secure_server, tls_files):
    with EmbedClient(
        secure_server.target, api_key="s3cret", root_certificates=tls_files[0].read_bytes()
    ) as c:
        c.embed(corpus(10))
        with pytest.raises(EmbedServiceError):
            c.embed(["x"], dimensions=1000)
    body = urllib.request.urlopen(f"http://127.0.0.1:{secure_server.metrics_port}/metrics", timeout=10).read()
    text = body.decode()
    for name in (
        "embedsvc_requests_total",
        "embedsvc_errors_total",
        "embedsvc_queue_requests",
        "embedsvc_batch_sequences_bucket",
        "embedsvc_batch_tokens_bucket",
        "embedsvc_queue_seconds_bucket",
        "embedsvc_inference_seconds_bucket",
        "embedsvc_tokens_total",
    ):
        assert name in text, name
    assert 'embedsvc_errors_total{code="INVALID_ARGUMENT",method="Embed"} 1.0' in text


@pytest.fixture(scope="module")
def limits_server(tmp_path_factory):
    server = ServerProcess(
        "--max-queue-requests",
        "2",
        # the request-count bound is what these tests exercise; a loaded machine (slow measured speed) must
        # not make the seconds-of-work bound refuse first
        "--max-queue-seconds",
        "100000",
        "--max-message-bytes",
        "100000",
        "--token-budget",
        "512",
        log_path=tmp_path_factory.mktemp("limits") / "server.log",
    )
    yield server
    server.stop()


def test_overload_gives_resource_exhausted_and_keeps_serving(limits_server):
    texts = corpus(200, seed=4)[:200]
    codes: list[grpc.StatusCode] = []
    messages: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        # retry=False: the server's refusals themselves are tested here, not the client's pacing
        with EmbedClient(limits_server.target, timeout=120, chunk_size=200, retry=False) as c:
            try:
                c.embed(texts[k:] + texts[:k])
                code = grpc.StatusCode.OK
            except EmbedServiceError as exc:
                code = exc.code
                with lock:
                    messages.append(exc.details)
            with lock:
                codes.append(code)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    assert grpc.StatusCode.OK in codes
    assert any("max_queue_requests=2" in m for m in messages), messages
    with EmbedClient(limits_server.target, timeout=60) as c:
        assert c.embed(["still serving"]).shape == (1, 384)


def test_oversized_message_is_rejected(limits_server):
    with EmbedClient(limits_server.target, timeout=30) as c:
        with pytest.raises(EmbedServiceError) as info:
            c.embed(["x" * 200_000])
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.embed(["fine"]).shape == (1, 384)


def test_proto_only_client_through_reflection(limits_server):
    """Drive the service knowing only what reflection says, as a client in another language would."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(limits_server.target) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("embedsvc.v1.EmbeddingService")
        method = service.methods_by_name["Embed"]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        query = pool.FindEnumTypeByName("embedsvc.v1.InputType").values_by_name["INPUT_TYPE_QUERY"].number
        reply = call(request_cls(inputs=["hello world"], input_type=query, dimensions=8), timeout=30)
    assert reply.dimensions == 8 and len(reply.embeddings[0].values) == 8
    assert abs(float(np.linalg.norm(reply.embeddings[0].values)) - 1.0) < 1e-5


def test_sigterm_drains_in_flight_requests(tmp_path):
    import urllib.request

    from tests.server_utils import free_port

    metrics_port = free_port()
    server = ServerProcess(
        "--grace-period",
        "30",
        "--token-budget",
        "256",
        "--metrics-port",
        str(metrics_port),
        log_path=tmp_path / "server.log",
    )
    texts = corpus(400, seed=6)[:400]
    outcome: dict[str, object] = {}
    client = EmbedClient(server.target, timeout=120, chunk_size=400)
    client.embed(["warm up the connection"])

    def slow_call() -> None:
        try:
            outcome["vectors"] = client.embed(texts)
        except EmbedServiceError as exc:
            outcome["error"] = exc

    def batches() -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        lines = [line for line in text.splitlines() if line.startswith("embedsvc_batch_sequences_count")]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = batches()
    thread = threading.Thread(target=slow_call)
    thread.start()
    deadline = time.monotonic() + 60
    while batches() < before + 2 and time.monotonic() < deadline:  # its batches are running: in flight
        time.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with EmbedClient(server.target, timeout=10) as c, pytest.raises(EmbedServiceError) as info:
        c.embed(["new request during drain"])
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["vectors"].shape == (400, 384)  # type: ignore[union-attr]
    client.close()
    assert server.proc.wait(60) == 0  # exits by itself once drained
    log = server.log()
    assert "draining" in log and "stopped" in log

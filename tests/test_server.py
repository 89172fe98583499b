"""The gRPC service end to end: a real server process on loopback, the real clients."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from scipy.stats import spearmanr

from embedsvc import AsyncEmbedClient, EmbedClient, Embedder
from embedsvc.client import EmbedServiceError
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc
from tests.tiny_models import corpus

TEXTS = corpus(50, seed=21) + ["word " * 400, ""]


@pytest.fixture(scope="module")
def client(main_server):
    with EmbedClient(main_server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def llama_embedder(llama_dir):
    return Embedder.from_pretrained(llama_dir, max_length=128)


def test_vectors_equal_the_in_process_engine(client, minilm):
    got = client.embed(TEXTS)
    want = minilm.embed(TEXTS)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5


def test_request_options_reach_the_engine(client, minilm):
    got = client.embed(TEXTS[:5], dimensions=32, normalize=False, truncation="start")
    np.testing.assert_allclose(
        got, minilm.embed(TEXTS[:5], dimensions=32, normalize=False, truncation="start"), atol=1e-5
    )
    long_text = " ".join(corpus(40, seed=2))
    np.testing.assert_allclose(
        client.embed([long_text], chunked=True), minilm.embed([long_text], chunked=True), atol=1e-5
    )


@pytest.mark.slow
def test_stsb_spearman_through_grpc(client, minilm, stsb_dev):
    s1, s2, gold = stsb_dev
    remote = spearmanr((client.embed(s1) * client.embed(s2)).sum(1), gold).statistic
    local = spearmanr((minilm.embed(s1) * minilm.embed(s2)).sum(1), gold).statistic
    assert round(float(remote), 4) == round(float(local), 4)


def test_encodings(client):
    exact = client.embed(TEXTS[:8])
    half = client.embed(TEXTS[:8], encoding="float16")
    assert np.abs(half - exact).max() < 1e-3
    int8 = client.embed(TEXTS[:8], encoding="int8")
    assert np.abs(int8 - exact).max() <= np.abs(exact).max(axis=1).max() / 127 * 0.51 + 1e-6
    bits = client.embed(TEXTS[:8], encoding="binary")
    np.testing.assert_array_equal(bits, (exact > 0).astype(np.float32))


def test_token_counts_and_usage(main_server, minilm):
    with grpc.insecure_channel(main_server.target) as channel:
        reply = pb_grpc.EmbeddingServiceStub(channel).Embed(
            pb.EmbedRequest(id="r1", inputs=["hello world", "a"])
        )
    assert reply.id == "r1" and reply.model == "minilm" and reply.dimensions == 384
    assert [e.tokens for e in reply.embeddings] == [4, 3]
    assert reply.usage.total_tokens == 7 and reply.usage.inputs == 2


def test_tokenize_matches_the_engine(client, minilm):
    ids = client.tokenize(["hello world", "word " * 400])
    assert ids == [e.ids for e in minilm.prepare(["hello world", "word " * 400])]
    assert len(ids[1]) == 256


def test_list_models(client):
    models = {m.name: m for m in client.list_models()}
    assert set(models) == {"minilm", "llama"}
    assert (
        models["minilm"].default and models["minilm"].dimension == 384 and models["minilm"].pooling == "mean"
    )
    assert (
        models["llama"].is_decoder and models["llama"].max_length == 128 and models["llama"].pooling == "last"
    )
    assert models["minilm"].quantize == "none" and not models["minilm"].deterministic


def test_two_models_interleaved_concurrently(client, minilm, llama_embedder):
    texts = corpus(24, seed=5)
    want = {"minilm": minilm.embed(texts), "llama": llama_embedder.embed(texts)}
    results: dict[tuple[str, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(model: str, i: int) -> None:
        try:
            results[(model, i)] = client.embed(texts[i : i + 3], model=model)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=(m, i)) for i in range(0, 21, 3) for m in ("minilm", "llama")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for (model, i), got in results.items():
        assert got.shape[1] == (384 if model == "minilm" else 48)
        assert np.abs(got - want[model][i : i + 3]).max() <= 1e-5, model


def test_many_concurrent_async_clients_get_ordered_results(main_server, minilm):
    texts = corpus(128, seed=8)[:128]
    want = minilm.embed(texts)

    async def run() -> list[np.ndarray]:
        clients = [AsyncEmbedClient(main_server.target, timeout=60) for _ in range(16)]
        try:
            return await asyncio.gather(*(clients[k].embed(texts[k * 8 : (k + 1) * 8]) for k in range(16)))
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    got = np.concatenate(asyncio.run(run()))
    assert np.abs(got - want).max() <= 1e-5


def test_large_request_is_split_by_client_and_server(main_server, minilm):
    texts = corpus(700, seed=13)  # over max_inputs_per_request=300: the client sends 3 requests
    with EmbedClient(main_server.target, chunk_size=300) as c:
        got = c.embed(texts)
    assert np.abs(got - minilm.embed(texts)).max() <= 1e-5


def test_embed_stream_answers_each_request_by_id(main_server, minilm):
    requests = [
        pb.EmbedRequest(id="a", inputs=["hello", "world"]),
        pb.EmbedRequest(id="bad", inputs=["x"], dimensions=4096),
        pb.EmbedRequest(id="b", model="llama", inputs=["the dog"]),
        pb.EmbedRequest(id="missing", model="nope", inputs=["x"]),
        pb.EmbedRequest(id="c", inputs=TEXTS[:10], encoding=pb.ENCODING_FLOAT16),
    ]
    with grpc.insecure_channel(main_server.target) as channel:
        replies = {
            r.id: r for r in pb_grpc.EmbeddingServiceStub(channel).EmbedStream(iter(requests), timeout=60)
        }
    assert set(replies) == {"a", "bad", "b", "missing", "c"}
    assert replies["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert replies["bad"].error.field == "dimensions" and "between 1 and 384" in replies["bad"].error.message
    assert replies["missing"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    a = np.array([e.values for e in replies["a"].response.embeddings], dtype=np.float32)
    assert np.abs(a - minilm.embed(["hello", "world"])).max() <= 1e-5
    assert replies["b"].response.model == "llama" and replies["b"].response.dimensions == 48


@pytest.mark.parametrize(
    ("kwargs", "code", "message"),
    [
        ({"model": "nope"}, grpc.StatusCode.NOT_FOUND, "served models: minilm, llama"),
        ({"dimensions": 999}, grpc.StatusCode.INVALID_ARGUMENT, "dimensions must be between 1 and 384"),
        ({"prompt_name": "nope"}, grpc.StatusCode.INVALID_ARGUMENT, "has no prompt 'nope'"),
        (
            {"truncation": "none", "texts": ["ok", "word " * 400]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 1 has 402 tokens, more than the model's limit of 256",
        ),
        ({"instruction": "x"}, grpc.StatusCode.INVALID_ARGUMENT, "no instruction template"),
    ],
)
def test_bad_requests_get_the_right_code(client, kwargs, code, message):
    texts = kwargs.pop("texts", ["hello"])
    with pytest.raises(EmbedServiceError) as info:
        client.embed(texts, **kwargs)
    assert info.value.code == code
    assert message in info.value.details


def test_empty_and_too_many_inputs_are_invalid(main_server):
    with grpc.insecure_channel(main_server.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(inputs=[]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(inputs=["x"] * 301))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limit is 300 (max_inputs_per_request)" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.Embed(pb.EmbedRequest(inputs=["x"], truncation=77))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_deadline_is_honoured_and_the_server_keeps_serving(client):
    with pytest.raises(EmbedServiceError) as info:
        client.embed(corpus(300, seed=1), timeout=0.005)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert client.embed(["still alive"]).shape == (1, 384)


def test_cancelled_call_leaves_the_server_healthy(main_server):
    async def run() -> np.ndarray:
        async with AsyncEmbedClient(main_server.target) as c:
            task = asyncio.create_task(c.embed(corpus(300, seed=3)))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await c.embed(["after cancel"])

    assert asyncio.run(run()).shape == (1, 384)


def test_health_and_reflection(main_server):
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    assert main_server.health("") == health_pb2.HealthCheckResponse.SERVING
    assert main_server.health("embedsvc.v1.EmbeddingService") == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(main_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in reply.list_services_response.service}
    assert {"embedsvc.v1.EmbeddingService", "grpc.health.v1.Health"} <= names


def test_generated_code_is_fresh():
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr

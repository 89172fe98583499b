"""The HTTP front door with the clients people use: the openai SDK, langchain-openai, TEI's request
shapes, our LangChain and LlamaIndex classes — against a real server, vectors equal to gRPC's."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from embedsvc import EmbedClient
from tests import families
from tests.server_utils import ServerProcess

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

DOCS = ["The quick brown fox jumps over the lazy dog.", "Children read books at school.", "a"]
QUERY = "who reads books"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The bundled model (default) and a model whose queries and documents get different prompts."""
    folder = tmp_path_factory.mktemp("http")
    prompted = families.build_bert_layout(
        folder / "prompted", pooling="mean", prompts={"query": "query: ", "document": "passage: "}
    )
    config = folder / "c.toml"
    config.write_text(
        '[[models]]\nname = "minilm"\ndefault = true\n\n'
        f'[[models]]\nname = "prompted"\nsource = "{prompted}"\n'
    )
    with ServerProcess("--config", str(config), "--http-port", "0", log_path=folder / "server.log") as s:
        yield s


@pytest.fixture(scope="module")
def grpc_client(server):
    with EmbedClient(server.target) as client:
        yield client


def test_openai_sdk_float_and_base64(server, grpc_client):
    import openai

    client = openai.OpenAI(base_url=server.http_url() + "/v1", api_key="unused", max_retries=0)
    reference = grpc_client.embed(DOCS, model="minilm")
    default = client.embeddings.create(input=DOCS, model="minilm")  # the SDK asks for base64
    as_float = client.embeddings.create(input=DOCS, model="minilm", encoding_format="float")
    for response in (default, as_float):
        got = np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)], dtype=np.float32)
        np.testing.assert_allclose(got, reference, atol=1e-6)
        assert response.model == "minilm" and response.usage.prompt_tokens == response.usage.total_tokens > 0
    tokens = sum(len(ids) for ids in grpc_client.tokenize(DOCS, model="minilm"))
    assert as_float.usage.total_tokens == tokens
    short = client.embeddings.create(input="one text", model="minilm", dimensions=64)
    assert len(short.data[0].embedding) == 64
    models = client.models.list()
    assert {m.id for m in models.data} == {"minilm", "prompted"}


def test_openai_sdk_errors(server):
    import openai

    client = openai.OpenAI(base_url=server.http_url() + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(input="x", model="no-such-model")
    assert "served models: minilm, prompted" in str(caught.value)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(input="x", model="minilm", dimensions=9999)
    assert caught.value.body["param"] == "dimensions"  # type: ignore[index]


def test_langchain_openai_pointed_at_the_server(server, grpc_client):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        model="minilm",
        base_url=server.http_url() + "/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,  # else it sends tiktoken ids: see the next test
        max_retries=0,
    )
    np.testing.assert_allclose(
        embeddings.embed_documents(DOCS), grpc_client.embed(DOCS, model="minilm"), atol=1e-6
    )
    np.testing.assert_allclose(
        embeddings.embed_query(QUERY), grpc_client.embed([QUERY], model="minilm")[0], atol=1e-6
    )


def test_token_id_inputs_get_a_400_that_says_why(server):
    url = server.http_url() + "/v1/embeddings"
    for tokens in ([[101, 2023, 102]], [101, 2023, 102]):
        reply = httpx.post(url, json={"input": tokens, "model": "minilm"})
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert error["param"] == "input" and "check_embedding_ctx_length=False" in error["message"]


def test_openai_extensions_pick_the_recipe(server, grpc_client):
    url = server.http_url() + "/v1/embeddings"
    for input_type in ("query", "document"):
        reply = httpx.post(url, json={"input": [QUERY], "model": "prompted", "input_type": input_type})
        got = np.array(reply.json()["data"][0]["embedding"], dtype=np.float32)
        want = grpc_client.embed([QUERY], model="prompted", input_type=input_type)[0]
        np.testing.assert_allclose(got, want, atol=1e-6)
    query = httpx.post(url, json={"input": [QUERY], "model": "prompted", "input_type": "query"}).json()
    document = httpx.post(url, json={"input": [QUERY], "model": "prompted", "input_type": "document"}).json()
    assert query["data"][0]["embedding"] != document["data"][0]["embedding"]


def test_tei_shapes(server, grpc_client):
    base = server.http_url()
    single = httpx.post(base + "/embed", json={"inputs": DOCS[0]}).json()
    batch = httpx.post(base + "/embed", json={"inputs": DOCS}).json()
    assert len(single) == 1 and len(batch) == 3
    np.testing.assert_allclose(np.array(batch, dtype=np.float32), grpc_client.embed(DOCS), atol=1e-6)
    raw = np.array(httpx.post(base + "/embed", json={"inputs": DOCS, "normalize": False}).json())
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    long_text = "word " * 1000
    too_long = httpx.post(base + "/embed", json={"inputs": long_text})  # TEI's default: truncate false
    assert too_long.status_code == 413 and too_long.json()["error_type"] == "Validation"
    cut = httpx.post(base + "/embed", json={"inputs": long_text, "truncate": True}).json()
    np.testing.assert_allclose(cut[0], grpc_client.embed([long_text])[0], atol=1e-6)
    left = httpx.post(
        base + "/embed", json={"inputs": long_text + "end", "truncate": True, "truncation_direction": "Left"}
    )
    np.testing.assert_allclose(
        left.json()[0], grpc_client.embed([long_text + "end"], truncation="start")[0], atol=1e-6
    )
    tokens = httpx.post(base + "/tokenize", json={"inputs": ["hello world"]}).json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "hello", "world", "[SEP]"]
    assert [t["special"] for t in tokens[0]] == [True, False, False, True]
    plain = httpx.post(base + "/tokenize", json={"inputs": "hello world", "add_special_tokens": False}).json()
    assert [t["text"] for t in plain[0]] == ["hello", "world"]
    info = httpx.get(base + "/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}} and info["max_input_length"] == 256
    assert httpx.get(base + "/info", params={"model": "prompted"}).json()["prompts"] == {
        "query": "query: ",
        "document": "passage: ",
    }
    assert httpx.get(base + "/health").status_code == 200


def test_bad_requests(server):
    base = server.http_url()
    not_json = httpx.post(
        base + "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:  # announces 1 GiB, sends none
        raw.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1073741824\r\n\r\n"
        )
        assert raw.recv(200).startswith(b"HTTP/1.1 413")
    big_text = httpx.post(base + "/v1/embeddings", json={"input": "y" * (2**20 + 10), "model": "minilm"})
    assert big_text.status_code == 413 and "max_text_bytes" in big_text.json()["error"]["message"]
    empty = httpx.post(base + "/v1/embeddings", json={"input": [], "model": "minilm"})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "input"
    bad_format = httpx.post(base + "/v1/embeddings", json={"input": "x", "encoding_format": "hex"})
    assert bad_format.status_code == 400 and bad_format.json()["error"]["param"] == "encoding_format"
    tei_empty = httpx.post(base + "/embed", json={"inputs": []})
    assert tei_empty.status_code == 413 and tei_empty.json()["error_type"] == "Validation"
    assert httpx.post(base + "/embed", json={"inputs": "x"}).headers["x-request-id"]


def test_our_langchain_class(server, grpc_client):
    from embedsvc.integrations.langchain import EmbedsvcEmbeddings

    embeddings = EmbedsvcEmbeddings(server.target, model="prompted")
    np.testing.assert_allclose(
        embeddings.embed_documents(DOCS),
        grpc_client.embed(DOCS, model="prompted", input_type="document"),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        embeddings.embed_query(QUERY),
        grpc_client.embed([QUERY], model="prompted", input_type="query")[0],
        atol=1e-6,
    )

    async def both() -> tuple[list[list[float]], list[float]]:
        return await embeddings.aembed_documents(DOCS), await embeddings.aembed_query(QUERY)

    documents, query = asyncio.run(both())
    np.testing.assert_allclose(documents, embeddings.embed_documents(DOCS), atol=1e-6)
    np.testing.assert_allclose(query, embeddings.embed_query(QUERY), atol=1e-6)
    assert embeddings.embed_documents([]) == []


def test_our_llama_index_class(server, grpc_client):
    from embedsvc.integrations.llama_index import EmbedsvcEmbedding

    model = EmbedsvcEmbedding(target=server.target, model_name="prompted", embed_batch_size=2)
    np.testing.assert_allclose(
        model.get_text_embedding_batch(DOCS),
        grpc_client.embed(DOCS, model="prompted", input_type="document"),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        model.get_query_embedding(QUERY),
        grpc_client.embed([QUERY], model="prompted", input_type="query")[0],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        asyncio.run(model.aget_query_embedding(QUERY)), model.get_query_embedding(QUERY), atol=1e-6
    )
    default = EmbedsvcEmbedding(target=server.target)  # the server's default model
    assert len(default.get_text_embedding("x")) == 384


def test_api_keys_overload_and_startup_states(tmp_path):
    """401 without a key, 503 before the models are loaded, 429 with Retry-After when overloaded."""
    process = ServerProcess.__new__(ServerProcess)  # started by hand: we want to see it loading
    import subprocess
    import sys

    from tests.server_utils import free_port

    port = free_port()
    log = tmp_path / "server.log"
    handle = open(log, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedsvc", "serve", "--port", str(port), "--http-port", "0"]
        + ["--api-key", "secret", "--api-key", "other", "--max-queue-seconds", "0.05"]
        + ["--max-inputs-per-request", "4096"],
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    try:
        url = None
        deadline = time.monotonic() + 120
        statuses = []
        while time.monotonic() < deadline:
            if url is None and '"msg": "listening"' in log.read_text():
                process.log_path, process._log = log, handle
                url = ServerProcess.http_url(process)
            if url is not None:
                statuses.append(httpx.get(url + "/health").status_code)
                if statuses[-1] == 200:
                    break
            time.sleep(0.05)
        assert statuses[0] == 503 and statuses[-1] == 200, statuses
        assert httpx.post(url + "/v1/embeddings", json={"input": "x"}).status_code == 401
        keyed = {"authorization": "Bearer secret"}
        assert httpx.post(url + "/v1/embeddings", json={"input": "x"}, headers=keyed).status_code == 200
        assert (
            httpx.post(
                url + "/embed", json={"inputs": "x"}, headers={"authorization": "Bearer nope"}
            ).status_code
            == 401
        )
        assert httpx.get(url + "/health").status_code == 200  # health stays open

        heavy = {"input": ["a longer text to embed, over and over again " * 4] * 2048}
        results: list[httpx.Response] = []

        def first() -> None:
            with httpx.Client(timeout=120) as client:  # a connection of its own: another tenant
                results.append(
                    client.post(
                        url + "/v1/embeddings", json=heavy, headers={"authorization": "Bearer secret"}
                    )
                )

        runner = threading.Thread(target=first)
        runner.start()
        time.sleep(0.5)
        with httpx.Client(timeout=120) as client:
            refused = client.post(
                url + "/v1/embeddings", json=heavy, headers={"authorization": "Bearer other"}
            )
        runner.join()
        assert results[0].status_code == 200
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    finally:
        proc.terminate()
        proc.wait(30)
        handle.close()

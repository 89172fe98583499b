"""Rerank, Score and Classify on every door (issue 24 item 2): gRPC with the Python clients (sync, async,
split requests), the `cohere` SDK (v1 and v2) on /v1/rerank and /v2/rerank, TEI's /rerank and /predict,
the CLI and the LangChain / LlamaIndex rerankers — against one real `embedsvc serve` process serving an
embedder, a cross-encoder, an LLM reranker (Qwen3-Reranker's layout) and a classifier on one port.

Scores are checked against each family's own reference computed here (sentence-transformers' CrossEncoder,
Qwen3-Reranker's model-card code, transformers' classifier forward), and the order against a ranking
written out in the test (highest first, ties in input order)."""

from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import numpy as np
import pytest
import torch

from embedsvc import wire
from embedsvc.client import AsyncEmbedClient, EmbedClient, EmbedServiceError
from embedsvc.engine.options import Classified, Scored
from embedsvc.errors import FailedPreconditionError, InvalidInputError
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc
from tests import tiny_models
from tests.server_utils import ServerProcess, free_port
from tests.test_rerank_models import qwen3_model_card

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

KEY = "rerank-key"
TOL = 1e-5
QUERY = "where do children read books"
DOCS = [
    "Children read books at school.",
    "The river runs through the old city.",
    "A man is playing music on a guitar.",
    "Blue sky.",
    "Books are read in the library by the kids.",
]
TEXTS = ["I love this so much", "this is awful and I am angry", "the meeting is at noon"]
QWEN3_INSTRUCTION = "Find the passage about children"
LONG = " ".join(tiny_models.corpus(40, seed=5))  # far over the tiny models' 64 tokens


# ---------------------------------------------------------------- references


def reference_order(scores, top_n=None):
    """Highest first, ties in input order: written out, not numpy's argsort."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return order if top_n is None else order[:top_n]


def cross_encoder(folder, pairs, raw=False):
    """sentence-transformers' CrossEncoder on the same folder (it saved it: its activation, Sigmoid)."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu")
    return model.predict(pairs, activation_fn=torch.nn.Identity() if raw else None, convert_to_numpy=True)


def classifier(folder, texts):
    """transformers' forward of the classifier, softmax over its labels (single-label)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits
    return torch.softmax(logits, dim=-1).numpy(), [model.config.id2label[i] for i in range(logits.shape[1])]


# ------------------------------------------------------------------- server


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("rerank-doors")
    return {
        "cross": tiny_models.build_bert_cross_encoder(root / "c", layout="st"),
        "qwen3": tiny_models.build_qwen3_reranker(root / "q"),
        "emotions": tiny_models.build_bert_classifier(root / "k", multi_label=False),
    }


@pytest.fixture(scope="module")
def server(folders, tmp_path_factory):
    """An embedder (the default), a cross-encoder, an LLM reranker and a classifier on one port."""
    folder = tmp_path_factory.mktemp("rerank-server")
    config = folder / "embedsvc.toml"
    config.write_text(
        "[server]\nmax_inputs_per_request = 64\nbatch_wait_ms = 1\n\n"
        '[[models]]\nname = "embedder"\ndefault = true\n\n'  # the bundled MiniLM: nothing to build
        f'[[models]]\nname = "cross"\nsource = "{folders["cross"]}"\n\n'
        f'[[models]]\nname = "qwen3"\nsource = "{folders["qwen3"]}"\nprofile = "qwen3-reranker"\n'
        "max_length = 128\n\n"
        f'[[models]]\nname = "emotions"\nsource = "{folders["emotions"]}"\n'
    )
    metrics_port = free_port()
    with ServerProcess(
        "--config", str(config), "--api-key", KEY, "--metrics-port", str(metrics_port),
        log_path=folder / "server.log",
    ) as s:  # fmt: skip
        s.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
        yield s


@pytest.fixture(scope="module")
def client(server):
    with EmbedClient(server.target, api_key=KEY) as c:
        yield c


@pytest.fixture(scope="module")
def expected(folders):
    """The references, computed once."""
    pairs = [(QUERY, d) for d in DOCS]
    probabilities, labels = classifier(folders["emotions"], TEXTS)
    return {
        "cross": cross_encoder(folders["cross"], pairs),
        "cross_raw": cross_encoder(folders["cross"], pairs, raw=True),
        "qwen3": qwen3_model_card(folders["qwen3"], pairs, QWEN3_INSTRUCTION, max_length=128)[0],
        "emotions": probabilities,
        "labels": tuple(labels),
    }


def same_ranking(got, want):
    """The same documents in the same order, scores equal within float noise (batches differ)."""
    assert [(r.index, r.document) for r in got] == [(r.index, r.document) for r in want]
    np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=TOL, rtol=0)


def http(server, path, body, **params):
    return httpx.post(
        server.http_url() + path, json=body, params=params, headers={"authorization": f"Bearer {KEY}"}
    )


# ---------------------------------------------------------------- wire (no server)


def test_ranked_orders_highest_first_with_ties_in_input_order():
    scores = np.array([0.5, 0.9, 0.5, -1.0, 0.9], dtype=np.float32)
    assert wire.ranked(scores, None) == reference_order(scores) == [1, 4, 0, 2, 3]
    assert wire.ranked(scores, 2) == [1, 4]
    assert wire.ranked(scores, 99) == reference_order(scores)
    for bad in (0, -3, True, 1.5):
        with pytest.raises(InvalidInputError) as caught:
            wire.ranked(scores, bad)
        assert caught.value.field == "top_n"


def test_client_merges_split_rerank_requests_into_one_ranking():
    """Documents over chunk_size go in several requests; the merged ranking is the single request's."""
    rng = np.random.default_rng(0)
    documents = [f"doc {i}" for i in range(11)]
    scores = rng.random(11).astype(np.float32)
    scores[7] = scores[2]  # a tie across two requests: input order decides
    requests = wire.rerank_requests(
        "q", documents, 4, model="m", top_n=5, return_documents=True, instruction=None,
        truncation="end", raw_scores=False,
    )  # fmt: skip
    assert [len(r.documents) for r in requests] == [4, 4, 3] and [r.id for r in requests] == ["0", "4", "8"]
    assert all(r.top_n == 5 and r.model == "m" for r in requests)
    replies = []
    for request in requests:  # what the servicer answers for each part
        start = int(request.id)
        part = Scored(scores[start : start + len(request.documents)], [3] * len(request.documents))
        replies.append(
            wire.rerank_response(
                request_id=request.id,
                model="m",
                scored=part,
                top_n=request.top_n,
                documents=request.documents,
            )
        )
    merged = wire.rerank_results(requests, replies, 5)
    assert [r.index for r in merged] == reference_order(scores, 5)
    assert [r.document for r in merged] == [documents[i] for i in reference_order(scores, 5)]
    np.testing.assert_array_equal([r.score for r in merged], scores[reference_order(scores, 5)])
    with pytest.raises(ValueError, match="single string"):
        wire.rerank_requests("q", "one doc", 4, model=None, top_n=None, return_documents=False,
                             instruction=None, truncation="end", raw_scores=False)  # fmt: skip


def test_score_and_classify_round_trip_through_the_messages():
    requests = wire.score_requests(
        [("a", "b"), ("c", "d"), ("e", "f")], 2, model=None, instruction="task", truncation="start",
        raw_scores=True,
    )  # fmt: skip
    assert [len(r.pairs) for r in requests] == [2, 1]
    options = wire.score_options(requests[0])
    assert (options.instruction, options.truncation, options.raw) == ("task", "start", True)
    assert wire.score_pairs(requests[1]) == [("e", "f")]
    for bad in (["ab"], [("a",)], [("a", 1)], "ab", []):
        with pytest.raises(ValueError):
            wire.score_requests(bad, 2, model=None, instruction=None, truncation="end", raw_scores=False)
    labels = ("neg", "neu", "pos")
    matrix = np.array([[0.1, 0.2, 0.7], [0.5, 0.4, 0.1]], dtype=np.float32)
    reply = wire.classify_response(
        request_id="", model="c", classified=Classified(matrix, labels, [4, 5], "0123456789abcdef")
    )
    assert [x.label for x in reply.results[0].labels] == ["pos", "neu", "neg"]  # highest first
    assert reply.fingerprint == "0123456789abcdef"
    assert wire.fingerprint([reply, reply], "classify") == "0123456789abcdef"
    other = pb.ClassifyResponse(fingerprint="fedcba9876543210")
    with pytest.raises(FailedPreconditionError, match="one classify call"):
        wire.fingerprint([reply, other], "classify")
    scored = Scored(np.array([0.5, 0.25], dtype=np.float32), [3, 4], "0123456789abcdef")
    assert wire.score_response(request_id="", model="s", scored=scored).fingerprint == "0123456789abcdef"
    ranked_reply = wire.rerank_response(request_id="", model="s", scored=scored, top_n=None, documents=None)
    assert ranked_reply.fingerprint == "0123456789abcdef"
    assert reply.usage.total_tokens == 9
    back = wire.classification([reply])
    assert back.labels == labels and back.predicted == ["pos", "neg"]
    np.testing.assert_array_equal(back.scores, matrix)
    unset = wire.score_options(pb.ClassifyRequest(inputs=["x"]))
    assert (unset.instruction, unset.truncation, unset.raw) == (None, "end", False)


# ------------------------------------------------------------------- gRPC


def test_grpc_rerank_score_classify_match_each_reference(server, client, expected):
    cross = expected["cross"]
    assert np.ptp(cross) > 1e-3 and np.ptp(expected["qwen3"]) > 1e-3  # the references tell documents apart
    results = client.rerank(QUERY, DOCS, model="cross", return_documents=True)
    assert [r.index for r in results] == reference_order(cross)
    np.testing.assert_allclose([r.score for r in results], cross[reference_order(cross)], atol=TOL, rtol=0)
    assert [r.document for r in results] == [DOCS[i] for i in reference_order(cross)]
    assert all(r.tokens > 0 for r in results)
    top = client.rerank(QUERY, DOCS, model="cross", top_n=2)
    assert [r.index for r in top] == reference_order(cross, 2) and top[0].document is None
    raw = client.rerank(QUERY, DOCS, model="cross", raw_scores=True)
    np.testing.assert_allclose(
        [r.score for r in sorted(raw, key=lambda r: r.index)], expected["cross_raw"], atol=1e-4, rtol=0
    )
    # pairs scored in order; the same numbers as the rerank
    scores = client.score([(QUERY, d) for d in DOCS], model="cross")
    assert scores.dtype == np.float32 and scores.shape == (len(DOCS),)
    np.testing.assert_allclose(scores, cross, atol=TOL, rtol=0)
    # the LLM reranker with its instruction, as its model card computes it
    qwen3 = client.rerank(QUERY, DOCS, model="qwen3", instruction=QWEN3_INSTRUCTION)
    order = reference_order(expected["qwen3"])
    assert [r.index for r in qwen3] == order
    np.testing.assert_allclose([r.score for r in qwen3], expected["qwen3"][order], atol=TOL, rtol=0)
    # a classifier: every label's probability, in the model's label order
    classes = client.classify(TEXTS, model="emotions")
    assert classes.labels == expected["labels"] == ("joy", "anger", "neutral")
    np.testing.assert_allclose(classes.scores, expected["emotions"], atol=TOL, rtol=0)
    assert classes.predicted == [expected["labels"][j] for j in expected["emotions"].argmax(axis=1)]


def test_every_score_answer_carries_its_models_fingerprint(server, client):
    """gRPC (client.last_fingerprint), TEI's /rerank and /predict (header), Cohere's and Jina's
    /v1/rerank and /v2/rerank (header and body): each the fingerprint ListModels gives the model."""
    served = {m.name: m.fingerprint for m in client.list_models()}
    assert len({served["cross"], served["qwen3"], served["emotions"], served["embedder"]}) == 4
    assert all(len(f) == 16 for f in served.values())
    client.rerank(QUERY, DOCS[:2], model="cross")
    assert client.last_fingerprint == served["cross"]
    client.classify(TEXTS[:1], model="emotions")
    assert client.last_fingerprint == served["emotions"]
    client.score([(QUERY, DOCS[0])], model="qwen3")
    assert client.last_fingerprint == served["qwen3"]
    with EmbedClient(server.target, api_key=KEY, chunk_size=2) as small:
        small.rerank(QUERY, DOCS, model="cross")
        assert small.last_fingerprint == served["cross"]

    header = "x-embedsvc-fingerprint"
    tei = http(server, "/rerank", {"query": QUERY, "texts": DOCS[:2]}, model="cross")
    assert tei.status_code == 200 and tei.headers[header] == served["cross"]
    predicted = http(server, "/predict", {"inputs": TEXTS[0]}, model="emotions")
    assert predicted.status_code == 200 and predicted.headers[header] == served["emotions"]
    pair = http(server, "/predict", {"inputs": [QUERY, DOCS[0]]}, model="qwen3")
    assert pair.status_code == 200 and pair.headers[header] == served["qwen3"]
    for path in ("/v1/rerank", "/v2/rerank"):
        reply = http(server, path, {"model": "cross", "query": QUERY, "documents": DOCS[:2]})
        assert reply.status_code == 200 and reply.headers[header] == served["cross"]
        assert reply.json()["fingerprint"] == served["cross"]


def test_unnamed_requests_reach_a_model_of_their_task_and_splits_merge(server, client):
    """The default model is the embedder: an unnamed Rerank reaches the first reranker, an unnamed
    Classify the classifier. More documents than chunk_size: several requests, one ranking."""
    named = client.rerank(QUERY, DOCS, model="cross")
    same_ranking(client.rerank(QUERY, DOCS), named)
    assert client.classify(TEXTS).labels == ("joy", "anger", "neutral")
    assert client.embed(["x"]).shape[0] == 1  # Embed still reaches the default embedder
    with EmbedClient(server.target, api_key=KEY, chunk_size=2) as small:
        same_ranking(small.rerank(QUERY, DOCS, model="cross", top_n=3), named[:3])
        np.testing.assert_allclose(
            small.score([(QUERY, d) for d in DOCS], model="cross"),
            client.score([(QUERY, d) for d in DOCS], model="cross"),
            atol=TOL,
        )
        np.testing.assert_allclose(small.classify(TEXTS).scores, client.classify(TEXTS).scores, atol=TOL)

    async def asynchronous():
        async with AsyncEmbedClient(server.target, api_key=KEY) as c:
            return await c.rerank(QUERY, DOCS, model="cross"), await c.classify(TEXTS, model="emotions")

    reranked, classes = asyncio.run(asynchronous())
    same_ranking(reranked, named)
    assert classes.labels == ("joy", "anger", "neutral")
    models = {m.name: m for m in client.list_models()}
    assert {n: m.task for n, m in models.items()} == {
        "embedder": "embed",
        "cross": "rerank",
        "qwen3": "rerank",
        "emotions": "classify",
    }
    assert models["emotions"].labels == ("joy", "anger", "neutral")
    assert models["qwen3"].scoring["family"] == "qwen3-reranker" and models["embedder"].scoring == {}


def test_a_call_of_the_wrong_task_or_a_bad_request_is_invalid(server, client):
    with pytest.raises(EmbedServiceError) as caught:
        client.rerank(QUERY, DOCS, model="embedder")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "embed" in caught.value.details
    with pytest.raises(EmbedServiceError) as caught:
        client.embed(["x"], model="cross")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "rerank" in caught.value.details
    with pytest.raises(EmbedServiceError) as caught:
        client.classify(TEXTS, model="cross")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(InvalidInputError):  # checked by the client before sending
        client.rerank(QUERY, DOCS, model="cross", top_n=0)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        metadata = (("authorization", f"Bearer {KEY}"),)
        for request, field in (
            (pb.RerankRequest(model="cross", query=QUERY, documents=DOCS, top_n=0), "top_n"),
            (pb.RerankRequest(model="cross", query=QUERY, documents=["d"] * 65), "max_inputs_per_request"),
            (pb.RerankRequest(model="cross", query=QUERY), "documents"),
            (pb.ScoreRequest(model="cross"), "pairs"),
        ):
            method = stub.Rerank if isinstance(request, pb.RerankRequest) else stub.Score
            with pytest.raises(grpc.RpcError) as rpc:
                method(request, metadata=metadata, timeout=30)
            assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            assert field in rpc.value.details(), rpc.value.details()
        with pytest.raises(grpc.RpcError) as rpc:  # over-long pairs refused when truncation is off
            stub.Rerank(
                pb.RerankRequest(model="cross", query=QUERY, documents=[LONG], truncation=pb.TRUNCATION_NONE),
                metadata=metadata,
                timeout=30,
            )
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------- HTTP


def test_cohere_sdk_v2_and_v1_rerank(server, expected):
    cohere = pytest.importorskip("cohere")
    url = server.http_url()
    cross, qwen3 = expected["cross"], expected["qwen3"]
    v2 = cohere.ClientV2(base_url=url, api_key=KEY)
    reply = v2.rerank(model="cross", query=QUERY, documents=DOCS, top_n=3)
    assert [r.index for r in reply.results] == reference_order(cross, 3)
    np.testing.assert_allclose(
        [r.relevance_score for r in reply.results], cross[reference_order(cross, 3)], atol=TOL, rtol=0
    )
    assert reply.id and reply.meta.billed_units.search_units == 1
    assert reply.meta.tokens.input_tokens > len(DOCS)
    v1 = cohere.Client(base_url=url, api_key=KEY)
    reply = v1.rerank(
        model="qwen3", query=QUERY, documents=[{"text": d} for d in DOCS], return_documents=True
    )
    # no instruction over Cohere's API: the model's default one (its model card's)
    default = qwen3_model_card(server_folder(server, "qwen3"), [(QUERY, d) for d in DOCS], None, 128)[0]
    assert [r.index for r in reply.results] == reference_order(default)
    assert [r.document.text for r in reply.results] == [DOCS[i] for i in reference_order(default)]
    assert not np.allclose(default, qwen3)  # the instruction did change the scores above
    with pytest.raises(cohere.errors.NotFoundError):
        v2.rerank(model="nope", query=QUERY, documents=DOCS)
    with pytest.raises(cohere.errors.BadRequestError, match="embed"):
        v2.rerank(model="embedder", query=QUERY, documents=DOCS)


def server_folder(server, name):
    """The checkpoint folder a served model was loaded from (ListModels' source)."""
    with EmbedClient(server.target, api_key=KEY) as c:
        return next(m.source for m in c.list_models() if m.name == name)


def test_cohere_and_jina_shapes_over_raw_http(server, expected):
    cross = expected["cross"]
    for path in ("/v1/rerank", "/v2/rerank"):
        body = http(server, path, {"model": "cross", "query": QUERY, "documents": DOCS, "top_n": 2}).json()
        assert [r["index"] for r in body["results"]] == reference_order(cross, 2)
        assert "document" not in body["results"][0] and body["usage"]["total_tokens"] > 0
        assert body["meta"]["api_version"]["version"] == path[2]
    objects = [{"title": f"t{i}", "body": d} for i, d in enumerate(DOCS)]
    fields = http(
        server, "/v1/rerank",
        {"query": QUERY, "documents": objects, "rank_fields": ["title", "body"], "return_documents": True},
    ).json()  # fmt: skip
    assert fields["model"] == "cross"  # unnamed: the first reranker
    assert fields["results"][0]["document"] == objects[fields["results"][0]["index"]]
    for body, param in (
        ({"model": "cross", "query": QUERY, "documents": DOCS, "top_n": 0}, "top_n"),
        ({"model": "cross", "query": QUERY, "documents": "one"}, "documents"),
        ({"model": "cross", "query": QUERY, "documents": [{"title": "x"}]}, "documents"),
        ({"model": "cross", "documents": DOCS}, "query"),
        (
            {"model": "cross", "query": QUERY, "documents": DOCS, "return_documents": "yes"},
            "return_documents",
        ),
    ):
        reply = http(server, "/v2/rerank", body)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param, reply.text
    assert http(server, "/v2/rerank", {"model": "nope", "query": "q", "documents": ["d"]}).status_code == 404


def test_tei_rerank_predict_and_info(server, client, expected, folders):
    cross = expected["cross"]
    ranks = http(server, "/rerank", {"query": QUERY, "texts": DOCS, "return_text": True}).json()
    assert [r["index"] for r in ranks] == reference_order(cross)  # unnamed: the first reranker
    np.testing.assert_allclose([r["score"] for r in ranks], cross[reference_order(cross)], atol=TOL, rtol=0)
    assert [r["text"] for r in ranks] == [DOCS[i] for i in reference_order(cross)]
    raw = http(server, "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    assert "text" not in raw[0]
    np.testing.assert_allclose(
        [r["score"] for r in sorted(raw, key=lambda r: r["index"])], expected["cross_raw"], atol=1e-4, rtol=0
    )
    qwen3 = http(
        server,
        "/rerank",
        {"query": QUERY, "texts": DOCS, "instruction": QWEN3_INSTRUCTION, "truncate": True},
        model="qwen3",
    )
    assert qwen3.status_code == 200, qwen3.text
    assert [r["index"] for r in qwen3.json()] == reference_order(expected["qwen3"])
    cohere_shaped = http(server, "/rerank", {"query": QUERY, "documents": DOCS, "top_n": 1}).json()
    assert [r["index"] for r in cohere_shaped["results"]] == reference_order(cross, 1)
    # TEI refuses over-long inputs unless asked to truncate
    too_long = http(server, "/rerank", {"query": QUERY, "texts": [LONG]})
    assert too_long.status_code == 413 and "truncate" in too_long.json()["error"], too_long.text
    assert http(server, "/rerank", {"query": QUERY, "texts": [LONG], "truncate": True}).status_code == 200

    # /predict: a text (the classifier), a batch, a pair (the reranker's one label)
    one = http(server, "/predict", {"inputs": TEXTS[0]}).json()
    probabilities, labels = expected["emotions"], expected["labels"]
    assert [p["label"] for p in one] == [labels[j] for j in reference_order(probabilities[0])]
    np.testing.assert_allclose(
        [p["score"] for p in one], probabilities[0][reference_order(probabilities[0])], atol=TOL, rtol=0
    )
    batch = http(server, "/predict", {"inputs": [[t] for t in TEXTS]}).json()
    assert len(batch) == 3 and all(len(row) == 3 for row in batch)
    np.testing.assert_allclose(
        [[p["score"] for p in sorted(row, key=lambda p: labels.index(p["label"]))] for row in batch],
        probabilities,
        atol=TOL,
        rtol=0,
    )
    pair = http(server, "/predict", {"inputs": [QUERY, DOCS[0]]}).json()
    # labelled as TEI labels a one-label model's score: its config.json's id2label["0"]
    one_label = json.loads((folders["cross"] / "config.json").read_text())["id2label"]["0"]
    assert len(pair) == 1 and pair[0]["label"] == one_label == "LABEL_0"
    np.testing.assert_allclose(pair[0]["score"], cross[0], atol=TOL)
    pairs = http(server, "/predict", {"inputs": [[QUERY, d] for d in DOCS]}).json()
    np.testing.assert_allclose([row[0]["score"] for row in pairs], cross, atol=TOL, rtol=0)
    for body in ({"inputs": [["a"], ["q", "d"]]}, {"inputs": [["a", "b", "c"]]}, {"inputs": []}):
        reply = http(server, "/predict", body)
        assert reply.status_code == 413 and reply.json()["error_type"] == "Validation", reply.text

    info = httpx.get(
        server.http_url() + "/info", params={"model": "emotions"}, headers={"authorization": f"Bearer {KEY}"}
    )
    assert info.json()["model_type"] == {
        "classifier": {
            "id2label": {"0": "joy", "1": "anger", "2": "neutral"},
            "label2id": {"joy": 0, "anger": 1, "neutral": 2},
        }
    }
    info = httpx.get(
        server.http_url() + "/info", headers={"authorization": f"Bearer {KEY}"}, params={"model": "qwen3"}
    )
    # an LLM reranker's config names no label: transformers' name for label 0
    assert info.json()["model_type"] == {
        "reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
    }
    qwen3_pair = http(server, "/predict", {"inputs": [QUERY, DOCS[0]]}, model="qwen3").json()
    assert [p["label"] for p in qwen3_pair] == ["LABEL_0"]
    listed = httpx.get(server.http_url() + "/v1/models", headers={"authorization": f"Bearer {KEY}"}).json()
    assert {m["id"]: m["task"] for m in listed["data"]}["qwen3"] == "rerank"
    # the same metrics as gRPC's, per model
    text = httpx.get(server.metrics_url).text
    for line in (
        'embedsvc_requests_total{method="http:/rerank",model="cross"}',
        'embedsvc_requests_total{method="Rerank",model="cross"}',
    ):
        assert line in text


# --------------------------------------------------------- CLI, frameworks


def test_cli_rerank_score_classify(server, client, tmp_path, capsys, monkeypatch):
    from embedsvc.cli.main import main

    monkeypatch.setenv("EMBEDSVC_TARGET", server.target)
    monkeypatch.setenv("EMBEDSVC_API_KEY", KEY)
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCS) + "\n")
    assert main(["rerank", QUERY, "--input", str(docs), "--model", "cross", "--top-n", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    best = client.rerank(QUERY, DOCS, model="cross", top_n=3)
    assert [(r["index"], r["text"]) for r in rows] == [(r.index, DOCS[r.index]) for r in best]
    np.testing.assert_allclose([r["score"] for r in rows], [r.score for r in best], atol=1e-6)

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query": QUERY, "document": DOCS[1]}) + "\n" + f"{QUERY}\t{DOCS[2]}\n")
    assert main(["score", "--pair", QUERY, DOCS[0], "--input", str(pairs), "--model", "cross"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["document"] for r in rows] == DOCS[:3]
    np.testing.assert_allclose(
        [r["score"] for r in rows], client.score([(QUERY, d) for d in DOCS[:3]]), atol=1e-6
    )

    assert main(["classify", *TEXTS]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    classes = client.classify(TEXTS)
    assert [r["label"] for r in rows] == classes.predicted and list(rows[0]["scores"]) == list(classes.labels)
    assert main(["rerank", QUERY, "x", "--model", "embedder"]) == 2  # the server refused: invalid
    assert "embed" in capsys.readouterr().err
    assert main(["rerank", QUERY, "x", "--top-n", "0"]) == 2


def test_langchain_and_llama_index_rerankers(server, client):
    from langchain_core.documents import Document
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from embedsvc.integrations.langchain import EmbedsvcRerank as LangChainRerank
    from embedsvc.integrations.llama_index import EmbedsvcRerank as LlamaIndexRerank

    best = client.rerank(QUERY, DOCS, model="cross", top_n=2)
    documents = [Document(page_content=d, metadata={"n": i}) for i, d in enumerate(DOCS)]
    compressor = LangChainRerank(target=server.target, api_key=KEY, model="cross", top_n=2)
    kept = compressor.compress_documents(documents, QUERY)
    assert [d.metadata["n"] for d in kept] == [r.index for r in best]
    np.testing.assert_allclose(
        [d.metadata["relevance_score"] for d in kept], [r.score for r in best], atol=TOL
    )
    assert "relevance_score" not in documents[0].metadata  # copies, the originals untouched
    again = asyncio.run(compressor.acompress_documents(documents, QUERY))
    assert [d.page_content for d in again] == [d.page_content for d in kept]
    assert compressor.compress_documents([], QUERY) == []

    nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i)), score=0.0) for i, d in enumerate(DOCS)]
    postprocessor = LlamaIndexRerank(target=server.target, api_key=KEY, top_n=2)  # unnamed: first reranker
    kept_nodes = postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.id_ for n in kept_nodes] == [str(r.index) for r in best]
    np.testing.assert_allclose([n.score for n in kept_nodes], [r.score for r in best], atol=TOL)
    kept_async = asyncio.run(postprocessor.apostprocess_nodes(nodes, QueryBundle(QUERY)))
    assert [n.node.id_ for n in kept_async] == [n.node.id_ for n in kept_nodes]


# ------------------------------------------------ max_tokens_per_doc, the models table

CUT = 6  # tokens each document keeps
LONG_DOC = "Children read books at school every day. " + LONG  # over the tiny models' 64 tokens


def first_tokens(folder, text, n):
    """``text`` up to where its n-th token ends, by transformers' tokenizer of ``folder`` (no special
    tokens): the document cut as Cohere's max_tokens_per_doc says, found independently of the server."""
    from transformers import AutoTokenizer

    offsets = AutoTokenizer.from_pretrained(folder)(
        text, add_special_tokens=False, return_offsets_mapping=True
    )["offset_mapping"]
    return text if len(offsets) <= n else text[: offsets[n - 1][1]]


@pytest.fixture(scope="module")
def cut_documents(folders):
    """The documents, the long one last, and each cut to CUT tokens by the cross-encoder's tokenizer."""
    documents = [*DOCS, LONG_DOC]
    cut = [first_tokens(folders["cross"], d, CUT) for d in documents]
    assert cut[-1] != LONG_DOC and len(cut[-1]) < 60 and cut[3] == DOCS[3]  # "Blue sky." kept whole
    return documents, cut


def test_cohere_max_tokens_per_doc_scores_each_document_as_its_first_tokens(server, folders, cut_documents):
    cohere = pytest.importorskip("cohere")
    documents, cut = cut_documents
    want = cross_encoder(folders["cross"], [(QUERY, d) for d in cut])
    whole = cross_encoder(folders["cross"], [(QUERY, d) for d in documents])
    assert abs(float(want[-1] - whole[-1])) > 1e-4  # the cut does change the long document's score
    v2 = cohere.ClientV2(base_url=server.http_url(), api_key=KEY)
    reply = v2.rerank(model="cross", query=QUERY, documents=documents, max_tokens_per_doc=CUT)
    assert [r.index for r in reply.results] == reference_order(want)
    np.testing.assert_allclose(
        [r.relevance_score for r in reply.results], want[reference_order(want)], atol=TOL, rtol=0
    )
    uncut = v2.rerank(model="cross", query=QUERY, documents=documents)  # unset: the model's own limit only
    np.testing.assert_allclose(
        [r.relevance_score for r in sorted(uncut.results, key=lambda r: r.index)], whole, atol=TOL, rtol=0
    )
    # an LLM reranker cuts the document before its prompt is built: its model card on the cut text
    qwen3_cut = [first_tokens(server_folder(server, "qwen3"), d, CUT) for d in documents]
    card = qwen3_model_card(server_folder(server, "qwen3"), [(QUERY, d) for d in qwen3_cut], None, 128)[0]
    qwen3 = v2.rerank(model="qwen3", query=QUERY, documents=documents, max_tokens_per_doc=CUT)
    np.testing.assert_allclose(
        [r.relevance_score for r in sorted(qwen3.results, key=lambda r: r.index)], card, atol=TOL, rtol=0
    )
    for bad in (0, -1, "six"):
        body = {"model": "cross", "query": QUERY, "documents": DOCS, "max_tokens_per_doc": bad}
        refused = http(server, "/v2/rerank", body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "max_tokens_per_doc", refused.text


def test_max_tokens_per_doc_over_grpc_and_the_cli(
    server, client, folders, cut_documents, capsys, monkeypatch
):
    from embedsvc.cli.main import main

    documents, cut = cut_documents
    want = cross_encoder(folders["cross"], [(QUERY, d) for d in cut])
    results = client.rerank(QUERY, documents, model="cross", max_tokens_per_doc=CUT)
    assert [r.index for r in results] == reference_order(want)
    np.testing.assert_allclose([r.score for r in results], want[reference_order(want)], atol=TOL, rtol=0)
    assert results[[r.index for r in results].index(len(documents) - 1)].tokens < 64  # the cut pair's tokens
    with pytest.raises(ValueError, match="max_tokens_per_doc"):  # cannot travel: refused before sending
        client.rerank(QUERY, DOCS, model="cross", max_tokens_per_doc=-1)
    with grpc.insecure_channel(server.target) as channel:  # 0 travels: the engine facade refuses it
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as rpc:
            stub.Rerank(
                pb.RerankRequest(model="cross", query=QUERY, documents=DOCS, max_tokens_per_doc=0),
                metadata=(("authorization", f"Bearer {KEY}"),),
                timeout=30,
            )
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_tokens_per_doc must be an integer of at least 1" in rpc.value.details()

    monkeypatch.setenv("EMBEDSVC_TARGET", server.target)
    monkeypatch.setenv("EMBEDSVC_API_KEY", KEY)
    assert main(["rerank", QUERY, *documents, "--model", "cross", "--max-tokens-per-doc", str(CUT)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == reference_order(want)
    np.testing.assert_allclose([r["score"] for r in rows], want[reference_order(want)], atol=TOL, rtol=0)
    assert main(["rerank", QUERY, "x", "--model", "cross", "--max-tokens-per-doc", "0"]) == 2
    assert "max_tokens_per_doc" in capsys.readouterr().err


def test_the_models_table_shows_each_models_task_and_outputs(server, capsys, monkeypatch):
    from embedsvc.cli.main import main

    monkeypatch.setenv("EMBEDSVC_TARGET", server.target)
    monkeypatch.setenv("EMBEDSVC_API_KEY", KEY)
    assert main(["models"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["MODEL", "TASK", "OUTPUTS"]
    cells = {
        row.split()[0]: row.split()[1:] for row in rows
    }  # the default's "(default)" is a cell of its own
    assert cells["embedder"][:3] == ["(default)", "embed", "dense"]
    assert cells["cross"][:2] == ["rerank", "score"] and cells["qwen3"][:2] == ["rerank", "score"]
    assert cells["emotions"][:2] == ["classify", "labels(3)"]

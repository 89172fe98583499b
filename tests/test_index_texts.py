"""Indexes that keep their items' texts (store_text): kept in the log and snapshots, returned on request,
and reranked in the same search call by a real cross-encoder served beside the embedder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embedsvc.errors import CorruptDataError
from embedsvc.index import records
from embedsvc.index.collection import SNAPSHOT_FILE, WAL_FILE, Collection, IndexSpec
from embedsvc.index.wal import WriteAheadLog
from tests import tiny_models

pytest.importorskip("faiss")

DIM = 8
CORPUS = list(dict.fromkeys(tiny_models.corpus(80, seed=2)))  # distinct texts


def spec(name: str = "docs", **kwargs) -> IndexSpec:
    return IndexSpec(name=name, model="m", model_source="src", dimension=DIM, **kwargs)


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_texts_survive_the_log_and_snapshots(tmp_path):
    folder = tmp_path / "docs"
    c = Collection.create(spec(store_text=True), folder, snapshot_every=3)
    c.upsert(["a", "b"], vectors(2), None, ["alpha", "beta"])
    c.upsert(["v"], vectors(1, 1), None, [None])  # an item written as a vector has no text
    c.upsert(["c", "d"], vectors(2, 2), None, ["gamma", "delta"])  # past snapshot_every: a snapshot
    assert (folder / SNAPSHOT_FILE).exists()
    c.upsert(["b"], vectors(1, 3), None, ["beta, rewritten"])  # in the log only
    c.delete(["c"])
    c._close_files()  # a crash: no closing snapshot
    again = Collection.open(folder)
    assert again.texts(["a", "b", "v", "c", "d", "zzz"]) == [
        "alpha",
        "beta, rewritten",
        None,
        None,
        "delta",
        None,
    ]
    hits = again.search(vectors(2, 2)[1], 1)
    assert hits[0].id == "d"
    again.close()


def test_an_index_without_store_text_keeps_none(tmp_path):
    c = Collection.create(spec(), tmp_path / "docs")
    c.upsert(["a"], vectors(1), None, ["alpha"])
    assert c.texts(["a"]) == [None]
    c.close()
    assert "store_text" not in json.loads((tmp_path / "docs" / "spec.json").read_text())  # older readers


def _old_record(seq: int, ids: list[str], rows: np.ndarray, version: int | None) -> bytes:
    """A log record as embedsvc wrote it before format 3 (written out here, not by records.pack)."""
    header: dict = {"op": "upsert", "ids": ids, "metadata": [{"tags": ["x"]} for _ in ids], "seq": seq}
    if version is not None:
        header["v"] = version
    head = json.dumps(header).encode()
    return len(head).to_bytes(4, "little") + head + rows.astype("<f4").tobytes()


@pytest.mark.parametrize("version", [None, 2])
def test_an_old_format_log_replays(tmp_path, version):
    """Logs of formats 1 and 2 (no texts) replay into an index that now keeps texts: no text stored."""
    folder = tmp_path / "docs"
    Collection.create(spec(store_text=True), folder).close()
    rows = vectors(3)
    log = WriteAheadLog(folder / WAL_FILE)
    log.append(_old_record(1, ["a", "b"], rows[:2], version))
    log.append(_old_record(2, ["c"], rows[2:], version))
    log.close()
    c = Collection.open(folder)
    assert c.count() == 3 and c.texts(["a", "c"]) == [None, None]
    found, _ = c.get(["c"])
    assert found[0][2] == {"tags": ["x"]}
    c.upsert(["d"], vectors(1, 5), None, ["delta"])  # new records are format 3 with texts
    c.close()
    assert Collection.open(folder).texts(["d", "a"]) == ["delta", None]


def test_a_newer_format_is_refused(tmp_path):
    payload = _old_record(1, ["a"], vectors(1), records.FORMAT_VERSION + 1)
    with pytest.raises(CorruptDataError, match="newer embedsvc"):
        records.unpack(payload, DIM)


# ------------------------------------------------------------ a real server: embedder + cross-encoder


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with a tiny embedder and a tiny cross-encoder (tanh head, sentence-transformers 4
    layout), an index that keeps texts and one that does not."""
    from embedsvc import EmbedClient
    from tests.server_utils import ServerProcess

    root = tmp_path_factory.mktemp("rerank")
    embedder = tiny_models.build_bert(root / "emb", st="mean", seed=3)
    reranker = tiny_models.build_bert_cross_encoder(root / "ce", layout="st4")
    args = ("--model", f"emb={embedder}", "--model", f"ce={reranker}")
    env = {"EMBEDSVC_CACHE": str(root / "cache")}
    with ServerProcess(*args, log_path=root / "server.log", env=env) as server:
        client = EmbedClient(server.target, timeout=120)
        client.create_index("kept", model="emb", store_text=True)
        client.create_index("plain", model="emb")
        ids = [f"t{i}" for i in range(len(CORPUS))]
        client.upsert("kept", ids, texts=CORPUS)
        client.upsert("plain", ids[:5], texts=CORPUS[:5])
        client.upsert("kept", ["vec"], vectors=client.get("kept", ["t0"])["t0"][0][None, :])  # no text
        yield client, reranker
        client.close()


def _reference_scores(folder, query: str, documents: list[str]) -> np.ndarray:
    """The cross-encoder as transformers runs it, with the tanh its config names: written out here."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = tokenizer([query] * len(documents), documents, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return torch.tanh(model(**batch).logits[:, 0]).numpy()


def test_search_reranks_candidates_by_their_stored_texts(served):
    client, reranker = served
    query = CORPUS[7]
    candidates = client.search("kept", text=query, k=20, return_text=True)
    assert {h.id for h in candidates} >= {"vec"} or len(candidates) == 20
    hits = client.search("kept", text=query, k=5, rerank={"model": "ce", "candidates": 20}, return_text=True)
    assert len(hits) == 5
    with_text = [h for h in candidates if h.text is not None]
    reference = _reference_scores(reranker, query, [h.text for h in with_text])
    best = [with_text[i] for i in np.argsort(-reference, kind="stable")[:5]]
    assert [h.id for h in hits] == [h.id for h in best]
    by_id = {h.id: s for h, s in zip(with_text, reference, strict=True)}
    np.testing.assert_allclose([h.rerank_score for h in hits], [by_id[h.id] for h in hits], atol=1e-4)
    vector_scores = {h.id: h.score for h in candidates}
    assert all(h.text == CORPUS[int(h.id[1:])] and h.score == vector_scores[h.id] for h in hits)
    # without return_text the texts stay on the server; the order is the same
    bare = client.search("kept", text=query, k=5, rerank={"model": "ce", "candidates": 20})
    assert [h.id for h in bare] == [h.id for h in hits] and all(h.text is None for h in bare)


def test_search_batch_reranks_each_query_alike(served):
    client, _ = served
    queries = [CORPUS[1], CORPUS[30]]
    batch = client.search_batch("kept", texts=queries, k=4, rerank={"model": "ce", "candidates": 12})
    for query, hits in zip(queries, batch, strict=True):
        one = client.search("kept", text=query, k=4, rerank={"model": "ce", "candidates": 12})
        assert [h.id for h in hits] == [h.id for h in one]
        np.testing.assert_allclose([h.rerank_score for h in hits], [h.rerank_score for h in one], atol=1e-5)


def test_get_returns_stored_texts(served):
    client, _ = served
    found = client.get("kept", ["t3", "vec"], return_text=True)
    assert found["t3"][2] == CORPUS[3] and found["vec"][2] is None
    assert client.get("plain", ["t1"], return_text=True)["t1"][2] is None  # not kept
    assert client.describe_index("kept").store_text and not client.describe_index("plain").store_text


@pytest.mark.parametrize(
    ("index", "kwargs", "code", "says"),
    [
        ("plain", {"text": "x", "rerank": "ce"}, "FAILED_PRECONDITION", "does not keep texts"),
        ("kept", {"text": "x", "rerank": "emb"}, "INVALID_ARGUMENT", "not a reranker"),
        ("kept", {"vector": np.ones(32), "rerank": "ce"}, "INVALID_ARGUMENT", "needs a text query"),
        ("kept", {"text": "x", "rerank": "nobody"}, "NOT_FOUND", "nobody"),
    ],
)
def test_a_rerank_stage_that_cannot_run_says_why(served, index, kwargs, code, says):
    from embedsvc.client import EmbedServiceError

    client, _ = served
    with pytest.raises(EmbedServiceError) as caught:
        client.search(index, k=3, **kwargs)
    assert caught.value.code.name == code and says in caught.value.details


def test_the_cli_shows_reranked_hits_with_texts(served, capsys):
    from embedsvc.cli.main import main

    client, _ = served
    query = CORPUS[7]
    expected = client.search("kept", text=query, k=3, rerank={"model": "ce", "candidates": 20})
    argv = ["index", "search", "kept", query, "-k", "3", "--rerank", "ce", "--candidates", "20", "--texts"]
    assert main([*argv, "--json", "--target", client.target]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [h["id"] for h in shown] == [h.id for h in expected]
    assert all(h["text"] == CORPUS[int(h["id"][1:])] and "rerank_score" in h for h in shown)
    assert main(["index", "get", "kept", "t2", "--texts", "--target", client.target]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == CORPUS[2]

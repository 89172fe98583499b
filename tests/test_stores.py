"""External vector stores against the real engines' embedded forms: Qdrant's local mode and Milvus Lite.

Writes by id, metadata replaced whole, dimension/metric checks, the pipeline into a store (in process
and through a server, SIGKILL then rerun), and `embedsvc index export`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedsvc.errors import FailedPreconditionError
from embedsvc.stores import open_store
from tests.server_utils import kill_build_midway
from tests.tiny_models import corpus

pytest.importorskip("faiss")
TEXTS = list(dict.fromkeys(corpus(120, seed=91)))[:40]


def _location(kind: str, tmp_path: Path) -> str:
    return str(tmp_path / ("qdrant" if kind == "qdrant" else "milvus.db"))


@pytest.fixture(params=["qdrant", "milvus"])
def store_kind(request):
    pytest.importorskip("qdrant_client" if request.param == "qdrant" else "milvus_lite")
    return request.param


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_writes_replace_by_id_and_keep_types(store_kind, tmp_path):
    store = open_store(store_kind, _location(store_kind, tmp_path))
    try:
        rng = np.random.default_rng(0)
        vectors = rng.standard_normal((30, 16)).astype(np.float32)
        ids = [f"doc/{i}#é" for i in range(30)]  # any string: Qdrant gets a UUID, Milvus the id itself
        metadata = [{"lang": "en", "n": i, "score": i / 4, "flag": i % 2 == 0} for i in range(30)]
        store.prepare("docs", 16, "cosine")
        store.upsert("docs", ids, vectors, metadata)
        store.upsert("docs", [ids[3]], vectors[4:5], [{"n": 99}])  # rewritten with fewer keys
        assert store.count("docs") == 30
        got = store.get("docs", [ids[0], ids[3], "missing"])
        assert set(got) == {ids[0], ids[3]}
        np.testing.assert_allclose(unit(got[ids[0]][0]), unit(vectors[0]), atol=1e-6)
        assert got[ids[0]][1] == {"lang": "en", "n": 0, "score": 0.0, "flag": True}
        assert type(got[ids[0]][1]["n"]) is int and type(got[ids[0]][1]["score"]) is float
        assert got[ids[3]][1] == {"n": 99}  # no stale key survives
        np.testing.assert_allclose(unit(got[ids[3]][0]), unit(vectors[4]), atol=1e-6)
        store.prepare("docs", 16, "cosine")  # an existing matching collection is kept
        assert store.count("docs") == 30
        with pytest.raises(FailedPreconditionError, match="16-dimensional"):
            store.prepare("docs", 8, "cosine")
        with pytest.raises(FailedPreconditionError, match="the metric is l2"):
            store.prepare("docs", 16, "l2")
        store.prepare("docs", 8, "l2", restart=True)
        assert store.count("docs") == 0
    finally:
        store.close()


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"t{i}", "text": t, "i": i}) + "\n" for i, t in enumerate(texts))
    )
    return path


def test_pipeline_into_a_store_matches_the_reference(store_kind, tmp_path):
    from sentence_transformers import SentenceTransformer

    from embedsvc.models.loading import default_model_path
    from embedsvc.pipeline import build_index
    from embedsvc.pipeline.readers import ReaderOptions

    location = _location(store_kind, tmp_path)
    summary = build_index(
        [str(_jsonl(tmp_path / "docs.jsonl", TEXTS))],
        index="corpus",
        store=store_kind,
        store_url=location,
        progress=False,
        reader=ReaderOptions(id_field="id", metadata_fields=("i",)),
        batch_size=8,
        checkpoint=str(tmp_path / "ck.json"),
        rejects=str(tmp_path / "rejects.jsonl"),
    )
    assert summary.documents == len(TEXTS)
    reference = SentenceTransformer(str(default_model_path()), device="cpu").encode(TEXTS)
    store = open_store(store_kind, location)
    try:
        assert store.count("corpus") == len(TEXTS)
        got = store.get("corpus", [f"t{i}" for i in range(len(TEXTS))])
        for i in range(len(TEXTS)):
            vector, meta = got[f"t{i}"]
            assert float(unit(vector) @ unit(reference[i])) > 0.9999
            assert meta == {"i": i}
    finally:
        store.close()
    # searched with the engine's own client: each text finds itself
    if store_kind == "qdrant":
        from qdrant_client import QdrantClient

        client = QdrantClient(path=location)
        try:
            hit = client.query_points("corpus", query=reference[5].tolist(), limit=1).points[0]
            assert hit.payload == {"id": "t5", "metadata": {"i": 5}}
        finally:
            client.close()
    else:
        from pymilvus import MilvusClient

        client = MilvusClient(location)
        try:
            client.load_collection("corpus")  # Milvus serves reads of loaded collections only
            hits = client.search("corpus", data=[reference[5].tolist()], limit=1, output_fields=["metadata"])
            assert hits[0][0]["id"] == "t5" and hits[0][0]["entity"]["metadata"] == {"i": 5}
        finally:
            client.close()


def test_sigkill_midway_then_rerun_is_exact_in_qdrant(tmp_path):
    pytest.importorskip("qdrant_client")
    docs = [f"{t} number {i}" for i, t in enumerate(corpus(800, seed=6)[:800])]
    source = tmp_path / "big.jsonl"
    source.write_text("".join(json.dumps({"id": f"b{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    location = str(tmp_path / "qdrant")
    checkpoint = tmp_path / "ck.json"
    command = [
        sys.executable,
        "-m",
        "embedsvc",
        "index",
        "build",
        str(source),
        "--index",
        "big",
        "--to",
        "qdrant",
        location,
        "--id-field",
        "id",
        "--batch-size",
        "16",
        "--checkpoint",
        str(checkpoint),
        "--no-progress",
    ]
    done_before = kill_build_midway(command, tmp_path, checkpoint, 160)
    assert 160 <= done_before < 800
    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"this run: {800 - done_before} documents" in rerun.stdout
    store = open_store("qdrant", location)
    try:
        assert store.count("big") == 800
        assert set(store.get("big", [f"b{i}" for i in range(800)])) == {f"b{i}" for i in range(800)}
    finally:
        store.close()


def test_pipeline_embeds_through_a_server_into_milvus(tmp_path):
    pytest.importorskip("milvus_lite")
    from embedsvc import EmbedClient
    from embedsvc.pipeline import build_index
    from embedsvc.pipeline.readers import ReaderOptions
    from tests.server_utils import ServerProcess

    location = _location("milvus", tmp_path)
    with ServerProcess(log_path=tmp_path / "server.log") as server:
        build_index(
            [str(_jsonl(tmp_path / "docs.jsonl", TEXTS))],
            index="served",
            store="milvus",
            store_url=location,
            target=server.target,
            progress=False,
            reader=ReaderOptions(id_field="id"),
            batch_size=8,
            in_flight=3,
            checkpoint=str(tmp_path / "ck.json"),
            rejects=str(tmp_path / "rejects.jsonl"),
        )
        with EmbedClient(server.target) as client:
            expected = client.embed(TEXTS[:3], input_type="document")
    store = open_store("milvus", location)
    try:
        assert store.count("served") == len(TEXTS)
        got = store.get("served", ["t0", "t1", "t2"])
        for i in range(3):
            assert float(unit(got[f"t{i}"][0]) @ unit(expected[i])) > 0.9999
    finally:
        store.close()


def test_export_moves_an_index_out(store_kind, tmp_path):
    from embedsvc.index.collection import IndexSpec
    from embedsvc.index.manager import IndexManager

    data = tmp_path / "data"
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((2500, 24)).astype(np.float32)
    metadata = [{"group": i % 7, "name": f"n{i}"} for i in range(2500)]
    manager = IndexManager(data)
    collection = manager.create(IndexSpec("items", "m", "src", 24, metric="inner_product", kind="hnsw"))
    collection.upsert([f"i{i}" for i in range(2500)], vectors, metadata)
    collection.delete(["i7", "i8"])
    manager.close()
    location = _location(store_kind, tmp_path)
    command = [sys.executable, "-m", "embedsvc", "index", "export", "items", "--data-dir", str(data)]
    command += ["--to", store_kind, location, "--batch-size", "700"]
    for _ in range(2):  # a second run replaces, it does not duplicate
        out = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["exported"] == report["count_in_store"] == 2498 and report["metric"] == "inner_product"
    store = open_store(store_kind, location)
    try:
        got = store.get("items", [f"i{i}" for i in range(2500)])
        assert set(got) == {f"i{i}" for i in range(2500)} - {"i7", "i8"}
        for i in (0, 999, 2499):
            np.testing.assert_allclose(got[f"i{i}"][0], vectors[i], rtol=1e-6)  # inner product: as stored
            assert got[f"i{i}"][1] == metadata[i]
    finally:
        store.close()
    # a collection with another metric is refused with what to do, and nothing is written
    data_l2 = tmp_path / "data_l2"
    manager = IndexManager(data_l2)
    manager.create(IndexSpec("items", "m", "src", 24, metric="l2")).upsert(["x"], vectors[:1], None)
    manager.close()
    clash = [sys.executable, "-m", "embedsvc", "index", "export", "items", "--data-dir", str(data_l2)]
    clash += ["--to", store_kind, location]
    out = subprocess.run(clash, capture_output=True, text=True, timeout=300)
    assert out.returncode == 7 and "the metric is l2" in out.stderr, out.stderr  # 7: conflict
    store = open_store(store_kind, location)
    try:
        assert store.count("items") == 2498
    finally:
        store.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--to", "pinecone", "x"], "unknown store 'pinecone'; choose one of qdrant, milvus"),
        (["--to", "qdrant", "x", "--data-dir", "d"], "an external store takes its URL"),
    ],
)
def test_build_destination_mistakes(tmp_path, extra, message):
    source = _jsonl(tmp_path / "docs.jsonl", TEXTS[:2])
    command = [sys.executable, "-m", "embedsvc", "index", "build", str(source), "--index", "x", *extra]
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and message in out.stderr, out.stderr


def test_list_metadata_reaches_the_store_and_its_own_filters_match_any_element(store_kind, tmp_path):
    """Tags exported from an index stay lists: a Qdrant payload array, a JSON array in Milvus' field, so
    each engine's own any-element filter finds them."""
    from embedsvc.index.collection import IndexSpec
    from embedsvc.index.manager import IndexManager
    from embedsvc.stores.export import export_index

    data = tmp_path / "data"
    vectors = np.random.default_rng(4).standard_normal((4, 8)).astype(np.float32)
    metadata = [{"tags": ["a", "b"], "n": 0}, {"tags": ["b"]}, {"tags": []}, {"tags": ["c", 7, True]}]
    manager = IndexManager(data)
    manager.create(IndexSpec("tagged", "m", "src", 8)).upsert([f"t{i}" for i in range(4)], vectors, metadata)
    manager.close()
    location = _location(store_kind, tmp_path)
    store = open_store(store_kind, location)
    try:
        assert export_index(data, "tagged", store)["count_in_store"] == 4
        got = store.get("tagged", [f"t{i}" for i in range(4)])
        assert [got[f"t{i}"][1] for i in range(4)] == metadata
    finally:
        store.close()
    if store_kind == "qdrant":
        from qdrant_client import QdrantClient, models

        client = QdrantClient(path=location)
        try:
            condition = models.FieldCondition(key="metadata.tags", match=models.MatchAny(any=["a", "c"]))
            points, _ = client.scroll("tagged", scroll_filter=models.Filter(must=[condition]), limit=10)
            assert sorted(p.payload["id"] for p in points) == ["t0", "t3"]
        finally:
            client.close()
    else:
        from pymilvus import MilvusClient

        client = MilvusClient(location)
        try:
            client.load_collection("tagged")
            rows = client.query(
                "tagged", filter='json_contains_any(metadata["tags"], ["a", "c"])', output_fields=["id"]
            )
            assert sorted(r["id"] for r in rows) == ["t0", "t3"]
        finally:
            client.close()

"""`embedsvc index build` with the index parts of `index create`: --store-text (texts kept with each
chunk), --sparse / --multi-vector (a hybrid index from a bge-m3 layout in one command; sparse and token
vectors written into Qdrant as named vectors), and a resumed build that keeps them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from embedsvc.cli.main import main
from tests.tiny_models import corpus

pytest.importorskip("faiss")
TEXTS = list(dict.fromkeys(corpus(60, seed=17)))[:12]


@pytest.fixture(scope="module")
def m3(tmp_path_factory) -> Path:
    from tests.tiny_models import build_bge_m3

    return build_bge_m3(tmp_path_factory.mktemp("pipeline-parts") / "model-a")


def _jsonl(path: Path, texts: list[str], first: int = 0) -> Path:
    rows = [{"id": f"t{i}", "text": t, "i": i} for i, t in enumerate(texts, first)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _build(tmp_path: Path, *flags: str) -> int:
    docs = _jsonl(tmp_path / "docs.jsonl", TEXTS)
    return main(
        ["index", "build", str(docs), "--metadata-fields", "i", "--no-progress", "--batch-size", "5", *flags]
    )


def _reopen(data_dir: Path, model: str | None, index: str):
    """The data directory opened as a server would: the index facade with the model in process."""
    from embedsvc.pipeline.sinks import LocalSink

    return LocalSink(data_dir, model, index, metric="cosine", kind="flat")


def test_store_text_keeps_each_chunk_text(tmp_path):
    assert _build(tmp_path, "--index", "kept", "--data-dir", str(tmp_path / "data"), "--store-text") == 0
    sink = _reopen(tmp_path / "data", None, "kept")
    try:
        found, missing = asyncio.run(sink.indexes.get("kept", ["t0", "t7", "nope"], return_text=True))
        assert missing == ["nope"]
        assert {i: (t, m) for i, _, m, t in found} == {"t0": (TEXTS[0], {"i": 0}), "t7": (TEXTS[7], {"i": 7})}
        assert sink.indexes.collection("kept").spec.store_text
    finally:
        sink.close()


def test_a_bge_m3_layout_builds_a_hybrid_index_in_one_command(tmp_path, m3):
    from embedsvc.engine.options import EmbedOptions
    from embedsvc.index.fusion import HybridOptions
    from embedsvc.index.service import SearchOptions
    from embedsvc.pipeline.sinks import _embed_here

    data = tmp_path / "data"
    flags = ("--index", "hyb", "--data-dir", str(data), "--model", str(m3), "--sparse", "--multi-vector")
    assert _build(tmp_path, *flags) == 0
    sink = _reopen(data, str(m3), "hyb")
    try:
        spec = sink.indexes.collection("hyb").spec
        assert spec.dense and spec.sparse and spec.multi_vector and not spec.store_text
        # what the model gives for text 3, compared with what the index holds for t3
        wanted = EmbedOptions(input_type="document", outputs=("dense", "sparse", "multi_vector"))
        ref = sink.model.embed_now([TEXTS[3]], wanted)
        parts = sink.indexes.collection("hyb").parts(["t3"])["t3"]
        np.testing.assert_array_equal(parts[0][0], ref.sparse[0][0])
        np.testing.assert_allclose(parts[0][1], ref.sparse[0][1], rtol=1e-6)
        np.testing.assert_allclose(parts[1], ref.multi_vectors[0], atol=2e-3)  # kept as float16
        hybrid = HybridOptions(mode="hybrid", fusion="weighted", rerank=True)
        hits = asyncio.run(
            sink.indexes.search("hyb", SearchOptions(k=3, hybrid=hybrid), _embed_here, text=TEXTS[3])
        )
    finally:
        sink.close()
    assert hits[0].id == "t3" and hits[0].metadata == {"i": 3}
    # the parts a hybrid, re-ranked search reports: dense 1 (same text), sparse its own squared
    # weights, MaxSim about one per token (unit token vectors)
    assert hits[0].dense_score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].sparse_score == pytest.approx(float(np.dot(ref.sparse[0][1], ref.sparse[0][1])), rel=1e-4)
    assert hits[0].maxsim_score == pytest.approx(len(ref.multi_vectors[0]), rel=1e-2)


def test_a_build_into_qdrant_writes_named_sparse_vectors_qdrant_queries(tmp_path, m3):
    pytest.importorskip("qdrant_client")
    from qdrant_client import QdrantClient, models

    from embedsvc import Embedder
    from embedsvc.engine.options import EmbedOptions
    from embedsvc.engine.service import ModelService
    from embedsvc.stores.qdrant import point_id

    location = str(tmp_path / "qdrant")
    where = ("--index", "docs", "--to", "qdrant", location, "--model", str(m3))
    checkpoint = ("--checkpoint", str(tmp_path / "ck.json"))
    assert _build(tmp_path, *where, "--sparse", *checkpoint) == 0
    # rerun without --sparse: the checkpoint's flags hold (else the named collection would be refused)
    assert _build(tmp_path, *where, *checkpoint) == 0
    wanted = EmbedOptions(input_type="document", outputs=("dense", "sparse"))
    ref = ModelService.in_process(Embedder.from_pretrained(str(m3))).embed_now(TEXTS, wanted)
    client = QdrantClient(path=location)
    try:
        config = client.get_collection("docs").config.params
        assert set(config.vectors) == {"dense"} and set(config.sparse_vectors) == {"sparse"}
        ids, weights = ref.sparse[5]
        query = models.SparseVector(indices=ids.tolist(), values=weights.tolist())
        hit = client.query_points("docs", query=query, using="sparse", limit=1).points[0]
        assert hit.id == point_id("t5") and hit.payload == {"id": "t5", "metadata": {"i": 5}}
        assert hit.score == pytest.approx(float(np.dot(weights, weights)), rel=1e-4)
        dense = client.query_points("docs", query=ref.vectors[5].tolist(), using="dense", limit=1).points[0]
        assert dense.id == point_id("t5")
    finally:
        client.close()


def test_milvus_refuses_token_vectors_before_writing(tmp_path, m3, capsys):
    pytest.importorskip("milvus_lite")
    from embedsvc.cli.failures import STOPPED

    where = ("--index", "docs", "--to", "milvus", str(tmp_path / "m.db"), "--model", str(m3))
    assert _build(tmp_path, *where, "--multi-vector") == STOPPED
    assert "milvus has no multi-vector field" in capsys.readouterr().err


def test_a_resumed_build_keeps_the_flags(tmp_path, m3):
    from embedsvc.pipeline.checkpoint import SettingsChangedError
    from embedsvc.pipeline.runner import build_index

    data = tmp_path / "data"
    first = _jsonl(tmp_path / "a.jsonl", TEXTS[:6])
    common = {"index": "res", "data_dir": str(data), "model": str(m3), "progress": False}
    build_index([str(first)], sparse=0, store_text=True, **common)
    saved = json.loads((data / "pipeline" / "res.checkpoint.json").read_text())
    assert saved["index_settings"] == {"store_text": True, "sparse": 0, "multi_vector": None}
    # the rerun names none of the flags: it continues with the recorded ones
    second = _jsonl(tmp_path / "b.jsonl", TEXTS[6:], first=6)
    summary = build_index([str(first), str(second)], **common)
    assert summary.documents == len(TEXTS) and summary.documents_this_run == len(TEXTS) - 6
    saved = json.loads((data / "pipeline" / "res.checkpoint.json").read_text())
    assert saved["index_settings"] == {"store_text": True, "sparse": 0, "multi_vector": None}
    with pytest.raises(SettingsChangedError, match=r"--multi-vector off -> \(the model's\)"):
        build_index([str(first), str(second)], sparse=0, multi_vector=0, **common)
    sink = _reopen(data, str(m3), "res")
    try:
        assert sink.indexes.collection("res").count() == len(TEXTS)
        found, _ = asyncio.run(sink.indexes.get("res", ["t9"], return_text=True))
        assert found[0][3] == TEXTS[9]
        assert sink.indexes.collection("res").parts(["t9"])["t9"][0] is not None
    finally:
        sink.close()

"""Sparse, hybrid and multi-vector (MaxSim) search in a collection, against references written out
here: sparse vectors as dense numpy rows and plain dot products, RRF and weighted sums by their
formulas, MaxSim as a loop over query tokens. Durability: snapshots, log-only reopen, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from embedsvc.errors import CorruptDataError, InvalidInputError
from embedsvc.index import records, sparse
from embedsvc.index.collection import WAL_FILE, Collection, IndexSpec
from embedsvc.index.fusion import HybridOptions
from embedsvc.index.retrieval import Query
from embedsvc.index.wal import scan_log

DIM, VOCAB, TOKEN_DIM = 8, 400, 4


def spec(**kwargs) -> IndexSpec:
    fields = {"dimension": DIM, "sparse": True, "sparse_dimension": VOCAB, **kwargs}
    return IndexSpec(name="docs", model="m", model_source="src", **fields)


def sparse_rows(n: int, seed: int, terms: int = 12) -> list[tuple[np.ndarray, np.ndarray]]:
    """Zipf-like term ids (frequent low ids, a long tail), positive weights; the last id is never used."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ids = np.unique(np.minimum(rng.zipf(1.3, size=terms) - 1, VOCAB - 2))
        rows.append((ids.astype(np.int32), rng.uniform(0.1, 2.0, size=len(ids)).astype(np.float32)))
    return rows


def densify(rows) -> np.ndarray:
    out = np.zeros((len(rows), VOCAB), dtype=np.float64)
    for i, (ids, weights) in enumerate(rows):
        out[i, ids] = weights
    return out


def tokens(n: int, seed: int, width: int = TOKEN_DIM) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(int(rng.integers(1, 6)), width)).astype(np.float32) for _ in range(n)]


def unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A dense + sparse + token index of 3000 items (several merges of the posting lists), some
    replaced and deleted; and the reference copy of what it holds."""
    folder = tmp_path_factory.mktemp("idx") / "docs"
    c = Collection.create(
        spec(multi_vector=True, multi_vector_dimension=TOKEN_DIM), folder, snapshot_every=1_000_000
    )
    n = 3000
    dense, rows, toks = unit(n, 1), sparse_rows(n, 2), tokens(n, 3)
    meta = [{"group": i % 3} for i in range(n)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sparse, "TAIL_MIN_NONZEROS", 2000)  # posting lists merged several times on the way
        for start in range(0, n, 500):
            part = slice(start, start + 500)
            ids = [f"d{i}" for i in range(start, start + 500)]
            c.upsert(ids, dense[part], meta[part], sparse=rows[part], tokens=toks[part])
        # replace 50 items (new sparse rows), delete 50
        new_rows = sparse_rows(50, 9)
        c.upsert([f"d{i}" for i in range(50)], dense[:50], meta[:50], sparse=new_rows, tokens=toks[:50])
    assert c._sparse is not None and c._sparse._base.shape[0] > 0 and c._sparse._tail  # base and tail
    rows[:50] = new_rows
    c.delete([f"d{i}" for i in range(100, 150)])
    live = np.array([i for i in range(n) if not 100 <= i < 150])
    return c, folder, {"dense": dense, "rows": rows, "tokens": toks, "meta": meta, "live": live}


def reference_sparse(ref, query_row, allowed=None):
    scores = densify(ref["rows"]) @ densify([query_row])[0]
    live = ref["live"] if allowed is None else np.intersect1d(ref["live"], allowed)
    live = live[scores[live] != 0]
    return live, scores


def top(labels, scores, k):
    order = sorted(labels.tolist(), key=lambda i: (-scores[i], f"d{i}"))
    return order[:k]


def test_sparse_search_matches_brute_force_with_filters_replacements_and_deletions(filled):
    c, _, ref = filled
    for seed in range(5):
        query = sparse_rows(1, 100 + seed, terms=6)[0]
        hits = c.retrieve([Query(sparse=query)], 10, HybridOptions(mode="sparse"))[0]
        live, scores = reference_sparse(ref, query)
        expected = top(live, scores, 10)
        assert [h.id for h in hits] == [f"d{i}" for i in expected]
        np.testing.assert_allclose([h.score for h in hits], scores[expected], rtol=1e-5)
        assert all(h.sparse_score == h.score for h in hits)
        filtered = c.retrieve([Query(sparse=query)], 10, HybridOptions(mode="sparse"), filter={"group": 1})[0]
        live, scores = reference_sparse(ref, query, allowed=np.arange(1, 3000, 3))
        assert [h.id for h in filtered] == [f"d{i}" for i in top(live, scores, 10)]
        assert all(h.metadata == {"group": 1} for h in filtered)


def test_a_term_no_item_holds_finds_nothing(filled):
    c, _, ref = filled
    assert VOCAB - 1 not in set(np.concatenate([ids for ids, _ in ref["rows"]]).tolist())
    assert c.retrieve([Query(sparse=([VOCAB - 1], [1.0]))], 5, HybridOptions(mode="sparse"))[0] == []
    # an empty query shares no term with anything
    assert c.retrieve([Query(sparse=([], []))], 5, HybridOptions(mode="sparse"))[0] == []


@pytest.mark.parametrize("fusion", ["rrf", "weighted"])
def test_hybrid_fuses_by_its_formula(filled, fusion):
    c, _, ref = filled
    q_dense, q_sparse = unit(1, 50)[0], sparse_rows(1, 51, terms=6)[0]
    options = HybridOptions(mode="hybrid", fusion=fusion, dense_weight=0.7, sparse_weight=0.3, candidates=40)
    hits = c.retrieve([Query(dense=q_dense, sparse=q_sparse)], 10, options)[0]
    dense_scores = ref["dense"].astype(np.float64) @ q_dense
    live = ref["live"]
    dense_top = top(live, dense_scores, 40)
    s_live, sparse_scores = reference_sparse(ref, q_sparse)
    sparse_top = top(s_live, sparse_scores, 40)
    fused = {}
    for i in set(dense_top) | set(sparse_top):
        if fusion == "weighted":
            fused[i] = 0.7 * dense_scores[i] + 0.3 * sparse_scores[i]
        else:
            fused[i] = sum(
                w / (60 + ranked.index(i) + 1)
                for ranked, w in ((dense_top, 0.7), (sparse_top, 0.3))
                if i in ranked
            )
    expected = sorted(fused, key=lambda i: (-fused[i], i))[:10]
    assert [h.id for h in hits] == [f"d{i}" for i in expected]
    np.testing.assert_allclose([h.score for h in hits], [fused[i] for i in expected], rtol=1e-5)
    np.testing.assert_allclose([h.dense_score for h in hits], dense_scores[expected], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([h.sparse_score for h in hits], sparse_scores[expected], rtol=1e-5)


def test_maxsim_reranks_the_candidates_of_a_hybrid_search(filled):
    c, _, ref = filled
    q_dense, q_sparse = unit(1, 60)[0], sparse_rows(1, 61, terms=6)[0]
    q_tokens = tokens(1, 62)[0]
    options = HybridOptions(mode="hybrid", candidates=30, rerank=True)
    hits = c.retrieve([Query(dense=q_dense, sparse=q_sparse, tokens=q_tokens)], 5, options)[0]
    plain = c.retrieve(
        [Query(dense=q_dense, sparse=q_sparse)], 30, HybridOptions(mode="hybrid", candidates=30)
    )[0]
    pool = [int(h.id[1:]) for h in plain]

    def maxsim(doc: np.ndarray) -> float:
        d = doc.astype(np.float16).astype(np.float64)  # stored as float16
        q = q_tokens.astype(np.float16).astype(np.float64)
        return sum(max(float(t @ row) for row in d) for t in q)

    sims = {i: maxsim(ref["tokens"][i]) for i in pool}
    expected = sorted(pool, key=lambda i: (-sims[i], i))[:5]
    assert [h.id for h in hits] == [f"d{i}" for i in expected]
    np.testing.assert_allclose([h.maxsim_score for h in hits], [sims[i] for i in expected], rtol=1e-3)
    assert all(h.score == h.maxsim_score and h.dense_score is not None for h in hits)


def test_dense_search_is_unchanged_in_a_hybrid_index(filled):
    c, _, ref = filled
    q = unit(1, 70)[0]
    hits = c.retrieve([Query(dense=q)], 5, HybridOptions())[0]
    scores = ref["dense"].astype(np.float64) @ q
    assert [h.id for h in hits] == [f"d{i}" for i in top(ref["live"], scores, 5)]
    assert hits[0].sparse_score is None


def test_reopen_from_snapshot_and_from_the_log_alone(filled, tmp_path):
    c, folder, ref = filled
    query = sparse_rows(1, 80, terms=6)[0]
    q_dense, q_tokens = unit(1, 81)[0], tokens(1, 82)[0]
    options = HybridOptions(mode="hybrid", rerank=True)
    before = c.retrieve([Query(dense=q_dense, sparse=query, tokens=q_tokens)], 10, options)
    # the log alone (no snapshot was taken): a copy of the files opened while the original is open
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert not (copy / "snapshot.bin").exists()
    from_log = Collection.open(copy)
    assert from_log.retrieve([Query(dense=q_dense, sparse=query, tokens=q_tokens)], 10, options) == before
    from_log.close()  # writes a snapshot
    from_snapshot = Collection.open(copy)
    assert (
        from_snapshot.retrieve([Query(dense=q_dense, sparse=query, tokens=q_tokens)], 10, options) == before
    )
    row = from_snapshot.parts(["d7"])["d7"]
    np.testing.assert_array_equal(row[0][0], ref["rows"][7][0])
    np.testing.assert_array_equal(row[1], ref["tokens"][7].astype(np.float16))
    from_snapshot.close()


def test_records_carry_their_arrays_in_format_version_3(filled):
    _, folder, _ = filled
    payload = scan_log(folder / WAL_FILE).payloads[0]
    header, vectors, blocks = records.unpack_blocks(payload, DIM)
    assert header["v"] == 3 and vectors.shape == (500, DIM)
    assert set(blocks) == {"sparse_indptr", "sparse_ids", "sparse_weights", "token_counts", "token_vectors"}
    assert blocks["sparse_indptr"][-1] == len(blocks["sparse_ids"])


def test_a_sparse_only_index(tmp_path):
    c = Collection.create(spec(dimension=0, dense=False), tmp_path / "s")
    rows = sparse_rows(200, 5)
    c.upsert([f"d{i}" for i in range(200)], np.zeros((200, 0), np.float32), None, sparse=rows)
    query = rows[3]
    hits = c.retrieve([Query(sparse=query)], 3, HybridOptions(mode="sparse"))[0]
    scores = densify(rows) @ densify([query])[0]
    assert [h.id for h in hits] == [f"d{i}" for i in top(np.arange(200), scores, 3)]
    with pytest.raises(InvalidInputError, match="keeps no dense vectors"):
        c.retrieve([Query(dense=[1.0] * DIM)], 3, HybridOptions())
    c.close()
    again = Collection.open(tmp_path / "s")
    assert [h.id for h in again.retrieve([Query(sparse=query)], 3, HybridOptions(mode="sparse"))[0]] == [
        h.id for h in hits
    ]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (([1, VOCAB], [1.0, 1.0]), "outside the index's vocabulary"),
        (([3, 3], [1.0, 2.0]), "appears more than once"),
        (([1, 2], [1.0]), "as many weights as term ids"),
        (([1], [float("nan")]), "NaN"),
        (([1.5], [1.0]), "must be integers"),
    ],
)
def test_bad_sparse_vectors_are_refused_naming_the_fix(tmp_path, row, message):
    c = Collection.create(spec(), None)
    with pytest.raises(InvalidInputError, match=message):
        c.upsert(["a"], unit(1, 0), None, sparse=[row])
    with pytest.raises(InvalidInputError, match=message):
        c.retrieve([Query(sparse=row)], 3, HybridOptions(mode="sparse"))


def test_what_an_index_does_not_keep_is_refused(tmp_path):
    dense_only = Collection.create(IndexSpec(name="d", model="m", model_source="s", dimension=DIM), None)
    with pytest.raises(InvalidInputError, match="keeps no sparse vectors"):
        dense_only.upsert(["a"], unit(1, 0), None, sparse=[([1], [1.0])])
    with pytest.raises(InvalidInputError, match="keeps no sparse vectors"):
        dense_only.retrieve(
            [Query(dense=unit(1, 0)[0], sparse=([1], [1.0]))], 3, HybridOptions(mode="hybrid")
        )
    with pytest.raises(InvalidInputError, match="keeps no token vectors"):
        dense_only.retrieve([Query(dense=unit(1, 0)[0])], 3, HybridOptions(rerank=True))
    hybrid = Collection.create(spec(), None)
    with pytest.raises(InvalidInputError, match="every item needs one"):
        hybrid.upsert(["a"], unit(1, 0), None)
    with pytest.raises(InvalidInputError, match="needs a sparse vector"):
        hybrid.retrieve([Query(dense=unit(1, 0)[0])], 3, HybridOptions(mode="hybrid"))
    with pytest.raises(InvalidInputError, match="unknown fusion"):
        HybridOptions(fusion="max")
    with pytest.raises(InvalidInputError, match="sparse_dimension"):
        IndexSpec(name="x", model="m", model_source="s", dimension=DIM, sparse=True)


def test_a_sparse_record_of_another_shape_is_corruption(tmp_path):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder)
    c.upsert(["a"], unit(1, 0), None, sparse=sparse_rows(1, 0))
    del c
    # the same record with its arrays dropped: the spec keeps sparse vectors, the record has none
    payload = scan_log(folder / WAL_FILE).payloads[0]
    header, vectors, _ = records.unpack_blocks(payload, DIM)
    header.pop("blocks")
    from embedsvc.index.wal import WriteAheadLog

    (folder / WAL_FILE).write_bytes(b"")
    wal = WriteAheadLog(folder / WAL_FILE)
    wal.append(records.pack(header, vectors))
    wal.close()
    with pytest.raises(CorruptDataError, match="lacks the sparse or token vectors"):
        Collection.open(folder)


_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from embedsvc.index.collection import Collection, IndexSpec
    spec = IndexSpec(name="docs", model="m", model_source="src", dimension=8, sparse=True,
                     sparse_dimension=400, multi_vector=True, multi_vector_dimension=4)
    c = Collection.create(spec, __import__("pathlib").Path(sys.argv[1]), snapshot_every=40)
    rng = np.random.default_rng(0)
    for i in range(100000):
        ids = np.unique(rng.integers(0, 400, size=5)).astype(np.int32)
        c.upsert([f"d{i}"], rng.normal(size=(1, 8)).astype(np.float32), [{"i": i}],
                 sparse=[(ids, np.full(len(ids), i + 1.0, np.float32))],
                 tokens=[np.full((2, 4), 1.0, np.float32)])
        print(i, " ".join(map(str, ids.tolist())), flush=True)
    """
)


def test_sigkill_loses_no_acknowledged_sparse_write(tmp_path):
    folder = tmp_path / "docs"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    acknowledged = {}
    for line in proc.stdout:
        i, *ids = line.split()
        acknowledged[int(i)] = [int(x) for x in ids]
        if len(acknowledged) == 150:  # past three snapshots, mid-log
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    for line in proc.stdout:  # printed between our read and the kill: acknowledged too
        i, *ids = line.split()
        acknowledged[int(i)] = [int(x) for x in ids]
    c = Collection.open(folder)
    assert c.count() >= len(acknowledged)
    parts = c.parts([f"d{i}" for i in acknowledged])
    for i, ids in acknowledged.items():
        row_ids, weights = parts[f"d{i}"][0]
        assert row_ids.tolist() == ids and (weights == i + 1.0).all()
    # the posting lists answer for them: each item's own terms find it, scored by its weight
    i = max(acknowledged)
    hits = c.retrieve([Query(sparse=(acknowledged[i][:1], [1.0]))], 10_000, HybridOptions(mode="sparse"))[0]
    assert f"d{i}" in {h.id for h in hits}
    assert next(h.score for h in hits if h.id == f"d{i}") == i + 1.0


# ---------------------------------------------------------------- through the server (gRPC, client)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with a tiny bge-m3 (dense, sparse and multi-vector outputs from one forward)."""
    from embedsvc import EmbedClient
    from tests.server_utils import ServerProcess
    from tests.tiny_models import build_bge_m3

    root = tmp_path_factory.mktemp("sparse-served")
    model = build_bge_m3(root / "model-a")
    with (
        ServerProcess(
            "--data-dir", str(root / "data"), "--model", f"m3={model}", log_path=root / "server.log"
        ) as server,
        EmbedClient(server.target, timeout=120) as client,
    ):
        yield client


def test_hybrid_and_reranked_search_through_the_server(served):
    client = served
    info = client.create_index("hyb", sparse=0, multi_vector=0)  # the model's vocabulary and width
    width, dim = info.multi_vector_dimension, info.dimension
    assert info.sparse_dimension > VOCAB and width > 0 and dim > 0
    n = 300
    rng = np.random.default_rng(5)
    dense = rng.normal(size=(n, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    rows, toks = sparse_rows(n, 6), tokens(n, 7, width)
    toks = [t / np.linalg.norm(t, axis=1, keepdims=True) for t in toks]  # unit tokens: MaxSim <= tokens
    meta = [{"group": i % 2} for i in range(n)]
    ids = [f"h{i}" for i in range(n)]
    assert client.upsert("hyb", ids, vectors=dense, metadata=meta, sparse=rows, token_vectors=toks) == n
    assert client.describe_index("hyb").representation_bytes > 0
    query = rows[11]
    hits = client.search("hyb", sparse=query, mode="sparse", k=5, filter={"group": 1})
    scores = densify(rows) @ densify([query])[0]
    allowed = np.arange(1, n, 2)
    expected = top(allowed[scores[allowed] != 0], scores, 5)
    assert [h.id for h in hits] == [f"h{i}" for i in expected]
    assert all(h.sparse_score is not None and h.dense_score is None for h in hits)
    # weighted hybrid: the parts come back and add up by the weights
    hybrid = client.search(
        "hyb", vector=dense[11], sparse=query, mode="hybrid", fusion="weighted", dense_weight=2.0, k=5
    )
    assert hybrid[0].id == "h11"
    for h in hybrid:
        assert h.score == pytest.approx(2.0 * h.dense_score + 1.0 * h.sparse_score, rel=1e-5)
    # MaxSim re-ranking of a dense search's candidates: the item's own tokens win
    reranked = client.search(
        "hyb", vector=dense[40], token_vectors=toks[40], multi_vector_rerank=True, k=3, candidates=50
    )
    assert reranked[0].id == "h40" and reranked[0].maxsim_score == reranked[0].score
    batch = client.search_batch("hyb", sparse=[rows[1], rows[2]], mode="sparse", k=1)
    matrix = densify(rows)
    assert [b[0].id for b in batch] == [f"h{top(np.arange(n), matrix @ matrix[q], 1)[0]}" for q in (1, 2)]
    parts = client.get_parts("hyb", ["h3"])
    np.testing.assert_array_equal(parts["h3"][0][0], rows[3][0])
    np.testing.assert_allclose(parts["h3"][1], toks[3], rtol=1e-3, atol=1e-3)


def test_a_sparse_only_index_and_mistakes_through_the_server(served):
    from embedsvc.client import EmbedServiceError

    client = served
    info = client.create_index("lex", dense=False, sparse=0)
    assert info.dimension == 0 and info.sparse_dimension > VOCAB
    rows = sparse_rows(40, 8)
    client.upsert("lex", [f"s{i}" for i in range(40)], sparse=rows)
    assert client.search("lex", sparse=rows[4], mode="sparse", k=1)[0].id == "s4"
    with pytest.raises(EmbedServiceError, match="keeps no dense vectors") as caught:
        client.search("lex", vector=np.ones(8), k=1)
    assert caught.value.code.name == "INVALID_ARGUMENT"
    with pytest.raises(EmbedServiceError, match="outside the index's vocabulary"):
        client.upsert("lex", ["bad"], sparse=[([info.sparse_dimension], [1.0])])
    with pytest.raises(EmbedServiceError, match=r"multi_vector=5, but model 'm3' gives"):
        client.create_index("narrow", multi_vector=5)


def test_texts_are_embedded_into_every_part_the_index_keeps(served):
    client = served
    client.create_index("texts", sparse=0, multi_vector=0)
    texts = ["the quick brown fox", "a lazy dog sleeps", "zebra crossing at noon", "brown bread and butter"]
    client.upsert("texts", [f"t{i}" for i in range(4)], texts=texts, metadata=[{"i": i} for i in range(4)])
    stored = client.get_parts("texts", ["t2"])["t2"]
    ids, weights = stored[0]
    assert len(ids) > 0 and stored[1].shape[1] > 0
    # the same text as a query (this model has no query prompt): dense 1, sparse its own squared
    # weights, MaxSim one per query token (unit token vectors, stored as float16)
    hits = client.search(
        "texts", text=texts[2], mode="hybrid", fusion="weighted", multi_vector_rerank=True, k=4
    )
    own = next(h for h in hits if h.id == "t2")
    assert own.dense_score == pytest.approx(1.0, abs=1e-4)
    assert own.sparse_score == pytest.approx(float(np.dot(weights, weights)), rel=1e-4)
    assert own.maxsim_score == pytest.approx(len(stored[1]), rel=1e-2)
    assert hits[0].id == "t2" and hits[0].metadata == {"i": 2}
    sparse_hits = client.search_batch("texts", texts=texts[:2], mode="sparse", k=1)
    assert [h[0].id for h in sparse_hits] == ["t0", "t1"]


def test_the_cli_creates_and_searches_with_sparse_hybrid_and_rerank(served, capsys):
    import json

    from embedsvc.cli.main import main

    target = ["--target", served.target]
    assert main(["index", "create", "cli", "--sparse", "--multi-vector", "--json", *target]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sparse_dimension"] > VOCAB and info["multi_vector_dimension"] > 0
    served.upsert("cli", ["a", "b", "c"], texts=["red apples", "green pears", "blue plums"])
    assert (
        main(["index", "search", "cli", "red apples", "--mode", "hybrid", "--maxsim", "--json", *target]) == 0
    )
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["id"] == "a" and {"dense_score", "sparse_score", "maxsim_score"} <= set(hits[0])
    parts = served.get_parts("cli", ["a", "b", "c"])
    ids, weights = parts["b"][0]
    query = {str(t): float(w) for t, w in zip(ids.tolist(), weights.tolist(), strict=True)}
    assert (
        main(["index", "search", "cli", "--sparse", json.dumps(query), "--mode", "sparse", "--json", *target])
        == 0
    )
    found = json.loads(capsys.readouterr().out)

    def dot(item: str) -> float:
        row = dict(zip(*(p.tolist() for p in parts[item][0]), strict=True))
        return sum(w * row.get(t, 0.0) for t, w in zip(ids.tolist(), weights.tolist(), strict=True))

    expected = sorted((i for i in "abc" if dot(i) != 0), key=lambda i: -dot(i))
    assert [h["id"] for h in found] == expected
    assert [h["score"] for h in found] == pytest.approx([dot(i) for i in expected], rel=1e-5)


@pytest.mark.parametrize("kind", ["qdrant", "milvus"])
def test_export_writes_sparse_and_token_vectors_to_the_store(kind, tmp_path):
    pytest.importorskip("qdrant_client" if kind == "qdrant" else "milvus_lite")
    from embedsvc.index.manager import IndexManager
    from embedsvc.stores import open_store
    from embedsvc.stores.export import export_index

    manager = IndexManager(tmp_path / "data")
    c = manager.create(spec(multi_vector=True, multi_vector_dimension=TOKEN_DIM))
    rows, toks, dense = sparse_rows(30, 11), tokens(30, 12), unit(30, 13)
    c.upsert([f"e{i}" for i in range(30)], dense, [{"i": i} for i in range(30)], sparse=rows, tokens=toks)
    manager.close()
    location = str(tmp_path / ("qdrant" if kind == "qdrant" else "milvus.db"))
    report = export_index(tmp_path / "data", "docs", open_store(kind, location), batch_size=8)
    assert report["exported"] == 30 and report["sparse"] is True
    assert report["token_vectors"] == (
        "exported" if kind == "qdrant" else "not exported: milvus has no multi-vector field"
    )
    store = open_store(kind, location)
    try:
        assert store.count("docs") == 30
        got = store.get("docs", ["e4"])
        np.testing.assert_allclose(got["e4"][0], dense[4], rtol=1e-6)
        parts = store.get_parts("docs", ["e4", "e5"])
        for i in (4, 5):
            np.testing.assert_array_equal(parts[f"e{i}"][0][0], rows[i][0])
            np.testing.assert_allclose(parts[f"e{i}"][0][1], rows[i][1], rtol=1e-6)
            if kind == "qdrant":  # float16 as the index keeps them
                np.testing.assert_allclose(parts[f"e{i}"][1], toks[i].astype(np.float16), rtol=1e-6)
            else:
                assert parts[f"e{i}"][1] is None
    finally:
        store.close()

"""Collections without the server: correctness, recall, durability and recovery."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from embedsvc.errors import CorruptDataError, IndexExistsError, IndexNotFoundError, InvalidInputError
from embedsvc.index.ann import AnnParams
from embedsvc.index.collection import MARK_FILE, SNAPSHOT_FILE, WAL_FILE, Collection, IndexSpec
from embedsvc.index.manager import IndexManager

pytest.importorskip("faiss")
DIM = 32


def spec(name: str = "docs", **kwargs) -> IndexSpec:
    return IndexSpec(name=name, model="m", model_source="src", dimension=DIM, **kwargs)


def random_vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_exact_index_finds_each_item_first(tmp_path):
    c = Collection.create(spec(), tmp_path / "docs")
    vectors = random_vectors(500)
    c.upsert([f"id{i}" for i in range(500)], vectors, [{"n": i} for i in range(500)])
    for i in range(0, 500, 37):
        hits = c.search(vectors[i], 3)
        assert hits[0].id == f"id{i}" and abs(hits[0].score - 1.0) < 1e-5 and hits[0].metadata == {"n": i}


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat", "ivf_pq"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_approximate_recall_at_10(tmp_path, kind, metric):
    n = 4000
    vectors = random_vectors(n, seed=1)
    ids = [f"v{i}" for i in range(n)]
    exact = Collection.create(spec("exact", metric=metric), None)
    approx = Collection.create(spec("approx", metric=metric, kind=kind), None)
    for lo in range(0, n, 1000):  # in batches: IVF trains once it has enough vectors
        exact.upsert(ids[lo : lo + 1000], vectors[lo : lo + 1000], None)
        approx.upsert(ids[lo : lo + 1000], vectors[lo : lo + 1000], None)
    assert approx.describe()["trained"] and approx.describe()["status"] == "ready"
    queries = random_vectors(50, seed=2)
    recall = np.mean(
        [
            len({h.id for h in approx.search(q, 10)} & {h.id for h in exact.search(q, 10)}) / 10
            for q in queries
        ]
    )
    assert recall >= 0.95, recall


def test_ivf_says_it_is_untrained_and_searches_exactly():
    c = Collection.create(spec(kind="ivf_flat", params=AnnParams(ivf_nlist=16)), None)
    c.upsert(["a", "b"], random_vectors(2), None)
    info = c.describe()
    assert not info["trained"] and "needs 624 vectors, has 2" in info["status"]
    assert c.search(random_vectors(2)[0], 1)[0].id == "a"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat"])
def test_replace_delete_and_filter(kind):
    c = Collection.create(spec(kind=kind, params=AnnParams(ivf_nlist=4)), None)
    vectors = random_vectors(300, seed=3)
    c.upsert(
        [f"d{i}" for i in range(300)], vectors, [{"even": i % 2 == 0, "tag": f"t{i % 3}"} for i in range(300)]
    )
    # replace: same id, new vector and metadata; no duplicate
    c.upsert(["d0"], vectors[1:2], [{"tag": "new"}])
    assert c.count() == 300
    hits = c.search(vectors[1], 2)
    assert {h.id for h in hits} == {"d0", "d1"}
    assert c.get(["d0"])[0][0][2] == {"tag": "new"}
    # delete really removes from results
    assert c.delete(["d1", "missing"]) == (1, 299)
    assert all(h.id != "d1" for h in c.search(vectors[1], 20))
    assert c.get(["d1"])[1] == ["d1"]
    # metadata equality filter, strict types
    hits = c.search(vectors[5], 10, filter={"tag": "t2"})
    assert hits and all(h.metadata["tag"] == "t2" for h in hits)
    assert all(h.metadata["even"] is True for h in c.search(vectors[4], 10, filter={"even": True}))
    assert c.search(vectors[4], 10, filter={"even": 1}) == []


def test_bad_writes_change_nothing():
    c = Collection.create(spec(), None)
    c.upsert(["a"], random_vectors(1), None)
    bad = random_vectors(2)
    bad[1, 3] = np.nan
    cases = [
        (["x", "y"], bad, None, "NaN or infinity"),
        (["x", "x"], random_vectors(2), None, "appears more than once"),
        (["x"], np.zeros((1, 7), np.float32), None, "must have 32 dimensions"),
        (["x"], np.zeros((1, DIM), np.float32), None, "all zeros"),
        ([""], random_vectors(1), None, "non-empty strings"),
        (["x"], random_vectors(1), [{"k": {"a": 1}}], "must be a string, integer"),  # objects: refused
        (["x"], random_vectors(1), [{"k": [1, [2]]}], "is a list, which must hold"),  # lists of scalars only
    ]
    for ids, vectors, metadata, message in cases:
        with pytest.raises(InvalidInputError, match=message):
            c.upsert(ids, vectors, metadata)
    assert c.count() == 1 and c.get(["x", "y"])[1] == ["x", "y"]


def test_recovery_from_log_and_snapshot(tmp_path):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder, snapshot_every=3)
    vectors = random_vectors(10)
    for i in range(10):  # 3 snapshots happen on the way
        c.upsert([f"id{i}"], vectors[i : i + 1], [{"i": i}])
    c.delete(["id4"])
    c.upsert(["id5"], vectors[0:1], [{"i": 50}])
    expected = {i: c.get([i])[0] for i in (f"id{k}" for k in range(10))}
    del c  # no clean close: a crash
    again = Collection.open(folder)
    assert again.count() == 9
    for item_id, found in expected.items():
        got = again.get([item_id])[0]
        assert (got[0][2] if got else None) == (found[0][2] if found else None)


def test_torn_final_record_is_ignored(tmp_path):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder)
    c.upsert(["a"], random_vectors(1), [{"k": "v"}])
    mark = (folder / MARK_FILE).read_bytes()
    c.upsert(["b"], random_vectors(1, seed=1), None)
    (folder / MARK_FILE).write_bytes(mark)  # the crash came before "b" was acknowledged (see wal.mark)
    wal = folder / WAL_FILE
    data = wal.read_bytes()
    wal.write_bytes(data[:-7])  # the second record was cut mid-write
    again = Collection.open(folder)
    assert again.count() == 1 and again.get(["a"])[0][0][2] == {"k": "v"}
    assert wal.stat().st_size < len(data) - 7  # the torn tail was truncated away
    again.upsert(["c"], random_vectors(1, seed=2), None)  # and the log is usable again
    assert Collection.open(folder).count() == 2


def test_corruption_is_reported_not_loaded(tmp_path):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder)
    for i in range(3):
        c.upsert([f"id{i}"], random_vectors(1, seed=i), None)
    wal = folder / WAL_FILE
    data = bytearray(wal.read_bytes())
    data[20] ^= 0xFF  # a byte inside the first record, with records after it
    wal.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="record 1 at byte 0 is damaged"):
        Collection.open(folder)

    folder2 = tmp_path / "snap"
    c2 = Collection.create(spec(), folder2)
    c2.upsert(["a", "b"], random_vectors(2), None)
    c2.close()  # writes a snapshot
    snap = folder2 / SNAPSHOT_FILE
    raw = bytearray(snap.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    snap.write_bytes(bytes(raw))
    with pytest.raises(CorruptDataError, match="snapshot checksum mismatch"):
        Collection.open(folder2)
    manager = IndexManager(tmp_path.parent / f"{tmp_path.name}-mgr")
    assert manager.collections == {}


def test_manager_reports_broken_index_and_manages_names(tmp_path):
    manager = IndexManager(tmp_path)
    manager.create(spec("good"))
    manager.create(spec("bad")).upsert(["a"], random_vectors(1), None)
    with pytest.raises(IndexExistsError):
        manager.create(spec("good"))
    with pytest.raises(InvalidInputError, match="index name"):
        manager.create(spec("../escape"))
    manager.close()
    (tmp_path / "indexes" / "bad" / SNAPSHOT_FILE).write_bytes(b"garbage")
    reopened = IndexManager(tmp_path)
    assert set(reopened.collections) == {"good"} and set(reopened.broken) == {"bad"}
    with pytest.raises(CorruptDataError):
        reopened.get("bad")
    reopened.delete("bad")
    with pytest.raises(IndexNotFoundError):
        reopened.get("bad")
    assert not (tmp_path / "indexes" / "bad").exists()


def test_searches_run_during_upserts_and_see_whole_writes():
    c = Collection.create(spec(kind="hnsw"), None)
    base = random_vectors(200, seed=9)
    c.upsert([f"b{i}" for i in range(200)], base, None)
    stop = threading.Event()
    problems: list[str] = []

    def writer() -> None:
        for round_ in range(30):
            # each write adds a pair: a search sees both or neither
            c.upsert([f"p{round_}a", f"p{round_}b"], np.stack([base[0], base[0]]), [{"r": round_}] * 2)
        stop.set()

    def reader() -> None:
        while not stop.is_set():
            ids = {h.id for h in c.search(base[0], 80)}
            pairs = {i[:-1] for i in ids if i.startswith("p")}
            for p in pairs:
                if not ({p + "a", p + "b"} <= ids):
                    problems.append(p)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems and c.count() == 260

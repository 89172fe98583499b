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

pytest.importorskip("faiss")

DIM = 8


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

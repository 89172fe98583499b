"""Fault injection for the index files: damage is always detected, never served partially or hidden.

Bit flips at every offset class of a WAL record (marker, length, checksum, payload) in the middle
and at the end of the log, truncation at every byte of the last record, damaged and missing
snapshots, crashes between the steps of a snapshot, a full disk during appends and snapshots,
parameters faiss cannot build, and two processes on one data directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from embedsvc.errors import CorruptDataError, InvalidInputError, StorageFullError
from embedsvc.index import records
from embedsvc.index.ann import AnnParams
from embedsvc.index.collection import MARK_FILE, SNAPSHOT_FILE, STATE_FILE, WAL_FILE, Collection, IndexSpec
from embedsvc.index.lock import DataDirInUseError
from embedsvc.index.manager import IndexManager
from embedsvc.index.wal import scan_log

DIM = 8


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def spec(name: str = "docs", **kwargs) -> IndexSpec:
    return IndexSpec(name=name, model="m", model_source="src", dimension=DIM, **kwargs)


def written(folder: Path, n: int = 5, *, last_acknowledged: bool = True) -> list[int]:
    """A collection with ``n`` one-item upserts; the byte offset where each WAL record starts.

    ``last_acknowledged=False``: the crash came during the last append, after its bytes reached the
    log but before it was acknowledged (its high-water mark update never happened)."""
    c = Collection.create(spec(), folder, snapshot_every=10_000)
    mark = b""
    for i in range(n):
        mark = (folder / MARK_FILE).read_bytes()
        c.upsert([f"id{i}"], vectors(1, seed=i), [{"i": i}])
    del c  # a crash: no closing snapshot
    if not last_acknowledged:
        (folder / MARK_FILE).write_bytes(mark)
    data = (folder / WAL_FILE).read_bytes()
    starts, offset = [], 0
    while offset < len(data):
        starts.append(offset)
        length = int.from_bytes(data[offset + 4 : offset + 8], "little")
        offset += 12 + length
    return starts


FIELD_OFFSETS = {"marker": 1, "length": 5, "checksum": 9, "payload": 20}


@pytest.mark.parametrize("field", FIELD_OFFSETS)
def test_a_flip_in_a_middle_record_is_corruption_and_touches_nothing(tmp_path, field):
    folder = tmp_path / "docs"
    starts = written(folder)
    wal = folder / WAL_FILE
    data = bytearray(wal.read_bytes())
    data[starts[2] + FIELD_OFFSETS[field]] ^= 0x40
    wal.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match=r"record 3 .* is damaged and 2 well-formed record"):
        Collection.open(folder)
    assert wal.read_bytes() == bytes(data)  # the evidence is kept, not truncated


@pytest.mark.parametrize("field", FIELD_OFFSETS)
def test_a_flip_in_an_unacknowledged_last_record_is_a_torn_tail_cut_with_a_trace(tmp_path, field, caplog):
    folder = tmp_path / "docs"
    starts = written(folder, last_acknowledged=False)
    wal = folder / WAL_FILE
    data = bytearray(wal.read_bytes())
    data[starts[-1] + FIELD_OFFSETS[field]] ^= 0x40
    wal.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="embedsvc.index"):
        again = Collection.open(folder)
    assert again.count() == 4
    assert any("unfinished last record" in r.getMessage() for r in caplog.records)
    (aside,) = folder.glob(f"{WAL_FILE}.torn-*")
    assert aside.read_bytes() == bytes(data[starts[-1] :])


def test_truncation_at_every_byte_of_the_last_record(tmp_path):
    folder = tmp_path / "docs"
    starts = written(folder, 3, last_acknowledged=False)
    full = (folder / WAL_FILE).read_bytes()
    for cut in range(starts[-1] + 1, len(full)):
        (folder / WAL_FILE).write_bytes(full[:cut])
        for stale in folder.glob(f"{WAL_FILE}.torn-*"):
            stale.unlink()
        again = Collection.open(folder)
        assert again.count() == 2, cut
        again._close_files()


@pytest.mark.parametrize("damage", ["cut_at_record", "flip_last", "cut_inside_last", "delete_log"])
def test_acknowledged_writes_missing_from_the_log_are_data_loss(tmp_path, damage):
    """The log alone looks clean or torn; the high-water mark and state.json say writes were acknowledged."""
    folder = tmp_path / "docs"
    starts = written(folder, 6)
    wal = folder / WAL_FILE
    data = bytearray(wal.read_bytes())
    if damage == "cut_at_record":
        wal.write_bytes(bytes(data[: starts[4]]))  # records 5 and 6 gone, the cut is clean
    elif damage == "flip_last":
        data[starts[5] + 20] ^= 0x40
        wal.write_bytes(bytes(data))
    elif damage == "cut_inside_last":
        wal.write_bytes(bytes(data[: starts[5] + 7]))
    else:
        wal.unlink()
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    message = (
        r"wal\.log is missing" if damage == "delete_log" else r"record 6 was acknowledged .* up to [45] only"
    )
    with pytest.raises(CorruptDataError, match=message):
        Collection.open(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing cut, nothing moved
    report = Collection.salvage(folder)  # `index repair`: what is intact, and how much was lost
    kept = {"cut_at_record": 4, "flip_last": 5, "cut_inside_last": 5, "delete_log": 0}[damage]
    assert (report["items"], report["acknowledged_records_lost"]) == (kept, 6 - kept)
    assert Collection.open(folder).count() == kept


def test_the_mark_survives_snapshots_and_clean_restarts(tmp_path):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder, snapshot_every=4)
    for i in range(10):  # snapshots after 4 and 8; a crash right after a snapshot is consistent too
        c.upsert([f"id{i}"], vectors(1, seed=i), None)
    del c
    again = Collection.open(folder)
    assert again.count() == 10
    again.close()
    again = Collection.open(folder)  # the closing snapshot emptied the log: the mark agrees
    assert again.count() == 10
    again.delete(["id0"])
    again.close()
    assert Collection.open(folder).count() == 9


def test_an_older_index_without_mark_or_state_still_opens(tmp_path):
    folder = tmp_path / "docs"
    written(folder, 3)
    (folder / MARK_FILE).unlink()
    (folder / STATE_FILE).unlink()
    assert Collection.open(folder).count() == 3


def test_a_damaged_mark_is_said_and_not_trusted(tmp_path, caplog):
    folder = tmp_path / "docs"
    written(folder, 3)
    mark = bytearray((folder / MARK_FILE).read_bytes())
    mark[10] ^= 0xFF  # the record number: the checksum no longer fits
    (folder / MARK_FILE).write_bytes(bytes(mark))
    with caplog.at_level(logging.WARNING, logger="embedsvc.index"):
        assert Collection.open(folder).count() == 3
    assert any("high-water mark unreadable" in r.getMessage() for r in caplog.records)


def test_log_records_written_before_format_versions_are_read(tmp_path):
    folder = tmp_path / "docs"
    written(folder, 2)
    wal = folder / WAL_FILE
    # rewrite both records as version 1 wrote them: the same frame, no "v" in the header
    old = b""
    for payload in scan_log(wal).payloads:
        header, vecs = records.unpack(payload, DIM)
        header.pop("v")
        head = json.dumps(header, separators=(",", ":")).encode()
        body = len(head).to_bytes(4, "little") + head + vecs.astype("<f4").tobytes()
        old += b"EWAL" + len(body).to_bytes(4, "little") + zlib.crc32(body).to_bytes(4, "little") + body
    wal.write_bytes(old)
    again = Collection.open(folder)
    assert again.count() == 2 and again.get(["id1"])[0][0][2] == {"i": 1}


def test_a_record_from_a_newer_format_is_refused_not_misread(tmp_path):
    payload = records.pack({"seq": 1, "op": "delete", "ids": ["a"]}, None)
    head_len = int.from_bytes(payload[:4], "little")
    header = json.loads(payload[4 : 4 + head_len])
    assert header["v"] == records.FORMAT_VERSION
    header["v"] = records.FORMAT_VERSION + 1
    head = json.dumps(header).encode()
    with pytest.raises(CorruptDataError, match=r"written by a newer embedsvc"):
        records.unpack(len(head).to_bytes(4, "little") + head, DIM)


def test_repair_after_a_damaged_snapshot_keeps_the_logs_intact_records(tmp_path):
    folder = tmp_path / "indexes" / "docs"
    c = Collection.create(spec(), folder, snapshot_every=100)
    for i in range(300):  # a snapshot after record 100 (items 0-99); the log holds records 101-300
        c.upsert([f"id{i}"], vectors(1, seed=i), [{"i": i}])
        if i == 99:
            c._snapshot_retry_at = 10**9  # no further snapshot: the log keeps 200 records
            c.snapshot_every = 10**9
    del c
    snap = folder / SNAPSHOT_FILE
    data = bytearray(snap.read_bytes())
    data[len(data) // 2] ^= 0x01
    snap.write_bytes(bytes(data))
    manager = IndexManager(tmp_path)
    assert "docs" in manager.broken
    report = manager.repair("docs")
    assert report["records_replayed"] == 200 and report["records_lost_with_snapshot"] == 100
    assert report["items"] == 200 and report["last_record"] == 300
    got, missing = manager.get("docs").get(["id100", "id299", "id0"])
    assert [g[0] for g in got] == ["id100", "id299"] and missing == ["id0"]
    assert got[1][2] == {"i": 299}
    manager.close()
    assert IndexManager(tmp_path).get("docs").count() == 200


def test_repair_after_a_cut_log_serves_what_is_intact_and_says_what_was_lost(tmp_path):
    folder = tmp_path / "indexes" / "docs"
    starts = written(folder, 6)
    wal = folder / WAL_FILE
    wal.write_bytes(wal.read_bytes()[: starts[4]])
    manager = IndexManager(tmp_path)
    assert "docs" in manager.broken
    report = manager.repair("docs")
    assert report["acknowledged_records_lost"] == 2 and report["items"] == 4
    manager.close()
    assert IndexManager(tmp_path).get("docs").count() == 4


def test_zero_filled_tail_is_torn(tmp_path):
    folder = tmp_path / "docs"
    written(folder, 3)
    with open(folder / WAL_FILE, "ab") as handle:
        handle.write(b"\0" * 4096)  # a file system extended the file before the data landed
    assert Collection.open(folder).count() == 3


def test_missing_snapshot_with_the_log_kept_is_data_loss(tmp_path):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder, snapshot_every=4)
    for i in range(10):  # snapshots after records 4 and 8; the log holds 9 and 10
        c.upsert([f"id{i}"], vectors(1, seed=i), None)
    del c
    (folder / SNAPSHOT_FILE).unlink()
    with pytest.raises(CorruptDataError, match=r"snapshot\.bin is missing, but state\.json says"):
        Collection.open(folder)


def test_a_log_that_skips_records_is_data_loss(tmp_path):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder, snapshot_every=4)
    for i in range(10):
        c.upsert([f"id{i}"], vectors(1, seed=i), None)
    del c
    (folder / SNAPSHOT_FILE).unlink()
    (folder / STATE_FILE).unlink()  # no record of the snapshot either: the numbering still tells
    with pytest.raises(CorruptDataError, match=r"record 9 follows record 0 \(the snapshot ends\)"):
        Collection.open(folder)


def test_snapshot_damage_at_every_region(tmp_path):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder)
    c.upsert(["a", "b", "c"], vectors(3), [{"k": 1}, {}, {}])
    c.close()
    snap = folder / SNAPSHOT_FILE
    clean = snap.read_bytes()
    for offset in (0, 9, 13, 30, len(clean) - 1):  # magic, length, crc, header JSON, vectors
        damaged = bytearray(clean)
        damaged[offset] ^= 0x01
        snap.write_bytes(bytes(damaged))
        with pytest.raises(CorruptDataError):
            Collection.open(folder)
    snap.write_bytes(clean[: len(clean) // 2])
    with pytest.raises(CorruptDataError):
        Collection.open(folder)


@pytest.mark.parametrize("crash_after", ["snapshot", "state"])
def test_crash_between_the_steps_of_a_snapshot(tmp_path, monkeypatch, crash_after):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder, snapshot_every=10_000)
    c.upsert(["a"], vectors(1), None)
    c.upsert(["b"], vectors(1, seed=1), None)

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash

    if crash_after == "snapshot":
        monkeypatch.setattr("embedsvc.index.durability._write_json", crash)
    else:
        monkeypatch.setattr("embedsvc.index.wal.WriteAheadLog.reset", crash)
    with pytest.raises(Crash):
        c.snapshot()
    monkeypatch.undo()
    again = Collection.open(folder)
    assert again.count() == 2
    again.upsert(["c"], vectors(1, seed=2), None)
    again.close()
    assert Collection.open(folder).count() == 3


def test_disk_full_during_an_append_leaves_no_trace(tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder)
    c.upsert(["a"], vectors(1), None)
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(StorageFullError, match="is full"):
        c.upsert(["b"], vectors(1, seed=1), None)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert c.count() == 1 and c.get(["b"])[1] == ["b"]
    c.upsert(["c"], vectors(1, seed=2), None)  # space is back: writes go on
    del c
    again = Collection.open(folder)
    assert sorted(again._label_of) == ["a", "c"]
    assert scan_log(folder / WAL_FILE).corruption is None


def test_disk_full_during_a_snapshot_keeps_the_log(tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    c = Collection.create(spec(), folder, snapshot_every=2)
    c.upsert(["a"], vectors(1), None)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records, "write_snapshot", full)
    assert c.upsert(["b"], vectors(1, seed=1), None) == 2  # acknowledged although the snapshot failed
    monkeypatch.undo()
    del c
    assert Collection.open(folder).count() == 2


@pytest.mark.parametrize(
    ("params", "kind", "message"),
    [
        ({"hnsw_m": 2**32 - 1}, "hnsw", "hnsw_m must be an integer from 2 to 256"),
        ({"hnsw_m": 2**31}, "hnsw", "hnsw_m"),
        ({"hnsw_ef_construction": 10**9}, "hnsw", "hnsw_ef_construction"),
        ({"pq_bits": 32}, "ivf_pq", "pq_bits must be an integer from 1 to 16"),
        ({"pq_m": 10**6}, "ivf_pq", "pq_m must be an integer from 0 to 65536"),
        ({"pq_m": 1000}, "ivf_pq", "pq_m \\(1000\\) must divide the dimension 8"),
        ({"pq_m": 3}, "ivf_pq", "pq_m \\(3\\) must divide the dimension 8"),
        ({"ivf_nlist": 0}, "ivf_flat", "ivf_nlist"),
        ({"rerank": -1}, "ivf_flat", "rerank"),
    ],
)
def test_parameters_are_checked_before_anything_is_written(tmp_path, params, kind, message):
    manager = IndexManager(tmp_path)
    with pytest.raises(InvalidInputError, match=message):
        manager.create(spec(kind=kind, params=AnnParams(**params)))
    assert not any((tmp_path / "indexes").iterdir())
    manager.close()
    IndexManager(tmp_path).close()  # and the next start is fine


def test_ivf_pq_trains_once_it_has_enough_vectors_for_its_codebooks(tmp_path):
    c = Collection.create(
        spec(kind="ivf_pq", params=AnnParams(ivf_nlist=4, pq_bits=8, pq_m=2)), tmp_path / "pq"
    )
    c.upsert([f"x{i}" for i in range(200)], vectors(200), None)
    assert not c._ann.trained and "needs 256" in c.describe()["status"]  # 2^8 codebook entries
    c.upsert([f"y{i}" for i in range(100)], vectors(100, seed=3), None)
    assert c._ann.trained and c.describe()["status"] == "ready"


def test_a_structure_faiss_cannot_build_leaves_writes_and_start_up_intact(tmp_path, monkeypatch):
    folder = tmp_path / "ivf"
    c = Collection.create(spec(kind="ivf_flat", params=AnnParams(ivf_nlist=2)), folder)

    def refuse(self, train):
        raise RuntimeError("Error in void faiss::Clustering::train: not enough memory")

    monkeypatch.setattr("embedsvc.index.ann.AnnIndex._new", refuse)
    assert c.upsert([f"x{i}" for i in range(100)], vectors(100), None) == 100  # acknowledged and applied
    status = c.describe()["status"]
    assert (
        status.startswith("degraded: ivf_flat structure could not be built") and "searched exactly" in status
    )
    hits = c.search(vectors(1)[0], 3)
    assert len(hits) == 3
    del c
    again = Collection.open(folder)  # the start-up survives it too
    assert again.count() == 100 and again.describe()["status"].startswith("degraded")
    monkeypatch.undo()
    assert Collection.open(folder).describe()["status"] == "ready"


def test_one_damaged_index_does_not_stop_the_others(tmp_path):
    manager = IndexManager(tmp_path)
    manager.create(spec("good")).upsert(["a"], vectors(1), None)
    manager.create(spec("bad")).upsert(["a"], vectors(1), None)
    manager.close()
    (tmp_path / "indexes" / "bad" / "spec.json").write_text('{"name": "bad", "dimension": "x"')
    manager = IndexManager(tmp_path)
    assert manager.get("good").count() == 1
    with pytest.raises(CorruptDataError, match=r"spec\.json"):
        manager.get("bad")
    manager.close()


def test_repair_salvages_up_to_the_damage_and_keeps_the_evidence(tmp_path):
    starts = written(tmp_path / "indexes" / "docs", 6)
    wal = tmp_path / "indexes" / "docs" / WAL_FILE
    data = bytearray(wal.read_bytes())
    data[starts[3] + 5] ^= 0x40  # record 4's length
    wal.write_bytes(bytes(data))
    manager = IndexManager(tmp_path)
    assert "docs" in manager.broken
    report = manager.repair("docs")
    assert report["records_replayed"] == 3 and report["records_not_applied"] == 2 and report["items"] == 3
    (aside,) = (tmp_path / "indexes" / "docs").glob(f"{WAL_FILE}.damaged-*")
    assert aside.read_bytes() == bytes(data)
    assert manager.get("docs").count() == 3
    manager.get("docs").upsert(["new"], vectors(1), None)
    manager.close()
    assert IndexManager(tmp_path).get("docs").count() == 4


def test_vectors_of_any_finite_size_keep_their_direction(tmp_path):
    c = Collection.create(spec(), tmp_path / "cos")
    huge = np.full((1, DIM), 5e18, dtype=np.float32)
    huge[0, 0] = 3e38
    tiny = np.full((1, DIM), 1e-23, dtype=np.float32)
    c.upsert(["huge", "tiny"], np.concatenate([huge, tiny]), None)
    (stored_huge,), _ = c.get(["huge"])
    assert np.isclose(np.linalg.norm(stored_huge[1]), 1.0, atol=1e-6) and stored_huge[1][0] > 0.99
    (stored_tiny,), _ = c.get(["tiny"])
    assert np.allclose(stored_tiny[1], np.full(DIM, 1 / np.sqrt(DIM)), atol=1e-6)
    l2 = Collection.create(spec("l2", metric="l2"), tmp_path / "l2")
    with pytest.raises(InvalidInputError, match="overflow float32"):
        l2.upsert(["huge"], huge, None)


@pytest.mark.parametrize("name", ["abc\n", "abc\r", " abc", "a/b", ".hidden", "x" * 65])
def test_index_names_are_matched_whole(tmp_path, name):
    manager = IndexManager(tmp_path)
    with pytest.raises(InvalidInputError, match="index name"):
        manager.create(spec(name))
    manager.close()


def test_search_limits(tmp_path):
    c = Collection.create(spec(kind="hnsw"), tmp_path / "h")
    c.upsert([f"x{i}" for i in range(100)], vectors(100), None)
    for kwargs, message in (
        ({"k": 2**31 - 1}, "k must be from 1 to 10000"),
        ({"k": 5, "ef_search": 2**31 - 1}, "ef_search must be from 1 to 32768"),
        ({"k": 5, "ef_search": 2**32 - 1}, "ef_search"),
    ):
        k = kwargs.pop("k")
        with pytest.raises(InvalidInputError, match=message):
            c.search(vectors(1)[0], k, **kwargs)


def test_one_process_per_data_directory(tmp_path):
    first = IndexManager(tmp_path)
    with pytest.raises(DataDirInUseError, match=rf"in use by pid {os.getpid()}"):
        IndexManager(tmp_path)
    code = (
        "from pathlib import Path; from embedsvc.index.manager import IndexManager; "
        f"IndexManager(Path({str(tmp_path)!r}))"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and f"in use by pid {os.getpid()}" in other.stderr
    first.close()
    IndexManager(tmp_path).close()  # released on close


# ------------------------------------------------------------------ through a real server


@pytest.mark.slow
def test_server_survives_bad_parameters_and_damaged_indexes(tmp_path):
    import grpc

    from embedsvc import EmbedClient
    from embedsvc.client import EmbedServiceError
    from tests.server_utils import ServerProcess, free_port

    data = tmp_path / "data"
    metrics_port = free_port()
    args = ("--data-dir", str(data), "--metrics-port", str(metrics_port))
    with ServerProcess(*args, log_path=tmp_path / "1.log") as server, EmbedClient(server.target) as client:
        for params in ({"hnsw_m": 4294967295}, {"hnsw_m": 2**31}, {"hnsw_ef_construction": 2**31}):
            with pytest.raises(EmbedServiceError) as caught:
                client.create_index("bad", kind="hnsw", **params)
            assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "hnsw_" in caught.value.details
        for name in ("good", "damaged"):
            client.create_index(name)
            for i in range(4):
                client.upsert(name, [f"{name}{i}"], texts=[f"text number {i}"])
        with pytest.raises(EmbedServiceError) as caught:
            client.create_index("abc\n")
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        server.proc.kill()  # a crash: the logs are not folded into snapshots
        server.proc.wait()
    wal = data / "indexes" / "damaged" / WAL_FILE
    raw = bytearray(wal.read_bytes())
    raw[(len(raw) // 4) * 2] ^= 0x20  # somewhere in a middle record
    wal.write_bytes(bytes(raw))

    with ServerProcess(*args, log_path=tmp_path / "2.log") as server, EmbedClient(server.target) as client:
        listed = {i.name: i.status for i in client.list_indexes()}
        assert listed["good"] == "ready" and listed["damaged"].startswith("error: ")
        assert client.describe_index("damaged").status.startswith("error: ")
        with pytest.raises(EmbedServiceError) as caught:
            client.upsert("damaged", ["x"], texts=["x"])
        assert caught.value.code == grpc.StatusCode.DATA_LOSS and "left untouched" in caught.value.details
        assert client.count("good") == 4 and client.search("good", text="text number 2", k=1)[0].id == "good2"
        assert wal.read_bytes() == bytes(raw)
        import urllib.request

        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        assert 'embedsvc_index_damaged{index="damaged"} 1.0' in scraped

        # the data directory has one owner: a second server, and a local build, are refused by name
        second = subprocess.run(
            [sys.executable, "-m", "embedsvc", "serve", "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 7 and f"in use by pid {server.proc.pid}" in second.stderr  # 7: conflict
        assert "Traceback" not in second.stderr
        corpus_file = tmp_path / "docs.jsonl"
        corpus_file.write_text('{"text": "hello"}\n')
        build = subprocess.run(
            [sys.executable, "-m", "embedsvc", "index", "build", str(corpus_file), "--index", "good"]
            + ["--data-dir", str(data), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert build.returncode == 7 and f"in use by pid {server.proc.pid}" in build.stderr

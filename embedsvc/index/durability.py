"""Durability of one collection: the write-ahead log, snapshots, ``state.json`` and the mark.


On disk: ``spec.json`` (immutable), ``snapshot.bin`` (all items as of record ``seq``),
``state.json`` (the ``seq`` of the last snapshot taken; written at creation), ``wal.log`` (records
after it, numbered consecutively) and ``wal.mark`` (the last acknowledged record: see
wal.HighWaterMark). Recovery checks that they fit together: a snapshot older than ``state.json``
says, a missing log, a log that starts after the snapshot ends or skips a number, a damaged record
with intact ones after it, or fewer records than the mark acknowledged is corruption — the index
is reported damaged (DATA_LOSS) and its files are left as they are, never served partially.

Recovery at start-up and ``index repair`` (salvage) replay the log with the one ``_replay`` below:
recovery refuses any gap, repair keeps what precedes it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from embedsvc.errors import CorruptDataError, StorageFullError
from embedsvc.index import multivector, records, sparse
from embedsvc.index.binding import BINDING_FILE, Binding, read_binding
from embedsvc.index.spec import IndexSpec
from embedsvc.index.store import Store
from embedsvc.index.wal import HighWaterMark, LogContents, WriteAheadLog, cut_torn_tail, fsync_dir, scan_log

log = logging.getLogger("embedsvc.index")
SPEC_FILE, SNAPSHOT_FILE, WAL_FILE, STATE_FILE = "spec.json", "snapshot.bin", "wal.log", "state.json"
MARK_FILE = "wal.mark"


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptDataError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise CorruptDataError(f"{path}: not a JSON object")
    return data


def read_spec(folder: Path) -> IndexSpec:
    try:
        return IndexSpec.from_json(json.loads((folder / SPEC_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:  # InvalidInputError is a ValueError: bad parameters
        raise CorruptDataError(f"{folder / SPEC_FILE}: unusable index spec ({exc})") from exc


@dataclass(frozen=True)
class Replayed:
    """What a replay applied: records, the number of the first record out of order (None: none),
    and how many records before the log's first were skipped over (a lost snapshot's, in repair)."""

    applied: int
    gap_at: int | None
    skipped: int


class Durable(Store):
    """A store whose writes are logged and fsynced before they are applied, in ``folder`` (None: in
    memory only)."""

    def __init__(
        self,
        spec: IndexSpec,
        folder: Path | None,
        *,
        fsync: bool = True,
        snapshot_every: int = 5000,
        gpu_device: int | None = None,
    ) -> None:
        super().__init__(spec, gpu_device=gpu_device)
        self.folder = folder
        self.durable = folder is not None
        self.snapshot_every = snapshot_every
        self._wal: WriteAheadLog | None = None
        self._mark: HighWaterMark | None = None
        self._fsync = fsync
        self._snapshot_retry_at = 0
        self.binding: Binding | None = None  # the model fingerprint its vectors came from (binding.py)

    @classmethod
    def create(cls, spec: IndexSpec, folder: Path | None, **kwargs: Any) -> Self:
        """A new collection; if anything fails, no file of it is left behind."""
        collection = cls(spec, folder, **kwargs)
        collection._ann.rebuild(np.zeros(0, np.int64), np.zeros((0, spec.dimension), np.float32))
        if folder is None:
            return collection
        staging = folder.with_name(f".creating-{folder.name}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            _write_json(staging / SPEC_FILE, spec.to_json())
            # state.json and an empty log from the start: a log missing later is then known to be lost
            _write_json(staging / STATE_FILE, {"snapshot_seq": 0})
            (staging / WAL_FILE).write_bytes(b"")
            mark = HighWaterMark(staging / MARK_FILE)
            mark.update(0, 0, sync=True)
            mark.close()
            fsync_dir(staging)
            os.rename(staging, folder)  # the index appears whole or not at all
            fsync_dir(folder.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        collection._open_wal()
        return collection

    @classmethod
    def open(cls, folder: Path, **kwargs: Any) -> Self:
        collection = cls(read_spec(folder), folder, **kwargs)
        collection.binding = read_binding(folder)
        collection._recover()
        collection._open_wal()
        return collection

    @classmethod
    def salvage(cls, folder: Path) -> dict[str, Any]:
        """Recover what a damaged collection still holds, offline: a readable snapshot, then log
        records in order up to the first damaged or missing one. Damaged files are moved aside
        (``*.damaged-<time>``), a fresh snapshot is written, and the report says what was lost."""
        spec = read_spec(folder)
        collection = cls(spec, folder)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        report: dict[str, Any] = {"index": spec.name, "moved_aside": []}
        snapshot_seq, snapshot_usable = 0, True
        try:
            snapshot_seq = collection._load_snapshot()
        except CorruptDataError as exc:
            report["snapshot"] = f"unusable: {exc}"
            snapshot_usable = False
            collection = cls(spec, folder)
            if (folder / SNAPSHOT_FILE).exists():
                aside = folder / f"{SNAPSHOT_FILE}.damaged-{stamp}"
                os.replace(folder / SNAPSHOT_FILE, aside)
                report["moved_aside"].append(str(aside))
        contents = scan_log(folder / WAL_FILE)
        replayed = collection._replay(contents, lost_snapshot=not snapshot_usable)
        if replayed.skipped:
            # the records before the log's first lived only in the lost snapshot: the log's own
            # intact records still apply in order after them
            report["records_lost_with_snapshot"] = replayed.skipped
        seqs = [int(records.unpack(p, spec.dimension)[0]["seq"]) for p in contents.payloads]
        later = sum(1 for seq in seqs if seq > collection._seq) + contents.records_after_damage
        mark = HighWaterMark.read(folder / MARK_FILE)
        if mark is not None and mark[0] > collection._seq:
            report["acknowledged_records_lost"] = mark[0] - collection._seq
        report.update(
            snapshot_records=snapshot_seq,
            records_replayed=replayed.applied,
            records_not_applied=later,
            log_damage=contents.corruption,
            items=collection.count(),
            last_record=collection._seq,
        )
        if contents.corruption or later > 0 or contents.torn_bytes:
            aside = folder / f"{WAL_FILE}.damaged-{stamp}"
            os.replace(folder / WAL_FILE, aside)
            report["moved_aside"].append(str(aside))
        collection._open_wal()
        collection.snapshot()  # what was recovered, durable; the log and its mark start afresh
        collection._close_files()
        return report

    def bind(self, binding: Binding | None) -> None:
        """Record the fingerprint the index's vectors come from (durable before it counts); None: none
        (back to unbound, as before the first text operation)."""
        if self.folder is not None:
            if binding is None:
                (self.folder / BINDING_FILE).unlink(missing_ok=True)
                fsync_dir(self.folder)
            else:
                _write_json(self.folder / BINDING_FILE, binding.to_json())
        self.binding = binding

    def _open_wal(self) -> None:
        if self.folder is not None:
            self._wal = WriteAheadLog(self.folder / WAL_FILE, fsync=self._fsync)
            self._mark = HighWaterMark(self.folder / MARK_FILE)

    def _close_files(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        if self._mark is not None:
            self._mark.close()
            self._mark = None

    def _recover(self) -> None:
        assert self.folder is not None
        wal, mark_path = self.folder / WAL_FILE, self.folder / MARK_FILE
        witness = next((f for f in (STATE_FILE, MARK_FILE) if (self.folder / f).exists()), None)
        if not wal.exists() and witness is not None:
            raise CorruptDataError(
                f"{wal} is missing, but {witness} shows the index was created with one: writes since the "
                "last snapshot would be lost; the files were left untouched (embedsvc index repair serves "
                "what the snapshot holds)"
            )
        snapshot_seq = self._load_snapshot()
        contents = scan_log(wal)
        if contents.corruption:
            raise CorruptDataError(contents.corruption)
        replayed = self._replay(contents)
        if replayed.gap_at is not None:
            expected, seq = self._seq + 1, replayed.gap_at
            where = "the snapshot ends" if self._seq == snapshot_seq else "the previous record"
            raise CorruptDataError(
                f"{self.folder / WAL_FILE}: record {seq} follows record {expected - 1} ({where}); "
                f"records {expected}..{seq - 1} are missing (a lost or replaced snapshot.bin?); "
                "the files were left untouched"
            )
        mark = HighWaterMark.read(mark_path)
        if mark is not None and mark[0] > self._seq:
            lost = mark[0] - self._seq
            raise CorruptDataError(
                f"{wal}: {mark_path.name} says record {mark[0]} was acknowledged (the log {mark[1]} bytes "
                f"long), but the snapshot and the log hold records up to {self._seq} only "
                f"({contents.good_end + contents.torn_bytes} bytes): {lost} acknowledged write(s) are "
                "missing (the log was cut, replaced or damaged at its end); the files were left untouched "
                "(embedsvc index repair serves what is intact)"
            )
        cut_torn_tail(wal, contents)
        self._rebuild_ann()

    def _load_snapshot(self) -> int:
        """Load snapshot.bin; its seq, checked against the one state.json recorded."""
        assert self.folder is not None
        snapshot = self.folder / SNAPSHOT_FILE
        recorded = int(_read_json(self.folder / STATE_FILE).get("snapshot_seq", 0))
        seq = 0
        if snapshot.exists():
            header, vectors, blocks = records.read_snapshot(snapshot, self.spec.dimension)
            seq = int(header["seq"])
            self._apply_upsert(
                header["ids"],
                vectors,
                header["metadata"],
                index_now=False,
                texts=header.get("texts"),
                **self._parts_from(blocks),
            )
        if seq < recorded:
            what = "is missing" if not snapshot.exists() else f"holds records up to {seq} only"
            raise CorruptDataError(
                f"{snapshot} {what}, but {STATE_FILE} says a snapshot of records up to {recorded} was "
                "taken: items written before it would be lost; the files were left untouched"
            )
        self._seq = seq
        return seq

    def _replay(self, contents: LogContents, *, lost_snapshot: bool = False) -> Replayed:
        """Apply the log's records after the current one (the snapshot's) in order, skipping those it
        already holds (a crash between snapshot and log reset); stop at the first that does not follow
        on. ``lost_snapshot`` (repair): the first record applied may start later, after records that
        lived only in the lost snapshot."""
        start, applied, skipped = self._seq, 0, 0
        for payload in contents.payloads:
            header, vectors, blocks = records.unpack_blocks(payload, self.spec.dimension)
            seq = int(header["seq"])
            if seq <= start:
                continue
            if seq != self._seq + 1:
                if not (lost_snapshot and applied == 0):
                    return Replayed(applied, seq, skipped)
                skipped = seq - 1 - self._seq
                self._seq = seq - 1
            self._seq = seq
            applied += 1
            if header["op"] == "upsert":
                # records before format 3 carry no texts: their items have none stored
                self._apply_upsert(
                    header["ids"],
                    vectors,
                    header["metadata"],
                    index_now=False,
                    texts=header.get("texts"),
                    **self._parts_from(blocks),
                )
            else:
                self._apply_delete(header["ids"])
        return Replayed(applied, None, skipped)

    def _parts_from(self, blocks: dict[str, np.ndarray]) -> dict[str, Any]:
        """A record's sparse and token vectors as _apply_upsert takes them (None where not kept)."""
        try:
            return {
                "sparse": sparse.from_blocks(blocks) if self.spec.sparse else None,
                "tokens": (
                    multivector.from_blocks(blocks, self.spec.multi_vector_dimension)
                    if self.spec.multi_vector
                    else None
                ),
            }
        except (KeyError, ValueError) as exc:
            raise CorruptDataError(
                f"index {self.spec.name!r}: a record lacks the sparse or token vectors its spec keeps ({exc})"
            ) from exc

    def _blocks(
        self, sparse_rows: list[sparse.SparseRow] | None, tokens: list[np.ndarray] | None
    ) -> dict[str, np.ndarray]:
        blocks: dict[str, np.ndarray] = {}
        if sparse_rows is not None:
            blocks.update(sparse.to_blocks(sparse_rows))
        if tokens is not None:
            blocks.update(multivector.to_blocks(tokens, self.spec.multi_vector_dimension))
        return blocks

    def _log(
        self, header: dict[str, Any], vectors: np.ndarray | None, blocks: dict[str, np.ndarray] | None = None
    ) -> None:
        header["seq"] = self._seq + 1
        if self._wal is not None:
            try:
                self._wal.append(records.pack(header, vectors, blocks))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StorageFullError(
                        f"the disk holding index {self.spec.name!r} is full ({exc.strerror}); nothing was "
                        "written: free space and retry"
                    ) from exc
                raise
        self._seq += 1  # only once the record is durable
        if self._mark is not None and self._wal is not None:
            try:
                self._mark.update(self._seq, self._wal.size())  # no fsync: see HighWaterMark
            except OSError as exc:  # the write is durable: a mark left behind only weakens the check
                log.warning("write-ahead log: high-water mark not updated", extra={"error": str(exc)})

    def snapshot(self) -> None:
        """Write all live items to a new snapshot (atomic rename), then empty the log."""
        if self.folder is None or self._wal is None:
            return
        labels = sorted(self._id_of)
        header = {
            "seq": self._seq,
            "ids": [self._id_of[x] for x in labels],
            "metadata": [self._metadata[x] for x in labels],
        }
        if self.spec.store_text:
            header["texts"] = self._texts_of(labels)
        blocks = {} if self._sparse is None else self._sparse.blocks(labels)
        if self._tokens is not None:
            blocks.update(
                multivector.to_blocks([self._tokens.get(x) for x in labels], self.spec.multi_vector_dimension)
            )
        records.write_snapshot(self.folder / SNAPSHOT_FILE, header, self._matrix[labels], blocks)
        # recorded before the log is emptied: a later start can tell a lost snapshot from no snapshot
        _write_json(self.folder / STATE_FILE, {"snapshot_seq": self._seq})
        self._wal.reset()
        if self._mark is not None:
            self._mark.update(self._seq, 0, sync=True)

    def _try_snapshot(self) -> None:
        """A snapshot that fails (a full disk) leaves the log in charge: nothing is lost, it is retried."""
        try:
            self.snapshot()
        except OSError as exc:
            assert self.folder is not None
            (self.folder / (SNAPSHOT_FILE + ".tmp")).unlink(missing_ok=True)
            log.error(
                "snapshot failed; the write-ahead log still holds every write",
                extra={"index": self.spec.name, "error": str(exc)},
            )
            self._snapshot_retry_at = (self._wal.records_since_open if self._wal else 0) + self.snapshot_every

    def close(self) -> None:
        with self._lock.write():
            if self._wal is not None:
                if self._wal.records_since_open:
                    self._try_snapshot()
                if self._mark is not None:
                    self._mark.sync()
                self._close_files()

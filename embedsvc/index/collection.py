"""One durable collection: vectors, metadata and a FAISS structure, with a WAL and snapshots.

Writes are serialized per collection; searches run concurrently with each other
and see either all or none of a write (a readers-writer lock around apply/search).
A write is appended to the log and fsynced *before* it is applied and acknowledged.

On disk: ``spec.json`` (immutable), ``snapshot.bin`` (all items as of record ``seq``),
``state.json`` (the ``seq`` of the last snapshot taken; written at creation), ``wal.log`` (records
after it, numbered consecutively) and ``wal.mark`` (the last acknowledged record: see
wal.HighWaterMark). Recovery checks that they fit together: a snapshot older than ``state.json``
says, a missing log, a log that starts after the snapshot ends or skips a number, a damaged record
with intact ones after it, or fewer records than the mark acknowledged is corruption — the index
is reported damaged (DATA_LOSS) and its files are left as they are, never served partially.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.errors import CorruptDataError, InvalidInputError, StorageFullError
from embedsvc.index import records
from embedsvc.index.ann import KINDS, MAX_EF_SEARCH, MAX_K, METRICS, AnnIndex, AnnParams, check_params
from embedsvc.index.filters import Condition, MetadataValue, both, parse_filter
from embedsvc.index.metadata import MetadataIndex, labels_array
from embedsvc.index.wal import HighWaterMark, LogContents, WriteAheadLog, cut_torn_tail, fsync_dir, scan_log

log = logging.getLogger("embedsvc.index")
SPEC_FILE, SNAPSHOT_FILE, WAL_FILE, STATE_FILE = "spec.json", "snapshot.bin", "wal.log", "state.json"
MARK_FILE = "wal.mark"
# the largest vector norm whose square float32 still holds: beyond it l2 / inner-product scores overflow
_FLOAT32_NORM_LIMIT = math.sqrt(float(np.finfo(np.float32).max))
# a filter matching at most this many items is searched exactly over them (a gather and one matrix
# product beat faiss walking a graph or every list for the few that pass); larger ones go to faiss
EXACT_SCAN_MAX = 20_000
EXACT_BLOCK = 16_384  # rows scored at once by exact search
IN_PLACE_QUERIES = 4  # exact search for up to this many queries reads rows in place (see _exact_top_in_place)
# writes reach faiss in blocks of at least this many vectors: HNSW takes 64-vector blocks at ~60 % of its
# bulk rate (1 973 vs 3 326 vectors/s at 384 dimensions); until then they are searched exactly
BULK_BLOCK = 2048
SELECTOR_CACHE_SIZE = 16  # filters whose faiss selectors are kept (1 bit per item each)


@dataclass(frozen=True)
class IndexSpec:
    name: str
    model: str  # the served model's name when created
    model_source: str  # what binds the index to a model across renames
    dimension: int
    metric: str = "cosine"
    kind: str = "flat"
    params: AnnParams = field(default_factory=AnnParams)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InvalidInputError(
                f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}", field="metric"
            )
        if self.kind not in KINDS:
            raise InvalidInputError(
                f"unknown index kind {self.kind!r}; choose one of {', '.join(KINDS)}", field="kind"
            )
        check_params(self.params, self.dimension, self.kind)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexSpec:
        return cls(**{**data, "params": AnnParams(**data.get("params", {}))})


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, MetadataValue]


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


class _RWLock:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def check_vectors(vectors: np.ndarray, dimension: int, field_name: str = "vectors") -> np.ndarray:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dimension:
        got = array.shape[-1] if array.ndim else 0
        raise InvalidInputError(
            f"vectors must have {dimension} dimensions for this index, got {got}", field=field_name
        )
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise InvalidInputError(f"vector {int(np.argmax(bad))} contains NaN or infinity", field=field_name)
    return array


_METADATA_TYPES = (str, int, float, bool)
MAX_LIST_VALUES = 10_000  # elements in one list value


def _scalar(value: Any) -> bool:
    return isinstance(value, _METADATA_TYPES) and not (isinstance(value, float) and not math.isfinite(value))


def _copied(metadata: dict[str, MetadataValue]) -> dict[str, MetadataValue]:
    """A caller's copy: changing a returned list must not change the stored item."""
    return {k: list(v) if isinstance(v, list) else v for k, v in metadata.items()}


def check_metadata(metadata: Mapping[str, Any], item: int) -> dict[str, MetadataValue]:
    """A copy of one item's metadata, or InvalidInputError naming the item and key.

    Values: strings, integers, finite numbers, booleans, or lists of them (tuples become lists)."""
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"item {item}: metadata keys must be non-empty strings", field="metadata")
        if isinstance(value, list | tuple):
            if len(value) > MAX_LIST_VALUES or not all(_scalar(v) for v in value):
                raise InvalidInputError(
                    f"item {item}: metadata value of {key!r} is a list, which must hold at most "
                    f"{MAX_LIST_VALUES} strings, integers, finite numbers or booleans (no lists or objects)",
                    field="metadata",
                )
            out[key] = list(value)
        elif _scalar(value):
            out[key] = value
        else:
            raise InvalidInputError(
                f"item {item}: metadata value of {key!r} must be a string, integer, finite number, boolean "
                f"or a list of them, got {type(value).__name__}",
                field="metadata",
            )
    return out


class Collection:
    def __init__(
        self,
        spec: IndexSpec,
        folder: Path | None,
        *,
        fsync: bool = True,
        snapshot_every: int = 5000,
        gpu_device: int | None = None,
    ) -> None:
        self.spec = spec
        self.folder = folder
        self.snapshot_every = snapshot_every
        self._lock = _RWLock()
        self._label_of: dict[str, int] = {}
        self._id_of: dict[int, str] = {}
        self._metadata: dict[int, dict[str, MetadataValue]] = {}
        self._filters = MetadataIndex()  # inverted indexes over _metadata, for filtered search
        self._matrix = np.zeros((1024, spec.dimension), dtype=np.float32)
        self._alive = np.zeros(len(self._matrix), dtype=bool)  # by label
        self._next_label = 0
        self._pending: set[int] = set()  # live labels not yet added to faiss (see BULK_BLOCK)
        # packed selectors of recent filters, each valid while no write has happened since (see _seq)
        self._selectors: OrderedDict[str, tuple[int, int, np.ndarray]] = OrderedDict()
        self._selector_lock = threading.Lock()
        self._seq = 0
        self._ann = AnnIndex(spec.kind, spec.metric, spec.dimension, spec.params, gpu_device)
        self._wal: WriteAheadLog | None = None
        self._mark: HighWaterMark | None = None
        self._fsync = fsync
        self._ann_error: str | None = None
        self._ann_failed_at = 0
        self._snapshot_retry_at = 0

    # ---------------------------------------------------------- persistence
    @classmethod
    def create(cls, spec: IndexSpec, folder: Path | None, **kwargs: Any) -> Collection:
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
    def open(cls, folder: Path, **kwargs: Any) -> Collection:
        collection = cls(read_spec(folder), folder, **kwargs)
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
        replayed = 0
        for payload in contents.payloads:
            header, vectors = records.unpack(payload, spec.dimension)
            seq = int(header["seq"])
            if not snapshot_usable and replayed == 0 and seq > collection._seq + 1:
                # the records before the log's first lived only in the lost snapshot: the log's own
                # intact records still apply in order after them
                report["records_lost_with_snapshot"] = seq - 1 - collection._seq
                collection._seq = seq - 1
            if seq <= collection._seq:
                continue
            if seq != collection._seq + 1:
                break  # a gap: what follows cannot be applied in order
            collection._seq = seq
            replayed += 1
            if header["op"] == "upsert":
                collection._apply_upsert(header["ids"], vectors, header["metadata"], index_now=False)
            else:
                collection._apply_delete(header["ids"])
        seqs = [int(records.unpack(p, spec.dimension)[0]["seq"]) for p in contents.payloads]
        later = sum(1 for seq in seqs if seq > collection._seq) + contents.records_after_damage
        mark = HighWaterMark.read(folder / MARK_FILE)
        if mark is not None and mark[0] > collection._seq:
            report["acknowledged_records_lost"] = mark[0] - collection._seq
        report.update(
            snapshot_records=snapshot_seq,
            records_replayed=replayed,
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
        self._replay(contents, snapshot_seq)
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
            header, vectors = records.read_snapshot(snapshot, self.spec.dimension)
            seq = int(header["seq"])
            self._apply_upsert(header["ids"], vectors, header["metadata"], index_now=False)
        if seq < recorded:
            what = "is missing" if not snapshot.exists() else f"holds records up to {seq} only"
            raise CorruptDataError(
                f"{snapshot} {what}, but {STATE_FILE} says a snapshot of records up to {recorded} was "
                "taken: items written before it would be lost; the files were left untouched"
            )
        self._seq = seq
        return seq

    def _replay(self, contents: LogContents, snapshot_seq: int) -> None:
        """Apply the log's records after the snapshot; their numbers must follow on without a gap."""
        assert self.folder is not None
        expected = snapshot_seq + 1
        for payload in contents.payloads:
            header, vectors = records.unpack(payload, self.spec.dimension)
            seq = int(header["seq"])
            if seq <= snapshot_seq:
                continue  # already in the snapshot (a crash between snapshot and log reset)
            if seq != expected:
                where = "the snapshot ends" if expected == snapshot_seq + 1 else "the previous record"
                raise CorruptDataError(
                    f"{self.folder / WAL_FILE}: record {seq} follows record {expected - 1} ({where}); "
                    f"records {expected}..{seq - 1} are missing (a lost or replaced snapshot.bin?); "
                    "the files were left untouched"
                )
            expected = seq + 1
            self._seq = seq
            if header["op"] == "upsert":
                self._apply_upsert(header["ids"], vectors, header["metadata"], index_now=False)
            else:
                self._apply_delete(header["ids"])

    def _log(self, header: dict[str, Any], vectors: np.ndarray | None) -> None:
        header["seq"] = self._seq + 1
        if self._wal is not None:
            try:
                self._wal.append(records.pack(header, vectors))
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
        records.write_snapshot(self.folder / SNAPSHOT_FILE, header, self._matrix[labels])
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

    # ------------------------------------------------------------ mutation
    def _labels_and_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.fromiter(self._id_of, dtype=np.int64, count=len(self._id_of))
        return labels, self._matrix[labels]

    def _rebuild_ann(self) -> None:
        """Rebuild the FAISS structure; if faiss fails, searches stay exact and the status says why.

        The items themselves are logged and applied before this runs: a derived structure that
        cannot be built never loses or refuses a write, nor stops a start-up."""
        labels, vectors = self._labels_and_vectors()
        self._pending.clear()  # every live item goes in
        try:
            self._ann.rebuild(labels, vectors)
            self._ann_error = None
        except (RuntimeError, MemoryError, ValueError) as exc:
            self._ann.index = None
            self._ann_error = f"{self.spec.kind} structure could not be built ({exc})"
            self._ann_failed_at = len(labels)
            log.error(
                "index searched exactly: faiss failed", extra={"index": self.spec.name, "error": str(exc)}
            )

    def _prepare(self, vectors: np.ndarray, field_name: str = "vectors") -> np.ndarray:
        if self.spec.metric != "cosine":
            # a row's norm is at most sqrt(dimension) times its largest element: only rows that could
            # reach the limit need their norm computed (in float64: float32 squares overflow from 1.8e19)
            largest = np.abs(vectors).max(axis=1) * math.sqrt(vectors.shape[1])
            suspect = np.flatnonzero(largest >= _FLOAT32_NORM_LIMIT)
            if len(suspect):
                norms = np.linalg.norm(vectors[suspect].astype(np.float64), axis=1)
                if (norms >= _FLOAT32_NORM_LIMIT).any():
                    j = int(np.argmax(norms >= _FLOAT32_NORM_LIMIT))
                    raise InvalidInputError(
                        f"vector {int(suspect[j])} has norm {norms[j]:.3g}: its {self.spec.metric} scores "
                        f"overflow float32 (norms must stay below {_FLOAT32_NORM_LIMIT:.3g}); "
                        "scale the vectors down",
                        field=field_name,
                    )
            return vectors
        # norms in float64: float32 squares overflow from about 1.8e19 and underflow below 1e-19
        wide = vectors.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))[:, None]
        if (norms == 0).any():
            raise InvalidInputError(
                f"vector {int(np.argmax(norms[:, 0] == 0))} is all zeros: it has no direction for cosine",
                field=field_name,
            )
        return (wide / norms).astype(np.float32)

    def _apply_upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict[str, Any]],
        *,
        index_now: bool = True,
    ) -> None:
        replaced = [self._label_of[i] for i in ids if i in self._label_of]
        if replaced:
            self._forget(replaced)
            if index_now:
                self._unindex(replaced)
        needed = self._next_label + len(ids)
        if needed > len(self._matrix):
            grown = np.zeros((max(needed, 2 * len(self._matrix)), self.spec.dimension), dtype=np.float32)
            grown[: len(self._matrix)] = self._matrix
            self._matrix = grown
            self._alive = np.concatenate([self._alive, np.zeros(len(grown) - len(self._alive), dtype=bool)])
        labels = np.arange(self._next_label, needed, dtype=np.int64)
        self._matrix[self._next_label : needed] = vectors  # labels are consecutive: a slice copy
        self._alive[self._next_label : needed] = True
        label_list, metas = labels.tolist(), list(metadata)  # callers pass fresh dicts
        if len(metas) != len(label_list):
            raise ValueError(f"{len(label_list)} items but {len(metas)} metadata entries")
        self._label_of.update(zip(ids, label_list, strict=True))
        self._id_of.update(zip(label_list, ids, strict=True))
        self._metadata.update(zip(label_list, metas, strict=True))
        self._filters.add_many(label_list, metas)
        self._next_label = needed
        if index_now:
            if not self._ann.trained and len(self._id_of) >= self._next_training_size():
                self._rebuild_ann()  # enough vectors now: train the IVF index
            elif self._ann.trained:
                self._pending.update(labels.tolist())
                if len(self._pending) >= BULK_BLOCK:
                    self._flush_pending()

    def _flush_pending(self) -> None:
        labels = np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
        labels.sort()
        self._pending.clear()
        self._ann.add(labels, self._matrix[labels])  # pending labels are live: removals take them out

    def _unindex(self, labels: list[int]) -> None:
        """Take removed labels out of faiss, or out of the pending block if they never reached it."""
        indexed = [label for label in labels if label not in self._pending]
        self._pending.difference_update(labels)
        self._ann.remove(indexed)

    def _next_training_size(self) -> int:
        # after a failed build, retry once the collection has doubled rather than on every write
        return max(self.spec.params.train_size(self.spec.kind), 2 * self._ann_failed_at)

    def _forget(self, labels: list[int]) -> None:
        for label in labels:
            del self._label_of[self._id_of.pop(label)]
            self._filters.remove(label, self._metadata.pop(label))
            self._alive[label] = False

    def _apply_delete(self, ids: Sequence[str]) -> list[int]:
        labels = [self._label_of[i] for i in ids if i in self._label_of]
        self._forget(labels)
        return labels

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[Mapping[str, Any]] | None
    ) -> int:
        """Insert or replace; all or nothing. Returns the collection's size afterwards."""
        if len(ids) == 0:
            raise InvalidInputError("upsert needs at least one item", field="items")
        for i, item_id in enumerate(ids):
            if not isinstance(item_id, str) or not item_id:
                raise InvalidInputError(f"item {i}: ids must be non-empty strings", field="ids")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise InvalidInputError(f"id {dup!r} appears more than once in this request", field="ids")
        vectors = self._prepare(check_vectors(vectors, self.spec.dimension))
        if len(vectors) != len(ids):
            raise InvalidInputError(f"{len(ids)} ids but {len(vectors)} vectors", field="vectors")
        metas = [check_metadata(m, i) for i, m in enumerate(metadata or [{}] * len(ids))]
        if len(metas) != len(ids):
            raise InvalidInputError(f"{len(ids)} ids but {len(metas)} metadata entries", field="metadata")
        with self._lock.write():
            self._log({"op": "upsert", "ids": list(ids), "metadata": metas}, vectors)
            self._apply_upsert(ids, vectors, metas)
            self._maintain()
            return len(self._id_of)

    def delete(self, ids: Sequence[str]) -> tuple[int, int]:
        """Remove ids (unknown ones are ignored); returns (removed, size afterwards)."""
        with self._lock.write():
            present = [i for i in dict.fromkeys(ids) if i in self._label_of]
            if present:
                self._log({"op": "delete", "ids": present}, None)
                self._unindex(self._apply_delete(present))
                self._maintain()
            return len(present), len(self._id_of)

    def _maintain(self) -> None:
        if self._ann.tombstones and len(self._ann.tombstones) > max(64, len(self._id_of) // 4):
            self._rebuild_ann()  # compact HNSW tombstones
        if self._wal is not None and self._wal.records_since_open >= max(
            self.snapshot_every, self._snapshot_retry_at
        ):
            self._try_snapshot()

    # -------------------------------------------------------------- reading
    def count(self) -> int:
        return len(self._id_of)

    def ids(self) -> list[str]:
        """Every item's id, oldest write first."""
        with self._lock.read():
            return list(self._id_of.values())  # labels only grow: insertion order is label order

    def ids_page(self, after: int, limit: int) -> tuple[list[str], int | None]:
        """Up to ``limit`` ids in write order from label ``after`` on, and the label to continue from
        (None after the last). Labels only grow, so a cursor stays valid across writes: a rewritten id
        gets a new label and shows up again later; a deleted one is skipped."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self._lock.read():
            found: list[int] = []
            start = max(after, 0)
            while start < self._next_label and len(found) < limit:
                stop = min(self._next_label, start + max(4 * limit, 4096))  # a bounded scan per step
                found += (np.flatnonzero(self._alive[start:stop]) + start).tolist()
                start = stop
            page, rest = found[:limit], found[limit:]
            if rest:
                following: int | None = rest[0]
            elif start < self._next_label:
                following = start
            else:
                following = None
            return [self._id_of[label] for label in page], following

    def get(
        self, ids: Sequence[str]
    ) -> tuple[list[tuple[str, np.ndarray, dict[str, MetadataValue]]], list[str]]:
        with self._lock.read():
            found, missing = [], []
            for item_id in ids:
                label = self._label_of.get(item_id)
                if label is None:
                    missing.append(item_id)
                else:
                    found.append((item_id, self._matrix[label].copy(), _copied(self._metadata[label])))
            return found, missing

    def _check_search(self, k: int, ef_search: int | None, nprobe: int | None) -> None:
        if not 1 <= k <= MAX_K:
            raise InvalidInputError(f"k must be from 1 to {MAX_K}, got {k}", field="k")
        if ef_search is not None and not 1 <= ef_search <= MAX_EF_SEARCH:
            raise InvalidInputError(
                f"ef_search must be from 1 to {MAX_EF_SEARCH}, got {ef_search}", field="ef_search"
            )
        if nprobe is not None and not 1 <= nprobe <= self.spec.params.ivf_nlist:
            raise InvalidInputError(
                f"nprobe must be from 1 to ivf_nlist ({self.spec.params.ivf_nlist}), got {nprobe}",
                field="nprobe",
            )

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        filter: Mapping[str, Any] | None = None,
        where: Condition | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[Hit]:
        """Top ``k`` by score (higher is closer: similarity, or minus squared L2 distance).

        ``filter`` is a plain filter (embedsvc.index.filters), ``where`` a parsed one; both must hold."""
        query = np.asarray(query)
        if query.ndim != 1:
            raise InvalidInputError(f"a query is one vector, got shape {query.shape}", field="vector")
        return self.search_many(
            query[None, :], k, filter=filter, where=where, ef_search=ef_search, nprobe=nprobe
        )[0]

    def search_many(
        self,
        queries: np.ndarray,
        k: int,
        *,
        filter: Mapping[str, Any] | None = None,
        where: Condition | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[list[Hit]]:
        """``search`` for many queries with one k and filter: one faiss call for all of them."""
        self._check_search(k, ef_search, nprobe)
        field_name = "vector" if np.ndim(queries) == 2 and len(queries) == 1 else "vectors"
        queries = self._prepare(check_vectors(queries, self.spec.dimension, field_name), field_name)
        condition = both(parse_filter(filter), where)
        with self._lock.read():
            if not self._id_of:
                return [[] for _ in queries]
            size, bitmap, trained = len(self._id_of), None, self._ann.trained
            if condition is not None:
                cached = self._cached_selector(condition) if trained else None
                if cached is not None:
                    size, bitmap = cached
                else:
                    allowed = labels_array(self._filters.evaluate(condition))
                    if not len(allowed):
                        return [[] for _ in queries]
                    if not trained or len(allowed) <= EXACT_SCAN_MAX:
                        return self._hits(*self._exact_top(allowed, queries, k))
                    size, bitmap = len(allowed), self._remember_selector(condition, allowed)
            elif not trained:
                return self._hits(*self._exact_top(self._live_labels(), queries, k))
            # faiss's own scores are exact for every kind but IVF-PQ, whose codes are re-ranked
            reranked = self.spec.kind == "ivf_pq"
            fetch = k * max(self.spec.params.rerank, 1) if reranked else k
            distances, found = self._ann.search(
                queries,
                min(fetch, size),
                allowed=bitmap,
                ef_search=ef_search,
                nprobe=nprobe,
                share=size / len(self._id_of),
            )
            pending = self._pending_candidates(bitmap)
            if reranked:
                return [
                    self._rerank(np.concatenate([row, pending]), query, k)
                    for row, query in zip(found, queries, strict=True)
                ]
            scores = -distances if self.spec.metric == "l2" else distances
            return [
                self._merge(*row, pending, query, k)
                for row, query in zip(zip(found, scores, strict=True), queries, strict=True)
            ]

    def _merge(
        self, found: np.ndarray, scores: np.ndarray, pending: np.ndarray, query: np.ndarray, k: int
    ) -> list[Hit]:
        """One query's faiss hits (exact scores) that are still live, with the pending block's; the best k."""
        keep = found >= 0
        keep[keep] = self._alive[found[keep]]  # a GPU copy may still hold removed labels
        found, scores = found[keep], scores[keep]
        if len(pending):
            pending_labels, pending_scores = self._exact_top(pending, query[None, :], k)
            found = np.concatenate([found, pending_labels[0]])
            scores = np.concatenate([scores, pending_scores[0]])
            order = np.lexsort((found, -scores))
            found, scores = found[order], scores[order]
        return self._hits(found[None, :k], scores[None, :k])[0]

    def _pending_candidates(self, bitmap: np.ndarray | None) -> np.ndarray:
        """Labels written but not yet in faiss (searched exactly beside it), within ``bitmap`` (packed,
        little-endian bit order)."""
        labels = np.fromiter(self._pending, dtype=np.int64, count=len(self._pending))
        if bitmap is None:
            return labels
        return labels[(bitmap[labels >> 3] >> (labels & 7)) & 1 == 1]

    def _cached_selector(self, condition: Condition) -> tuple[int, np.ndarray] | None:
        """(matches, packed bitmap) of a filter used since the last write: a repeated filter (a tenant, a
        language) skips rebuilding its selector, an O(items) pass (~4 ms at 1M items, 50 % matching)."""
        key = repr(condition)
        with self._selector_lock:
            entry = self._selectors.get(key)
            if entry is None or entry[0] != self._seq:
                return None
            self._selectors.move_to_end(key)
            return entry[1], entry[2]

    def _remember_selector(self, condition: Condition, allowed: np.ndarray) -> np.ndarray:
        bits = np.zeros(self._next_label, dtype=bool)
        bits[allowed] = True
        bitmap = np.packbits(bits, bitorder="little")
        with self._selector_lock:
            self._selectors[repr(condition)] = (self._seq, len(allowed), bitmap)
            while len(self._selectors) > SELECTOR_CACHE_SIZE:
                self._selectors.popitem(last=False)
        return bitmap

    def _live_labels(self) -> np.ndarray:
        return np.fromiter(self._id_of, dtype=np.int64, count=len(self._id_of))

    def _scores(self, vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """[vectors, queries] scores, higher is closer."""
        if self.spec.metric != "l2":
            return vectors @ queries.T
        # minus the squared distance from differences: expanding |v|^2 - 2 v.q + |q|^2 cancels badly
        return np.stack([-((vectors - query) ** 2).sum(axis=1) for query in queries], axis=1)

    def _exact_top(
        self, candidates: np.ndarray, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k labels and scores [queries, <=k] over ``candidates``, best first (ties by label)."""
        if len(queries) <= IN_PLACE_QUERIES:
            return self._exact_top_in_place(candidates, queries, k)
        return self._exact_top_gathered(candidates, queries, k)

    def _exact_top_in_place(
        self, candidates: np.ndarray, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """faiss reads the candidates' rows where they are: 4-5x faster than copying them out for one query
        (10 000 of 1M rows: 1.7 vs 8.2 ms), while many queries amortize one copy and a matrix product."""
        faiss = self._ann.faiss
        ids = np.ascontiguousarray(candidates, dtype=np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        top = min(k, len(ids))
        distances = np.empty((len(queries), top), dtype=np.float32)
        labels = np.empty((len(queries), top), dtype=np.int64)
        search = faiss.knn_L2sqr_by_idx if self.spec.metric == "l2" else faiss.knn_inner_products_by_idx
        search(
            faiss.swig_ptr(queries),
            faiss.swig_ptr(self._matrix),
            faiss.swig_ptr(ids),
            self.spec.dimension,
            len(queries),
            len(self._matrix),
            len(ids),
            top,
            faiss.swig_ptr(distances),
            faiss.swig_ptr(labels),
            0,  # every query reads the same id list
        )
        scores = -distances if self.spec.metric == "l2" else distances
        order = np.lexsort((labels, -scores), axis=1)
        return np.take_along_axis(labels, order, axis=1), np.take_along_axis(scores, order, axis=1)

    def _exact_top_gathered(
        self, candidates: np.ndarray, queries: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates' rows copied out in blocks (bounded memory) and scored by matrix products."""
        best_labels = np.zeros((len(queries), 0), dtype=np.int64)
        best_scores = np.zeros((len(queries), 0), dtype=np.float32)
        for start in range(0, len(candidates), EXACT_BLOCK):
            labels = candidates[start : start + EXACT_BLOCK]
            scores = self._scores(self._matrix[labels], queries).T
            all_labels = np.concatenate([best_labels, np.broadcast_to(labels, scores.shape)], axis=1)
            all_scores = np.concatenate([best_scores, scores], axis=1)
            if all_scores.shape[1] > k:
                keep = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
                all_labels = np.take_along_axis(all_labels, keep, axis=1)
                all_scores = np.take_along_axis(all_scores, keep, axis=1)
            best_labels, best_scores = all_labels, all_scores
        # best first; equal scores in label order
        order = np.lexsort((best_labels, -best_scores), axis=1) if best_labels.size else best_labels
        return np.take_along_axis(best_labels, order, axis=1), np.take_along_axis(best_scores, order, axis=1)

    def _rerank(self, found: np.ndarray, query: np.ndarray, k: int) -> list[Hit]:
        """Exact scores for one query's faiss candidates that are still live; the best ``k``."""
        found = found[found >= 0]
        found = found[self._alive[found]]
        if not len(found):
            return []
        labels, scores = self._exact_top(found, query[None, :], k)
        return self._hits(labels, scores)[0]

    def _hits(self, labels: np.ndarray, scores: np.ndarray) -> list[list[Hit]]:
        return [
            [
                Hit(self._id_of[label], score, _copied(self._metadata[label]))
                for label, score in zip(row_labels.tolist(), row_scores.tolist(), strict=True)
            ]
            for row_labels, row_scores in zip(labels, scores, strict=True)
        ]

    def describe(self) -> dict[str, Any]:
        trained = self._ann.trained
        if self._ann_error:
            status = f"degraded: {self._ann_error}; searched exactly (every item is there)"
        elif trained:
            status = "ready"
        else:
            needed = self.spec.params.train_size(self.spec.kind)
            status = f"training: needs {needed} vectors, has {self.count()}; searched exactly"
        return {
            "trained": trained,
            "status": status,
            "count": self.count(),
            "durable": self.folder is not None,
            "device": self._ann.device,
        }

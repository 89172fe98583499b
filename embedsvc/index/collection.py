"""One durable collection: vectors, metadata and a FAISS structure, with a WAL and snapshots.

Writes are serialized per collection; searches run concurrently with each other
and see either all or none of a write (a readers-writer lock around apply/search).
A write is appended to the log and fsynced *before* it is applied and acknowledged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.errors import CorruptDataError, InvalidInputError
from embedsvc.index import records
from embedsvc.index.ann import KINDS, METRICS, AnnIndex, AnnParams
from embedsvc.index.wal import WriteAheadLog, fsync_dir, read_log

MetadataValue = str | int | float | bool
SPEC_FILE, SNAPSHOT_FILE, WAL_FILE = "spec.json", "snapshot.bin", "wal.log"


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


def check_metadata(metadata: Mapping[str, Any], where: str) -> dict[str, MetadataValue]:
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"{where}: metadata keys must be non-empty strings", field="metadata")
        if not isinstance(value, str | int | float | bool) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise InvalidInputError(
                f"{where}: metadata value of {key!r} must be a string, integer, finite number or boolean",
                field="metadata",
            )
        out[key] = value
    return out


def _matches(metadata: Mapping[str, MetadataValue], wanted: Mapping[str, MetadataValue]) -> bool:
    # strict types: True must not match 1
    return all(
        key in metadata and type(metadata[key]) is type(v) and metadata[key] == v for key, v in wanted.items()
    )


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
        self._matrix = np.zeros((1024, spec.dimension), dtype=np.float32)
        self._next_label = 0
        self._seq = 0
        self._ann = AnnIndex(spec.kind, spec.metric, spec.dimension, spec.params, gpu_device)
        self._wal: WriteAheadLog | None = None
        self._fsync = fsync

    # ---------------------------------------------------------- persistence
    @classmethod
    def create(cls, spec: IndexSpec, folder: Path | None, **kwargs: Any) -> Collection:
        if folder is not None:
            folder.mkdir(parents=True)
            tmp = folder / (SPEC_FILE + ".tmp")
            tmp.write_text(json.dumps(spec.to_json(), indent=2))
            os.replace(tmp, folder / SPEC_FILE)
            fsync_dir(folder)
            fsync_dir(folder.parent)
        collection = cls(spec, folder, **kwargs)
        collection._ann.rebuild(np.zeros(0, np.int64), np.zeros((0, spec.dimension), np.float32))
        collection._open_wal()
        return collection

    @classmethod
    def open(cls, folder: Path, **kwargs: Any) -> Collection:
        try:
            spec = IndexSpec.from_json(json.loads((folder / SPEC_FILE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CorruptDataError(f"{folder / SPEC_FILE}: unreadable index spec ({exc})") from exc
        collection = cls(spec, folder, **kwargs)
        collection._recover()
        collection._open_wal()
        return collection

    def _open_wal(self) -> None:
        if self.folder is not None:
            self._wal = WriteAheadLog(self.folder / WAL_FILE, fsync=self._fsync)

    def _recover(self) -> None:
        assert self.folder is not None
        snapshot = self.folder / SNAPSHOT_FILE
        if snapshot.exists():
            header, vectors = records.read_snapshot(snapshot, self.spec.dimension)
            self._seq = int(header["seq"])
            self._apply_upsert(header["ids"], vectors, header["metadata"], index_now=False)
        payloads, good_end, torn = read_log(self.folder / WAL_FILE)
        if torn:
            WriteAheadLog.truncate(self.folder / WAL_FILE, good_end)
        for payload in payloads:
            header, vectors = records.unpack(payload, self.spec.dimension)
            if header["seq"] <= self._seq:
                continue  # already in the snapshot
            self._seq = header["seq"]
            if header["op"] == "upsert":
                self._apply_upsert(header["ids"], vectors, header["metadata"], index_now=False)
            else:
                self._apply_delete(header["ids"])
        self._rebuild_ann()

    def _log(self, header: dict[str, Any], vectors: np.ndarray | None) -> None:
        self._seq += 1
        header["seq"] = self._seq
        if self._wal is not None:
            self._wal.append(records.pack(header, vectors))

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
        self._wal.reset()

    def close(self) -> None:
        with self._lock.write():
            if self._wal is not None:
                if self._wal.records_since_open:
                    self.snapshot()
                self._wal.close()
                self._wal = None

    # ------------------------------------------------------------ mutation
    def _labels_and_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.fromiter(self._id_of, dtype=np.int64, count=len(self._id_of))
        return labels, self._matrix[labels]

    def _rebuild_ann(self) -> None:
        labels, vectors = self._labels_and_vectors()
        self._ann.rebuild(labels, vectors)

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        if self.spec.metric != "cosine":
            return vectors
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if (norms == 0).any():
            raise InvalidInputError(
                f"vector {int(np.argmax(norms[:, 0] == 0))} is all zeros: it has no direction for cosine",
                field="vectors",
            )
        return (vectors / norms).astype(np.float32)

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
                self._ann.remove(replaced)
        needed = self._next_label + len(ids)
        if needed > len(self._matrix):
            grown = np.zeros((max(needed, 2 * len(self._matrix)), self.spec.dimension), dtype=np.float32)
            grown[: len(self._matrix)] = self._matrix
            self._matrix = grown
        labels = np.arange(self._next_label, needed, dtype=np.int64)
        self._matrix[labels] = vectors
        for label, item_id, meta in zip(labels.tolist(), ids, metadata, strict=True):
            self._label_of[item_id] = label
            self._id_of[label] = item_id
            self._metadata[label] = dict(meta)
        self._next_label = needed
        if index_now:
            if not self._ann.trained and len(self._id_of) >= self.spec.params.train_size():
                self._rebuild_ann()  # enough vectors now: train the IVF index
            else:
                self._ann.add(labels, vectors)

    def _forget(self, labels: list[int]) -> None:
        for label in labels:
            del self._label_of[self._id_of.pop(label)]
            self._metadata.pop(label, None)

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
        metas = [check_metadata(m, f"item {i}") for i, m in enumerate(metadata or [{}] * len(ids))]
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
                self._ann.remove(self._apply_delete(present))
                self._maintain()
            return len(present), len(self._id_of)

    def _maintain(self) -> None:
        if self._ann.tombstones and len(self._ann.tombstones) > max(64, len(self._id_of) // 4):
            self._rebuild_ann()  # compact HNSW tombstones
        if self._wal is not None and self._wal.records_since_open >= self.snapshot_every:
            self.snapshot()

    # -------------------------------------------------------------- reading
    def count(self) -> int:
        return len(self._id_of)

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
                    found.append((item_id, self._matrix[label].copy(), dict(self._metadata[label])))
            return found, missing

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        filter: Mapping[str, Any] | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
    ) -> list[Hit]:
        """Top ``k`` by score (higher is closer: similarity, or minus squared L2 distance)."""
        if k < 1:
            raise InvalidInputError("k must be at least 1", field="k")
        (vector,) = self._prepare(check_vectors(np.asarray(query)[None, :], self.spec.dimension, "vector"))
        wanted = check_metadata(filter or {}, "filter")
        with self._lock.read():
            if not self._id_of:
                return []
            allowed = None
            if wanted:
                allowed = np.fromiter(
                    (x for x, m in self._metadata.items() if _matches(m, wanted)), dtype=np.int64
                )
                if not len(allowed):
                    return []
            if self._ann.trained:
                fetch = k if self.spec.kind == "flat" else k * max(self.spec.params.rerank, 1)
                candidates = self._ann.search(
                    vector, min(fetch, len(self._id_of)), allowed=allowed, ef_search=ef_search, nprobe=nprobe
                )
                candidates = candidates[candidates >= 0]
            else:
                candidates = allowed if allowed is not None else np.fromiter(self._id_of, dtype=np.int64)
            candidates = np.array([c for c in candidates.tolist() if c in self._id_of], dtype=np.int64)
            if not len(candidates):
                return []
            vectors = self._matrix[candidates]
            if self.spec.metric == "l2":
                scores = -((vectors - vector) ** 2).sum(axis=1)
            else:
                scores = vectors @ vector
            order = np.argsort(-scores, kind="stable")[:k]
            return [
                Hit(
                    self._id_of[int(candidates[i])],
                    float(scores[i]),
                    dict(self._metadata[int(candidates[i])]),
                )
                for i in order
            ]

    def describe(self) -> dict[str, Any]:
        trained = self._ann.trained
        if trained:
            status = "ready"
        else:
            needed = self.spec.params.train_size()
            status = f"training: needs {needed} vectors, has {self.count()}; searched exactly"
        return {
            "trained": trained,
            "status": status,
            "count": self.count(),
            "durable": self.folder is not None,
            "device": self._ann.device,
        }

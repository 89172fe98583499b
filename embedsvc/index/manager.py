"""All collections of a server: create, delete, list, and open them from a data directory.

Layout: ``DATA_DIR/indexes/<name>/{spec.json, binding.json, snapshot.bin, state.json, wal.log}``. Without a
data directory collections live in memory only (and say so: ``durable = false``).

One process owns a data directory at a time (``DATA_DIR/.lock``, an flock held while open): a
second server or a local ``embedsvc index build`` on the same directory is refused with the
holder's pid and command, instead of both writing and one overwriting the other's work.

An index that cannot be opened (damaged files, a spec faiss cannot build) is kept aside as
*broken*: listed with ``status: error: ...``, DATA_LOSS for its data calls, its files untouched,
while the server and every other index keep serving.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from embedsvc.errors import (
    CorruptDataError,
    FailedPreconditionError,
    IndexExistsError,
    IndexNotFoundError,
    InvalidInputError,
)
from embedsvc.index.ann import faiss_module
from embedsvc.index.collection import Collection, IndexSpec
from embedsvc.index.gpu import check_device_setting, resolve_device
from embedsvc.index.lock import DataDirLock
from embedsvc.index.wal import fsync_dir

log = logging.getLogger("embedsvc.index")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: "$" would accept a final newline


class IndexManager:
    def __init__(
        self,
        data_dir: Path | None,
        *,
        fsync: bool = True,
        snapshot_every: int = 5000,
        index_device: str = "auto",
    ) -> None:
        check_device_setting(index_device)
        self.data_dir = data_dir
        self.index_device = index_device
        self._fixed_options: dict[str, Any] = {"fsync": fsync, "snapshot_every": snapshot_every}
        if index_device.startswith("gpu"):
            _ = self.gpu_device  # an explicit GPU request fails at start-up, not at the first index
        self.collections: dict[str, Collection] = {}
        self.broken: dict[str, CorruptDataError] = {}
        self._lock = threading.Lock()  # guards the name -> collection maps
        self._dir_lock: DataDirLock | None = None
        if data_dir is not None:
            (data_dir / "indexes").mkdir(parents=True, exist_ok=True)
            self._dir_lock = DataDirLock.acquire(data_dir)
            try:
                self._open_all()
            except BaseException:
                self._dir_lock.release()
                raise

    @functools.cached_property
    def gpu_device(self) -> int | None:
        """Where unfiltered searches run: a GPU number, or None for CPU (imports faiss unless 'cpu')."""
        if self.index_device == "cpu":
            return None
        return resolve_device(self.index_device, faiss_module())

    @property
    def _options(self) -> dict[str, Any]:
        return {**self._fixed_options, "gpu_device": self.gpu_device}

    def _folder(self, name: str) -> Path | None:
        return None if self.data_dir is None else self.data_dir / "indexes" / name

    def _open_all(self) -> None:
        assert self.data_dir is not None
        self._finish_reembeds()
        for folder in sorted((self.data_dir / "indexes").iterdir()):
            if folder.name.startswith((".deleted-", ".creating-")):
                shutil.rmtree(folder, ignore_errors=True)  # a delete or create interrupted by a crash
                continue
            if not folder.is_dir():
                continue
            try:
                self.collections[folder.name] = Collection.open(folder, **self._options)
                log.info(
                    "index opened",
                    extra={"index": folder.name, "count": self.collections[folder.name].count()},
                )
            except Exception as exc:  # one bad index must not stop the others, nor start-up
                damage = (
                    exc
                    if isinstance(exc, CorruptDataError)
                    else CorruptDataError(
                        f"index {folder.name!r} could not be opened: {type(exc).__name__}: {exc}"
                    )
                )
                self.broken[folder.name] = damage
                log.error(
                    "index not loaded: damaged; its files were left untouched "
                    "(embedsvc index repair salvages it, DeleteIndex removes it)",
                    extra={"index": folder.name, "error": str(damage)},
                )

    # ------------------------------------------------------- re-embedding
    def _finish_reembeds(self) -> None:
        """A ``.reembed-NAME`` folder is a re-embed in progress (discarded: the index is whole without
        it), unless NAME is missing: then the server stopped mid-swap, after the old folder was moved
        away, and the re-embedded one (complete by then) takes its place."""
        assert self.data_dir is not None
        for staging in sorted((self.data_dir / "indexes").glob(".reembed-*")):
            target = staging.with_name(staging.name.removeprefix(".reembed-"))
            if target.exists():
                shutil.rmtree(staging, ignore_errors=True)
            else:
                os.replace(staging, target)
                log.warning("re-embedded index swapped in at start-up", extra={"index": target.name})

    def staging(self, spec: IndexSpec) -> Collection:
        """An empty collection to re-embed index ``spec.name`` into, beside it."""
        folder = self._folder(spec.name)
        staging = None if folder is None else folder.with_name(f".reembed-{spec.name}")
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        return Collection.create(spec, staging, **self._options)

    def swap(self, name: str, old: Collection, fresh: Collection, *, snapshot: bool = True) -> bool:
        """Serve ``fresh`` (from ``staging``) as ``name`` instead of ``old``: under old's write lock, so
        no write lands in old once fresh has everything; a write waiting for it retries on fresh.
        False (and nothing done) if old was written since the last ``take_written``. ``snapshot``
        False: fresh moves with its log as it is (durable either way: a snapshot taken earlier plus the
        log replay on open), so the swap, which holds old's lock, stays short whatever the size."""
        with self._lock, old._lock.write():
            if self.collections.get(name) is not old:
                raise FailedPreconditionError(
                    f"index {name!r} was dropped or replaced while it was re-embedded"
                )
            if old._touched:
                return False  # written since the caller's last copy: it copies those, then retries
            folder = self._folder(name)
            if folder is not None and fresh.folder is not None:
                if snapshot:  # its files complete on their own: the log starts empty
                    fresh.snapshot()
                fresh._close_files()
                trash = folder.with_name(f".deleted-{name}-{uuid.uuid4().hex[:8]}")
                os.replace(folder, trash)
                os.replace(fresh.folder, folder)  # a stop between the two: see _finish_reembeds
                fsync_dir(folder.parent)
                fresh.folder = folder
                fresh._open_wal()
                old._close_files()
                shutil.rmtree(trash, ignore_errors=True)
            old.retired = True
            self.collections[name] = fresh
            return True

    def discard(self, staging: Collection) -> None:
        """Drop a staging collection that was not swapped in, and its folder."""
        staging.close()
        if staging.folder is not None:
            shutil.rmtree(staging.folder, ignore_errors=True)

    def create(self, spec: IndexSpec) -> Collection:
        if not _NAME.fullmatch(spec.name):
            raise InvalidInputError(
                f"index name {spec.name!r} must be 1-64 letters, digits, '_', '.', '-' "
                "(starting with a letter "
                "or digit)",
                field="name",
            )
        with self._lock:
            if spec.name in self.collections or spec.name in self.broken:
                raise IndexExistsError(f"index {spec.name!r} already exists")
            collection = Collection.create(spec, self._folder(spec.name), **self._options)
            self.collections[spec.name] = collection
            return collection

    def get(self, name: str) -> Collection:
        collection = self.collections.get(name)
        if collection is not None:
            return collection
        if name in self.broken:
            raise self.broken[name]
        raise IndexNotFoundError(
            f"no index named {name!r}; existing indexes: {', '.join(sorted(self.collections)) or 'none'}"
        )

    def delete(self, name: str) -> None:
        with self._lock:
            collection = self.collections.pop(name, None)
            if collection is None and self.broken.pop(name, None) is None:
                raise IndexNotFoundError(f"no index named {name!r}")
            if collection is not None:
                collection.close()
            folder = self._folder(name)
            if folder is not None and folder.exists():
                trash = folder.with_name(f".deleted-{name}-{uuid.uuid4().hex[:8]}")
                os.replace(folder, trash)  # atomic: a crash leaves the index either whole or gone
                shutil.rmtree(trash, ignore_errors=True)

    def repair(self, name: str) -> dict[str, Any]:
        """Salvage a broken index (see Collection.salvage) and serve what it recovered."""
        with self._lock:
            if name not in self.broken:
                if name in self.collections:
                    raise InvalidInputError(f"index {name!r} is not damaged; nothing to repair", field="name")
                raise IndexNotFoundError(f"no index named {name!r}")
            folder = self._folder(name)
            assert folder is not None
            report = Collection.salvage(folder)
            self.collections[name] = Collection.open(folder, **self._options)
            del self.broken[name]
            log.warning("index repaired", extra={"index": name, **{k: str(v) for k, v in report.items()}})
            return report

    def close(self) -> None:
        for collection in self.collections.values():
            collection.close()
        if self._dir_lock is not None:
            self._dir_lock.release()
            self._dir_lock = None

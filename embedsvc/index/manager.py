"""All collections of a server: create, delete, list, and open them from a data directory.

Layout: ``DATA_DIR/indexes/<name>/{spec.json, snapshot.bin, wal.log}``. Without a
data directory collections live in memory only (and say so: ``durable = false``).
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

from embedsvc.errors import CorruptDataError, IndexExistsError, IndexNotFoundError, InvalidInputError
from embedsvc.index.ann import faiss_module
from embedsvc.index.collection import Collection, IndexSpec
from embedsvc.index.gpu import check_device_setting, resolve_device

log = logging.getLogger("embedsvc.index")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


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
        if data_dir is not None:
            (data_dir / "indexes").mkdir(parents=True, exist_ok=True)
            self._open_all()

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
        for folder in sorted((self.data_dir / "indexes").iterdir()):
            if folder.name.startswith(".deleted-"):
                shutil.rmtree(folder, ignore_errors=True)  # a delete interrupted by a crash
                continue
            if not folder.is_dir():
                continue
            try:
                self.collections[folder.name] = Collection.open(folder, **self._options)
                log.info(
                    "index opened",
                    extra={"index": folder.name, "count": self.collections[folder.name].count()},
                )
            except CorruptDataError as exc:
                self.broken[folder.name] = exc
                log.error("index not loaded: corrupted", extra={"index": folder.name, "error": str(exc)})

    def create(self, spec: IndexSpec) -> Collection:
        if not _NAME.match(spec.name):
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

    def close(self) -> None:
        for collection in self.collections.values():
            collection.close()

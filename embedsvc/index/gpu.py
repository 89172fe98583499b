"""A GPU copy of a collection's FAISS index, for the searches a GPU index can answer.

The CPU index stays the source of truth: it takes every write and answers what GPU
FAISS cannot (metadata filters need an IDSelector, HNSW has no GPU form without
cuVS). GPU indexes cannot remove ids either, so removals leave stale entries in the
copy: searches fetch ``k + stale`` candidates (the collection drops labels that are
no longer live and re-ranks exactly), and the copy is refreshed from the CPU index
once stale entries pile up.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any

import numpy as np

from embedsvc.errors import InvalidInputError

log = logging.getLogger("embedsvc.index")

GPU_KINDS = ("flat", "ivf_flat", "ivf_pq")
# faiss GPU k-selection limit (2048 on CUDA builds); larger fetches go to the CPU index
GPU_MAX_K = 2048
_DEVICE = re.compile(r"^(auto|cpu|gpu)(?::(\d+))?$")


def gpu_count(faiss: Any) -> int:
    """GPUs the installed faiss can use (0 for faiss-cpu, which has no get_num_gpus)."""
    counter = getattr(faiss, "get_num_gpus", None)
    return int(counter()) if counter is not None else 0


def check_device_setting(setting: str) -> None:
    match = _DEVICE.match(setting)
    if match is None or (match.group(2) is not None and match.group(1) != "gpu"):
        raise InvalidInputError(
            f"index_device {setting!r}: expected auto, cpu, gpu or gpu:N", field="index_device"
        )


def resolve_device(setting: str, faiss: Any) -> int | None:
    """The GPU number to mirror indexes onto, or None for CPU only.

    ``auto`` uses GPU 0 when the installed faiss has GPUs; ``gpu``/``gpu:N`` insist.
    """
    check_device_setting(setting)
    kind, _, number = setting.partition(":")
    if kind == "cpu":
        return None
    available = gpu_count(faiss)
    if kind == "auto":
        return 0 if available else None
    device = int(number or 0)
    if device >= available:
        found = f"has {available} GPU(s)" if available else "has no GPU support"
        raise InvalidInputError(
            f"index_device {setting!r}, but the installed faiss {found}: install faiss-gpu "
            "(pip install 'embedsvc[index-gpu]' in place of faiss-cpu) or set index_device = 'auto'",
            field="index_device",
        )
    return device


@functools.cache
def _device_slot(device: int, faiss: Any) -> tuple[Any, threading.Lock]:
    """One StandardGpuResources per GPU, shared by all indexes; faiss GPU calls are not thread-safe."""
    return faiss.StandardGpuResources(), threading.Lock()


def to_gpu(cpu_index: Any, device: int, faiss: Any) -> Any:
    resources, _ = _device_slot(device, faiss)
    options = faiss.GpuClonerOptions()
    # fp16 lookup tables let IVF-PQ take >= 56-byte codes (its candidates are re-ranked exactly); for flat
    # the same option would store the vectors in fp16, and an exact index must stay exact
    options.useFloat16 = isinstance(cpu_index, faiss.IndexIVFPQ)
    return faiss.index_cpu_to_gpu(resources, device, cpu_index, options)


class GpuMirror:
    """The GPU copy of one CPU index; callers hold the collection's write lock for writes."""

    def __init__(self, cpu_index: Any, device: int, faiss: Any) -> None:
        self.device = device
        self._faiss = faiss
        self._lock = _device_slot(device, faiss)[1]
        self.stale = 0
        self.index = to_gpu(cpu_index, device, faiss)

    def refresh(self, cpu_index: Any) -> None:
        index = to_gpu(cpu_index, self.device, self._faiss)
        with self._lock:
            self.index, self.stale = index, 0

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        with self._lock:
            self.index.add_with_ids(vectors, labels)

    def removed(self, count: int, cpu_index: Any) -> None:
        """``count`` labels left the CPU index; refresh once a quarter of the copy is stale."""
        self.stale += count
        if self.stale > max(1024, int(self.index.ntotal) // 4):
            self.refresh(cpu_index)

    def search(self, queries: np.ndarray, k: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray] | None:
        """Distances and candidate labels [queries, fetch], or None when the GPU cannot answer (then the
        CPU index does)."""
        fetch = min(k + self.stale, int(self.index.ntotal))
        if fetch > GPU_MAX_K or fetch < 1:
            return None
        params = self._faiss.SearchParametersIVF(nprobe=nprobe) if nprobe is not None else None
        try:
            with self._lock:
                distances, labels = self.index.search(queries, fetch, params=params)
        except RuntimeError as exc:  # a limit of this faiss build: the CPU index answers instead
            log.warning("GPU index search failed; searched on CPU", extra={"error": str(exc)})
            return None
        return np.asarray(distances), np.asarray(labels)

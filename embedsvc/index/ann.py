"""FAISS structures behind a collection, by kind; faiss is imported lazily.

The collection keeps every vector itself (for Get, re-ranking and rebuilds), so
the FAISS index is a derived, rebuildable structure keyed by int64 labels.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedsvc.errors import InvalidInputError
from embedsvc.index.gpu import GPU_KINDS, GpuMirror

log = logging.getLogger("embedsvc.index")

KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq")
METRICS = ("cosine", "inner_product", "l2")


@functools.cache
def faiss_module() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(
            "the vector index needs faiss: pip install 'embedsvc[index]' (faiss-cpu, or faiss-gpu with CUDA)"
        ) from exc
    return faiss


@dataclass(frozen=True)
class AnnParams:
    hnsw_m: int = 32
    # measured on 1M real embeddings (scripts/bench_index.py): efConstruction 80 / efSearch 64 gave recall@10
    # 0.89; 200 / 128 gave 0.948, 200 / 256 0.962
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 192
    # recall-first defaults: >= 0.95 recall@10 even on unclustered random vectors (tests/test_index_core.py)
    ivf_nlist: int = 32
    ivf_nprobe: int = 24
    pq_m: int = 0  # 0 = dimension / 4 rounded to a divisor
    pq_bits: int = 8
    rerank: int = 8  # IVF-PQ fetches k * rerank candidates and re-ranks them with exact scores

    def for_kind(self, kind: str) -> dict[str, int]:
        """The parameters that shape an index of this kind (a flat index has none)."""
        return {name: getattr(self, name) for name in KIND_PARAMS[kind]}

    def train_size(self, kind: str) -> int:
        """Vectors needed before an IVF index is trained: faiss wants ~39 per coarse centroid, and
        a PQ codebook at least as many vectors as its 2^pq_bits centroids."""
        return max(39 * self.ivf_nlist, 2**self.pq_bits if kind == "ivf_pq" else 0)


# accepted ranges, checked before anything is written: values faiss accepts without exhausting memory
# or overflowing its 32-bit arguments (hnsw_m = 2^32 - 1 once made a spec that broke every start-up)
PARAM_RANGES = {
    "hnsw_m": (2, 256),
    "hnsw_ef_construction": (1, 4096),
    "hnsw_ef_search": (1, 32768),
    "ivf_nlist": (1, 65536),
    "ivf_nprobe": (1, 65536),
    "pq_m": (0, 65536),
    "pq_bits": (1, 16),
    "rerank": (1, 100),
}
KIND_PARAMS = {
    "flat": (),
    "hnsw": ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search"),
    "ivf_flat": ("ivf_nlist", "ivf_nprobe"),
    "ivf_pq": ("ivf_nlist", "ivf_nprobe", "pq_m", "pq_bits", "rerank"),
}
MAX_K = 10_000  # results per search
MAX_EF_SEARCH = PARAM_RANGES["hnsw_ef_search"][1]


def check_params(params: AnnParams, dimension: int, kind: str) -> None:
    """Every parameter within what faiss accepts, with a message that names it; raises InvalidInputError."""
    for name, (low, high) in PARAM_RANGES.items():
        value = getattr(params, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            message = f"{name} must be an integer from {low} to {high}, got {value!r}"
            raise InvalidInputError(message, field=name)
    if kind == "ivf_pq" and params.pq_m and (params.pq_m > dimension or dimension % params.pq_m):
        divisors = [m for m in range(1, dimension + 1) if dimension % m == 0]
        raise InvalidInputError(
            f"pq_m ({params.pq_m}) must divide the dimension {dimension}: one of {divisors} (0 = automatic)",
            field="pq_m",
        )


def _pq_m(dimension: int, wanted: int) -> int:
    target = wanted or max(1, dimension // 4)
    return max(m for m in range(1, dimension + 1) if dimension % m == 0 and m <= target)


class AnnIndex:
    """Approximate or exact nearest-neighbour structure over (label, vector) pairs."""

    def __init__(
        self, kind: str, metric: str, dimension: int, params: AnnParams, gpu_device: int | None = None
    ) -> None:
        self.kind = kind
        self.metric = metric
        self.dimension = dimension
        self.params = params
        self.faiss = faiss_module()
        self._metric = self.faiss.METRIC_L2 if metric == "l2" else self.faiss.METRIC_INNER_PRODUCT
        self.index: Any = None
        self.tombstones: set[int] = set()
        self._dead: tuple[Any, Any] | None = None
        # unfiltered searches go to a GPU copy when there is a GPU and the kind has a GPU form
        self.gpu_device = gpu_device if kind in GPU_KINDS else None
        self.gpu: GpuMirror | None = None

    @property
    def trained(self) -> bool:
        return self.index is not None

    @property
    def device(self) -> str:
        return f"gpu:{self.gpu.device}" if self.gpu is not None else "cpu"

    def _mirror(self) -> None:
        self.gpu = None
        device = self.gpu_device
        if device is None or self.index is None:
            return

        def copy() -> None:
            self.gpu = GpuMirror(self.index, device, self.faiss)

        self._on_gpu(copy)

    def _on_gpu(self, step: Callable[[], None]) -> None:
        """Run a step on the GPU copy; if faiss refuses it, drop the copy and let the CPU index serve.

        Writes call this after the write is logged and applied on CPU, so a GPU failure
        (an IVF-PQ code size with no GPU kernel, GPU memory) never fails a write.
        """
        try:
            step()
        except RuntimeError as exc:
            self.gpu = None
            log.warning(
                "index served from CPU: faiss could not keep its GPU copy",
                extra={"kind": self.kind, "error": str(exc)},
            )

    def _new(self, train: np.ndarray | None) -> Any:
        f, d, p = self.faiss, self.dimension, self.params
        if self.kind == "flat":
            base = f.IndexFlatL2(d) if self.metric == "l2" else f.IndexFlatIP(d)
            return f.IndexIDMap2(base)
        if self.kind == "hnsw":
            base = f.IndexHNSWFlat(d, p.hnsw_m, self._metric)
            base.hnsw.efConstruction = p.hnsw_ef_construction
            return f.IndexIDMap2(base)
        quantizer = f.IndexFlatL2(d) if self.metric == "l2" else f.IndexFlatIP(d)
        if self.kind == "ivf_flat":
            index = f.IndexIVFFlat(quantizer, d, p.ivf_nlist, self._metric)
        else:
            index = f.IndexIVFPQ(quantizer, d, p.ivf_nlist, _pq_m(d, p.pq_m), p.pq_bits, self._metric)
            index.pq.cp.min_points_per_centroid = (
                4  # codebooks train on what we have; re-ranking fixes the rest
            )
        self._quantizer = quantizer  # the IVF index borrows it: keep it alive as long as the index
        index.train(train)
        return index

    def rebuild(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """From scratch (start-up, HNSW compaction, IVF training once enough vectors exist)."""
        self.tombstones.clear()
        self._dead = None
        if self.kind.startswith("ivf") and len(labels) < self.params.train_size(self.kind):
            self.index = None  # searched exactly until trained
            return
        self.index = self._new(vectors if self.kind.startswith("ivf") else None)
        if len(labels):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), labels.astype(np.int64))
        self._mirror()

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if self.index is not None and len(labels):
            vectors, labels = np.ascontiguousarray(vectors, dtype=np.float32), labels.astype(np.int64)
            self.index.add_with_ids(vectors, labels)
            if (mirror := self.gpu) is not None:
                self._on_gpu(lambda: mirror.add(labels, vectors))

    def remove(self, labels: list[int]) -> None:
        if self.index is None or not labels:
            return
        if self.kind == "hnsw":
            self.tombstones.update(labels)  # HNSW cannot delete: hidden at search, compacted by rebuild
            self._dead = None
        else:
            self.index.remove_ids(self.faiss.IDSelectorBatch(np.asarray(labels, dtype=np.int64)))
            if (mirror := self.gpu) is not None:
                self._on_gpu(lambda: mirror.removed(len(labels), self.index))

    def _dead_selector(self) -> Any:
        """Hides HNSW tombstones; built once per set of tombstones, not per search."""
        if self._dead is None:
            f = self.faiss
            dead = f.IDSelectorBatch(np.fromiter(self.tombstones, dtype=np.int64, count=len(self.tombstones)))
            self._dead = (f.IDSelectorNot(dead), dead)  # the Not borrows the batch: keep both alive
        return self._dead[0]

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed: np.ndarray | None,
        ef_search: int | None,
        nprobe: int | None,
        share: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distances and candidate labels [queries, k] (-1 padding, or labels no longer live, possible),
        all queries in one faiss call (its threads split them). ``allowed``: a bitmap over labels (bit i =
        label i may be returned; little-endian bytes, as ``np.packbits(..., bitorder="little")``) of live
        items only, ``share`` the fraction of items it allows."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.gpu is not None and allowed is None:
            ivf_nprobe = None
            if self.kind.startswith("ivf"):
                ivf_nprobe = min(nprobe or self.params.ivf_nprobe, self.params.ivf_nlist)
            found = self.gpu.search(queries, k, ivf_nprobe)
            if found is not None:
                return found
        f = self.faiss
        selector = None
        if allowed is not None:
            selector = f.IDSelectorBitmap(allowed)  # the wrapper keeps the array alive
        elif self.tombstones:
            selector = self._dead_selector()
        if self.kind == "hnsw":
            # a filter hides most of the graph's neighbours: widen the beam by 1/sqrt(share), which keeps
            # filtered recall at unfiltered recall at 50 %, 10 % and 1 % (tests/test_index_filters.py)
            ef = max(ef_search or self.params.hnsw_ef_search, k) / math.sqrt(max(share, 1e-6))
            params = f.SearchParametersHNSW(efSearch=min(math.ceil(ef), MAX_EF_SEARCH), sel=selector)
        elif self.kind.startswith("ivf"):
            # the nearest allowed items lie farther out: probe more lists, by the same rule
            lists = (nprobe or self.params.ivf_nprobe) / math.sqrt(max(share, 1e-6))
            params = f.SearchParametersIVF(nprobe=min(math.ceil(lists), self.params.ivf_nlist), sel=selector)
        else:
            params = f.SearchParameters(sel=selector)
        distances, labels = self.index.search(queries, k, params=params)
        return distances, labels

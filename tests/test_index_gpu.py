"""GPU FAISS: where indexes go, and the GPU copy's bookkeeping (stale entries, refreshes, CPU fallbacks).

Without faiss-gpu the copy is stood in for by a CPU clone that refuses what GPU FAISS
refuses (removing ids, IDSelector filters), so the bookkeeping is tested on every
machine; ``test_real_gpu_copy`` runs the same checks on a real GPU index.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from embedsvc.config import ServerConfig
from embedsvc.errors import InvalidInputError
from embedsvc.index import gpu
from embedsvc.index import store as store_module
from embedsvc.index.ann import AnnParams
from embedsvc.index.collection import Collection, IndexSpec
from embedsvc.index.manager import IndexManager

faiss = pytest.importorskip("faiss")
DIM = 32
N = 3000


class GpuLikeCopy:
    """A CPU clone with GPU FAISS's limits: no remove_ids, no IDSelector; counts its searches."""

    def __init__(self, cpu_index: Any) -> None:
        self.inner = faiss.clone_index(cpu_index)
        self.searches = 0

    @property
    def ntotal(self) -> int:
        return int(self.inner.ntotal)

    def add_with_ids(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        self.inner.add_with_ids(vectors, labels)

    def remove_ids(self, selector: Any) -> None:
        raise RuntimeError("remove_ids not implemented for this type of index")

    def search(self, queries: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        assert k <= gpu.GPU_MAX_K
        if params is not None and params.sel is not None:
            raise RuntimeError("IDSelector not supported on GPU")
        self.searches += 1
        return self.inner.search(queries, k, params=params)


@pytest.fixture
def stand_in_gpu(monkeypatch):
    copies: list[GpuLikeCopy] = []

    def clone(cpu_index: Any, device: int, module: Any) -> GpuLikeCopy:
        copies.append(GpuLikeCopy(cpu_index))
        return copies[-1]

    monkeypatch.setattr(gpu, "to_gpu", clone)
    monkeypatch.setattr(gpu, "_device_slot", lambda device, module: (None, threading.Lock()))
    return copies


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def pair(kind: str, gpu_device: int | None) -> tuple[Collection, Collection]:
    """An exact CPU index (the reference) and a ``kind`` index with a GPU copy."""

    def spec(name: str, kind: str) -> IndexSpec:
        params = AnnParams(ivf_nlist=16)
        return IndexSpec(name=name, model="m", model_source="s", dimension=DIM, kind=kind, params=params)

    exact = Collection.create(spec("exact", "flat"), None)
    return exact, Collection.create(spec("gpu", kind), None, gpu_device=gpu_device)


def check_mirror_matches_cpu(kind: str, gpu_device: int, *, bitwise_scores: bool = True) -> None:
    """``bitwise_scores``: the copy computes distances exactly like the CPU (the stand-in); a real GPU
    may order near-ties at the k-th place differently, so then a flat index must agree on 9 of 10."""
    cpu, mirrored = pair(kind, gpu_device)
    data, ids = vectors(N, 1), [f"v{i}" for i in range(N)]
    meta = [{"even": i % 2 == 0} for i in range(N)]
    for lo in range(0, N, 1000):  # IVF trains after the first batches
        for c in (cpu, mirrored):
            c.upsert(ids[lo : lo + 1000], data[lo : lo + 1000], meta[lo : lo + 1000])
    assert mirrored.describe()["device"] == f"gpu:{gpu_device}" and cpu.describe()["device"] == "cpu"
    queries = vectors(30, 2)

    def same_results(**search: Any) -> None:
        for q in queries:
            want = [h.id for h in cpu.search(q, 10, **search)]
            got = [h.id for h in mirrored.search(q, 10, **search)]
            overlap = len(set(want) & set(got)) / 10
            if kind == "flat" and bitwise_scores:
                assert got == want
            else:
                assert overlap >= (0.9 if kind == "flat" else 0.8), (want, got)

    same_results()
    same_results(filter={"even": True})  # filtered: the CPU index answers
    # deletes and replaces leave stale entries in the GPU copy; results must not show them
    gone = ids[:200]
    replaced = ids[200:400]
    for c in (cpu, mirrored):
        c.delete(gone)
        c.upsert(replaced, vectors(200, 3), [{"even": False}] * 200)
    assert mirrored._ann.gpu is not None and mirrored._ann.gpu.stale == 400
    for q in queries:
        assert not {h.id for h in mirrored.search(q, 50)} & set(gone)
    for i in range(200, 400, 40):  # a replaced id is found by its new vector
        assert mirrored.search(vectors(200, 3)[i - 200], 1)[0].id == ids[i]
    same_results()
    # enough removals refresh the copy from the CPU index
    for c in (cpu, mirrored):
        c.delete(ids[400:1500])
    # the copy holds what faiss holds: all but the writes still pending (searched exactly beside it)
    assert mirrored._ann.gpu.stale == 0
    assert mirrored._ann.gpu.index.ntotal == mirrored.count() - len(mirrored._pending)
    same_results()


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "ivf_pq"])
def test_gpu_copy_bookkeeping(stand_in_gpu, kind):
    check_mirror_matches_cpu(kind, 0)
    # every copy was searched: unfiltered searches really went to the "GPU"
    assert stand_in_gpu and all(copy.searches for copy in stand_in_gpu[-1:])


def test_hnsw_and_untrained_ivf_stay_on_cpu(stand_in_gpu):
    _, hnsw = pair("hnsw", 0)
    hnsw.upsert(["a"], vectors(1, 0), None)
    assert hnsw.describe()["device"] == "cpu" and not stand_in_gpu
    _, ivf = pair("ivf_flat", 0)
    ivf.upsert(["a", "b"], vectors(2, 0), None)
    assert ivf.describe()["device"] == "cpu" and not ivf.describe()["trained"]


def test_fetches_beyond_the_gpu_limit_go_to_cpu(stand_in_gpu):
    _, mirrored = pair("flat", 0)
    mirrored.upsert([f"v{i}" for i in range(N)], vectors(N, 1), None)
    copy = stand_in_gpu[-1]
    hits = mirrored.search(vectors(1, 2)[0], gpu.GPU_MAX_K + 1)
    assert len(hits) == gpu.GPU_MAX_K + 1 and copy.searches == 0
    mirrored.search(vectors(1, 2)[0], 10)
    assert copy.searches == 1


def test_device_settings():
    no_gpu, two_gpus = SimpleNamespace(get_num_gpus=lambda: 0), SimpleNamespace(get_num_gpus=lambda: 2)
    assert gpu.resolve_device("auto", no_gpu) is None and gpu.resolve_device("auto", two_gpus) == 0
    assert gpu.resolve_device("cpu", two_gpus) is None
    assert gpu.resolve_device("gpu:1", two_gpus) == 1 and gpu.resolve_device("gpu", two_gpus) == 0
    with pytest.raises(InvalidInputError, match="has 2 GPU"):
        gpu.resolve_device("gpu:2", two_gpus)
    from embedsvc.server.preflight import check_before_start  # config holds the value; preflight checks it

    for bad in ("cuda", "auto:1", "gpu:x", ""):
        with pytest.raises(InvalidInputError, match="expected auto, cpu, gpu or gpu:N"):
            check_before_start(ServerConfig(index_device=bad, port=0, http=False))


@pytest.mark.skipif(gpu.gpu_count(faiss) > 0, reason="this faiss has GPUs")
def test_explicit_gpu_without_faiss_gpu_fails_at_start(tmp_path):
    with pytest.raises(InvalidInputError, match="faiss-gpu"):
        IndexManager(tmp_path, index_device="gpu")
    manager = IndexManager(tmp_path, index_device="auto")
    assert manager.gpu_device is None


@pytest.mark.gpu
@pytest.mark.skipif(gpu.gpu_count(faiss) == 0, reason="needs faiss with GPU support (the index-gpu extra)")
@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "ivf_pq"])
def test_real_gpu_copy(kind):
    check_mirror_matches_cpu(kind, 0, bitwise_scores=False)


def test_a_failing_gpu_copy_never_fails_a_write(stand_in_gpu, monkeypatch):
    monkeypatch.setattr(store_module, "BULK_BLOCK", 1)  # writes go to faiss and the copy at once
    exact, mirrored = pair("flat", 0)
    data = vectors(100, 1)
    for c in (exact, mirrored):
        c.upsert([f"v{i}" for i in range(100)], data, None)

    def out_of_memory(vectors: np.ndarray, labels: np.ndarray) -> None:
        raise RuntimeError("CUDA out of memory")

    stand_in_gpu[-1].add_with_ids = out_of_memory  # type: ignore[method-assign]
    for c in (exact, mirrored):
        assert c.upsert(["new"], vectors(1, 5), None) == 101
    assert mirrored.describe()["device"] == "cpu"  # the copy was dropped; the CPU index serves
    assert mirrored.search(vectors(1, 5)[0], 1)[0].id == "new"
    q = vectors(1, 6)[0]
    assert [h.id for h in mirrored.search(q, 10)] == [h.id for h in exact.search(q, 10)]

#!/usr/bin/env python3
"""Vector index at scale: embedsvc collections next to bare faiss with the same parameters, same run.

For each data set (synthetic Gaussian vectors; real embeddings of the bundled corpus repeated with noise)
and each kind (flat, HNSW, IVF): build rate (ours: durable upserts of --block vectors with metadata,
write-ahead log fsynced; faiss: add_with_ids of the same blocks), recall@10 against exact search, QPS one
query at a time and batched, and filtered latency at 1 %, 10 % and 50 % selectivity (a range filter on
an integer field) with its recall, next to faiss given a ready-made IDSelectorBitmap.

python scripts/bench_index.py                                  # 1M vectors, both data sets, all kinds
python scripts/bench_index.py --n 200000 --kinds hnsw --data real --json bench-results/index.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc.index.ann import AnnParams  # noqa: E402
from embedsvc.index.collection import Collection, IndexSpec  # noqa: E402
from scripts.corpus import load_corpus  # noqa: E402

DIM = 384
SHARES = (0.01, 0.1, 0.5)
BUCKETS = 100  # item i has {"bucket": i % 100}: bucket < 1, < 10, < 50 select 1 %, 10 %, 50 %


def normalized(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return normalized(rng.standard_normal((n, DIM))), normalized(rng.standard_normal((queries, DIM)))


def real(n: int, queries: int, distinct: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``distinct`` corpus texts (sentences and passages), each repeated with Gaussian noise
    (cosine ~0.93 to its original) up to ``n``; queries are other texts of the same corpus."""
    path = cache / f"bench_index_real_{distinct}_{queries}.npz"
    if path.exists():
        stored = np.load(path)
        base, query_vectors = stored["base"], stored["queries"]
    else:
        from sentence_transformers import SentenceTransformer

        from embedsvc.models.loading import default_model_path

        model = SentenceTransformer(str(default_model_path()), device="cpu")
        texts = load_corpus(None, distinct, seed=0)
        held_out = load_corpus(None, queries, seed=1)
        print(f"embedding {len(texts)} corpus texts (cached in {path})", flush=True)
        base = model.encode(texts, batch_size=64, normalize_embeddings=True)
        query_vectors = model.encode(held_out, batch_size=64, normalize_embeddings=True)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, base=base, queries=query_vectors)
    rng = np.random.default_rng(1)
    data = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        rows = base[np.arange(start, stop) % len(base)]
        data[start:stop] = normalized(rows + rng.standard_normal(rows.shape).astype(np.float32) * 0.02)
    return data, normalized(query_vectors)


def exact_top(data: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Ground truth: exact inner-product top-k labels, in blocks."""
    labels = np.arange(len(data)) if allowed is None else allowed
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(labels), 200_000):
        block = labels[start : start + 200_000]
        scores = queries @ data[block].T
        scores = np.concatenate([best_scores, scores], axis=1)
        ids = np.concatenate([best, np.broadcast_to(block, (len(queries), len(block)))], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    return best


def recall(found: list[list[int]] | np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:10]) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def timed(step: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = step()
    return result, time.perf_counter() - started


class Bare:
    """The same faiss structure embedsvc builds, driven directly."""

    def __init__(self, kind: str, params: AnnParams) -> None:
        import faiss

        self.faiss, self.kind, self.params = faiss, kind, params
        if kind == "flat":
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        elif kind == "hnsw":
            base = faiss.IndexHNSWFlat(DIM, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = params.hnsw_ef_construction
            self.index = faiss.IndexIDMap2(base)
        else:
            self.quantizer = faiss.IndexFlatIP(DIM)
            self.index = faiss.IndexIVFFlat(self.quantizer, DIM, params.ivf_nlist, faiss.METRIC_INNER_PRODUCT)
        self.trained = kind != "ivf_flat"

    def add(self, vectors: np.ndarray, labels: np.ndarray, seen: np.ndarray) -> None:
        if not self.trained:
            if len(seen) < self.params.train_size(self.kind):
                return
            self.index.train(seen)  # what embedsvc trains on: everything written when training starts
            self.trained = True
            self.index.add_with_ids(seen, np.arange(len(seen), dtype=np.int64))
            return
        self.index.add_with_ids(vectors, labels)

    def search(self, queries: np.ndarray, k: int, selector: Any = None) -> np.ndarray:
        f = self.faiss
        if self.kind == "hnsw":
            params = f.SearchParametersHNSW(efSearch=max(self.params.hnsw_ef_search, k), sel=selector)
        elif self.kind == "ivf_flat":
            params = f.SearchParametersIVF(nprobe=self.params.ivf_nprobe, sel=selector)
        else:
            params = f.SearchParameters(sel=selector)
        return self.index.search(queries, k, params=params)[1]


def bench_kind(kind: str, data: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    params = AnnParams(ivf_nlist=args.ivf_nlist, ivf_nprobe=args.ivf_nprobe)
    n, block = len(data), args.block
    single = queries[: args.single_queries if kind != "flat" else min(args.single_queries, 50)]
    truth = exact_top(data, queries, 10)
    single_truth = truth[: len(single)]
    result: dict[str, Any] = {"kind": kind, "n": n, "params": params.__dict__}

    bare = Bare(kind, params)
    _, seconds = timed(
        lambda: [
            bare.add(data[s : s + block], np.arange(s, min(n, s + block)), data[: s + block])
            for s in range(0, n, block)
        ]
    )
    result["bare_build_per_s"] = n / seconds
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        spec = IndexSpec("bench", "m", "m", DIM, metric="inner_product", kind=kind, params=params)
        ours = Collection.create(spec, Path(tmp) / "bench")
        ids = [f"d{i}" for i in range(n)]
        meta = [{"bucket": i % BUCKETS} for i in range(n)]
        _, seconds = timed(
            lambda: [
                ours.upsert(ids[s : s + block], data[s : s + block], meta[s : s + block])
                for s in range(0, n, block)
            ]
        )
        result["ours_build_per_s"] = n / seconds
        result["build_ratio"] = result["ours_build_per_s"] / result["bare_build_per_s"]
        label = {f"d{i}": i for i in range(n)}

        def ours_one_by_one(filter_spec: Any = None) -> tuple[list[list[int]], float]:
            found, seconds = timed(
                lambda: [[label[h.id] for h in ours.search(q, 10, filter=filter_spec)] for q in single]
            )
            return found, seconds / len(single)

        def bare_one_by_one(selector: Any = None) -> tuple[np.ndarray, float]:
            found, seconds = timed(lambda: [bare.search(q[None, :], 10, selector)[0] for q in single])
            return np.asarray(found), seconds / len(single)

        # alternate rounds: a shared machine's noise hits both sides alike
        ours_found, ours_s = ours_one_by_one()
        bare_found, bare_s = bare_one_by_one()
        ours_s = min(ours_s, ours_one_by_one()[1])
        bare_s = min(bare_s, bare_one_by_one()[1])
        result.update(
            ours_recall=recall(ours_found, single_truth),
            bare_recall=recall(bare_found, single_truth),
            ours_qps=1 / ours_s,
            bare_qps=1 / bare_s,
            qps_ratio=bare_s / ours_s,
        )
        batch = queries[: args.batch_queries]
        ours_batch, ours_b = timed(lambda: ours.search_many(batch, 10))
        bare_batch, bare_b = timed(lambda: bare.search(batch, 10))
        result.update(
            ours_batch_qps=len(batch) / ours_b,
            bare_batch_qps=len(batch) / bare_b,
            batch_ratio=bare_b / ours_b,
            ours_batch_recall=recall(
                [[label[h.id] for h in hits] for hits in ours_batch], truth[: len(batch)]
            ),
            bare_batch_recall=recall(bare_batch, truth[: len(batch)]),
        )
        filtered = []
        for share in SHARES:
            bound = round(share * BUCKETS)
            allowed = np.flatnonzero(np.arange(n) % BUCKETS < bound)
            allowed_truth = exact_top(data, single, 10, allowed)
            found, seconds = ours_one_by_one({"bucket": {"lt": bound}})
            bits = np.zeros(n, dtype=bool)
            bits[allowed] = True
            selector = bare.faiss.IDSelectorBitmap(np.packbits(bits, bitorder="little"))
            bare_found, bare_seconds = bare_one_by_one(selector)
            # best of two alternating rounds, as unfiltered: one round was at the mercy of a noisy neighbour
            seconds = min(seconds, ours_one_by_one({"bucket": {"lt": bound}})[1])
            bare_seconds = min(bare_seconds, bare_one_by_one(selector)[1])
            filtered.append(
                {
                    "share": share,
                    "ours_ms": seconds * 1e3,
                    "ours_vs_unfiltered": seconds / ours_s,
                    "ours_recall": recall(found, allowed_truth),
                    "bare_ms": bare_seconds * 1e3,
                    "bare_recall": recall(bare_found, allowed_truth),
                }
            )
        result["filtered"] = filtered
        ours.close()
    return result


def report(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'data':9} {'kind':8} {'build/s ours':>12} {'x bare':>6} {'QPS ours':>9} {'x bare':>6} "
        f"{'batch QPS':>9} {'x bare':>6} {'recall ours/bare':>16}  "
        "filtered ms (x unfiltered, recall) 1/10/50 %"
    )
    for r in rows:
        filtered = "  ".join(
            f"{f['ours_ms']:.2f} ({f['ours_vs_unfiltered']:.1f}x, {f['ours_recall']:.2f})"
            for f in r["filtered"]
        )
        print(
            f"{r['data']:9} {r['kind']:8} {r['ours_build_per_s']:12.0f} {r['build_ratio']:6.2f} "
            f"{r['ours_qps']:9.0f} {r['qps_ratio']:6.2f} {r['ours_batch_qps']:9.0f} {r['batch_ratio']:6.2f} "
            f"{r['ours_recall']:7.3f}/{r['bare_recall']:.3f}  {filtered}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--data", choices=("synthetic", "real", "both"), default="both")
    parser.add_argument("--kinds", default="flat,hnsw,ivf_flat")
    parser.add_argument("--block", type=int, default=10_000, help="vectors per upsert / faiss add")
    parser.add_argument("--single-queries", type=int, default=200)
    parser.add_argument("--batch-queries", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=20_000, help="real data: distinct texts embedded")
    parser.add_argument("--ivf-nlist", type=int, default=1024)
    parser.add_argument("--ivf-nprobe", type=int, default=32)
    parser.add_argument("--tmp", type=Path, default=None, help="where the durable collection is written")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "embedsvc")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    sets = ("synthetic", "real") if args.data == "both" else (args.data,)
    for name in sets:
        queries_needed = max(args.single_queries, args.batch_queries)
        if name == "synthetic":
            data, queries = synthetic(args.n, queries_needed)
        else:
            data, queries = real(args.n, queries_needed, args.distinct, args.cache)
        for kind in args.kinds.split(","):
            print(f"{name} {kind} n={args.n} ...", flush=True)
            row = {"data": name, **bench_kind(kind, data, queries, args)}
            rows.append(row)
            report([row])
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=2))
    print()
    report(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

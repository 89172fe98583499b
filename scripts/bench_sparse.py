#!/usr/bin/env python3
"""Sparse and hybrid search: the inverted index at scale, and hybrid retrieval quality.

1. Scale (``--n``, default 100 000): SPLADE-like vectors over a 30 522-term vocabulary (BERT's) — term
   ids Zipf-distributed by rank (shuffled onto ids), 100-200 nonzeros per document, ~20 per query,
   log-normal weights. Durable build rate, memory, latency of the inverted index (embedsvc's
   ``mode=sparse``) one query at a time, unfiltered and with a 10 % filter, its recall@10 against an
   exact brute-force scorer (every document's dot product: scipy CSR x query), and that scorer's own
   latency in the same run as the baseline.
2. Quality: STS-B dev sentences (``../shared/data``; skipped when absent) embedded with the bundled
   all-MiniLM-L6-v2 (dense), with BM25 weights over its word-piece ids as the sparse vectors (no
   SPLADE checkpoint is reachable offline). Known-item queries made of a sentence's two rarest
   word pieces (exact rare terms: names, numbers) — recall@1 and MRR@10 of dense, sparse, and hybrid
   (RRF and weighted sum).

python scripts/bench_sparse.py                    # both parts
python scripts/bench_sparse.py --n 20000 --skip-quality --json bench-results/sparse.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc.index.collection import Collection, IndexSpec  # noqa: E402
from embedsvc.index.fusion import HybridOptions  # noqa: E402
from embedsvc.index.retrieval import Query  # noqa: E402

VOCAB = 30_522
STSB = ROOT.parent / "shared" / "data" / "stsb" / "sts-dev.csv"


def splade_like(n: int, rng: np.random.Generator, low: int, high: int, order: np.ndarray) -> list[Any]:
    """``n`` sparse vectors of ``low``-``high`` distinct terms, ranks Zipf(1.1) mapped through ``order``."""
    rows = []
    for _ in range(n):
        want = int(rng.integers(low, high + 1))
        ranks = np.unique(np.minimum(rng.zipf(1.1, size=want * 3) - 1, VOCAB - 1))
        ranks = rng.permutation(ranks)[:want]
        ids = np.sort(order[ranks]).astype(np.int32)
        rows.append((ids, rng.lognormal(-0.5, 0.6, size=len(ids)).astype(np.float32)))
    return rows


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
    }


def scale(n: int, queries: int, block: int) -> dict[str, Any]:
    import scipy.sparse

    rng = np.random.default_rng(0)
    order = rng.permutation(VOCAB)
    docs = splade_like(n, rng, 100, 200, order)
    asked = splade_like(queries, rng, 15, 25, order)
    with tempfile.TemporaryDirectory() as tmp:
        spec = IndexSpec("bench", "m", "src", dimension=0, dense=False, sparse=True, sparse_dimension=VOCAB)
        collection = Collection.create(spec, Path(tmp) / "bench", snapshot_every=1_000_000)
        empty = np.zeros((block, 0), np.float32)
        started = time.perf_counter()
        for start in range(0, n, block):
            part = docs[start : start + block]
            metadata = [{"bucket": i % 100} for i in range(start, start + len(part))]
            collection.upsert(
                [f"d{i}" for i in range(start, start + len(part))], empty[: len(part)], metadata, sparse=part
            )
        build = time.perf_counter() - started
        described = collection.describe()

        # the exact baseline: every document scored (CSR x dense query), top 10 by argpartition
        lengths = [len(ids) for ids, _ in docs]
        matrix = scipy.sparse.csr_matrix(
            (
                np.concatenate([w for _, w in docs]),
                np.concatenate([i for i, _ in docs]),
                np.concatenate([[0], np.cumsum(lengths)]),
            ),
            shape=(n, VOCAB),
        )
        options = HybridOptions(mode="sparse")
        ours, exact, recalls, filtered, filtered_recalls = [], [], [], [], []
        for ids, weights in asked:
            query = np.zeros(VOCAB, np.float32)
            query[ids] = weights
            t0 = time.perf_counter()
            scores = matrix @ query
            best = np.argpartition(-scores, 10)[:10]
            exact.append(time.perf_counter() - t0)
            tenth = np.sort(scores[best])[0]
            t0 = time.perf_counter()
            hits = collection.retrieve([Query(sparse=(ids, weights))], 10, options)[0]
            ours.append(time.perf_counter() - t0)
            # ties at the 10th score make several answers exact: a hit counts when its score reaches it
            recalls.append(sum(scores[int(h.id[1:])] >= tenth - 1e-4 for h in hits) / 10)
            allowed = np.arange(n) % 100 < 10
            masked = np.where(allowed, scores, -np.inf)
            tenth_f = np.sort(masked[np.argpartition(-masked, 10)[:10]])[0]
            t0 = time.perf_counter()
            hits = collection.retrieve(
                [Query(sparse=(ids, weights))], 10, options, filter={"bucket": {"lt": 10}}
            )[0]
            filtered.append(time.perf_counter() - t0)
            filtered_recalls.append(sum(masked[int(h.id[1:])] >= tenth_f - 1e-4 for h in hits) / 10)
        collection.close()
        started = time.perf_counter()
        reopened = Collection.open(Path(tmp) / "bench")
        reopen = time.perf_counter() - started
        reopened.close()
    return {
        "documents": n,
        "nonzeros_per_document": round(float(np.mean(lengths)), 1),
        "nonzeros_per_query": round(float(np.mean([len(i) for i, _ in asked])), 1),
        "build_seconds": round(build, 2),
        "build_docs_per_second": round(n / build),
        "representation_mib": round(described["representation_bytes"] / 2**20, 1),
        "sparse": percentiles(ours),
        "brute_force": percentiles(exact),
        "speedup_p50": round(float(np.median(exact) / np.median(ours)), 2),
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "filtered_10pct": {
            **percentiles(filtered),
            "recall_at_10": round(float(np.mean(filtered_recalls)), 4),
        },
        "reopen_seconds": round(reopen, 2),
    }


def quality(limit: int) -> dict[str, Any]:
    import csv
    from collections import Counter

    from embedsvc import Embedder

    if not STSB.exists():
        return {"skipped": f"{STSB} is absent"}
    with open(STSB, encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = list(dict.fromkeys(s for r in rows if len(r) >= 7 for s in (r[5], r[6])))[:limit]
    from embedsvc.models.loading import default_model_path

    embedder = Embedder.from_pretrained(str(default_model_path()))
    tokenizer = embedder.tokenizer
    special = set(tokenizer.all_special_ids)
    tokens = [[t for t in tokenizer(s)["input_ids"] if t not in special] for s in sentences]
    df = Counter(t for ts in tokens for t in set(ts))
    n = len(sentences)
    idf = {t: float(np.log(1 + (n - c + 0.5) / (c + 0.5))) for t, c in df.items()}
    average = float(np.mean([len(ts) for ts in tokens]))

    def bm25(ts: list[int]) -> tuple[np.ndarray, np.ndarray]:
        counts = Counter(ts)
        ids = np.array(sorted(counts), dtype=np.int32)
        tf = np.array([counts[t] for t in ids.tolist()], dtype=np.float64)
        norm = tf + 1.2 * (1 - 0.75 + 0.75 * len(ts) / average)
        return ids, (np.array([idf[t] for t in ids.tolist()]) * tf * 2.2 / norm).astype(np.float32)

    # known-item queries: the two rarest word pieces of a sentence (ties: first), in sentence order
    rng = np.random.default_rng(1)
    targets = rng.choice(n, size=min(300, n), replace=False)
    query_tokens = []
    for i in targets.tolist():
        rare = sorted(set(tokens[i]), key=lambda t: (df[t], tokens[i].index(t)))[:2]
        query_tokens.append(sorted(rare, key=tokens[i].index))
    query_texts = [tokenizer.decode(q) for q in query_tokens]
    dense_docs = embedder.embed(sentences, input_type="document")
    dense_queries = embedder.embed(query_texts, input_type="query")
    spec = IndexSpec(
        "q", "m", "src", dimension=dense_docs.shape[1], sparse=True, sparse_dimension=tokenizer.vocab_size
    )
    collection = Collection.create(spec, None)
    collection.upsert([f"s{i}" for i in range(n)], dense_docs, None, sparse=[bm25(ts) for ts in tokens])
    query_sparse = [
        (np.array(sorted(set(q)), np.int32), np.ones(len(set(q)), np.float32)) for q in query_tokens
    ]
    modes = {
        "dense": HybridOptions(),
        "sparse (BM25)": HybridOptions(mode="sparse"),
        "hybrid rrf": HybridOptions(mode="hybrid"),
        "hybrid weighted (dense x10)": HybridOptions(mode="hybrid", fusion="weighted", dense_weight=10.0),
    }
    results: dict[str, Any] = {"documents": n, "queries": len(targets)}
    for name, options in modes.items():
        found = collection.retrieve(
            [Query(dense=d, sparse=s) for d, s in zip(dense_queries, query_sparse, strict=True)], 10, options
        )
        ranks = [
            next((r for r, h in enumerate(hits, 1) if h.id == f"s{t}"), None)
            for hits, t in zip(found, targets.tolist(), strict=True)
        ]
        results[name] = {
            "recall_at_1": round(sum(r == 1 for r in ranks) / len(ranks), 4),
            "mrr_at_10": round(sum(1 / r for r in ranks if r) / len(ranks), 4),
        }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--block", type=int, default=1000, help="documents per durable upsert")
    parser.add_argument("--sentences", type=int, default=3000, help="quality part: STS-B sentences")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if not args.skip_scale:
        out["scale"] = scale(args.n, args.queries, args.block)
        print(json.dumps({"scale": out["scale"]}, indent=2), flush=True)
    if not args.skip_quality:
        out["quality"] = quality(args.sentences)
        print(json.dumps({"quality": out["quality"]}, indent=2), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

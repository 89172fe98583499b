#!/usr/bin/env python3
"""Throughput and latency of embedsvc against sentence-transformers, on the same model and texts, in one run.

Measures (a) the in-process engine, (b) the gRPC server under N concurrent clients sending k texts per
request, (c) sentence-transformers ``encode``; optionally (d) the int8 CPU mode, and single-request latency
at low load against the bare forward time of one text. Prints a summary and writes JSON.

    python scripts/bench.py                       # bundled model, STS-B-based corpus, 16 clients x 8 texts
    python scripts/bench.py --texts 2000 --clients 16 --per-request 8 --json bench-results/cpu.json
    python scripts/bench.py --corpus my.jsonl --model /models/bge-base-en-v1.5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc import EmbedClient, Embedder  # noqa: E402
from scripts.corpus import STSB_DEV, load_corpus  # noqa: E402
from tests.server_utils import ServerProcess  # noqa: E402


def timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def server_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def stsb_spearman(emb: Embedder) -> float | None:
    if not STSB_DEV.exists():
        return None
    from scipy.stats import spearmanr

    s1, s2, gold = [], [], []
    for line in STSB_DEV.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 7:
            gold.append(float(parts[4]))
            s1.append(parts[5])
            s2.append(parts[6])
    a, b = emb.embed(s1), emb.embed(s2)
    return float(spearmanr((a * b).sum(1), gold).statistic) * 100


def bench_grpc(
    target: str, texts: list[str], clients: int, per_request: int
) -> tuple[np.ndarray, float, list[float]]:
    chunks = [(i, texts[i : i + per_request]) for i in range(0, len(texts), per_request)]
    out: list[np.ndarray | None] = [None] * len(chunks)
    latencies: list[float] = []
    lock = threading.Lock()
    cursor = iter(range(len(chunks)))

    def worker() -> None:
        with EmbedClient(target, timeout=600) as client:
            client.embed(["warm"])
            while True:
                with lock:
                    k = next(cursor, None)
                if k is None:
                    return
                vectors, seconds = timed(lambda k=k: client.embed(chunks[k][1]))
                out[k] = vectors
                with lock:
                    latencies.append(seconds)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return np.concatenate(out), elapsed, latencies  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="checkpoint folder (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--corpus", type=Path, help=".txt (one text per line) or .jsonl with a 'text' field")
    parser.add_argument("--texts", type=int, default=1500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for in-process and ST runs")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "latest.json")
    args = parser.parse_args()

    texts = load_corpus(args.corpus, args.texts)
    engine = Embedder.from_pretrained(args.model)
    encoded = engine.prepare(texts)
    real_tokens = sum(len(e.ids) for e in encoded)
    padded_tokens = 0
    for lo in range(0, len(encoded), 32):  # what padding to the longest of 32 sorted texts would cost
        batch = sorted(len(e.ids) for e in encoded)[lo : lo + 32]
        padded_tokens += len(batch) * max(batch)
    result: dict[str, Any] = {
        "model": engine.name,
        "texts": len(texts),
        "real_tokens": real_tokens,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(engine.device),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "config": {"clients": args.clients, "per_request": args.per_request},
    }

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(engine.loaded.source.folder), device=str(engine.device))
    st.encode(texts[:32])
    engine.embed(texts[:32])
    st_best = ours_best = float("inf")
    st_vectors = ours = None
    for _ in range(args.repeats):
        st_vectors, seconds = timed(lambda: st.encode(texts, batch_size=32, convert_to_numpy=True))
        st_best = min(st_best, seconds)
        ours, seconds = timed(lambda: engine.embed(texts))
        ours_best = min(ours_best, seconds)
    result["sentence_transformers"] = {
        "texts_per_s": len(texts) / st_best,
        "tokens_per_s": real_tokens / st_best,
        "padding_waste": 1 - real_tokens / padded_tokens,
    }
    result["in_process"] = {
        "texts_per_s": len(texts) / ours_best,
        "tokens_per_s": real_tokens / ours_best,
        "padding_waste": 0.0,
        "ratio_to_st": st_best / ours_best,
    }

    def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())

    result["in_process"]["min_cosine_to_st"] = min_cosine(ours, st_vectors)  # type: ignore[arg-type]

    # bare forward of one short text: the floor for single-request latency
    short = engine.prepare(["A man is playing a guitar."])
    forward_times = [timed(lambda: engine.forward(short))[1] for _ in range(50)]
    result["bare_forward_one_text_ms"] = statistics.median(forward_times) * 1000
    result["in_process"]["peak_rss_mb"] = rss_mb()

    server_args = ["--model", f"bench={args.model}"] if args.model else []
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "embedsvc-bench-server.log"
    with ServerProcess(*server_args, "--max-inputs-per-request", "4096", log_path=log) as server:
        bench_grpc(server.target, texts[: args.clients * args.per_request], args.clients, args.per_request)
        grpc_vectors, elapsed, latencies = bench_grpc(server.target, texts, args.clients, args.per_request)
        result["grpc"] = {
            "texts_per_s": len(texts) / elapsed,
            "tokens_per_s": real_tokens / elapsed,
            "ratio_to_st": st_best / elapsed,
            "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000,
            "min_cosine_to_st": min_cosine(grpc_vectors, st_vectors),  # type: ignore[arg-type]
        }
        with EmbedClient(server.target) as client:
            single = [timed(lambda: client.embed(["A man is playing a guitar."]))[1] for _ in range(200)]
        result["low_load_single"] = {
            "p50_ms": percentile(single, 50) * 1000,
            "p99_ms": percentile(single, 99) * 1000,
            "p99_over_bare_forward": percentile(single, 99) * 1000 / result["bare_forward_one_text_ms"],
        }
        result["grpc"]["server_peak_rss_mb"] = server_peak_mb(server.proc.pid)

    if not args.no_int8 and engine.device.type == "cpu":
        fp32_rho = stsb_spearman(engine)
        for mode in ("int8", "int8-fast"):
            int8 = Embedder.from_pretrained(args.model, quantize=mode)
            int8.embed(texts[:32])
            best = min(timed(lambda int8=int8: int8.embed(texts))[1] for _ in range(args.repeats))
            entry: dict[str, Any] = {"texts_per_s": len(texts) / best, "ratio_to_st_fp32": st_best / best}
            int8_rho = stsb_spearman(int8)
            if fp32_rho is not None and int8_rho is not None:
                entry.update(
                    stsb_spearman_fp32=fp32_rho,
                    stsb_spearman_int8=int8_rho,
                    spearman_drop_points=fp32_rho - int8_rho,
                )
            result[mode] = entry

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

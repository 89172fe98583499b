#!/usr/bin/env python3
"""Throughput and latency of embedsvc against sentence-transformers, on the same model and texts, in one run.

Measures (a) the in-process engine, (b) the gRPC server under N concurrent clients sending k texts per
request, (c) sentence-transformers ``encode`` (run again before each measured run, so every ratio
compares runs seconds apart); optionally (d) the int8 CPU mode, single-request latency at
low load against the bare forward time of one text, and (e) Infinity (infinity-emb) under the same load
when it is installed (here, in .venv-infinity from ``make infinity-venv``, or --infinity PYTHON|URL).
Prints a summary and writes JSON.

    python scripts/bench.py                       # bundled model, STS-B-based corpus, 16 clients x 8 texts
    python scripts/bench.py --texts 2000 --clients 16 --per-request 8 --json bench-results/cpu.json
    python scripts/bench.py --corpus my.jsonl --model /models/bge-base-en-v1.5
    python scripts/bench.py --infinity .venv-infinity/bin/python   # or http://host:7997 (a running Infinity)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc import EmbedClient, Embedder  # noqa: E402
from scripts.corpus import STSB_DEV, load_corpus  # noqa: E402
from scripts.infinity_peer import InfinityServer, bench_http, find_python, single_latencies, version  # noqa: E402
from scripts.load import closed_loop  # noqa: E402
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
    return closed_loop(lambda: EmbedClient(target, timeout=600), texts, clients, per_request)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="checkpoint folder (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--corpus", type=Path, help=".txt (one text per line) or .jsonl with a 'text' field")
    parser.add_argument("--texts", type=int, default=1500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-request", type=int, default=8)
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of (ST, ours) per measurement; ratios are medians"
    )
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "latest.json")
    parser.add_argument(
        "--infinity",
        default="auto",
        help="Infinity peer: auto (here, $EMBEDSVC_INFINITY_PYTHON or .venv-infinity), none, the Python "
        "of an environment with infinity-emb, or the URL of a running Infinity serving the same model",
    )
    parser.add_argument("--infinity-model", default="bench", help="model name at --infinity URL")
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
    st_vectors = st.encode(texts, batch_size=32, convert_to_numpy=True)
    st_times: list[float] = []

    def against_st(run: Any, rounds: int) -> tuple[Any, dict[str, Any]]:
        """``rounds`` of (ST encode, run) back to back: this machine is shared and noisy, so each
        ratio compares two runs seconds apart, and the median of those ratios is reported."""
        ratios, best, out = [], float("inf"), None
        for _ in range(rounds):
            _, st_seconds = timed(lambda: st.encode(texts, batch_size=32, convert_to_numpy=True))
            st_times.append(st_seconds)
            out, seconds = timed(run)
            ratios.append(st_seconds / seconds)
            best = min(best, seconds)
        return out, {
            "texts_per_s": len(texts) / best,
            "tokens_per_s": real_tokens / best,
            "ratio_to_st": statistics.median(ratios),
            "ratios_to_st": [round(r, 3) for r in ratios],
        }

    def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())

    ours, result["in_process"] = against_st(lambda: engine.embed(texts), args.repeats)
    result["in_process"].update(padding_waste=0.0, min_cosine_to_st=min_cosine(ours, st_vectors))
    result["in_process"]["peak_rss_mb"] = rss_mb()

    # bare forward of one short text: the floor for single-request latency
    text = "A man is playing a guitar."
    short = engine.prepare([text])
    for _ in range(10):
        engine.forward(short)

    server_args = ["--model", f"bench={args.model}"] if args.model else []
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "embedsvc-bench-server.log"
    with ServerProcess(*server_args, "--max-inputs-per-request", "4096", log_path=log) as server:
        bench_grpc(server.target, texts[: args.clients * args.per_request], args.clients, args.per_request)
        latencies: list[float] = []

        def grpc_run() -> np.ndarray:
            vectors, _, request_seconds = bench_grpc(server.target, texts, args.clients, args.per_request)
            latencies.extend(request_seconds)
            return vectors

        grpc_vectors, result["grpc"] = against_st(grpc_run, args.repeats)
        result["grpc"].update(
            p50_ms=percentile(latencies, 50) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            min_cosine_to_st=min_cosine(grpc_vectors, st_vectors),
        )
        # low load: one text per request, one at a time; bare forwards in blocks between them, so both
        # see the same machine (blocks, since each side's idle OpenMP threads spin for a while)
        bare: list[float] = []
        single: list[float] = []
        with EmbedClient(server.target) as client:
            client.embed([text])
            for _ in range(5):
                bare += [timed(lambda: engine.forward(short))[1] for _ in range(40)]
                single += [timed(lambda: client.embed([text]))[1] for _ in range(40)]
        result["bare_forward_one_text_ms"] = percentile(bare, 50) * 1000
        result["low_load_single"] = {
            "p50_ms": percentile(single, 50) * 1000,
            "p99_ms": percentile(single, 99) * 1000,
            "p99_over_bare_forward": percentile(single, 99) / percentile(bare, 50),
            # the machine's own tail: how far bare forwards of the same text spread in the same minutes
            "bare_forward_p99_ms": percentile(bare, 99) * 1000,
        }
        result["grpc"]["server_peak_rss_mb"] = server_peak_mb(server.proc.pid)

    def bench_infinity(url: str, model: str) -> dict[str, Any]:
        bench_http(url, model, texts[: args.clients * args.per_request], args.clients, args.per_request)
        latencies = []

        def run() -> np.ndarray:
            vectors, _, request_seconds = bench_http(url, model, texts, args.clients, args.per_request)
            latencies.extend(request_seconds)
            return vectors

        vectors, entry = against_st(run, min(args.repeats, 2))
        single = single_latencies(url, model, text, 200)
        entry.update(
            grpc_speedup_over_infinity=result["grpc"]["texts_per_s"] / entry["texts_per_s"],
            p50_ms=percentile(latencies, 50) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            low_load_single_p50_ms=percentile(single, 50) * 1000,
            low_load_single_p99_ms=percentile(single, 99) * 1000,
            min_cosine_to_st=min_cosine(vectors, st_vectors),
        )
        return entry

    if args.infinity.startswith(("http://", "https://")):
        result["infinity"] = {"url": args.infinity, **bench_infinity(args.infinity, args.infinity_model)}
    elif args.infinity != "none":
        python = find_python(args.infinity)
        if python is None:
            missing = "infinity-emb not found: make infinity-venv, or --infinity PYTHON"
            result["infinity"] = {"skipped": missing}
        else:
            inf_log = Path(os.environ.get("TMPDIR", "/tmp")) / "embedsvc-bench-infinity.log"
            folder = str(engine.loaded.source.folder)
            with InfinityServer(python, folder, inf_log) as peer:
                result["infinity"] = {"version": version(python), **bench_infinity(peer.url, peer.model)}

    if not args.no_int8 and engine.device.type == "cpu":
        fp32_rho = stsb_spearman(engine)
        for mode in ("int8", "int8-fast"):
            int8 = Embedder.from_pretrained(args.model, quantize=mode)
            int8.embed(texts[:32])
            _, entry = against_st(lambda int8=int8: int8.embed(texts), args.repeats)
            int8_rho = stsb_spearman(int8)
            if fp32_rho is not None and int8_rho is not None:
                entry.update(
                    stsb_spearman_fp32=fp32_rho,
                    stsb_spearman_int8=int8_rho,
                    spearman_drop_points=fp32_rho - int8_rho,
                )
            result[mode] = entry

    best_st = min(st_times)
    result["sentence_transformers"] = {
        "texts_per_s": len(texts) / best_st,
        "tokens_per_s": real_tokens / best_st,
        "padding_waste": 1 - real_tokens / padded_tokens,
        "runs": len(st_times),
    }

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

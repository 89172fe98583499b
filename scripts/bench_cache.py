#!/usr/bin/env python3
"""What the embedding cache (``cache_mb``) buys on a query stream with realistic repetition, and what it
costs on a stream that never repeats — in one process, through the server's path (ModelService with its
scheduler and tokenizer threads), cache off and on, runs alternating, best of N.

Streams: ``--requests`` requests of ``--batch`` texts each, ``--concurrency`` in flight. "zipf" draws
texts from the distinct STS-B sentences with P(rank k) ~ 1/k^s (query logs: s about 0.8-1.1); "cold"
sends texts that are all different. Each run starts with an empty cache, so its misses are counted.
Cache off and on run in turn (off-on, then on-off: ABBA), and each pair gives a ratio; the median of
those is steadier than a ratio of bests on a busy machine. For the cold stream the share of wall time
spent in the cache's own code (lookups and stores, timed) bounds what it can cost.

    python scripts/bench_cache.py [--model SOURCE] [--requests 2000] [--batch 1] [--concurrency 32]
                                  [--zipf 1.0] [--cache-mb 64] [--repeats 3] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc import Embedder  # noqa: E402
from embedsvc.engine.cache import EmbeddingCache, Lookup  # noqa: E402
from embedsvc.engine.options import Limits  # noqa: E402
from embedsvc.engine.service import ModelService, Tokenizers, measure_throughput  # noqa: E402
from scripts.corpus import _sentences  # noqa: E402


class TimedCache(EmbeddingCache):
    """The cache, with the seconds spent in its lookups and stores added up."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.seconds = 0.0

    def lookup(self, fingerprint: str, options: Any, texts: Sequence[str]) -> Lookup:
        started = time.perf_counter()
        try:
            return super().lookup(fingerprint, options, texts)
        finally:
            self.seconds += time.perf_counter() - started

    def store(self, lookup: Lookup, vectors: np.ndarray, token_counts: Sequence[int]) -> None:
        started = time.perf_counter()
        try:
            super().store(lookup, vectors, token_counts)
        finally:
            self.seconds += time.perf_counter() - started


def distinct_texts(n: int) -> list[str]:
    """``n`` different sentences (STS-B dev when present); numbered copies once they run out."""
    unique = list(dict.fromkeys(_sentences()))
    out = unique[:n]
    k = 1
    while len(out) < n:
        out += [f"{t} ({k})" for t in unique[: n - len(out)]]
        k += 1
    return out


def zipf_stream(vocabulary: list[str], n: int, s: float, seed: int = 0) -> list[str]:
    ranks = np.arange(1, len(vocabulary) + 1, dtype=np.float64)
    p = ranks**-s
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vocabulary), size=n, p=p / p.sum())
    return [vocabulary[i] for i in picks]


async def run_stream(
    embedder: Embedder,
    throughput: float,
    texts: list[str],
    batch: int,
    concurrency: int,
    cache: EmbeddingCache | None,
) -> tuple[float, float]:
    """Texts per second of wall time, and per second of this process's CPU time (steadier on a shared
    machine), for the whole stream."""
    tokenizers = Tokenizers(2)
    service = ModelService.start(
        embedder,
        tokenizers,
        Limits(),
        tokens_per_second=throughput,
        max_queue_requests=10_000,
        max_queue_tokens=100_000_000,
        max_queue_seconds=3600.0,
        batch_wait_s=0.002,
        cache=cache,
    )
    requests = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    window = asyncio.Semaphore(concurrency)

    async def one(request: list[str]) -> None:
        async with window:
            await service.embed(request)

    try:
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(r) for r in requests))
        return len(texts) / (time.perf_counter() - started), len(texts) / (time.process_time() - cpu)
    finally:
        await service.close()
        tokenizers.shutdown()


def cache_cost_us(cache_mb: float, width: int, n: int = 8000, repeats: int = 5) -> float:
    """Microseconds a text that misses costs the cache (hash, lookup, store, assembly) on its own, in
    requests of 8 texts; best of ``repeats``."""
    from embedsvc.engine.inputs import Template
    from embedsvc.engine.options import ResolvedOptions

    options = ResolvedOptions(Template.build(""), "end", None, True, False, None)
    texts = distinct_texts(n)
    vectors = np.random.default_rng(0).random((n, width), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        cache = EmbeddingCache(round(cache_mb * 2**20))
        started = time.perf_counter()
        for i in range(0, n, 8):
            lookup = cache.lookup("0" * 16, options, texts[i : i + 8])
            cache.store(lookup, vectors[i : i + 8], [10] * len(lookup.missing))
            lookup.assemble(width, vectors[i : i + 8], [10] * len(lookup.missing))
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="checkpoint (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1, help="texts per request")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent s")
    parser.add_argument("--vocabulary", type=int, default=2500, help="distinct texts of the zipf stream")
    parser.add_argument("--cache-mb", type=float, default=64.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    embedder = Embedder.from_pretrained(args.model, device=args.device)
    throughput = measure_throughput(embedder)
    n = args.requests * args.batch
    vocabulary = distinct_texts(args.vocabulary)
    streams = {
        "zipf": zipf_stream(vocabulary, n, args.zipf),
        # never repeats: different texts from the zipf run's, and from every other cold run's
        "cold": distinct_texts(args.vocabulary + n * (args.repeats * 2 + 1))[args.vocabulary :],
    }
    distinct_share = len(set(streams["zipf"])) / n
    embedder.embed(vocabulary[:64])  # warm-up

    rates: dict[str, list[float]] = {}
    cpu_rates: dict[str, list[float]] = {}
    pair_ratios: dict[str, list[float]] = {"zipf": [], "cold": []}
    hit_rates: dict[str, float] = {}
    cache_share: list[float] = []  # of a cold run's wall time, spent in the cache's own code
    cold_offset = 0
    for repeat in range(args.repeats):
        for stream in ("zipf", "cold"):
            # off, on / on, off in turn (ABBA): a drifting machine hits both sides alike
            pair: dict[bool, float] = {}
            for cached in (False, True) if repeat % 2 == 0 else (True, False):
                texts = streams[stream]
                if stream == "cold":  # a fresh slice each run: the texts are new to every cache
                    texts = texts[cold_offset : cold_offset + n]
                    cold_offset += n
                cache = TimedCache(round(args.cache_mb * 2**20)) if cached else None
                started = time.perf_counter()
                rate, cpu_rate = asyncio.run(
                    run_stream(embedder, throughput, texts, args.batch, args.concurrency, cache)
                )
                wall = time.perf_counter() - started
                name = f"{stream} cache {'on' if cached else 'off'}"
                rates.setdefault(name, []).append(rate)
                cpu_rates.setdefault(name, []).append(cpu_rate)
                pair[cached] = rate
                if cache is not None:
                    hit_rates[stream] = cache.hits / max(1, cache.hits + cache.misses)
                    if stream == "cold":
                        cache_share.append(cache.seconds / wall)
            pair_ratios[stream].append(pair[True] / pair[False])

    best = {name: max(values) for name, values in rates.items()}
    best_cpu = {name: max(values) for name, values in cpu_rates.items()}
    ratios = {
        "zipf on/off (best)": best["zipf cache on"] / best["zipf cache off"],
        "cold on/off (best)": best["cold cache on"] / best["cold cache off"],
        "zipf on/off (median of pairs)": float(np.median(pair_ratios["zipf"])),
        "cold on/off (median of pairs)": float(np.median(pair_ratios["cold"])),
        "zipf on/off (cpu time)": best_cpu["zipf cache on"] / best_cpu["zipf cache off"],
        "cold on/off (cpu time)": best_cpu["cold cache on"] / best_cpu["cold cache off"],
    }
    result = {
        "model": embedder.name,
        "device": str(embedder.device),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "requests": args.requests,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "zipf_s": args.zipf,
        "zipf_distinct_share": round(distinct_share, 3),
        "cache_mb": args.cache_mb,
        "texts_per_s_best": {k: round(v, 1) for k, v in best.items()},
        "texts_per_s_runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "texts_per_cpu_s_best": {k: round(v, 1) for k, v in best_cpu.items()},
        "cache_cost_us_per_text": round(cache_cost_us(args.cache_mb, embedder.dimension), 2),
        "cold_wall_share_in_cache_code": round(max(cache_share), 4),
        "pair_ratios": {k: [round(x, 3) for x in v] for k, v in pair_ratios.items()},
        "model_cost_us_per_text": round(1e6 / best["cold cache off"], 1),
        "hit_rate": {k: round(v, 3) for k, v in hit_rates.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

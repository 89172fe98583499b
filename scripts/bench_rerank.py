#!/usr/bin/env python3
"""Rerank throughput of embedsvc against sentence-transformers' CrossEncoder, same checkpoint, same run.

Pairs per second for (a) one query x 100 documents and (b) 16 callers at once, each one query x 100
documents: embedsvc's ModelService (admission, tokenizer threads, the batch scheduler, packed batches)
against ``CrossEncoder.predict`` (16 threads calling it for (b), as a thread-per-request server would),
and (c) embedsvc making (b)'s 16 calls one after another: the same pairs without batching across
callers, the baseline (b) is judged against. (a) and (b) are different work: (b)'s 16 queries differ
in length (one is a passage), so compare them in tokens per second, or (b) with (c) in pairs per second.
Runs are interleaved within each round, so each ratio compares runs seconds apart; medians over
``--rounds`` (and the best round) are reported, with the load average.

    python scripts/bench_rerank.py                        # a MiniLM-L6 cross-encoder built from the bundled
                                                          # all-MiniLM-L6-v2 (ms-marco-MiniLM-L6-v2's shape)
    python scripts/bench_rerank.py --model /models/ms-marco-MiniLM-L6-v2 --json bench-results/rerank.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# the engine before torch: it sets how torch's idle OpenMP threads wait (embedsvc/engine/threads.py)
import embedsvc.engine  # noqa: E402, F401, I001
import torch  # noqa: E402

from embedsvc.engine.options import Limits  # noqa: E402
from embedsvc.engine.scorer import Scorer, load_served  # noqa: E402
from embedsvc.engine.service import ModelService, Tokenizers, measure_throughput  # noqa: E402
from embedsvc.models.loading import default_model_path  # noqa: E402
from scripts.corpus import load_corpus  # noqa: E402

DOCUMENTS = 100
CALLERS = 16


def build_minilm_cross_encoder(folder: Path) -> Path:
    """ms-marco-MiniLM-L6-v2's architecture (BERT, 6 layers, 384 wide, one label) from the bundled
    all-MiniLM-L6-v2's weights and a new head, saved by sentence-transformers' CrossEncoder."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = default_model_path()
    model = BertForSequenceClassification.from_pretrained(source, num_labels=1)
    raw = folder / "raw"
    model.save_pretrained(raw)
    AutoTokenizer.from_pretrained(source).save_pretrained(raw)
    CrossEncoder(str(raw), device="cpu", max_length=512).save(str(folder / "model"))
    return folder / "model"


def _logged(name: str, run: Any) -> Any:
    def logged() -> Any:
        started = time.perf_counter()
        result = run()
        print(f"{name}: {time.perf_counter() - started:.2f} s", file=sys.stderr)
        return result

    return logged


def rounds_of(rounds: int, runs: dict[str, Any]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall seconds and this process's CPU seconds (all its threads) of each run in each round, the runs
    interleaved within a round (a busy machine drifts: a ratio then compares runs seconds apart). CPU
    seconds tell work from waiting: on a shared machine a run with more threads takes a bigger share of
    the cores from other processes, which shows in wall seconds but not in CPU seconds."""
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started, cpu_started = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - cpu_started)
            print(
                f"{name}: {wall[name][-1]:.2f} s, {cpu[name][-1]:.2f} CPU s (load {os.getloadavg()[0]:.1f})",
                file=sys.stderr,
            )
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="cross-encoder folder (default: a MiniLM-L6 one built on the spot)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for both (default: all cores)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--passages", type=float, default=0.2, help="share of documents that are passages of 3-12 sentences"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from sentence_transformers import CrossEncoder

    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.model) if args.model else build_minilm_cross_encoder(Path(tmp))
        scorer = load_served(folder, threads=threads)
        assert isinstance(scorer, Scorer), f"{folder} is not a reranker"
        torch.set_num_threads(threads)
        reference = CrossEncoder(str(folder), device="cpu")
        texts = load_corpus(None, DOCUMENTS + CALLERS, passages=args.passages, seed=3)
        documents, queries = texts[:DOCUMENTS], texts[DOCUMENTS:]
        query = queries[0]

        loop = asyncio.new_event_loop()
        tokenizers = Tokenizers(threads)
        limits = Limits()

        async def start() -> ModelService:
            return ModelService.start(
                scorer,
                tokenizers,
                limits,
                tokens_per_second=measure_throughput(scorer),
                max_queue_requests=1024,
                max_queue_tokens=10**8,
                max_queue_seconds=1e9,  # a benchmark: nothing refused
                batch_wait_s=0.002,
            )

        service = loop.run_until_complete(start())
        pool = ThreadPoolExecutor(CALLERS)

        def st_one() -> np.ndarray:
            return reference.predict([(query, d) for d in documents], convert_to_numpy=True)  # type: ignore[no-any-return]

        def st_many() -> list[Any]:
            jobs = [pool.submit(reference.predict, [(q, d) for d in documents]) for q in queries]
            return [job.result() for job in jobs]

        def ours_one() -> np.ndarray:
            return loop.run_until_complete(service.rerank(query, documents)).scores

        def ours_many() -> list[Any]:
            async def all_callers() -> list[Any]:
                return await asyncio.gather(
                    *(service.rerank(q, documents, tenant=str(i)) for i, q in enumerate(queries))
                )

            return loop.run_until_complete(all_callers())

        def ours_one_by_one() -> list[Any]:
            return [
                loop.run_until_complete(service.rerank(q, documents, tenant=str(i)))
                for i, q in enumerate(queries)
            ]

        # same scores first: the comparison is only fair if both compute the same thing
        gap = float(np.abs(ours_one() - st_one()).max())
        print(f"scores agree to {gap:.2e}; warming up the 16-caller runs", file=sys.stderr)
        st_many()
        together = ours_many()  # warm-up of both paths
        # batching across callers must not move a score beyond float noise
        batching_gap = max(
            float(np.abs(a.scores - b.scores).max()) for a, b in zip(together, ours_one_by_one(), strict=True)
        )
        runs = {
            "st_1x100": st_one,
            "embedsvc_1x100": ours_one,
            "st_16x100": st_many,
            "embedsvc_16x100": ours_many,
            "embedsvc_16x100_one_by_one": ours_one_by_one,
        }
        load_before = os.getloadavg()[0]
        seconds, cpu_seconds = rounds_of(args.rounds, runs)
        load_after = os.getloadavg()[0]
        loop.run_until_complete(service.close())
        tokenizers.shutdown()
        pool.shutdown()
        one_tokens = sum(len(e.ids) for e in scorer.prepare_pairs([(query, d) for d in documents]))
        many_tokens = sum(
            len(e.ids) for q in queries for e in scorer.prepare_pairs([(q, d) for d in documents])
        )

    def per_round(numerator: str, denominator: str) -> list[float]:
        return [a / b for a, b in zip(seconds[numerator], seconds[denominator], strict=True)]

    pairs = {name: DOCUMENTS if name.endswith("1x100") else DOCUMENTS * CALLERS for name in runs}
    tokens = {name: one_tokens if name.endswith("1x100") else many_tokens for name in runs}
    ratios = {
        # CrossEncoder's seconds over embedsvc's, per round: > 1 is embedsvc faster
        "st_over_embedsvc_1x100": per_round("st_1x100", "embedsvc_1x100"),
        "st_over_embedsvc_16x100": per_round("st_16x100", "embedsvc_16x100"),
        # the same 16 calls one by one over all at once: > 1 is batching across callers faster
        "one_by_one_over_together": per_round("embedsvc_16x100_one_by_one", "embedsvc_16x100"),
    }
    result = {
        "model": str(args.model or "MiniLM-L6 cross-encoder (bundled all-MiniLM-L6-v2 weights, new head)"),
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "max_abs_score_difference": gap,
        "max_abs_score_difference_batched_vs_one_by_one": batching_gap,
        "tokens_per_pair_mean": {
            "1x100": one_tokens / DOCUMENTS,
            "16x100": many_tokens / (DOCUMENTS * CALLERS),
        },
        "passages": args.passages,
        "rounds": args.rounds,
        "load_average": [load_before, load_after],
        "pairs_per_s_median": {n: pairs[n] / statistics.median(t) for n, t in seconds.items()},
        "pairs_per_s_best": {n: pairs[n] / min(t) for n, t in seconds.items()},
        "tokens_per_s_median": {n: tokens[n] / statistics.median(t) for n, t in seconds.items()},
        "cpu_ms_per_pair_median": {n: 1e3 * statistics.median(t) / pairs[n] for n, t in cpu_seconds.items()},
        "cpu_us_per_token_median": {
            n: 1e6 * statistics.median(t) / tokens[n] for n, t in cpu_seconds.items()
        },
        "ratios_per_round": ratios,
        "ratios_median": {n: statistics.median(r) for n, r in ratios.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

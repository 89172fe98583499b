#!/usr/bin/env python3
"""Rerank throughput of embedsvc against sentence-transformers' CrossEncoder, same checkpoint, same run.

Pairs per second for (a) one query x 100 documents and (b) 16 callers at once, each one query x 100
documents: embedsvc's ModelService (admission, tokenizer threads, the batch scheduler, packed batches)
against ``CrossEncoder.predict`` (16 threads calling it for (b), as a thread-per-request server would).
Runs are interleaved and the best of ``--rounds`` kept, so each ratio compares runs seconds apart.

    python scripts/bench_rerank.py                        # a MiniLM-L6 cross-encoder built from the bundled
                                                          # all-MiniLM-L6-v2 (ms-marco-MiniLM-L6-v2's shape)
    python scripts/bench_rerank.py --model /models/ms-marco-MiniLM-L6-v2 --json bench-results/rerank.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
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
from embedsvc.engine.scorer import load_served  # noqa: E402
from embedsvc.engine.service import ModelService, Tokenizers, measure_throughput  # noqa: E402
from embedsvc.models.loading import default_model_path  # noqa: E402
from scripts.bench import best_of  # noqa: E402
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

        # same scores first: the comparison is only fair if both compute the same thing
        gap = float(np.abs(ours_one() - st_one()).max())
        print(f"scores agree to {gap:.2e}; warming up the 16-caller runs", file=sys.stderr)
        st_many()
        ours_many()  # warm-up of both paths
        runs = {
            "st_1x100": st_one,
            "embedsvc_1x100": ours_one,
            "st_16x100": st_many,
            "embedsvc_16x100": ours_many,
        }
        best = best_of(args.rounds, {name: _logged(name, run) for name, run in runs.items()})
        loop.run_until_complete(service.close())
        tokenizers.shutdown()
        pool.shutdown()
        tokens = sum(len(e.ids) for e in scorer.prepare_pairs([(query, d) for d in documents]))

    one, many = DOCUMENTS, DOCUMENTS * CALLERS
    result = {
        "model": str(args.model or "MiniLM-L6 cross-encoder (bundled all-MiniLM-L6-v2 weights, new head)"),
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "max_abs_score_difference": gap,
        "tokens_per_pair_mean": tokens / DOCUMENTS,
        "passages": args.passages,
        "rounds": args.rounds,
        "pairs_per_s": {
            "st_1x100": one / best["st_1x100"],
            "embedsvc_1x100": one / best["embedsvc_1x100"],
            "st_16x100": many / best["st_16x100"],
            "embedsvc_16x100": many / best["embedsvc_16x100"],
        },
        "ratio_1x100": best["st_1x100"] / best["embedsvc_1x100"],
        "ratio_16x100": best["st_16x100"] / best["embedsvc_16x100"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

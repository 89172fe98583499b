#!/usr/bin/env python3
"""Cost of deterministic mode vs the default mode, in one process, on the same texts.

Reports texts/s for the default (packed), padded and deterministic modes (alternating
runs, best of N, so machine noise hits all alike), their ratios, and the default mode's
batch-vs-single difference.

    python scripts/bench_deterministic.py [--model SOURCE] [--texts 1000] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc import Embedder  # noqa: E402
from scripts.corpus import load_corpus  # noqa: E402


def best_rate(emb: Embedder, texts: list[str]) -> float:
    started = time.perf_counter()
    emb.embed(texts)
    return len(texts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="checkpoint (default: bundled all-MiniLM-L6-v2)")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    texts = load_corpus(None, args.texts)
    default = Embedder.from_pretrained(args.model)  # packed batches
    padded = Embedder.from_pretrained(args.model, batching="padded")
    deterministic = Embedder.from_pretrained(args.model, deterministic=True)
    for emb in (default, padded, deterministic):
        emb.embed(texts[:32])  # warm-up

    rates: dict[str, list[float]] = {"default": [], "padded": [], "deterministic": []}
    for _ in range(args.repeats):
        for name, emb in (("default", default), ("padded", padded), ("deterministic", deterministic)):
            rates[name].append(best_rate(emb, texts))

    sample = texts[:200]
    batch = default.embed(sample)
    singles = np.stack([default.embed([t])[0] for t in sample])
    diff = np.abs(batch - singles)
    det_batch = deterministic.embed(sample)
    det_singles = np.stack([deterministic.embed([t])[0] for t in sample])

    result = {
        "model": default.name,
        "texts": len(texts),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "device": str(default.device),
            "torch": torch.__version__,
        },
        "texts_per_s": {k: max(v) for k, v in rates.items()},
        "deterministic_over_default": max(rates["deterministic"]) / max(rates["default"]),
        "padded_over_default": max(rates["padded"]) / max(rates["default"]),
        "default_batch_vs_single": {
            "max_abs": float(diff.max()),
            "mean_abs": float(diff.mean()),
            "texts_bitwise_equal": int((diff.max(axis=1) == 0).sum()),
            "of": len(sample),
        },
        "deterministic_texts_bitwise_equal": int(
            sum(np.array_equal(a, b) for a, b in zip(det_batch, det_singles, strict=True))
        ),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

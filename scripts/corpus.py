"""Benchmark corpora: STS-B dev sentences plus passages built from them, or a user file."""

from __future__ import annotations

import json
import random
from pathlib import Path

STSB_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-dev.csv"
_FALLBACK_WORDS = (
    "the a of to and in is was for on that with as by at from it this be are or have has man woman dog "
    "cat guitar music play runs eats food water river house car road city world people child school book "
    "read search answer question sentence word model service quick brown fox jumps over lazy day night"
).split()


def _sentences() -> list[str]:
    if STSB_DEV.exists():
        found: list[str] = []
        for line in STSB_DEV.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) >= 7:
                found += [parts[5], parts[6]]
        return found
    rng = random.Random(0)  # no STS-B here: synthetic sentences of similar lengths
    return [" ".join(rng.choice(_FALLBACK_WORDS) for _ in range(rng.randint(4, 25))) for _ in range(3000)]


def load_corpus(path: Path | None, limit: int, *, passages: float = 0.2, seed: int = 0) -> list[str]:
    """``limit`` texts: from a .txt (one per line) or .jsonl ("text" field) file, else STS-B-based.

    The default mix is sentences plus ``passages`` share of passages of 3-12 sentences, so lengths vary
    the way a real indexing corpus does.
    """
    if path is not None:
        if path.suffix == ".jsonl":
            texts = [
                json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line
            ]
        else:
            texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return texts[:limit]
    rng = random.Random(seed)
    sentences = _sentences()
    texts = []
    for _ in range(limit):
        if rng.random() < passages:
            texts.append(" ".join(rng.choice(sentences) for _ in range(rng.randint(3, 12))))
        else:
            texts.append(rng.choice(sentences))
    return texts

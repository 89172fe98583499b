#!/usr/bin/env python3
"""Pipeline throughput: `embedsvc index build` (local mode) vs sentence-transformers encode.

Same corpus, same process, one run.

python scripts/bench_pipeline.py [--docs 2000] [--json bench-results/pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedsvc.models.loading import default_model_path  # noqa: E402
from embedsvc.pipeline import build_index  # noqa: E402
from embedsvc.pipeline.readers import ReaderOptions  # noqa: E402
from scripts.corpus import load_corpus  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    texts = load_corpus(None, args.docs)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
        summary = build_index(
            [str(corpus)],
            index="bench",
            data_dir=str(Path(tmp) / "data"),
            progress=False,
            reader=ReaderOptions(id_field="id"),
            batch_size=256,
            rejects=str(Path(tmp) / "rejects.jsonl"),
        )
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_path()), device="cpu")
    st.encode(texts[:32])
    started = time.perf_counter()
    st.encode(texts, batch_size=32)
    st_seconds = time.perf_counter() - started
    result = {
        "documents": summary.documents,
        "tokens": summary.tokens,
        "pipeline_docs_per_s": summary.documents_per_s,
        "pipeline_tokens_per_s": summary.tokens_per_s,
        "st_encode_docs_per_s": len(texts) / st_seconds,
        "ratio_to_st": summary.documents_per_s * st_seconds / len(texts),
        "note": "pipeline time includes reading, tokenizing, embedding, WAL fsyncs and snapshots; "
        "ST only embeds",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

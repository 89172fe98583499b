"""``embedsvc rerank | score | classify``: rerankers and classifiers of a running server, JSON lines out."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from embedsvc.cli.embed import open_output, text_inputs
from embedsvc.cli.failures import USAGE, CommandError
from embedsvc.cli.remote import open_client
from embedsvc.wire import TRUNCATIONS

RERANK_EPILOG = """\
documents: DOCUMENT arguments; or --input FILE (repeatable): one document per line, or JSON lines
  (.jsonl/.ndjson) whose --text-field is the document and whose "id" field, when present, is kept;
  "-" reads stdin, as does piping with no DOCUMENT.

output (stdout or --output FILE): one {"index", "id", "score", "text"} per document, highest score
  first (index: its position in the input, from 0; id: the record's "id", else the index).

examples:
  embedsvc rerank "what is a panda?" --input docs.txt --top-n 5
  embedsvc rerank "capital of France" "Paris is the capital." "Berlin is in Germany." --model reranker
"""

SCORE_EPILOG = """\
pairs: --pair QUERY DOCUMENT (repeatable); or --input FILE: JSON lines with "query" and "document"
  fields, or lines of QUERY<TAB>DOCUMENT; "-" reads stdin.

output: one {"query", "document", "score"} per pair, in input order.
"""

CLASSIFY_EPILOG = """\
input: like `embedsvc embed` (TEXT arguments, --input FILE of lines or JSON lines, or stdin).

output: one {"id", "text", "label", "scores": {label: score}} per text, in input order (label: the
  best one).

example:
  embedsvc classify "I love it" "this is awful" --model sentiment
"""


def _model_options(p: argparse.ArgumentParser, *, instruction: bool) -> None:
    p.add_argument("--model", help="served model name (default: the server's first model of this task)")
    if instruction:
        p.add_argument("--instruction", help="task instruction for LLM rerankers that take one")
    p.add_argument(
        "--truncation", choices=list(TRUNCATIONS), default="end", help="over-long inputs (default end)"
    )
    p.add_argument("--raw-scores", action="store_true", help="logits, without the model's activation")
    p.add_argument("--output", metavar="FILE", help="write here instead of stdout")


def add_parsers(sub: Any, common: argparse.ArgumentParser, connection: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "rerank",
        parents=[common, connection],
        help="rank documents against a query with a reranker of a running server",
        description="Rank documents by relevance to QUERY with a reranker model of a running server.",
        epilog=RERANK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("query", metavar="QUERY")
    p.add_argument("texts", nargs="*", metavar="DOCUMENT", help='documents ("-": lines from stdin)')
    p.add_argument("--input", action="append", default=[], metavar="FILE", help="file of documents")
    p.add_argument("--text-field", default="text", help="JSON lines: the field holding the document")
    p.add_argument("--top-n", type=int, help="only the best N documents")
    p.add_argument(
        "--max-tokens-per-doc",
        type=int,
        metavar="N",
        help="cut each document to its first N tokens before scoring (Cohere's max_tokens_per_doc)",
    )
    _model_options(p, instruction=True)
    p.set_defaults(handler=run_rerank, parser=p)

    p = sub.add_parser(
        "score",
        parents=[common, connection],
        help="score (query, document) pairs with a reranker of a running server",
        description="Score (query, document) pairs with a reranker model of a running server.",
        epilog=SCORE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--pair", nargs=2, action="append", default=[], metavar=("QUERY", "DOCUMENT"), help="one pair"
    )
    p.add_argument("--input", action="append", default=[], metavar="FILE", help="file of pairs")
    _model_options(p, instruction=True)
    p.set_defaults(handler=run_score, parser=p)

    p = sub.add_parser(
        "classify",
        parents=[common, connection],
        help="classify texts with a classifier of a running server",
        description="Classify texts with a classifier model (its labels' scores) of a running server.",
        epilog=CLASSIFY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help='texts to classify ("-": lines from stdin)')
    p.add_argument("--input", action="append", default=[], metavar="FILE", help="file of texts")
    p.add_argument("--text-field", default="text", help="JSON lines: the field holding the text")
    _model_options(p, instruction=False)
    p.set_defaults(handler=run_classify, parser=p)


def _write(path: str | None, rows: Iterator[dict[str, Any]]) -> None:
    with open_output(path) as out:
        for row in rows:
            out.write((json.dumps(row, ensure_ascii=False) + "\n").encode())


def run_rerank(args: argparse.Namespace) -> int:
    if args.top_n is not None and args.top_n < 1:
        raise CommandError("--top-n must be at least 1", USAGE)
    records = list(text_inputs(args, "rerank"))
    if not records:
        raise CommandError("nothing to rerank: the input holds no document", USAGE)
    with open_client(args) as client:
        results = client.rerank(
            args.query,
            [text for _, text in records],
            model=args.model,
            top_n=args.top_n,
            instruction=args.instruction,
            truncation=args.truncation,
            raw_scores=args.raw_scores,
            max_tokens_per_doc=args.max_tokens_per_doc,
        )
    _write(
        args.output,
        (
            {
                "index": r.index,
                "id": records[r.index][0] if records[r.index][0] is not None else r.index,
                "score": r.score,
                "text": records[r.index][1],
            }
            for r in results
        ),
    )
    return 0


def _pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    pairs = [(q, d) for q, d in args.pair]
    sources = list(args.input)
    if not pairs and not sources:
        if sys.stdin.isatty():
            raise CommandError("nothing to score: give --pair QUERY DOCUMENT, --input FILE, or pipe", USAGE)
        sources = ["-"]
    for path in sources:
        handle = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115 - closed below
        try:
            for number, line in enumerate(handle):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                pairs.append(_pair(line, path, number))
        except UnicodeDecodeError as exc:
            raise CommandError(f"{path}: not UTF-8 text (byte {exc.start})", USAGE) from None
        finally:
            if handle is not sys.stdin:
                handle.close()
    return pairs


def _pair(line: str, path: str, number: int) -> tuple[str, str]:
    if line.lstrip().startswith("{"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path}: line {number} is not valid JSON ({exc.msg})", USAGE) from None
        if isinstance(row.get("query"), str) and isinstance(row.get("document"), str):
            return row["query"], row["document"]
        raise CommandError(f'{path}: line {number} needs string "query" and "document" fields', USAGE)
    query, tab, document = line.partition("\t")
    if not tab:
        raise CommandError(f"{path}: line {number} is not QUERY<TAB>DOCUMENT nor a JSON object", USAGE)
    return query, document


def run_score(args: argparse.Namespace) -> int:
    pairs = _pairs(args)
    if not pairs:
        raise CommandError("nothing to score: the input holds no pair", USAGE)
    with open_client(args) as client:
        scores = client.score(
            pairs,
            model=args.model,
            instruction=args.instruction,
            truncation=args.truncation,
            raw_scores=args.raw_scores,
        )
    _write(
        args.output,
        ({"query": q, "document": d, "score": float(s)} for (q, d), s in zip(pairs, scores, strict=True)),
    )
    return 0


def run_classify(args: argparse.Namespace) -> int:
    records = list(text_inputs(args, "classify"))
    if not records:
        raise CommandError("nothing to classify: the input holds no text", USAGE)
    with open_client(args) as client:
        classes = client.classify(
            [text for _, text in records],
            model=args.model,
            truncation=args.truncation,
            raw_scores=args.raw_scores,
        )
    _write(
        args.output,
        (
            {
                "id": record_id if record_id is not None else i,
                "text": text,
                "label": label,
                "scores": {name: float(s) for name, s in zip(classes.labels, row, strict=True)},
            }
            for i, ((record_id, text), label, row) in enumerate(
                zip(records, classes.predicted, classes.scores, strict=True)
            )
        ),
    )
    return 0

"""``embedsvc embed``: texts from arguments, files or stdin, through a running server, to JSONL or .npy."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from embedsvc.cli.failures import USAGE, CommandError
from embedsvc.cli.output import vector_json
from embedsvc.cli.remote import open_client
from embedsvc.wire import ENCODINGS, MULTI_VECTOR_ENCODINGS, TRUNCATIONS, EmbedOutputs

SLICE = 4096  # texts per round trip of this command; the client splits them further into requests

EPILOG = """\
input:
  TEXT arguments; or --input FILE (repeatable): one text per line, or JSON lines (.jsonl/.ndjson)
  whose --text-field is embedded and whose "id" field, when present, is kept; "-" (as TEXT or
  FILE) reads lines from stdin, as does piping with no TEXT. Blank lines are skipped.

output (stdout or --output FILE):
  jsonl  one {"id", "text", "embedding"} per input, in input order (id: the record's "id", else
         its position from 0); floats carry 9 significant digits (exact float32)
  npy    one float32 array [inputs, dimensions] (numpy.load); the default for --output *.npy
  --encoding picks what travels over the wire (float16/int8/binary are smaller); the output
  holds the decoded values.
  --outputs dense,sparse,multi_vector (any of them, for models that offer them: see `embedsvc
  models --json`) writes, per JSON line, "embedding" (dense), "sparse" ({"indices": token ids
  ascending, "values": weights, "dimension": vocabulary size}) and "multi_vector" (one vector per
  token); jsonl only. --multi-vector-encoding float16 halves what multi-vectors take on the wire.

progress: a bar on stderr (texts done, of how many the --input files hold) when stderr is a terminal;
  --progress forces it on (e.g. under a job runner's log), --no-progress turns it off.

examples:
  embedsvc embed "what is a vector index?"
  embedsvc embed --input corpus.jsonl --output vectors.npy --input-type document
  cat questions.txt | embedsvc embed --input-type query --dimensions 256 > vectors.jsonl
  embedsvc embed --model bge-m3 --outputs dense,sparse,multi_vector --input corpus.txt > all.jsonl
"""


def add_parser(sub: Any, common: argparse.ArgumentParser, connection: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "embed",
        parents=[common, connection],
        help="embed texts, files or stdin with a running server (JSONL or .npy out)",
        description="Embed texts with a running embedsvc server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help='texts to embed ("-": lines from stdin)')
    p.add_argument("--input", action="append", default=[], metavar="FILE", help="file of texts (repeatable)")
    p.add_argument(
        "--text-field", default="text", help="JSON lines: the field holding the text (default text)"
    )
    p.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--format", choices=["jsonl", "npy"], help="default: npy for --output *.npy, else jsonl")
    p.add_argument("--model", help="served model name (default: the server's default model)")
    p.add_argument(
        "--input-type", choices=["query", "document"], help="picks the model's query/document prompt"
    )
    p.add_argument("--prompt-name", help="a prompt the model defines, by name")
    p.add_argument("--instruction", help="task instruction for instruction-following models")
    p.add_argument("--dimensions", type=int, help="keep the first N dimensions (Matryoshka models)")
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: the model's setting",
    )
    p.add_argument(
        "--truncation", choices=list(TRUNCATIONS), default="end", help="over-long inputs (default end)"
    )
    p.add_argument(
        "--encoding", choices=list(ENCODINGS), default="float32", help="wire encoding (default float32)"
    )
    p.add_argument(
        "--outputs",
        type=_output_kinds,
        metavar="KINDS",
        help="comma-separated: dense, sparse, multi_vector (default dense; jsonl only beyond dense)",
    )
    p.add_argument(
        "--multi-vector-encoding",
        choices=list(MULTI_VECTOR_ENCODINGS),
        default="float32",
        help="wire encoding of multi-vectors (default float32)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: on when stderr is a terminal)",
    )
    p.set_defaults(handler=run, parser=p)


def _output_kinds(value: str) -> tuple[str, ...]:
    """``dense,sparse`` as a tuple; the names are checked where every client's are (wire)."""
    return tuple(k.strip() for k in value.split(",") if k.strip())


def _lines(handle: Any) -> Iterator[str]:
    for line in handle:
        line = line.rstrip("\r\n")
        if line.strip():
            yield line


def text_records(path: str, text_field: str) -> Iterator[tuple[str | None, str]]:
    """(id or None, text) for each record of a file ("-" = stdin)."""
    is_json = path != "-" and Path(path).suffix.lower() in (".jsonl", ".ndjson")
    handle = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        for number, line in enumerate(_lines(handle)):
            if not is_json:
                yield None, line
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CommandError(f"{path}: record {number} is not valid JSON ({exc.msg})", USAGE) from None
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise CommandError(
                    f"{path}: record {number} has no string field {text_field!r}; pass --text-field", USAGE
                )
            record_id = row.get("id")
            yield (None if record_id is None else str(record_id)), text
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path}: not UTF-8 text (byte {exc.start})", USAGE) from None
    finally:
        if handle is not sys.stdin:
            handle.close()


def text_inputs(args: argparse.Namespace, verb: str = "embed") -> Iterator[tuple[str | None, str]]:
    """(id or None, text) of the TEXT arguments, then of each --input file ("-" or a pipe: stdin)."""
    sources = list(args.input)
    texts = list(args.texts)
    if texts == ["-"]:
        texts, sources = [], ["-", *sources]
    elif "-" in texts:
        raise CommandError('"-" (stdin) cannot be mixed with other TEXT arguments', USAGE)
    if not texts and not sources:
        if sys.stdin.isatty():
            raise CommandError(
                f"nothing to {verb}: give TEXT arguments, --input FILE, or pipe lines to stdin", USAGE
            )
        sources = ["-"]
    for text in texts:
        yield None, text
    for source in sources:
        yield from text_records(source, args.text_field)


def _slices(items: Iterator[tuple[str | None, str]]) -> Iterator[list[tuple[str | None, str]]]:
    block: list[tuple[str | None, str]] = []
    for item in items:
        block.append(item)
        if len(block) == SLICE:
            yield block
            block = []
    if block:
        yield block


def _count_texts(args: argparse.Namespace) -> int | None:
    """How many texts the inputs hold (the bar's total), by a quick pass over the files; None with stdin."""
    paths = list(args.input)
    if "-" in paths or "-" in args.texts or not (args.texts or paths):
        return None
    total = len(args.texts)
    for path in paths:
        try:
            with open(path, "rb") as handle:
                total += sum(1 for line in handle if line.strip())
        except OSError:
            return None  # reading it for real says what is wrong
    return total


@contextlib.contextmanager
def _progress(args: argparse.Namespace) -> Iterator[Any]:
    """A tqdm bar on stderr counting embedded texts, or None (like ``index build``'s)."""
    enabled = args.progress if args.progress is not None else sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=_count_texts(args), unit="text", dynamic_ncols=True, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


def run(args: argparse.Namespace) -> int:
    out_format = args.format or ("npy" if args.output and args.output.endswith(".npy") else "jsonl")
    if out_format == "npy" and not args.output and sys.stdout.isatty():
        raise CommandError("--format npy writes binary: pass --output FILE.npy or redirect stdout", USAGE)
    if args.dimensions is not None and args.dimensions < 1:
        raise CommandError("--dimensions must be at least 1", USAGE)
    # dense alone (the default, or --outputs dense) is today's call and today's output, npy included
    beyond_dense = args.outputs is not None and args.outputs != ("dense",)
    if out_format == "npy" and beyond_dense:
        raise CommandError(
            "--format npy holds dense vectors only: write sparse and multi_vector as jsonl", USAGE
        )
    arrays: list[np.ndarray] = []
    done = 0
    with open_client(args) as client, open_output(args.output) as out, _progress(args) as bar:
        for block in _slices(text_inputs(args)):
            vectors = client.embed(
                [text for _, text in block],
                model=args.model,
                input_type=args.input_type,
                prompt_name=args.prompt_name,
                instruction=args.instruction,
                dimensions=args.dimensions,
                normalize=args.normalize,
                truncation=args.truncation,
                encoding=args.encoding,
                **(
                    {"outputs": args.outputs, "multi_vector_encoding": args.multi_vector_encoding}
                    if beyond_dense
                    else {}
                ),
            )
            if isinstance(vectors, EmbedOutputs):
                _write_outputs(out, block, vectors, done)
            elif out_format == "npy":
                arrays.append(vectors.astype(np.float32))
            else:
                for i, ((record_id, text), vector) in enumerate(zip(block, vectors, strict=True)):
                    name = json.dumps(record_id if record_id is not None else done + i)
                    line = (
                        f'{{"id": {name}, "text": {json.dumps(text)}, "embedding": {vector_json(vector)}}}\n'
                    )
                    out.write(line.encode())
            done += len(block)
            if bar is not None:
                bar.update(len(block))
        if done == 0:
            raise CommandError("nothing to embed: the input holds no text", USAGE)
        if out_format == "npy":
            np.save(out, np.concatenate(arrays))
    return 0


def _matrix_json(rows: np.ndarray) -> str:
    return "[" + ",".join(vector_json(row) for row in rows) + "]"


def _write_outputs(out: BinaryIO, block: list[tuple[str | None, str]], got: EmbedOutputs, start: int) -> None:
    """One JSON line per input with each output asked (keys in a fixed order: id, text, embedding,
    sparse, multi_vector)."""
    for i, (record_id, text) in enumerate(block):
        name = json.dumps(record_id if record_id is not None else start + i)
        parts = [f'"id": {name}', f'"text": {json.dumps(text)}']
        if got.dense is not None:
            parts.append(f'"embedding": {vector_json(got.dense[i])}')
        if got.sparse is not None:
            sparse = got.sparse[i]
            parts.append(
                f'"sparse": {{"indices": {json.dumps(sparse.indices.tolist())}, '
                f'"values": {vector_json(sparse.values)}, "dimension": {sparse.dimension}}}'
            )
        if got.multi_vectors is not None:
            parts.append(f'"multi_vector": {_matrix_json(got.multi_vectors[i])}')
        out.write(("{" + ", ".join(parts) + "}\n").encode())


@contextlib.contextmanager
def open_output(path: str | None) -> Iterator[BinaryIO]:
    """stdout, or FILE written whole: into FILE.partial, renamed over FILE only when all went well."""
    if path is None:
        yield sys.stdout.buffer
        return
    partial = Path(path + ".partial")
    try:
        with open(partial, "wb") as handle:
            yield handle
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)

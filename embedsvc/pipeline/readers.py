"""Corpus readers: JSONL, CSV/TSV, Parquet, plain text (one document per line).

Each yields :class:`Record` in file order with a stable position, so a run can
resume after the last checkpointed position. Bad records are yielded too, with
``error`` set, so they are counted and written to the rejects file: among them records
whose metadata fields hold an object, a nested list or a non-finite number (never
stored without that field). A null or missing metadata field is no key.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedsvc.errors import InvalidInputError, MissingExtraError

FORMATS = ("jsonl", "csv", "tsv", "parquet", "text")


@dataclass
class Record:
    source: str  # file path
    position: int  # record number in the file, from 0
    id: str | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


DEFAULT_ID_FIELD = "id"  # used where a record has it; records without one get FILE:RECORD ids


@dataclass(frozen=True)
class ReaderOptions:
    id_field: str | None = None  # None: DEFAULT_ID_FIELD where present
    text_field: str = "text"
    metadata_fields: tuple[str, ...] = ()
    format: str | None = None  # None = from the extension


def expand_inputs(patterns: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern, recursive=True))
        if not matched:
            raise FileNotFoundError(f"input {pattern!r} matches no file")
        files += [Path(m) for m in matched if Path(m).is_file()]
    return list(dict.fromkeys(files))


def detect_format(path: Path, forced: str | None) -> str:
    if forced:
        if forced not in FORMATS:
            raise InvalidInputError(f"unknown format {forced!r}; choose one of {', '.join(FORMATS)}")
        return forced
    suffix = path.suffix.lower().lstrip(".")
    return {"jsonl": "jsonl", "ndjson": "jsonl", "csv": "csv", "tsv": "tsv", "parquet": "parquet"}.get(
        suffix, "text"
    )


def _fields(row: dict[str, Any], record: Record, options: ReaderOptions) -> Record:
    text = row.get(options.text_field)
    if text is None:
        record.error = f"missing text field {options.text_field!r}"
        return record
    if not isinstance(text, str):
        record.error = f"text field {options.text_field!r} is {type(text).__name__}, not a string"
        return record
    record.text = text
    value = row.get(options.id_field or DEFAULT_ID_FIELD)
    if value is not None and value != "":
        record.id = str(value)
    elif options.id_field:  # asked for by name: every record must have it
        record.error = f"missing id field {options.id_field!r}"
        return record
    for name in options.metadata_fields:
        value = row.get(name)
        if value is None:
            continue  # absent or null: the item has no such key
        problem = metadata_problem(value)
        if problem is not None:
            record.error = f"metadata field {name!r} {problem}"
            record.metadata.clear()
            return record
        record.metadata[name] = list(value) if isinstance(value, list | tuple) else value
    return record


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"is {value} (metadata numbers must be finite)"
    if isinstance(value, dict):
        return (
            "is an object: objects are not stored (a filter could not reach inside them); name a field "
            "that holds a string, number, boolean or list of them, or flatten the object into such fields"
        )
    if isinstance(value, list | tuple):
        return "is a list of lists: list elements must be strings, numbers or booleans"
    return f"is a {type(value).__name__}: metadata values are strings, numbers, booleans or lists of them"


def metadata_problem(value: Any) -> str | None:
    """Why a record's metadata value cannot be stored (the record is then rejected, never stored
    without it), or None. Lists of strings, numbers or booleans are stored as lists."""
    if isinstance(value, list | tuple):
        for element in value:
            if element is None:
                return "is a list holding null: list elements must be strings, numbers or booleans"
            problem = _scalar_problem(element)
            if problem is not None:
                return problem if isinstance(element, list | tuple) else f"holds an element that {problem}"
        return None
    return _scalar_problem(value)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle):
            yield number, raw.rstrip(b"\r\n")


def read_records(path: Path, options: ReaderOptions) -> Iterator[Record]:
    kind = detect_format(path, options.format)
    source = str(path)
    if kind in ("jsonl", "text"):
        for number, raw in _lines(path):
            record = Record(source, number)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                record.error = f"invalid UTF-8 at byte {exc.start}"
                yield record
                continue
            if kind == "text":
                record.text = line
                yield record
                continue
            if not line.strip():
                record.error = "empty line"
                yield record
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                record.error = f"invalid JSON: {exc.msg}"
                yield record
                continue
            if not isinstance(row, dict):
                record.error = "JSON line is not an object"
                yield record
                continue
            yield _fields(row, record, options)
    elif kind in ("csv", "tsv"):
        text = path.read_bytes().decode("utf-8", errors="surrogateescape")
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="," if kind == "csv" else "\t")
        for number, row in enumerate(reader):
            record = Record(source, number)
            if any(
                "\udc80" <= ch <= "\udcff" for value in row.values() if isinstance(value, str) for ch in value
            ):
                record.error = "invalid UTF-8"
                yield record
                continue
            yield _fields(row, record, options)
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise MissingExtraError(
                "reading Parquet needs pyarrow: pip install 'embedsvc[pipeline]'"
            ) from exc
        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield _fields(row, Record(source, number), options)
                number += 1

"""Printing for people (aligned tables) and for scripts (--json)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    """Columns padded to their widest cell; an empty table prints its header only."""
    cells = [[str(c) for c in header], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return json.dumps(value, default=str) if value else ""
    return str(value)


def vector_json(values: Any) -> str:
    """A float32 vector as JSON: 9 significant digits read back to the same float32 bits."""
    return "[" + ",".join(f"{x:.9g}" for x in values.tolist()) + "]"


def warn(message: str) -> None:
    print(message, file=sys.stderr)

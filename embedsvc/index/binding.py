"""Which model fingerprint an index's vectors were made with (``binding.json`` beside ``spec.json``).

``spec.json`` never changes; the binding does (a rebind, a re-embed), so it lives in a file of its own,
written atomically. An index without one (created before bindings, or never written to by text) is
*unbound* and binds on its first text operation. States:

* ``bound`` — every vector written since the binding came from this fingerprint (as far as the server
  could tell: vector upserts without a fingerprint are not checked);
* ``mixed`` — re-bound to another fingerprint since (``index rebind``), or being re-embedded: it may hold
  vectors of two models until ``index reembed`` makes it whole again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedsvc.errors import CorruptDataError

BINDING_FILE = "binding.json"
STATES = ("bound", "mixed")


@dataclass(frozen=True)
class Binding:
    fingerprint: str
    parts: Mapping[str, str] = field(default_factory=dict)  # empty when bound by a vector upsert alone
    state: str = "bound"

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "parts": dict(self.parts), "state": self.state}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path) -> Binding:
        try:
            binding = cls(
                str(data["fingerprint"]), {str(k): str(v) for k, v in data["parts"].items()}, data["state"]
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise CorruptDataError(f"{where}: unusable model binding ({exc!r})") from exc
        if binding.state not in STATES:
            raise CorruptDataError(f"{where}: unknown binding state {binding.state!r}")
        return binding


def read_binding(folder: Path) -> Binding | None:
    path = folder / BINDING_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptDataError(f"{path}: unreadable ({exc})") from exc
    return Binding.from_json(data, path)

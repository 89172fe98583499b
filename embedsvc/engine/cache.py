"""An optional LRU cache of embedded texts, in front of the scheduler (server setting ``cache_mb``).

Each entry is one text's final vector and token count, keyed by the model's fingerprint digest, the
request's resolved options (prompt/template, truncation, dimensions, normalization, chunking) and a
128-bit BLAKE2b hash of the text. Its size is bounded in bytes (vectors plus a measured per-entry
overhead); the least recently used entries go first.

What a hit returns: with ``deterministic = true`` a model's vectors do not depend on the batch a text
was embedded in, so a hit is bitwise what recomputing would give. Without it, batch composition moves
float results slightly (about 1e-6), and a hit returns the first computation of that text.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

# bytes an entry costs beyond its vector's: key tuple, text digest, value tuple, bytes header,
# OrderedDict node: 276 measured with tracemalloc on CPython 3.11 (tests/test_cache.py checks it)
ENTRY_OVERHEAD_BYTES = 300


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class _Scope:
    """A model fingerprint and a request's resolved options, hashed once per request: per text, the key
    is (scope, text digest), so the options' dataclass hash is not recomputed for every text."""

    __slots__ = ("_hash", "fingerprint", "options")

    def __init__(self, fingerprint: str, options: Hashable) -> None:
        self.fingerprint = fingerprint
        self.options = options
        self._hash = hash((fingerprint, options))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Scope)
            and self._hash == other._hash
            and self.fingerprint == other.fingerprint
            and self.options == other.options
        )


_Key = tuple[_Scope, bytes]


@dataclass
class Lookup:
    """One request's texts against the cache: which were found, which (unique) texts to compute."""

    keys: list[_Key]
    found: list[tuple[bytes, int] | None]  # per text: (float32 vector bytes, tokens), or None
    missing: list[str] = field(default_factory=list)  # texts to embed, each once, in first-seen order
    missing_first: list[int] = field(default_factory=list)  # where each missing text first appears
    _slot: dict[bytes, int] = field(default_factory=dict)  # text digest -> index in ``missing``

    @property
    def complete(self) -> bool:
        return not self.missing

    def original_index(self, missing_index: int) -> int:
        """The request's index of ``missing[missing_index]`` (errors name the caller's index)."""
        return self.missing_first[missing_index]

    def assemble(
        self, width: int, computed: np.ndarray | None, computed_tokens: Sequence[int] = ()
    ) -> tuple[np.ndarray, list[int]]:
        """Every text's vector ([n, width] float32) and token count: hits from the cache, the rest
        from ``computed`` (rows in ``missing`` order)."""
        n = len(self.keys)
        if computed is not None and len(self.missing) == n:  # all missed, none twice: as computed
            return computed, [int(t) for t in computed_tokens]
        out = np.empty((n, width), dtype=np.float32)
        tokens = [0] * n
        hit_rows = [i for i, entry in enumerate(self.found) if entry is not None]
        if hit_rows:
            blob = b"".join(self.found[i][0] for i in hit_rows)  # type: ignore[index]
            out[hit_rows] = np.frombuffer(blob, dtype=np.float32).reshape(len(hit_rows), width)
            for i in hit_rows:
                tokens[i] = self.found[i][1]  # type: ignore[index]
        if computed is not None:
            rows = [i for i, entry in enumerate(self.found) if entry is None]
            slots = [self._slot[self.keys[i][1]] for i in rows]
            out[rows] = computed[slots]
            for i, slot in zip(rows, slots, strict=True):
                tokens[i] = int(computed_tokens[slot])
        return out, tokens


class EmbeddingCache:
    """Thread-safe LRU of per-text results, bounded by ``max_bytes``; shared by every served model
    (the fingerprint in each key keeps models, and the same model under other settings, apart)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("an embedding cache needs a positive size")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[_Key, tuple[bytes, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def entries(self) -> int:
        return len(self._entries)

    def lookup(self, fingerprint: str, options: Hashable, texts: Sequence[str]) -> Lookup:
        scope = _Scope(fingerprint, options)
        keys = [(scope, text_digest(t)) for t in texts]
        found: list[tuple[bytes, int] | None] = []
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                found.append(entry)
        lookup = Lookup(keys, found)
        for i, (key, entry) in enumerate(zip(keys, found, strict=True)):
            if entry is None and key[1] not in lookup._slot:
                lookup._slot[key[1]] = len(lookup.missing)
                lookup.missing.append(texts[i])
                lookup.missing_first.append(i)
        hits = len(keys) - sum(entry is None for entry in found)
        with self._lock:
            self.hits += hits
            self.misses += len(keys) - hits
        return lookup

    def store(self, lookup: Lookup, vectors: np.ndarray, token_counts: Sequence[int]) -> None:
        """Keep the computed rows (``missing`` order) of ``lookup``; evict the oldest past the bound."""
        rows = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock:
            for slot, first in enumerate(lookup.missing_first):
                key = lookup.keys[first]
                value = (rows[slot].tobytes(), int(token_counts[slot]))
                size = len(value[0]) + ENTRY_OVERHEAD_BYTES
                if size > self.max_bytes:
                    continue
                if key in self._entries:  # computed twice concurrently: keep the first computation
                    continue
                self._entries[key] = value
                self.bytes += size
                while self.bytes > self.max_bytes:
                    _, old = self._entries.popitem(last=False)
                    self.bytes -= len(old[0]) + ENTRY_OVERHEAD_BYTES
                    self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

"""Binary encoding of log records and snapshots: a JSON header followed by raw float32 vectors.

Payload: ``u32 header length | header (JSON) | float32 vectors (little-endian, row-major)``.
The header carries the record format version as ``"v"``:

* 1 (no ``"v"``: logs and snapshots written before versions) — metadata values are strings,
  numbers or booleans;
* 2 — metadata values may also be lists of those (``"tags": ["a", "b"]``);
* 3 — upserts and snapshots of an index that keeps texts (``store_text``) carry ``"texts"``, one
  string or null per item (older records have none: their items have no stored text).
* 3 — after the float32 vectors come further arrays, listed in the header's ``"blocks"`` as
  ``[name, numpy dtype, shape]`` in order (sparse vectors, token vectors: see sparse.py,
  multivector.py).

Every version up to ``FORMAT_VERSION`` is read; a newer one is refused (CorruptDataError naming
it) rather than misread by an older embedsvc.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.errors import CorruptDataError
from embedsvc.index.wal import fsync_dir

_LEN = struct.Struct("<I")
SNAPSHOT_MAGIC = b"ESNAP001"
FORMAT_VERSION = 3
_SNAP_HEADER = struct.Struct("<8sQI")  # magic, body length, crc32(body)


def pack(
    header: dict[str, Any], vectors: np.ndarray | None, blocks: dict[str, np.ndarray] | None = None
) -> bytes:
    arrays = [
        (name, np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))) for name, a in (blocks or {}).items()
    ]
    listed = [[name, a.dtype.str, list(a.shape)] for name, a in arrays]
    extra = {"blocks": listed, "v": FORMAT_VERSION} if arrays else {"v": FORMAT_VERSION}
    head = json.dumps({**header, **extra}, separators=(",", ":")).encode()
    body = b"" if vectors is None else np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    return _LEN.pack(len(head)) + head + body + b"".join(a.tobytes() for _, a in arrays)


def unpack(payload: bytes, dimension: int) -> tuple[dict[str, Any], np.ndarray]:
    header, vectors, _ = unpack_blocks(payload, dimension)
    return header, vectors


def unpack_blocks(payload: bytes, dimension: int) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """The header, the float32 vectors [n, dimension] and the named arrays after them (version 3)."""
    (n,) = _LEN.unpack_from(payload, 0)
    header = json.loads(payload[_LEN.size : _LEN.size + n])
    version = header.get("v", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CorruptDataError(
            f"a record in format version {version!r}, this embedsvc reads versions 1-{FORMAT_VERSION}: "
            "it was written by a newer embedsvc; upgrade to open this index"
        )
    raw = payload[_LEN.size + n :]
    blocks: dict[str, np.ndarray] = {}
    try:
        for name, dtype, shape in reversed(header.get("blocks", [])):  # from the end: vectors come first
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            blocks[name] = np.frombuffer(raw[len(raw) - size :] if size else b"", dtype=dtype).reshape(shape)
            raw = raw[: len(raw) - size]
    except (TypeError, ValueError) as exc:
        raise CorruptDataError(f"a record's arrays do not match its header ({exc})") from exc
    if dimension == 0:  # an index without dense vectors
        vectors = np.zeros((len(header.get("ids", [])), 0), "<f4")
    else:
        vectors = (
            np.frombuffer(raw, dtype="<f4").reshape(-1, dimension) if raw else np.zeros((0, dimension), "<f4")
        )
    return header, vectors, blocks


def write_snapshot(
    path: Path, header: dict[str, Any], vectors: np.ndarray, blocks: dict[str, np.ndarray] | None = None
) -> None:
    """Write to a temporary file, fsync, then rename over ``path`` atomically."""
    body = pack(header, vectors, blocks)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(_SNAP_HEADER.pack(SNAPSHOT_MAGIC, len(body), zlib.crc32(body)))
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_snapshot(path: Path, dimension: int) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    data = path.read_bytes()
    if len(data) < _SNAP_HEADER.size:
        raise CorruptDataError(f"{path}: snapshot is truncated ({len(data)} bytes)")
    magic, length, crc = _SNAP_HEADER.unpack_from(data, 0)
    body = data[_SNAP_HEADER.size :]
    if magic != SNAPSHOT_MAGIC:
        raise CorruptDataError(f"{path}: not an embedsvc snapshot (bad magic)")
    if len(body) != length:
        raise CorruptDataError(f"{path}: snapshot is {len(body)} bytes, its header says {length}")
    if zlib.crc32(body) != crc:
        raise CorruptDataError(f"{path}: snapshot checksum mismatch; the file is corrupted")
    return unpack_blocks(body, dimension)

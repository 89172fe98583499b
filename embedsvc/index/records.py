"""Binary encoding of log records and snapshots: a JSON header followed by raw float32 vectors."""

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
_SNAP_HEADER = struct.Struct("<8sQI")  # magic, body length, crc32(body)


def pack(header: dict[str, Any], vectors: np.ndarray | None) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    body = b"" if vectors is None else np.ascontiguousarray(vectors, dtype="<f4").tobytes()
    return _LEN.pack(len(head)) + head + body


def unpack(payload: bytes, dimension: int) -> tuple[dict[str, Any], np.ndarray]:
    (n,) = _LEN.unpack_from(payload, 0)
    header = json.loads(payload[_LEN.size : _LEN.size + n])
    raw = payload[_LEN.size + n :]
    vectors = (
        np.frombuffer(raw, dtype="<f4").reshape(-1, dimension) if raw else np.zeros((0, dimension), "<f4")
    )
    return header, vectors


def write_snapshot(path: Path, header: dict[str, Any], vectors: np.ndarray) -> None:
    """Write to a temporary file, fsync, then rename over ``path`` atomically."""
    body = pack(header, vectors)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(_SNAP_HEADER.pack(SNAPSHOT_MAGIC, len(body), zlib.crc32(body)))
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_snapshot(path: Path, dimension: int) -> tuple[dict[str, Any], np.ndarray]:
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
    return unpack(body, dimension)

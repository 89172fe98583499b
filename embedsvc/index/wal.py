"""Write-ahead log: length- and CRC32-framed records, fsynced before a write is acknowledged.

Record layout: ``b"EWAL" | u32 payload length | u32 crc32(payload) | payload``.

Reading stops cleanly at a *torn* final record (a crash mid-append: short header,
short payload, or a bad checksum on the very last record) and truncates it away.
A bad record followed by more data is corruption, reported, never skipped.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from embedsvc.errors import CorruptDataError

MAGIC = b"EWAL"
_HEADER = struct.Struct("<4sII")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(path: Path) -> tuple[list[bytes], int, bool]:
    """All intact payloads, the byte offset after the last one, and whether a torn tail was found."""
    if not path.exists():
        return [], 0, False
    data = path.read_bytes()
    payloads: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            return payloads, offset, True
        magic, length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if magic != MAGIC:
            raise CorruptDataError(f"{path}: bad record marker at byte {offset}; the log is corrupted")
        if end > len(data):
            return payloads, offset, True
        payload = data[offset + _HEADER.size : end]
        if zlib.crc32(payload) != crc:
            if end == len(data):
                return payloads, offset, True  # the last append never finished
            raise CorruptDataError(
                f"{path}: checksum mismatch in the record at byte {offset} with more records after it; "
                "the log is corrupted (restore from a backup or delete the index)"
            )
        payloads.append(payload)
        offset = end
    return payloads, offset, False


class WriteAheadLog:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for appends
        self.records_since_open = 0

    def append(self, payload: bytes) -> None:
        """Durable once this returns (when fsync is on)."""
        self._file.write(_HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self.records_since_open += 1

    def size(self) -> int:
        return self._file.tell()

    def reset(self) -> None:
        """Start an empty log (after a snapshot made its records redundant)."""
        self._file.close()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"")
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self._file = open(self.path, "ab")  # noqa: SIM115
        self.records_since_open = 0

    @staticmethod
    def truncate(path: Path, offset: int) -> None:
        with open(path, "r+b") as handle:
            handle.truncate(offset)
            handle.flush()
            os.fsync(handle.fileno())

    def close(self) -> None:
        self._file.close()

"""Write-ahead log: length- and CRC32-framed records, fsynced before a write is acknowledged.

Record layout: ``b"EWAL" | u32 payload length | u32 crc32(payload) | payload``.

Recovery tells a *torn tail* from *corruption* by looking at what follows a bad record:

* torn tail — the last append never finished: a short header, a payload cut short by the end of
  the file, a checksum mismatch on the very last record, or nothing but zero bytes after the last
  good record (a file system that extended the file before writing it). It held no acknowledged
  write, so it is cut off — logged, with the cut bytes kept beside the log for inspection;
* corruption — anything bad with a well-formed record after it (a flipped byte in a middle
  record's length used to look like a torn tail and silently dropped every later record). The log
  is left untouched and the index is reported damaged; ``embedsvc index repair`` salvages it.

A cut at a record boundary, or a damaged *acknowledged* last record, looks like a clean log or a
torn tail from the log alone. The :class:`HighWaterMark` beside it (``wal.mark``) keeps the number
of the last acknowledged record, so recovery can tell the two apart (see its docstring).
"""

from __future__ import annotations

import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from embedsvc.errors import CorruptDataError

log = logging.getLogger("embedsvc.index")
MAGIC = b"EWAL"
_HEADER = struct.Struct("<4sII")
MARK_MAGIC = b"EWMARK01"
_MARK = struct.Struct("<8sQQ")  # magic, last acknowledged record number, log bytes after it
_MARK_CRC = struct.Struct("<I")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LogContents:
    payloads: list[bytes]
    good_end: int  # byte offset after the last intact record
    torn_bytes: int  # bytes after it that belong to an unfinished append (0: none)
    corruption: str | None = None  # what is wrong, where, when records follow a bad one
    records_after_damage: int = 0  # well-formed records found beyond the damage


def _record_at(data: bytes, offset: int) -> int | None:
    """End offset of a well-formed record (magic, length within the file, checksum) at ``offset``."""
    if len(data) - offset < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data, offset)
    end = offset + _HEADER.size + length
    if magic != MAGIC or end > len(data) or zlib.crc32(data[offset + _HEADER.size : end]) != crc:
        return None
    return end


def _next_record(data: bytes, start: int) -> int | None:
    """Offset of the first well-formed record at or after ``start``, if any."""
    found = data.find(MAGIC, start)
    while found != -1:
        if _record_at(data, found) is not None:
            return found
        found = data.find(MAGIC, found + 1)
    return None


def scan_log(path: Path) -> LogContents:
    """Every intact record, and whether what follows the last one is a torn tail or corruption."""
    if not path.exists():
        return LogContents([], 0, 0)
    data = path.read_bytes()
    payloads: list[bytes] = []
    offset = 0
    while offset < len(data):
        end = _record_at(data, offset)
        if end is None:
            rest = data[offset:]
            later = _next_record(data, offset + 1)
            if later is None or not rest.strip(b"\0"):
                return LogContents(payloads, offset, len(rest))
            after = 0
            cursor: int | None = later
            while cursor is not None:
                after += 1
                cursor = _next_record(data, _record_at(data, cursor) or cursor + 1)
            return LogContents(
                payloads,
                offset,
                0,
                corruption=f"{path}: record {len(payloads) + 1} at byte {offset} is damaged and "
                f"{after} well-formed record(s) follow from byte {later} (the log is {len(data)} bytes); "
                "the log was left untouched",
                records_after_damage=after,
            )
        payloads.append(data[offset + _HEADER.size : end])
        offset = end
    return LogContents(payloads, offset, 0)


def cut_torn_tail(path: Path, contents: LogContents) -> None:
    """Cut an unfinished last append off the log, keeping its bytes beside it and saying so."""
    if not contents.torn_bytes:
        return
    with open(path, "rb") as handle:
        handle.seek(contents.good_end)
        torn = handle.read()
    aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
    aside.write_bytes(torn)
    WriteAheadLog.truncate(path, contents.good_end)
    log.warning(
        "write-ahead log: cut an unfinished last record (a crash during an append, never acknowledged)",
        extra={"log": str(path), "bytes": len(torn), "kept_at": str(aside), "kept": len(contents.payloads)},
    )


def read_log(path: Path) -> tuple[list[bytes], int, bool]:
    """All intact payloads, the offset after the last one, and whether a torn tail follows it.

    Raises CorruptDataError where a damaged record has intact records after it."""
    contents = scan_log(path)
    if contents.corruption:
        raise CorruptDataError(contents.corruption)
    return contents.payloads, contents.good_end, contents.torn_bytes > 0


class WriteAheadLog:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._file = open(path, "ab")  # noqa: SIM115 - kept open for appends
        self.records_since_open = 0

    def append(self, payload: bytes) -> None:
        """Durable once this returns (when fsync is on). If it raises (a full disk), the log is cut
        back to where it was: a half-written record must not sit before the next one."""
        start = self._file.tell()
        try:
            self._file.write(_HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
        except OSError:
            self._rollback(start)
            raise
        self.records_since_open += 1

    def _rollback(self, offset: int) -> None:
        self._file.close()
        try:
            self.truncate(self.path, offset)
        finally:
            self._file = open(self.path, "ab")  # noqa: SIM115

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


class HighWaterMark:
    """The number of the last acknowledged record and the log's length after it, in a 28-byte file.

    Updated after every append *without an fsync*: one ``pwrite`` into the page cache (about a
    microsecond), where an fsync would double the cost of every write. The record itself is fsynced
    first, so the mark never runs ahead of what is durable in the log; it reaches the disk with the
    system's write-back (seconds), at every snapshot and at close, which are fsynced. Trade-off:
    records lost together with a mark that never reached the disk (a power cut within the
    write-back window that also destroys log data) go unnoticed; every later loss (a log cut at a
    record boundary, a damaged or deleted last record, a deleted log) is found.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    @staticmethod
    def read(path: Path) -> tuple[int, int] | None:
        """(last acknowledged record, log bytes), or None without a readable mark (said in the log)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if not data:
            return None  # created, never written: an index from before marks, opened but not yet written
        body = data[: _MARK.size]
        if len(data) != _MARK.size + _MARK_CRC.size or _MARK_CRC.unpack_from(data, _MARK.size)[
            0
        ] != zlib.crc32(body):
            log.warning("write-ahead log: high-water mark unreadable; not checked", extra={"mark": str(path)})
            return None
        magic, seq, length = _MARK.unpack(body)
        if magic != MARK_MAGIC:
            log.warning("write-ahead log: high-water mark unreadable; not checked", extra={"mark": str(path)})
            return None
        return seq, length

    def update(self, seq: int, log_bytes: int, *, sync: bool = False) -> None:
        body = _MARK.pack(MARK_MAGIC, seq, log_bytes)
        os.pwrite(self._fd, body + _MARK_CRC.pack(zlib.crc32(body)), 0)
        if sync:
            os.fsync(self._fd)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)

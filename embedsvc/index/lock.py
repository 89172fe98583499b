"""One owner per data directory: an exclusive flock on ``DATA_DIR/.lock``, naming its holder.

A server and a local ``embedsvc index build`` on the same directory used to both write, and the
server's shutdown snapshot overwrote what the build had added. The lock is released when the
process exits, however it exits (the kernel drops flocks with the file descriptor).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from embedsvc.errors import FailedPreconditionError

LOCK_FILE = ".lock"


class DataDirInUseError(FailedPreconditionError):
    """Another process holds the data directory."""


class DataDirLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise DataDirInUseError(
                f"data directory {data_dir} is in use by {holder}; stop it first, or point this process "
                "at another directory (two processes writing one directory lose writes)"
            ) from None
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "command": " ".join(sys.argv)[:300], "since": time.strftime("%FT%T%z")}
        os.pwrite(fd, json.dumps(record).encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _describe_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        data = {}
    if not data:
        return "another process"
    return f"pid {data.get('pid')} ({data.get('command') or '?'}, since {data.get('since', '?')})"

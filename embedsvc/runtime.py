"""A running server's state file, so that a client waiting for it can tell "still starting" from
"died starting" without waiting its whole ``--wait``.

``embedsvc serve`` writes ``port-PORT.json`` into a per-user folder (``$XDG_RUNTIME_DIR/embedsvc``,
else ``TMPDIR/embedsvc-UID``, mode 0700)::

    {"pid": 4242, "host": "127.0.0.1", "port": 50051, "state": "starting", "updated": 1764500000.0}

``state`` is ``starting`` from the command's start, ``serving`` once the models are loaded, ``failed``
(with ``error``) when start-up raised; the file is removed on an orderly exit. A process killed while
starting leaves ``starting`` with a pid that no longer runs: that is read as "died starting" too.
Only start-up deaths count: a server that was serving and stopped is not a verdict on the next one.
Files are keyed by port, since one port has one listener on a machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]", "0.0.0.0", "::", "[::]")


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        return Path(base) / "embedsvc"
    return Path(tempfile.gettempdir()) / f"embedsvc-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


def state_path(port: int) -> Path:
    return runtime_dir() / f"port-{port}.json"


def _trusted(folder: Path) -> bool:
    """Only a folder of this user's counts: in a shared temp dir another user could plant verdicts."""
    try:
        return not hasattr(os, "getuid") or folder.stat().st_uid == os.getuid()
    except OSError:
        return False


class StateFile:
    """The serving process's side: ``update(state)`` as start-up goes on, ``remove()`` at exit."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.disabled = _held_by_another(port)  # a live server's file is its own, not ours to rewrite

    def update(self, state: str, port: int | None = None, error: str | None = None) -> None:
        if self.disabled:
            return
        if port:
            if port != self.port:
                self.remove()
            self.port = port
        if not self.port:
            return  # port 0 before binding: no client can be waiting on it yet
        entry: dict[str, Any] = {
            "pid": os.getpid(),
            "host": self.host,
            "port": self.port,
            "state": state,
            "updated": time.time(),
        }
        if error:
            entry["error"] = error
        path = state_path(self.port)
        try:  # best effort: a read-only temp folder must not stop the server
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _trusted(path.parent):
                return
            partial = path.with_name(f".{path.name}.{os.getpid()}")
            partial.write_text(json.dumps(entry))
            os.replace(partial, path)
        except OSError:
            pass

    def remove(self) -> None:
        if self.disabled or not self.port:
            return
        path = state_path(self.port)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()


def _held_by_another(port: int) -> bool:
    if not port:
        return False
    try:
        pid = json.loads(state_path(port).read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(pid, int) and pid != os.getpid() and _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _split_target(target: str) -> tuple[str, int] | None:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "localhost", int(port)


def died_starting(target: str, since: float) -> str | None:
    """Why the server that was starting on ``target`` (a local HOST:PORT) is gone, or None when that
    cannot be said. ``since``: when the caller began waiting; a verdict written before it (a failed
    start from earlier) only counts once a new server has had ``STALE_GRACE_S`` to replace it."""
    parsed = _split_target(target)
    if parsed is None:
        return None
    host, port = parsed
    if not _trusted(runtime_dir()):
        return None
    try:
        entry = json.loads(state_path(port).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or (host not in LOCAL_HOSTS and host != entry.get("host")):
        return None
    pid, state = entry.get("pid"), entry.get("state")
    updated = float(entry.get("updated") or 0)
    if state == "failed":
        reason = f"it failed to start: {entry.get('error') or 'see its log'}"
    elif state == "starting" and isinstance(pid, int) and not _alive(pid):
        reason = "it exited while starting (killed, or it crashed: see its log)"
    else:
        return None
    if updated < since and time.time() - since < STALE_GRACE_S:
        return None  # an old verdict: a server started just now may not have written its file yet
    return f"the server process {pid} on port {port} is gone: {reason}"


STALE_GRACE_S = 10.0

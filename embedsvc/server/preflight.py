"""Check a whole server configuration before binding a port or loading a model: a mistake costs a
one-line error at once, not a traceback after seconds of model loading."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from embedsvc.config import ServerConfig
from embedsvc.errors import InvalidInputError, MissingExtraError, StartupError
from embedsvc.models.profiles import POOLING_MODES


def _check_port(host: str, port: int, what: str) -> None:
    """Bind and listen as the real servers do: SO_REUSEADDR set (gRPC, uvicorn and the metrics server
    all set it), so the TIME_WAIT connections a stopped or killed server leaves behind pass, and only
    a socket that really listens there fails."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            held = ""
            if exc.errno == errno.EADDRINUSE:
                holder = port_holder(port)
                held = f" (held by {holder})" if holder else " (another listener holds it)"
            raise StartupError(
                f"cannot listen on {host}:{port} for {what}: {exc.strerror}{held}"
                f"; choose another port ({_flag(what)}), or 0 for any free one"
            ) from exc


def port_holder(port: int) -> str | None:
    """``pid N (command)`` of a process of this user listening on ``port``, from /proc (Linux); None
    where it cannot be seen (another user's process, another OS)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")  # state 0A = LISTEN
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                return f"pid {proc.name} ({command.strip()[:120]})"
        except OSError:
            continue
    return None


def _flag(what: str) -> str:
    flags = {"gRPC": "--port", "HTTP": "--http-port; --no-http serves gRPC only", "metrics": "--metrics-port"}
    return flags[what]


def _check_http_extra() -> None:
    import importlib.util

    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(
            f"HTTP (served by default) needs {', '.join(missing)}: pip install 'embedsvc[http]', "
            "or serve gRPC only with --no-http"
        )


def _check_readable(path: str, what: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise StartupError(f"{what} {path}: cannot read it ({exc.strerror})") from exc


def _check_data_dir(path: str) -> None:
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"data directory {path}: cannot create it ({exc.strerror})") from exc
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise StartupError(f"data directory {path}: not a directory this user can write")
    from embedsvc.index.lock import DataDirLock

    DataDirLock.acquire(folder).release()  # another server or build holding it: refused by name, now


def _check_source(source: str | None) -> None:
    if source is None:
        return
    path = Path(source).expanduser()
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or path.exists()
    if looks_like_path and not path.is_dir():
        raise InvalidInputError(
            f"model source {source}: no such checkpoint folder (a hub id looks like ORG/NAME)", field="source"
        )


def _check_index_device(setting: str) -> None:
    """The index device's form; an explicit GPU also against the installed faiss, as the index
    manager will at start (``auto`` and ``cpu`` never need faiss to be imported here)."""
    from embedsvc.index.ann import faiss_module
    from embedsvc.index.gpu import check_device_setting, resolve_device

    check_device_setting(setting)
    if setting.startswith("gpu"):
        resolve_device(setting, faiss_module())


def check_before_start(config: ServerConfig) -> None:
    """Raise InvalidInputError / StartupError for anything that would stop the server later."""
    from embedsvc.engine.embedder import check_options
    from embedsvc.models.loading import parse_device

    for model in config.models:
        options = dict(model.options)
        dtype, device = options.pop("dtype", None), options.pop("device", None)
        pooling = options.pop("pooling", None)
        for key in ("normalize", "max_length"):
            options.pop(key, None)  # checked against the checkpoint when it loads
        where = f"model {model.name or model.source or 'bundled'}"
        try:
            if pooling is not None and pooling not in POOLING_MODES:
                raise InvalidInputError(
                    f"unknown pooling {pooling!r}; choose one of {', '.join(POOLING_MODES)}", field="pooling"
                )
            check_options(options, dtype=dtype, device=device)
            if device is not None:
                parse_device(device)  # "cuda" on a machine without CUDA: refused now, not after binding
            _check_source(model.source)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: {exc}", field=exc.field) from exc
    _check_index_device(config.index_device)
    if config.tls_cert and config.tls_key:
        _check_readable(config.tls_cert, "TLS certificate")
        _check_readable(config.tls_key, "TLS key")
    if config.data_dir:
        _check_data_dir(config.data_dir)
    if config.http:
        _check_http_extra()
    ports = [("gRPC", config.port), ("metrics", config.metrics_port)]
    if config.http:
        ports.insert(1, ("HTTP", config.http_port))
    chosen = [(what, port) for what, port in ports if port]
    numbers = [port for _, port in chosen]
    for what, port in chosen:
        if numbers.count(port) > 1:
            raise StartupError(f"port {port} is given for more than one listener ({what} among them)")
        _check_port(config.host, port, what)

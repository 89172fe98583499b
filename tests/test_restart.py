"""A server comes back on its own ports at once, whatever stopped it: the start-up check binds as the
real listeners do (SO_REUSEADDR), so the TIME_WAIT connections of the old process do not block it; a
port that another process really listens on is refused with a message that names that process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from embedsvc import EmbedClient
from tests.server_utils import ServerProcess, free_port

TIME_WAIT, LISTEN = "06", "0A"


def socket_states(port: int) -> list[str]:
    """TCP states (hex, as /proc/net/tcp writes them) of this machine's sockets whose local port is
    ``port``."""
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == port:
                states.append(parts[3])
    return states


def test_restart_at_once_after_sigkill_with_clients_connected(tmp_path):
    port, http_port = free_port(), free_port()
    ports = ("--http-port", str(http_port))
    first = ServerProcess(*ports, port=port, log_path=tmp_path / "first.log")
    client = EmbedClient(first.target, timeout=60)
    http = httpx.Client(timeout=60)
    try:
        assert client.embed(["before the crash"]).shape == (1, 384)
        assert http.post(first.http_url() + "/v1/embeddings", json={"input": ["x"]}).status_code == 200
        first.stop(signal.SIGKILL)  # connections open on both ports: the kernel closes them for it
    finally:
        client.close()
        http.close()
    states = socket_states(port) + socket_states(http_port)
    assert TIME_WAIT in states and LISTEN not in states, states  # the case the old probe tripped on
    with ServerProcess(*ports, port=port, log_path=tmp_path / "second.log") as second:
        with EmbedClient(second.target, timeout=60) as again:
            assert again.embed(["after the restart"]).shape == (1, 384)
        assert second.http_url() == f"http://127.0.0.1:{http_port}"


def test_restart_at_once_after_an_ordinary_stop_following_http_traffic(tmp_path):
    port, http_port = free_port(), free_port()
    ports = ("--http-port", str(http_port))
    # keep-alive connections: the server closes them when it stops, so their TIME_WAIT is on its side
    with (
        ServerProcess(*ports, port=port, log_path=tmp_path / "first.log") as first,
        httpx.Client(timeout=60) as http,
    ):
        url = first.http_url() + "/v1/embeddings"
        for _ in range(3):
            assert http.post(url, json={"input": ["x"]}).status_code == 200
        assert first.stop() == 0
    assert TIME_WAIT in socket_states(http_port)
    with (
        ServerProcess(*ports, port=port, log_path=tmp_path / "second.log") as second,
        httpx.Client(timeout=60) as http,
    ):
        assert http.post(second.http_url() + "/v1/embeddings", json={"input": ["y"]}).status_code == 200


def test_a_port_really_held_is_refused_naming_the_holder():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        for args in (["--port", str(taken), "--no-http"], ["--port", "0", "--http-port", str(taken)]):
            done = subprocess.run(
                [sys.executable, "-m", "embedsvc", "serve", *args],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 9, done.stderr
            (line,) = done.stderr.strip().splitlines()
            assert f"127.0.0.1:{taken}" in line and "Address already in use" in line
            assert f"held by pid {os.getpid()} (" in line, line

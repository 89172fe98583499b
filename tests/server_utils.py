"""Start a real `embedsvc serve` process on loopback for tests, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``embedsvc serve ARGS`` on a free loopback port; waits until health says SERVING. HTTP (on by
    default, at 8080) gets a free port too unless ARGS choose (--http-port, --no-http) or ``http_flag``
    is False (the test sets it through a config file or the environment)."""

    def __init__(
        self,
        *args: str,
        log_path: Path,
        startup_timeout: float = 180.0,
        env: dict[str, str] | None = None,
        http_flag: bool = True,
        port: int | None = None,
        secure: bool | None = None,
    ) -> None:
        """``port``: a given gRPC port (restart tests); ``secure``: TLS set outside ARGS (file, env)."""
        self.port = port or free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        environment = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        chooses_http = any(a in ("--http-port", "--no-http") or a.startswith("--http-port=") for a in args)
        http = ["--http-port", "0"] if http_flag and not chooses_http else []
        self._log = open(log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "embedsvc", "serve", "--port", str(self.port), *http, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        self._wait_serving(startup_timeout, secure="--tls-cert" in args if secure is None else secure)

    def _wait_serving(self, timeout: float, secure: bool) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            # a TLS server's health needs a secure channel: its "serving" log line tells instead
            ready = (
                '"msg": "serving"' in self.log()
                if secure
                else self.health() == health_pb2.HealthCheckResponse.SERVING
            )
            if ready:
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not SERVING after {timeout}s:\n{self.log()}")

    def health(self, service: str = "") -> int | None:
        with grpc.insecure_channel(self.target) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
            except grpc.RpcError:
                return None
            return int(reply.status)

    def http_url(self) -> str:
        """The base URL of the server's HTTP front door (https with TLS), from its log."""
        import json

        for line in self.log().splitlines():
            if '"msg": "listening"' in line:
                entry = json.loads(line)
                if entry["http"] == "off":
                    raise RuntimeError("the server was started with HTTP off")
                return f"{'https' if entry.get('tls') else 'http'}://{entry['http']}"
        raise RuntimeError(f"no 'listening' line in the log:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kill_build_midway(command: list[str], cwd: Path, checkpoint: Path, documents: int) -> int:
    """Start an `embedsvc index build` command, SIGKILL it once its checkpoint counts ``documents``;
    returns how many documents the checkpoint holds after the kill."""
    import json

    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if checkpoint.exists() and json.loads(checkpoint.read_text())["totals"]["documents"] >= documents:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return int(json.loads(checkpoint.read_text())["totals"]["documents"])

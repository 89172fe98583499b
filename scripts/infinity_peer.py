"""Infinity (``infinity-emb``), a Python peer, under the same load as our gRPC server: for scripts/bench.py.

infinity-emb pins numpy<2 and sentence-transformers<4, so it usually lives in its own virtual
environment (``make infinity-venv``); the benchmark starts its server from that environment's Python
and talks to its OpenAI-style HTTP API (``POST /embeddings``), one keep-alive connection per client.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from types import TracebackType

import numpy as np

from scripts.load import closed_loop


def find_python(choice: str) -> str | None:
    """The Python that has infinity_emb.

    ``auto`` looks in this Python, then $EMBEDSVC_INFINITY_PYTHON, then .venv-infinity.
    """
    if choice != "auto":
        return choice
    if importlib.util.find_spec("infinity_emb") is not None:
        return sys.executable
    root = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("EMBEDSVC_INFINITY_PYTHON"), root / ".venv-infinity" / "bin" / "python"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HttpEmbedder:
    """One keep-alive connection to an OpenAI-style ``/embeddings`` endpoint."""

    def __init__(self, url: str, model: str, timeout: float = 600) -> None:
        parts = urllib.parse.urlsplit(url)
        self.path = (parts.path.rstrip("/") or "") + "/embeddings"
        self.model = model
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def embed(self, texts: list[str]) -> np.ndarray:
        body = json.dumps({"model": self.model, "input": texts, "encoding_format": "float"})
        self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"infinity answered {response.status}: {payload[:300]!r}")
        data = sorted(json.loads(payload)["data"], key=lambda d: d["index"])
        return np.asarray([d["embedding"] for d in data], dtype=np.float32)

    def close(self) -> None:
        self.conn.close()


class InfinityServer:
    """``infinity_emb v2`` on a free loopback port, serving one local checkpoint folder."""

    def __init__(self, python: str, model_folder: str, log_path: Path, batch_size: int = 32) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = "bench"
        command = [
            python,
            "-c",
            "from infinity_emb.cli import cli; cli()",
            "v2",
            "--model-id",
            model_folder,
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            "--batch-size",
            str(batch_size),
            "--engine",
            "torch",
            "--served-model-name",
            "bench",
        ]
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in __exit__
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def __enter__(self) -> InfinityServer:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"infinity exited with {self.proc.returncode}; see {self.log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/models")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"infinity did not start within 300 s; see {self.log_path}")

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import infinity_emb; print(infinity_emb.__version__)"], capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def bench_http(
    url: str, model: str, texts: list[str], clients: int, per_request: int
) -> tuple[np.ndarray, float, list[float]]:
    """The same load as scripts/bench.py's gRPC run: ``clients`` threads, ``per_request`` texts each."""
    return closed_loop(lambda: HttpEmbedder(url, model), texts, clients, per_request)


def single_latencies(url: str, model: str, text: str, n: int) -> list[float]:
    client = HttpEmbedder(url, model)
    try:
        client.embed([text])
        times: list[float] = []
        for _ in range(n):
            started = time.perf_counter()
            client.embed([text])
            times.append(time.perf_counter() - started)
        return times
    finally:
        client.close()

"""Exit codes and messages that tell the truth: a closed pipe is a normal end, `--wait` stops when the
server it waits for died starting, `index build` does not promise saved progress it never made, and
arguments that would do nothing (or something else) are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embedsvc import runtime
from tests.server_utils import ServerProcess, free_port


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embedsvc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def one_line(out: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_embed_into_head_ends_quietly_and_the_state_file_follows_the_server(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    with ServerProcess("--no-http", env=env, log_path=tmp_path / "server.log") as server:
        state = json.loads((tmp_path / "embedsvc" / f"port-{server.port}.json").read_text())
        assert (state["pid"], state["state"], state["port"]) == (server.proc.pid, "serving", server.port)
        many = tmp_path / "many.txt"
        many.write_text("".join(f"line number {i}\n" for i in range(300)))  # ~1.4 MB of JSON lines out
        piped = subprocess.run(
            [
                "bash",
                "-c",
                f'set -o pipefail; "{sys.executable}" -m embedsvc embed --input "{many}" | head -1',
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "EMBEDSVC_TARGET": server.target},
        )
        assert piped.returncode == 0 and piped.stderr == "", piped.stderr
        assert len(json.loads(piped.stdout)["embedding"]) == 384
    assert not (tmp_path / "embedsvc" / f"port-{server.port}.json").exists()  # an orderly stop


def test_wait_stops_early_when_the_server_failed_to_start(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    port = free_port()
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedsvc",
            "serve",
            "--port",
            str(port),
            "--no-http",
            "--model",
            f"m={empty}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )
    try:
        started = time.monotonic()
        waited = run_cli("models", "--target", f"127.0.0.1:{port}", "--wait", "240", env=env, timeout=230)
        assert time.monotonic() - started < 200  # not the whole --wait
        one_line(waited, 5, f"stopped waiting for 127.0.0.1:{port}", "failed to start")
    finally:
        serve.wait(120)
    assert serve.returncode == 9


def test_wait_stops_early_when_the_server_was_killed_starting(tmp_path):
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    port = free_port()
    state_file = tmp_path / "embedsvc" / f"port-{port}.json"
    serve = subprocess.Popen(
        [sys.executable, "-m", "embedsvc", "serve", "--port", str(port), "--no-http"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )
    deadline = time.monotonic() + 120
    while not state_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    serve.send_signal(signal.SIGKILL)  # an OOM kill while the model loads
    serve.wait()
    if json.loads(state_file.read_text())["state"] != "starting":
        pytest.skip("the model loaded before the kill landed")
    waited = run_cli("models", "--target", f"localhost:{port}", "--wait", "240", env=env, timeout=230)
    one_line(waited, 5, "exited while starting")


def test_an_old_verdict_waits_for_a_new_server_to_write_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    port = free_port()
    record = runtime.StateFile("127.0.0.1", port)
    record.update("failed", error="model m does not load")
    assert "failed to start: model m does not load" in (runtime.died_starting(f"127.0.0.1:{port}", 0) or "")
    later = time.time() + 1  # a wait that began after the failure: a new server may be starting
    assert runtime.died_starting(f"127.0.0.1:{port}", later) is None
    assert runtime.died_starting(f"10.1.2.3:{port}", 0) is None  # another machine's port
    record.update("serving")
    assert runtime.died_starting(f"127.0.0.1:{port}", 0) is None  # alive and serving: no verdict
    record.remove()
    assert not runtime.state_path(port).exists()


def test_build_with_no_server_does_not_claim_saved_progress(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"id": "a", "text": "hello"}\n')
    target = f"127.0.0.1:{free_port()}"
    out = subprocess.run(
        [sys.executable, "-m", "embedsvc", "index", "build", str(corpus), "--index", "x", "--target", target]
        + ["--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 5, out.stderr
    last = out.stderr.strip().splitlines()[-1]  # after the retry warnings
    assert "stopped before anything was written: cannot reach the server" in last and target in last
    assert "progress is saved" not in out.stderr


def test_arguments_that_would_do_nothing_are_refused(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "hello"}\n')
    target = ("--target", f"127.0.0.1:{free_port()}")
    one_line(run_cli("index", "build", f"{folder}/", "--index", "x", *target), 2, "a directory, not a file")
    one_line(run_cli("index", "search", "x", "query", "-k", "0", *target), 2, "-k must be at least 1")
    missing = tmp_path / "no-such-data"
    one_line(run_cli("index", "repair", "x", "--data-dir", str(missing)), 4, "no such directory")
    export = run_cli(
        "index", "export", "x", "--data-dir", str(missing), "--to", "qdrant", str(tmp_path / "q")
    )
    assert export.returncode in (4, 10), export.stderr  # 10: qdrant-client not installed here
    assert not missing.exists()
    one_line(run_cli("serve", "--port", "70000"), 2, "port must be a port number from 0 to 65535")


def test_runtime_dir_is_per_user(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert runtime.runtime_dir().name == f"embedsvc-{os.getuid()}"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert runtime.runtime_dir() == Path(tmp_path) / "embedsvc"


def test_a_state_folder_of_another_user_is_not_trusted(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    port = free_port()
    runtime.StateFile("127.0.0.1", port).update("failed", error="planted")
    assert runtime.died_starting(f"127.0.0.1:{port}", 0)
    if os.getuid() != 0:
        pytest.skip("changing the folder's owner needs root")
    os.chown(runtime.runtime_dir(), os.getuid() + 4242, -1)
    assert runtime.died_starting(f"127.0.0.1:{port}", 0) is None

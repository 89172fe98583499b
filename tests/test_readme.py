"""The README's examples stay true: every fenced block marked ``<!-- tested -->`` in the README and in the
docs/ pages it links runs, in that order, as one bash script (Python blocks through the same interpreter),
in a folder holding a copy of ``examples/``. A failing line fails the test with the block it came from.
Blocks marked ``<!-- tested: with a server -->`` (the quickstart, which expects `make serve` running in
another terminal) run on their own against a server the test starts the same way."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = "<!-- tested -->"
WITH_SERVER = "<!-- tested: with a server -->"
LINK = re.compile(r"\]\((docs/[\w.-]+\.md)\)")
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def pages() -> list[Path]:
    """The README, then every docs/ page it links, in the order it links them."""
    linked = dict.fromkeys(LINK.findall(README.read_text()))
    return [README, *(ROOT / name for name in linked)]


def marked_blocks(text: str, mark: str = MARK, where: str = "README.md") -> list[tuple[str, str, str]]:
    """(language, code, place) of each block whose fence follows the marker line."""
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.strip() == mark:
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((match.group(1), match.group(2), f"{where} line {line}"))
    return blocks


def all_marked_blocks(mark: str = MARK) -> list[tuple[str, str, str]]:
    blocks = []
    for page in pages():
        blocks += marked_blocks(page.read_text(), mark, str(page.relative_to(ROOT)))
    return blocks


def script_for(blocks: list[tuple[str, str, str]]) -> str:
    parts = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for language, code, place in blocks:
        parts.append(f"echo '### {place} ({language})' >&2")
        if language == "bash":
            parts.append(code)
        else:
            parts.append(f"{sys.executable} - <<'README_PYTHON'\n{code}README_PYTHON")
    return "\n".join(parts) + "\n"


def test_the_marker_finds_the_command_line_and_python_examples():
    assert len(pages()) >= 8, "the README links its docs pages"
    assert all(page.exists() for page in pages())
    blocks = all_marked_blocks()
    commands = "".join(code for language, code, _ in blocks if language == "bash")
    for command in ("serve", "embed", "models", "index build", "index search", "index export", "index drop"):
        assert f"embedsvc {command}" in commands
    assert any(language == "python" for language, _, _ in blocks)


def _port_free(port: int) -> bool:
    """Free as the server binds it: SO_REUSEADDR, so the previous README run's connections left in
    TIME_WAIT do not count (a plain bind skipped the quickstart test in CI after the examples test)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


def _environment() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("EMBEDSVC_TARGET", "EMBEDSVC_API_KEY", "EMBEDSVC_API_KEYS")
    }
    env.update(
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _run(script_text: str, folder: Path, **env: str) -> None:
    shutil.copytree(ROOT / "examples", folder / "examples")
    script = folder / "readme.sh"
    script.write_text(script_text)
    out = subprocess.run(
        ["bash", str(script)],
        cwd=folder,
        env={**_environment(), **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
    assert out.returncode == 0, f"{out.stderr[-4000:]}\n--- server log ---\n{log[-3000:]}"


class _Competitor:
    """Another tenant embedding without pause against 127.0.0.1:50051 while the README runs, so the
    everyday commands meet a full queue and have to slow down instead of failing."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.served = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        from embedsvc.client import EmbedClient

        texts = [f"competing text number {i} about nothing in particular" for i in range(256)]
        while not self.stop.is_set():
            try:
                with EmbedClient("127.0.0.1:50051", timeout=60) as client:
                    while not self.stop.is_set():
                        client.embed(texts)
                        self.served += 1
            except Exception:  # the README's server starts and stops during the run
                self.stop.wait(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("queue", ["default", "small queue, busy"])
def test_readme_examples_run(tmp_path, queue):
    pytest.importorskip("qdrant_client")
    if not (_port_free(50051) and _port_free(8080)):
        pytest.skip("port 50051 or 8080 (the README's defaults: gRPC, HTTP) is in use here")
    if queue == "default":
        _run(script_for(all_marked_blocks()), tmp_path)
    else:
        # every server setting reads EMBEDSVC_<KEY>: the README's own `embedsvc serve` line gets a queue of
        # a tenth of a second of work, and another tenant keeps it full
        competitor = _Competitor()
        competitor.thread.start()
        try:
            _run(script_for(all_marked_blocks()), tmp_path, EMBEDSVC_MAX_QUEUE_SECONDS="0.1")
        finally:
            competitor.stop.set()
            competitor.thread.join(timeout=120)
        assert competitor.served > 0, "the competing tenant never got through: the test measured nothing"
    # the outputs are what the README says they are
    (one,) = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert len(one["embedding"]) == 384
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    tops = [a["hits"][0]["id"] for a in answers]
    assert tops[0] in ("k1", "k2") and tops[1] == "k5", tops  # key rotation; tea temperature
    from qdrant_client import QdrantClient

    exported = QdrantClient(path=str(tmp_path / "qdrant-data"))
    corpus = (ROOT / "examples" / "corpus.jsonl").read_text().splitlines()
    assert exported.count("docs").count == len(corpus) - 1  # k4 was deleted before the export
    exported.close()


@pytest.mark.slow
def test_readme_quickstart_runs_against_a_server(tmp_path):
    """The quickstart as pasted in a second terminal while `make serve` (the same command) runs."""
    if not (_port_free(50051) and _port_free(8080)):
        pytest.skip("port 50051 or 8080 (the README's defaults: gRPC, HTTP) is in use here")
    blocks = all_marked_blocks(WITH_SERVER)
    assert blocks, "the README has a quickstart block"
    serve = "embedsvc serve --host 127.0.0.1 --port 50051 --data-dir ./data --plain-logs 2> server.log &"
    _run(serve + "\n" + script_for(blocks), tmp_path)

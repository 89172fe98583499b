"""The README's examples stay true: every fenced block marked ``<!-- tested -->`` runs, in README order, as
one bash script (Python blocks through the same interpreter), in a folder holding the sample files the
README names. A failing line fails the test with the block it came from."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- tested -->"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def marked_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line) of each block whose fence follows the marker line."""
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if before.strip() == MARK:
            blocks.append((match.group(1), match.group(2), text.count("\n", 0, match.start()) + 1))
    return blocks


def script_for(blocks: list[tuple[str, str, int]]) -> str:
    parts = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for language, code, line in blocks:
        parts.append(f"echo '### README.md line {line} ({language})' >&2")
        if language == "bash":
            parts.append(code)
        else:
            parts.append(f"{sys.executable} - <<'README_PYTHON'\n{code}README_PYTHON")
    return "\n".join(parts) + "\n"


def test_the_marker_finds_the_command_line_and_python_examples():
    blocks = marked_blocks(README.read_text())
    commands = "".join(code for language, code, _ in blocks if language == "bash")
    for command in ("serve", "embed", "models", "index build", "index search", "index export", "index drop"):
        assert f"embedsvc {command}" in commands
    assert any(language == "python" for language, _, _ in blocks)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _sample_files(folder: Path) -> None:
    docs = [
        ("k1", "How to rotate an API key without downtime", "en", 2023),
        ("k2", "Key rotation schedules for service accounts", "en", 2022),
        ("k3", "Comment changer une clé d'API", "fr", 2022),
        ("k4", "The history of tea in England", "en", 2019),
        ("k5", "Brewing green tea at the right temperature", "en", 2021),
    ]
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": t, "lang": lang, "year": y}) + "\n" for i, t, lang, y in docs)
    )
    (folder / "questions.txt").write_text("how often should keys rotate?\nhow hot should tea water be?\n")


@pytest.mark.slow
def test_readme_examples_run(tmp_path):
    pytest.importorskip("qdrant_client")
    if not _port_free(50051):
        pytest.skip("port 50051 (the README's default) is in use here")
    _sample_files(tmp_path)
    script = tmp_path / "readme.sh"
    script.write_text(script_for(marked_blocks(README.read_text())))
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
    out = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    log = (tmp_path / "server.log").read_text() if (tmp_path / "server.log").exists() else ""
    assert out.returncode == 0, f"{out.stderr[-4000:]}\n--- server log ---\n{log[-3000:]}"
    # the outputs are what the README says they are
    (one,) = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert len(one["embedding"]) == 384
    answers = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    tops = [a["hits"][0]["id"] for a in answers]
    assert tops[0] in ("k1", "k2") and tops[1] == "k5", tops  # key rotation; tea temperature
    from qdrant_client import QdrantClient

    exported = QdrantClient(path=str(tmp_path / "qdrant-data"))
    assert exported.count("docs").count == 4  # k4 was deleted before the export
    exported.close()

"""``embedsvc embed --input`` shows a progress bar on stderr (on a terminal, or with --progress), counting
texts of a total read from the files up front; stdout stays the plain output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.server_utils import ServerProcess

TEXTS = 4100  # two of the command's round trips (4096 texts each)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress")
    # one caller sends 4096 texts at once here: room for them on a slow, shared CPU
    with ServerProcess("--plain-logs", "--max-queue-seconds", "600", log_path=folder / "server.log") as proc:
        yield proc


def embed(*args: str, target: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embedsvc", "embed", "--target", target, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_progress_bar_counts_texts_of_the_files(server, tmp_path):
    lines = [f"sentence number {i} about vector search" for i in range(TEXTS)]
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n".join(lines[:10]) + "\n\n  \n" + "\n".join(lines[10:]) + "\n")  # blanks: skipped
    shown = embed("--input", str(corpus), "--progress", target=server.target)
    assert shown.returncode == 0, shown.stderr
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [r["text"] for r in rows] == lines  # the bar never reaches stdout
    assert f"{TEXTS}/{TEXTS}" in shown.stderr and "text/s" in shown.stderr, shown.stderr
    assert f"4096/{TEXTS}" in shown.stderr, shown.stderr  # updated after the first round trip

    # not a terminal (as here) and no --progress: no bar; --no-progress wins over an earlier --progress
    quiet = embed("--input", str(corpus), target=server.target)
    off = embed("--input", str(corpus), "--progress", "--no-progress", target=server.target)
    for out in (quiet, off):
        assert out.returncode == 0 and out.stderr == "" and out.stdout == shown.stdout


def test_progress_bar_without_a_known_total_on_stdin(server):
    piped = subprocess.run(
        [sys.executable, "-m", "embedsvc", "embed", "--target", server.target, "--progress"],
        input="one\ntwo\nthree\n",
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert piped.returncode == 0, piped.stderr
    assert len(piped.stdout.splitlines()) == 3
    assert "3text" in piped.stderr.replace(" ", "") and "/3" not in piped.stderr, piped.stderr

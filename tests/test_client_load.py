"""The clients against real `embedsvc serve` processes under load: a small queue refuses work and the
clients slow down instead of failing; lists longer than a request's limit are split; one client
spreads its calls over three replicas and keeps going when one is killed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from embedsvc.client import AsyncEmbedClient, EmbedClient, EmbedServiceError
from tests.server_utils import ServerProcess, free_port
from tests.tiny_models import corpus

TEXTS = corpus(3000, seed=1)[:2758]  # the 2 758 short texts


@pytest.fixture(scope="module")
def small_queue(tmp_path_factory):
    server = ServerProcess(
        "--max-queue-seconds", "2", log_path=tmp_path_factory.mktemp("small-queue") / "server.log"
    )
    yield server
    server.stop()


@pytest.mark.slow
def test_a_lone_caller_is_slowed_not_failed(small_queue):
    """The old client sent four chunks at once, the server refused the caller's own later chunks
    (RESOURCE_EXHAUSTED "this caller already holds 3.6s of it") and nothing retried."""
    with EmbedClient(small_queue.target, timeout=120) as client:
        vectors = client.embed(TEXTS)
        assert vectors.shape == (2758, 384)
        np.testing.assert_allclose(vectors[:3], client.embed(TEXTS[:3]), atol=1e-5)

    async def run() -> np.ndarray:
        async with AsyncEmbedClient(small_queue.target, timeout=120) as aclient:
            return await aclient.embed(TEXTS)

    np.testing.assert_allclose(asyncio.run(run()), vectors, atol=1e-5)


@pytest.mark.slow
def test_three_callers_at_once_all_succeed(small_queue):
    results: list[object] = []
    lock = threading.Lock()

    def caller(k: int) -> None:
        try:
            with EmbedClient(small_queue.target, timeout=240) as client:
                outcome: object = client.embed(TEXTS[k:] + TEXTS[:k]).shape
        except EmbedServiceError as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [(2758, 384)] * 3


def test_lists_over_the_request_limit_are_split(small_queue):
    """`get` with 2 339 ids failed with INVALID_ARGUMENT "the limit is 2048"; delete, search_batch and
    tokenize too."""
    n = 2339
    ids = [f"item-{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    with EmbedClient(small_queue.target, timeout=120) as client:
        client.create_index("split", metric="inner_product")
        assert client.upsert("split", ids, vectors=vectors, metadata=[{"i": i} for i in range(n)]) == n
        got = client.get("split", [*ids, "missing"])
        assert len(got) == n and "missing" not in got
        np.testing.assert_allclose(got["item-2338"][0], vectors[2338])
        assert got["item-2338"][1] == {"i": 2338}
        found = client.search_batch("split", vectors=vectors, k=1)
        assert [hits[0].id for hits in found] == ids
        assert client.delete("split", [*ids[:-1], "missing"]) == n - 1
        assert client.count("split") == 1
        client.delete_index("split")
        tokens = client.tokenize(TEXTS[:n])
        assert len(tokens) == n and tokens[-1] == client.tokenize([TEXTS[n - 1]])[0]


def _embed_requests(metrics_port: int) -> float:
    """How many Embed RPCs a server has handled, from its Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("embedsvc_requests_total{") and 'method="Embed"' in line
    )


@pytest.mark.slow
def test_three_replicas_share_the_load_and_survive_a_kill(tmp_path):
    ports = [free_port() for _ in range(3)]
    replicas = [
        ServerProcess("--metrics-port", str(port), log_path=tmp_path / f"replica{i}.log")
        for i, port in enumerate(ports)
    ]
    try:
        target = "ipv4:" + ",".join(r.target for r in replicas)
        texts = corpus(64, seed=3)[:64]
        outcomes: list[object] = []
        lock = threading.Lock()
        stop = threading.Event()
        killed = threading.Event()

        def caller(client: EmbedClient) -> None:
            while not stop.is_set():
                try:
                    outcome: object = client.embed(texts[:8]).shape
                except EmbedServiceError as exc:
                    outcome = exc
                with lock:
                    outcomes.append(outcome)

        with EmbedClient(target, timeout=60) as client:
            threads = [threading.Thread(target=caller, args=(client,)) for _ in range(4)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 120
            while len(outcomes) < 60 and time.monotonic() < deadline:
                time.sleep(0.1)
            before_kill = [_embed_requests(port) for port in ports]
            replicas[1].proc.send_signal(signal.SIGKILL)  # midway, with calls in flight
            replicas[1].proc.wait()
            killed.set()
            at_kill = len(outcomes)
            while len(outcomes) < at_kill + 60 and time.monotonic() < deadline + 60:
                time.sleep(0.1)
            stop.set()
            for thread in threads:
                thread.join(120)
            survivors_after = [_embed_requests(ports[i]) for i in (0, 2)]
        failures = [o for o in outcomes if not isinstance(o, tuple)]
        assert not failures, failures[:3]
        assert len(outcomes) >= at_kill + 60
        assert all(count >= 5 for count in before_kill), before_kill  # round robin: all took work
        assert all(after > before_kill[i] for after, i in zip(survivors_after, (0, 2), strict=True))
    finally:
        for replica in replicas:
            replica.stop()


def test_cli_takes_a_multi_address_target(small_queue, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedsvc",
            "embed",
            "--target",
            f"ipv4:{small_queue.target},127.0.0.1:{free_port()}",  # the second is down: skipped
            "hello replicas",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 and "hello" not in result.stderr


@pytest.mark.slow
def test_index_build_finishes_against_a_small_queue(tmp_path):
    """The README's chunking flags against a freshly started server with a small queue: the old build
    hit RESOURCE_EXHAUSTED six times in a row and stopped with exit 3."""
    words = corpus(4000, seed=11)
    docs = tmp_path / "docs.jsonl"
    with open(docs, "w") as handle:
        for i in range(150):
            text = " ".join(words[(i * 20) % 3900 : (i * 20) % 3900 + 40])  # ~500 tokens: 3-4 chunks
            handle.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    with ServerProcess("--max-queue-seconds", "0.5", log_path=tmp_path / "server.log") as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "embedsvc",
                "index",
                "build",
                str(docs),
                "--index",
                "docs",
                "--id-field",
                "id",
                "--target",
                server.target,
                "--chunk-tokens",
                "200",
                "--chunk-overlap",
                "40",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "indexed 150 documents" in result.stdout
        with EmbedClient(server.target, timeout=60) as client:
            chunks = client.count("docs")
        assert chunks > 300  # every document in 2 or more chunks

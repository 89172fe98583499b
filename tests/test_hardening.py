"""No request may wedge the server: sizes, floods, unread streams, shutdown, and bad configuration.

Each test reproduces a way a hostile or careless client stalled, flooded or confused a real
``embedsvc serve`` process, and checks what a client sees now.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from embedsvc import EmbedClient, Embedder
from embedsvc.client import EmbedServiceError
from embedsvc.config import build_server_config
from embedsvc.errors import InvalidInputError
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc
from tests.server_utils import ServerProcess
from tests.tiny_models import corpus


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("hardening") / "server.log"
    with ServerProcess(
        "--max-queue-seconds", "3", "--grace-period", "20", "--max-inputs-per-request", "4096", log_path=log
    ) as s:
        yield s


def code_of(call) -> grpc.StatusCode:
    try:
        call()
    except EmbedServiceError as exc:
        return exc.code
    return grpc.StatusCode.OK


@pytest.mark.timeout(60)
def test_chunked_tokenizing_is_linear(minilm):
    """A 1 MiB text in chunked mode took ~25 s (every window rebuilt a set of all token positions)."""
    text = "The quick brown fox jumps over the lazy dog near the river bank. " * (2**20 // 66)
    started = time.perf_counter()
    windows = minilm.prepare([text], chunked=True)
    assert len(windows) > 400 and time.perf_counter() - started < 15
    assert sum(w.text_tokens for w in windows) == len(
        minilm.tokenizer(text, add_special_tokens=False)["input_ids"]
    )


def test_size_limits_answer_at_once(server):
    with EmbedClient(server.target, timeout=30) as client:
        started = time.perf_counter()
        with pytest.raises(EmbedServiceError) as caught:
            client.embed(["x" * (2**20 + 1)])
        assert time.perf_counter() - started < 2
        assert (
            caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "max_text_bytes" in caught.value.details
        )
        with pytest.raises(EmbedServiceError) as caught:
            client.embed(["y" * 2**20] * 9, chunked=True)  # each text fits, the request does not
        assert (
            caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
            and "max_request_bytes" in caught.value.details
        )
        assert client.embed(["still serving"]).shape == (1, 384)


@pytest.mark.slow
def test_light_callers_are_served_while_heavy_ones_flood(server):
    """The issue's flood: heavy callers used to wait 22 s for RESOURCE_EXHAUSTED and starve a light
    caller; now they are refused at once, and the light caller's requests ride the next batch."""
    heavy_texts = corpus(600, seed=7)[:512]
    stop = threading.Event()
    refusals: list[float] = []
    heavy_ok = [0]
    lock = threading.Lock()

    def heavy() -> None:
        # retry=False: this test is about what the server does with refusals, not the client's pacing
        with EmbedClient(server.target, timeout=120, chunk_size=4096, retry=False) as client:
            while not stop.is_set():
                started = time.perf_counter()
                code = code_of(lambda: client.embed(heavy_texts))
                with lock:
                    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        refusals.append(time.perf_counter() - started)
                    elif code == grpc.StatusCode.OK:
                        heavy_ok[0] += 1
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(0.05)

    flood = [threading.Thread(target=heavy) for _ in range(12)]
    for thread in flood:
        thread.start()
    time.sleep(3)  # let the queue fill
    latencies: list[float] = []
    failures: list[grpc.StatusCode] = []
    with EmbedClient(server.target, timeout=30) as light:
        for i in range(40):
            started = time.perf_counter()
            light_code = code_of(lambda i=i: light.embed([f"light request {i}"]))
            if light_code == grpc.StatusCode.OK:
                latencies.append(time.perf_counter() - started)
            else:
                failures.append(light_code)
            time.sleep(0.1)
    stop.set()
    for thread in flood:
        thread.join()
    assert not failures, failures
    # generous: starved, the light caller waited ~22 s; on a loaded 2-core machine the median measured
    # 0.4-2.2 s (the light request waits for the batch in progress, then rides the next one)
    assert statistics.median(latencies) < 4 and max(latencies) < 15, latencies
    assert refusals and statistics.median(refusals) < 0.2, statistics.median(refusals or [0])
    assert heavy_ok[0] > 0


@pytest.mark.slow
def test_unread_streams_do_not_starve_anyone(server):
    """500 streams that were never read kept producing responses into unbounded queues."""
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.EmbeddingServiceStub(channel)
    texts = corpus(64, seed=9)[:64]

    def requests():
        for i in range(100_000):
            yield pb.EmbedRequest(id=str(i), inputs=texts)

    streams = [stub.EmbedStream(requests()) for _ in range(40)]  # never read
    time.sleep(3)
    with EmbedClient(server.target, timeout=30) as client:
        started = time.perf_counter()
        assert client.embed(["are you there"]).shape == (1, 384)
        assert time.perf_counter() - started < 5
    assert server.health() == 1  # SERVING
    for stream in streams:
        stream.cancel()
    channel.close()


def test_sigterm_with_an_open_stream_exits_promptly(tmp_path):
    with ServerProcess("--grace-period", "30", log_path=tmp_path / "server.log") as s:
        channel = grpc.insecure_channel(s.target)
        stub = pb_grpc.EmbeddingServiceStub(channel)
        release = threading.Event()

        def requests():
            yield pb.EmbedRequest(id="first", inputs=["hello"])
            release.wait(60)  # an open stream, idle

        stream = stub.EmbedStream(requests())
        first = next(stream)
        assert first.id == "first"
        started = time.perf_counter()
        s.proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as caught:
            next(stream)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert s.proc.wait(30) == 0
        assert time.perf_counter() - started < 10  # not the 30 s grace period
        release.set()
        channel.close()


def test_deadlines_cancel_work_already_started(minilm):
    import asyncio

    from embedsvc.engine.scheduler import BatchScheduler, DeadlineExceededError

    async def run() -> BatchScheduler:
        scheduler = BatchScheduler(
            minilm.forward,
            name="m",
            token_budget=64,
            max_batch_size=8,
            max_queue_requests=10,
            max_queue_tokens=10**6,
        )
        scheduler.start()
        with pytest.raises(DeadlineExceededError):
            await scheduler.submit(minilm.prepare(corpus(400, seed=5)), timeout=0.3)
        await asyncio.sleep(0.3)
        await scheduler.close()
        return scheduler

    scheduler = asyncio.run(run())
    assert scheduler.stats.skipped_sequences > 0 and scheduler.stats.forwarded_sequences < 400


@pytest.mark.parametrize("backend", ["flash_attn", "torch_varlen"])
def test_attention_backends_that_cannot_run_here_are_refused_at_load(backend):
    with pytest.raises(InvalidInputError, match=f"attention_backend '{backend}' is not available on cpu"):
        Embedder.from_pretrained(attention_backend=backend, device="cpu")


def test_server_refuses_an_unrunnable_backend_before_serving(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[[models]]\nname = "m"\nattention_backend = "flash_attn"\n')
    done = subprocess.run(
        [sys.executable, "-m", "embedsvc", "serve", "--port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "attention_backend 'flash_attn' is not available" in done.stderr


def test_empty_api_key_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="an API key is empty"):
        build_server_config(None, {"api_keys": [""]})
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "embedsvc", "serve", "--port", "0", "--api-key", ""],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2 and "API key is empty" in done.stderr


def test_command_line_keys_add_to_the_config_files(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[server]\napi_keys = ["from-file"]\n')
    with ServerProcess("--config", str(config), "--api-key", "from-flag", log_path=tmp_path / "s.log") as s:
        for key in ("from-file", "from-flag"):
            with EmbedClient(s.target, api_key=key) as client:
                assert client.embed(["x"]).shape == (1, 384)
        with EmbedClient(s.target, api_key="other") as client, pytest.raises(EmbedServiceError) as caught:
            client.embed(["x"])
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_search_limits_through_the_server(tmp_path):
    with (
        ServerProcess("--data-dir", str(tmp_path / "d"), log_path=tmp_path / "s.log") as s,
        EmbedClient(s.target) as client,
    ):
        client.create_index("h", kind="hnsw")
        client.upsert(
            "h", [f"x{i}" for i in range(100)], vectors=np.random.default_rng(0).normal(size=(100, 384))
        )
        for kwargs in ({"ef_search": 2**31 - 1}, {"ef_search": 2**32 - 1}, {"k": 2**31 - 1}):
            code = code_of(lambda kwargs=kwargs: client.search("h", text="x", **kwargs))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, kwargs

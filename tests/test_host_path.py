"""The host path around the forward: responses packed from the float32 array and read back by numpy
(the same bits as protobuf's own per-element fields), the thread budget, packed pooling in bulk."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from embedsvc import wire
from embedsvc.engine.pooling import pool_packed
from embedsvc.engine.threads import apply_threads, resolve_threads
from embedsvc.errors import InvalidInputError
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.wire import embeddings as decode_response


def _reference(vectors: np.ndarray, tokens: list[int]) -> pb.EmbedResponse:
    """The response as protobuf builds it field by field (what the server did before)."""
    return pb.EmbedResponse(
        id="r",
        model="m",
        embeddings=[pb.Embedding(values=v.tolist(), tokens=t) for v, t in zip(vectors, tokens, strict=True)],
        dimensions=vectors.shape[1],
        encoding=pb.ENCODING_FLOAT32,
        usage=pb.Usage(total_tokens=sum(tokens), inputs=len(tokens)),
    )


@pytest.mark.parametrize("shape", [(0, 8), (1, 1), (3, 384), (5, 31)])
def test_packed_float32_response_equals_the_field_by_field_one(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal(shape).astype(np.float32)
    if vectors.size:
        vectors[0, 0] = -0.0  # signs, subnormals and extremes survive bit for bit
        vectors.flat[-1] = np.float32(1e-45)
    tokens = [0, 127, 128, 300_000, 2**32 - 1][: shape[0]] or []
    tokens += [7] * (shape[0] - len(tokens))
    packed = wire.embed_response(
        request_id="r",
        model="m",
        vectors=vectors,
        token_counts=tokens,
        encoding=pb.ENCODING_FLOAT32,
        total_tokens=sum(tokens),
    )
    assert packed == _reference(vectors, tokens)
    # through the wire (canonical serialization) and back with numpy
    received = pb.EmbedResponse.FromString(packed.SerializeToString())
    assert [e.tokens for e in received.embeddings] == tokens
    decoded = decode_response(received)
    assert decoded.dtype == np.float32 and decoded.shape == shape
    assert decoded.tobytes() == vectors.tobytes()


def test_decoding_reads_a_response_built_by_any_protobuf_writer() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    response = _reference(vectors, [1, 2, 3])
    assert wire.float32_rows(response).tobytes() == vectors.tobytes()
    response.embeddings[1].values.append(1.0)  # a row that disagrees with dimensions is an error
    with pytest.raises(ValueError, match="embedding 1 has 5 values"):
        wire.float32_rows(response)


@pytest.mark.parametrize("encoding", [pb.ENCODING_FLOAT16, pb.ENCODING_INT8, pb.ENCODING_BINARY])
def test_byte_encodings_still_round_trip(encoding: int) -> None:
    vectors = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    response = wire.embed_response(
        request_id="r", model="m", vectors=vectors, token_counts=[3, 4], encoding=encoding, total_tokens=7
    )  # type: ignore[arg-type]
    assert [e.tokens for e in response.embeddings] == [3, 4]
    assert np.allclose(
        decode_response(response), vectors if encoding != pb.ENCODING_BINARY else vectors > 0, atol=0.02
    )


def test_thread_budget_from_option_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBEDSVC_THREADS", raising=False)
    assert resolve_threads(None) is None
    assert resolve_threads(3) == 3
    monkeypatch.setenv("EMBEDSVC_THREADS", "2")
    assert resolve_threads(None) == 2
    assert resolve_threads(1) == 1  # the option wins over the environment
    for bad in (0, -1, "many", True):
        with pytest.raises(InvalidInputError, match="threads must be a whole number"):
            resolve_threads(bad)
    monkeypatch.setenv("EMBEDSVC_THREADS", "0")
    with pytest.raises(InvalidInputError, match="EMBEDSVC_THREADS must be"):
        resolve_threads(None)
    before = torch.get_num_threads()
    try:
        apply_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_idle_openmp_threads_sleep_unless_told_otherwise() -> None:
    code = "import os, embedsvc.engine.embedder; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "PASSIVE", out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "ACTIVE", out.stderr


@pytest.mark.parametrize("mode", ["mean", "weighted_mean", "max"])
def test_packed_pooling_in_bulk_matches_each_sequence_alone(mode: str) -> None:
    """One scatter over the batch gives each sequence's own reduction, spans included."""
    torch.manual_seed(0)
    lengths = [5, 1, 9, 3]
    hidden = torch.randn(sum(lengths), 6)
    cu = torch.tensor([0, 5, 6, 15, 18], dtype=torch.int32)
    for starts, ends in ((None, None), (torch.tensor([1, 0, 2, 0]), torch.tensor([4, 1, 9, 2]))):
        got = pool_packed(hidden, cu, mode, starts, ends)
        for i, n in enumerate(lengths):
            lo = 0 if starts is None else int(starts[i])
            hi = n if ends is None else int(ends[i])
            span = hidden[int(cu[i]) + lo : int(cu[i]) + hi]
            if mode == "max":
                want = span.max(dim=0).values
            else:
                w = (
                    torch.ones(hi - lo)
                    if mode == "mean"
                    else torch.arange(lo + 1, hi + 1, dtype=torch.float32)
                )
                want = (span * w[:, None]).sum(0) / w.sum()
            torch.testing.assert_close(got[i], want, rtol=1e-6, atol=1e-6)


def test_overlapped_slices_give_the_same_vectors(bert_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """embed() tokenizing the next slice while the current one runs: same vectors (bitwise in the
    deterministic mode), chunked texts merged within their slice, errors naming the caller's index."""
    from embedsvc import Embedder
    from embedsvc.engine import embedder as embedder_module
    from embedsvc.errors import TextTooLongError
    from tests.tiny_models import corpus

    monkeypatch.setattr(embedder_module, "OVERLAP_TEXTS", 8)
    texts = corpus(30, seed=5)[:30]
    texts[13] = " ".join(texts) * 3  # long: several chunks, or too long without truncation
    for options in ({}, {"deterministic": True}):
        engine = Embedder.from_pretrained(bert_dir, max_length=32, **options)
        for chunked in (False, True):
            engine.overlap = True
            sliced = engine.embed(texts, chunked=chunked)
            engine.overlap = False
            whole = engine.embed(texts, chunked=chunked)
            assert sliced.shape == whole.shape == (30, engine.dimension)
            if options:
                assert sliced.tobytes() == whole.tobytes()
            else:
                cos = (sliced * whole).sum(1) / np.linalg.norm(sliced, axis=1) / np.linalg.norm(whole, axis=1)
                assert cos.min() >= 0.99999
        engine.overlap = True
        with pytest.raises(TextTooLongError, match="input 13 "):
            engine.embed(texts, truncation="none")


def test_heap_handed_back_after_a_huge_request_only(bert_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler trims the heap (on its forward thread, after the answer) once a request of
    TRIM_AFTER_TOKENS or more is done, and never for ordinary ones."""
    import threading

    from embedsvc import Embedder
    from embedsvc.engine import scheduler as scheduler_module
    from embedsvc.engine.inputs import trim_heap
    from tests.tiny_models import corpus

    calls: list[str] = []

    def counted() -> None:
        calls.append(threading.current_thread().name)
        trim_heap()

    monkeypatch.setattr(scheduler_module, "trim_heap", counted)
    monkeypatch.setattr(scheduler_module, "TRIM_AFTER_TOKENS", 300)
    monkeypatch.setattr(scheduler_module, "TRIM_DELAY_S", 0.01)
    engine = Embedder.from_pretrained(bert_dir, max_length=32)
    small, big = engine.prepare(corpus(4, seed=1)[:4]), engine.prepare(corpus(40, seed=2)[:40])
    assert sum(len(e.ids) for e in small) < 300 <= sum(len(e.ids) for e in big)

    async def run(encoded: list) -> None:
        scheduler = scheduler_module.BatchScheduler(
            engine.forward,
            name="t",
            token_budget=128,
            max_batch_size=64,
            max_queue_requests=10,
            max_queue_tokens=100_000,
        )
        scheduler.start()
        await scheduler.submit(encoded)
        await asyncio.sleep(0.2)
        await scheduler.close()

    asyncio.run(run(small))
    assert calls == []
    asyncio.run(run(big))
    assert len(calls) == 1 and calls[0].startswith("forward-t")


# ------------------------------------------------------------------ the server's thread budget
def test_server_threads_budget_from_file_env_or_flag() -> None:
    """``threads`` (file < EMBEDSVC_THREADS < --threads) sizes every model's forward + tokenizer pool
    and the tokenizing workers; a model's own threads and an explicit tokenizer_threads win."""
    from embedsvc.config import build_server_config

    default = build_server_config(None, {}, environ={})
    assert default.threads is None and default.tokenizer_threads == 2
    assert "threads" not in default.models[0].options  # every core, as before
    file = {"server": {"threads": 6}, "models": [{"name": "a"}, {"name": "b", "threads": 1}]}
    merged = build_server_config(file, {}, environ={})
    assert merged.threads == 6 and merged.tokenizer_threads == 2
    assert [m.options.get("threads") for m in merged.models] == [6, 1]
    one = build_server_config(file, {}, environ={"EMBEDSVC_THREADS": "1"})
    assert (one.threads, one.tokenizer_threads, one.models[0].options["threads"]) == (1, 1, 1)
    flagged = build_server_config(file, {"threads": 3}, environ={"EMBEDSVC_THREADS": "1"})
    assert (flagged.threads, flagged.models[0].options["threads"]) == (3, 3)
    explicit = build_server_config({"server": {"threads": 1, "tokenizer_threads": 4}}, {}, environ={})
    assert explicit.tokenizer_threads == 4
    for bad in ({"server": {"threads": 0}}, {"server": {"threads": True}}, {"server": {"threads": "4"}}):
        with pytest.raises(InvalidInputError, match="threads must be a whole number"):
            build_server_config(bad, {}, environ={})
    with pytest.raises(InvalidInputError, match="EMBEDSVC_THREADS='two': expected an integer"):
        build_server_config(None, {}, environ={"EMBEDSVC_THREADS": "two"})


@pytest.mark.slow
def test_a_server_with_one_thread_and_a_parallel_tokenizer(bert_dir, tmp_path) -> None:
    """``--threads 1`` reaches the server (one tokenizing worker, reported by TEI's /info), and the
    product's default Rust tokenizer pool (TOKENIZERS_PARALLELISM unset: on; the test helper turns it
    off) gives the in-process vectors under concurrent requests."""
    import httpx

    from embedsvc import AsyncEmbedClient, Embedder
    from tests.server_utils import ServerProcess
    from tests.tiny_models import corpus

    texts = corpus(64, seed=9)[:64]
    want = Embedder.from_pretrained(bert_dir).embed(texts)
    env = {"TOKENIZERS_PARALLELISM": "true"}
    args = ("--model", f"m={bert_dir}", "--threads", "1")
    with ServerProcess(*args, log_path=tmp_path / "s.log", env=env) as s:
        info = httpx.get(s.http_url() + "/info", timeout=30).json()
        assert info["tokenization_workers"] == 1

        async def concurrently() -> list[np.ndarray]:
            clients = [AsyncEmbedClient(s.target, timeout=60) for _ in range(4)]
            try:
                return await asyncio.gather(
                    *(c.embed(texts[16 * k : 16 * k + 16]) for k, c in enumerate(clients))
                )
            finally:
                for c in clients:
                    await c.close()

        got = np.concatenate(asyncio.run(concurrently()))
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert got.shape == want.shape and cos.min() >= 0.99999


# ------------------------------------------------------------------ the CUDA side (GPU only)
@pytest.mark.gpu
def test_cuda_inputs_staged_in_one_pinned_copy_without_waiting(bert_dir) -> None:
    """A batch's ids, positions, cu_seqlens and spans reach the device as one asynchronous copy
    from pinned memory, and pooling over whole sequences reads nothing back from the device:
    neither synchronises (torch's sync debug mode raises on any implicit wait)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from embedsvc import Embedder

    engine = Embedder.from_pretrained(bert_dir, device="cuda")
    arrays = [
        np.arange(7, dtype=np.int64),
        np.array([0, 3, 7], dtype=np.int64),
        np.array([5], dtype=np.int64),
    ]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        staged = engine._stage(*arrays)
        hidden = torch.randn(7, 16, device="cuda")
        cu = staged[1].to(torch.int32)
        pooled = {mode: pool_packed(hidden, cu, mode) for mode in ("mean", "weighted_mean", "max")}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [t.device.type for t in staged] == ["cuda"] * 3
    assert [t.cpu().tolist() for t in staged] == [a.tolist() for a in arrays]
    for mode, got in pooled.items():
        want = pool_packed(hidden.cpu(), cu.cpu(), mode, per_sequence=True)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_forward_copies_rows_out_per_batch_in_order(bert_dir) -> None:
    """Many small batches (rows copied out asynchronously into one pinned buffer, put back in the
    callers' order after one wait), prompts excluded from pooling and chunked texts: the CPU path's
    vectors, and host memory comes back."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from embedsvc import Embedder
    from tests.tiny_models import corpus

    texts = corpus(40, seed=3)[:40]
    texts[7] = " ".join(texts) * 2
    options = {"max_length": 32, "prompts": {"q": "query: "}, "include_prompt": False}
    cpu = Embedder.from_pretrained(bert_dir, device="cpu", **options)
    gpu = Embedder.from_pretrained(bert_dir, device="cuda", token_budget=96, **options)
    encoded = gpu.prepare(texts, prompt_name="q", chunked=True)
    assert gpu.forward(encoded).device.type == "cpu"
    for kwargs in ({}, {"prompt_name": "q", "chunked": True}):
        want, got = cpu.embed(texts, **kwargs), gpu.embed(texts, **kwargs)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert got.shape == want.shape and cos.min() >= 0.9999


# ------------------------------------------------------------------ CPU forwards: batches side by side
def test_forward_workers_run_one_intra_op_thread_each_and_leave_other_threads_alone() -> None:
    import threading

    from embedsvc.engine.cpu_parallel import ForwardWorkers

    before = torch.get_num_threads()
    workers = ForwardWorkers(3)
    seen = workers.map(lambda _: (threading.current_thread().name, torch.get_num_threads()), range(6))
    assert {n for _, n in seen} == {1} and all(name.startswith("embedsvc-forward") for name, _ in seen)
    assert torch.get_num_threads() == before  # the calling thread
    fresh: list[int] = []
    later = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert fresh == [before]  # a thread started afterwards gets the process default, not 1
    with pytest.raises(ZeroDivisionError):
        workers.map(lambda x: 1 // x, [1, 0, 2])


def test_a_forward_is_split_so_every_worker_gets_a_batch() -> None:
    from embedsvc.engine.batching import plan_batches
    from embedsvc.engine.cpu_parallel import MIN_SPLIT_TOKENS, split_for_workers

    rng = np.random.default_rng(3)
    for workers, count in ((2, 8), (2, 300), (3, 300), (4, 41)):
        lengths = rng.integers(1, 300, count).tolist()
        planned = plan_batches(lengths, token_budget=4096, max_batch_size=256, packed=True)
        split = split_for_workers(planned, lengths, workers, max_batch_size=256, packed=True)
        assert sorted(i for b in split for i in b) == list(range(count))  # every sequence once
        rounds = -(-len(planned) // workers)
        assert len(split) <= rounds * workers and (len(split) % workers == 0 or len(split) < workers)
        share = sum(lengths) / (rounds * workers)
        for batch in split:  # about an even share each, longest first within a batch
            assert sum(lengths[i] for i in batch) <= share + max(lengths)
            assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    tiny = [MIN_SPLIT_TOKENS // 4] * 3  # too few tokens to be worth a second worker
    assert split_for_workers([[0, 1, 2]], tiny, 2, max_batch_size=256, packed=True) == [[0, 1, 2]]
    padded = [[0, 1], [2]]  # a padded batch costs its longest row: left as planned
    assert split_for_workers(padded, [500, 400, 300], 2, max_batch_size=256, packed=False) is padded


@pytest.mark.parametrize("deterministic", [False, True])
def test_batches_side_by_side_give_the_vectors_of_one_batch_at_a_time(bert_dir, deterministic) -> None:
    from embedsvc import Embedder
    from tests.tiny_models import corpus

    texts = corpus(300, seed=4)
    side = Embedder.from_pretrained(bert_dir, deterministic=deterministic, token_budget=512)
    one = Embedder.from_pretrained(
        bert_dir, deterministic=deterministic, token_budget=512, cpu_parallelism="operators"
    )
    assert (side.cpu_parallelism, one.cpu_parallelism) == ("batches", "operators")
    assert side.forward_workers == torch.get_num_threads() and one.forward_workers == 1
    a, b = side.embed(texts), one.embed(texts)
    assert float((a * b).sum(axis=1).min()) >= 0.99999
    if deterministic:  # batch-invariant: the same bits alone, in another order, whichever worker ran it
        for k in (0, 7, 299):
            assert side.embed(texts[k : k + 1]).tobytes() == a[k : k + 1].tobytes()
        assert side.embed(texts[::-1])[::-1].tobytes() == a.tobytes()


def test_cpu_parallelism_from_file_env_or_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    from embedsvc.cli.main import main
    from embedsvc.config import build_server_config
    from embedsvc.engine.embedder import check_options

    default = build_server_config(None, {}, environ={})
    assert default.cpu_parallelism is None and "cpu_parallelism" not in default.models[0].options
    file = {
        "server": {"cpu_parallelism": "operators"},
        "models": [{"name": "a"}, {"name": "b", "cpu_parallelism": "batches"}],
    }
    merged = build_server_config(file, {}, environ={})
    assert [m.options.get("cpu_parallelism") for m in merged.models] == ["operators", "batches"]
    env = build_server_config(None, {}, environ={"EMBEDSVC_CPU_PARALLELISM": "operators"})
    assert env.models[0].options["cpu_parallelism"] == "operators"
    flagged = build_server_config(
        file, {"cpu_parallelism": "batches"}, environ={"EMBEDSVC_CPU_PARALLELISM": "operators"}
    )
    assert flagged.models[0].options["cpu_parallelism"] == "batches"
    message = "unknown cpu_parallelism 'fast'; choose one of batches, operators"
    with pytest.raises(InvalidInputError, match=message):
        check_options({"cpu_parallelism": "fast"})
    # a bad value from the file or the environment stops `serve` before it binds or loads anything
    config = tmp_path / "c.toml"
    config.write_text('[server]\ncpu_parallelism = "fast"\n')
    assert main(["serve", "--config", str(config)]) == 2
    assert message in capsys.readouterr().err
    monkeypatch.setenv("EMBEDSVC_CPU_PARALLELISM", "fast")
    assert main(["serve"]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--cpu-parallelism", "fast"])
    assert exited.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("source", ["flag", "env"])
def test_a_server_takes_cpu_parallelism_from_a_flag_or_the_environment(bert_dir, tmp_path, source) -> None:
    import httpx

    from tests.server_utils import ServerProcess

    args: tuple[str, ...] = ("--model", f"m={bert_dir}")
    env = {}
    if source == "flag":
        args += ("--cpu-parallelism", "operators")
    else:
        env["EMBEDSVC_CPU_PARALLELISM"] = "operators"
    with ServerProcess(*args, log_path=tmp_path / "s.log", env=env) as s:
        info = httpx.get(s.http_url() + "/info", timeout=30).json()
    assert (info["cpu_parallelism"], info["forward_workers"]) == ("operators", 1)

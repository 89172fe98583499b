"""Deterministic mode: a text's vector is bitwise the same whatever batch it lands in."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedsvc import AsyncEmbedClient, Embedder
from embedsvc.engine.deterministic import FixedTileLinear, make_batch_invariant
from tests.server_utils import ServerProcess
from tests.tiny_models import CORPUS_WORDS

words = st.sampled_from(CORPUS_WORDS + ("Ünïcödé", "🙂", "42", ",", "?"))
texts_strategy = st.lists(st.lists(words, min_size=0, max_size=60).map(" ".join), min_size=1, max_size=24)
PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


def assert_bitwise_alone(emb: Embedder, texts: list[str], order: list[int], **kwargs) -> None:
    shuffled = [texts[i] for i in order]
    batch = emb.embed(shuffled, **kwargs)
    for row, i in enumerate(order):
        alone = emb.embed([texts[i]], **kwargs)[0]
        assert np.array_equal(alone, batch[row]), f"text {i} differs by {np.abs(alone - batch[row]).max()}"


@pytest.fixture(scope="module")
def det_minilm():
    return Embedder.from_pretrained(deterministic=True, token_budget=512)


@PROPERTY
@given(texts=texts_strategy, data=st.data())
def test_bundled_model_is_batch_invariant(det_minilm, texts, data):
    order = data.draw(st.permutations(list(range(len(texts)))))
    assert_bitwise_alone(det_minilm, texts, order)


def test_long_inputs_chunked_and_prompted_are_invariant(det_minilm):
    rng = random.Random(1)
    texts = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(1, 600))) for _ in range(12)]
    assert_bitwise_alone(det_minilm, texts, list(range(12))[::-1], chunked=True)
    assert_bitwise_alone(det_minilm, texts, list(range(12)), dimensions=64, truncation="start")


@pytest.fixture(scope="module")
def det_decoders(llama_dir, qwen2_dir):
    made = {}
    for family, folder in (("llama", llama_dir), ("qwen2", qwen2_dir)):
        for pooling in ("cls", "mean", "last", "weighted_mean", "max"):
            made[(family, pooling)] = Embedder.from_pretrained(
                folder, pooling=pooling, deterministic=True, token_budget=300
            )
    return made


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "last", "weighted_mean", "max"])
def test_tiny_decoders_are_batch_invariant_in_every_pooling_mode(det_decoders, family, pooling):
    emb = det_decoders[(family, pooling)]

    @PROPERTY
    @given(texts=texts_strategy, data=st.data())
    def check(texts: list[str], data: st.DataObject) -> None:
        texts = [t or "x" for t in texts]  # qwen2 adds no special token: an empty text has no token
        order = data.draw(st.permutations(list(range(len(texts)))))
        assert_bitwise_alone(emb, texts, order)

    check()


def test_default_mode_is_not_bitwise_stable_but_close(minilm, det_minilm):
    # documents the default mode: small float differences with batch composition, none in deterministic mode
    rng = random.Random(3)
    texts = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(1, 80))) for _ in range(40)]
    batch = minilm.embed(texts)
    worst = max(float(np.abs(minilm.embed([t])[0] - batch[i]).max()) for i, t in enumerate(texts))
    assert worst <= 1e-5
    det = det_minilm.embed(texts)
    assert np.abs(det - batch).max() <= 1e-5  # same model, same answers


def test_fixed_tile_linear_matches_linear_and_ignores_neighbours():
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    tiled = FixedTileLinear(linear, rows=16)
    x = torch.randn(37, 24)
    torch.testing.assert_close(tiled(x), linear(x), rtol=1e-5, atol=1e-5)
    alone = tiled(x[5:6])
    for n in (2, 7, 16, 17, 50):
        others = torch.randn(n, 24)
        others[n // 2] = x[5]
        assert torch.equal(tiled(others)[n // 2], alone[0])
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Linear(4, 2)))
    assert make_batch_invariant(model, 8) == 2
    assert all(type(m) is not torch.nn.Linear for m in model.modules())


def test_padded_batching_is_refused_in_deterministic_mode():
    with pytest.raises(ValueError, match="deterministic mode packs sequences"):
        Embedder.from_pretrained(deterministic=True, batching="padded")


@pytest.fixture(scope="module")
def det_server(tmp_path_factory, llama_dir):
    folder = tmp_path_factory.mktemp("det-server")
    config = folder / "c.toml"
    config.write_text(
        f'[[models]]\nname = "minilm"\ndeterministic = true\n\n'
        f'[[models]]\nname = "llama"\nsource = "{llama_dir}"\npooling = "mean"\n'
    )
    args = ("--config", str(config), "--token-budget", "400")
    server = ServerProcess(*args, "--deterministic", log_path=folder / "server.log")
    yield server, args, folder
    server.stop()


async def _embed_concurrently(target: str, groups: list[list[str]], model: str) -> list[np.ndarray]:
    clients = [AsyncEmbedClient(target, timeout=120) for _ in range(4)]
    try:
        return list(
            await asyncio.gather(*(clients[i % 4].embed(g, model=model) for i, g in enumerate(groups)))
        )
    finally:
        await asyncio.gather(*(c.close() for c in clients))


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    texts=st.lists(st.lists(words, min_size=1, max_size=40).map(" ".join), min_size=4, max_size=30),
    data=st.data(),
)
def test_grpc_concurrency_does_not_change_bits(det_server, texts, data):
    server, _, _ = det_server
    for model in ("minilm", "llama"):
        alone = [asyncio.run(_embed_concurrently(server.target, [[t]], model))[0][0] for t in texts]
        cuts = sorted(data.draw(st.sets(st.integers(1, len(texts) - 1), max_size=6)))
        groups = [texts[a:b] for a, b in zip([0, *cuts], [*cuts, len(texts)], strict=True)]
        got = np.concatenate(asyncio.run(_embed_concurrently(server.target, groups, model)))
        for i in range(len(texts)):
            assert np.array_equal(got[i], alone[i]), (model, i)


def test_same_bits_across_a_server_restart(det_server, det_minilm):
    # the last test of this module: it stops the module's server and starts a fresh process
    server, args, folder = det_server
    texts = ["a man plays the guitar", "the dog runs", "Ünïcödé 🙂 text", "word " * 300]
    before = {m: asyncio.run(_embed_concurrently(server.target, [texts], m))[0] for m in ("minilm", "llama")}
    assert np.array_equal(before["minilm"], det_minilm.embed(texts))  # server == in-process, bit for bit
    server.stop()
    with ServerProcess(*args, "--deterministic", log_path=folder / "restarted.log") as again:
        for model in ("minilm", "llama"):
            after = asyncio.run(_embed_concurrently(again.target, [texts], model))[0]
            assert np.array_equal(before[model], after), model

"""Indexes bound to a model fingerprint: a text operation through a changed model (weights replaced in
place, an output-affecting setting) is refused with what changed and how to proceed, across real server
restarts on one data directory; rebind accepts it (mixed), reembed rebuilds under load; indexes from
before bindings bind on first use. The pipeline's local door is checked for the other settings."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedsvc.errors import FailedPreconditionError
from embedsvc.index.binding import BINDING_FILE
from embedsvc.v1 import index_pb2 as pb
from embedsvc.v1 import index_pb2_grpc as pb_grpc
from tests import tiny_models
from tests.server_utils import ServerProcess

pytest.importorskip("faiss")

TEXTS = tiny_models.corpus(240, seed=5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two checkpoints and a data dir built before the server starts, by the pipeline's local door:
    index ``docs`` (texts kept) and ``legacy`` (its binding file removed, as an index from before
    bindings) of checkpoint ``enc``, and ``weights`` of checkpoint ``w``."""
    from embedsvc.pipeline.sinks import LocalSink

    root = tmp_path_factory.mktemp("binding")
    env = {"EMBEDSVC_CACHE": str(root / "cache")}
    previous = os.environ.get("EMBEDSVC_CACHE")
    os.environ.update(env)
    enc = tiny_models.build_bert(root / "enc", st="mean", seed=7)
    w = shutil.copytree(enc, root / "w")
    data = root / "data"
    try:
        for model, names in ((enc, ("docs", "legacy")), (w, ("weights",))):
            sink = LocalSink(data, str(model), names[0], metric="cosine", kind="flat")
            try:
                for name in names:
                    sink.indexes.create(name, "", metric="cosine", kind="flat", store_text=True)
                    sink.index = name
                    sink.write([f"d{i}" for i in range(len(TEXTS))], TEXTS, [{} for _ in TEXTS])
                fingerprint = sink.model.fingerprint.digest
            finally:
                sink.close()
    finally:
        os.environ.pop("EMBEDSVC_CACHE") if previous is None else os.environ.update(EMBEDSVC_CACHE=previous)
    (data / "indexes" / "legacy" / BINDING_FILE).unlink()
    return {"root": root, "enc": enc, "w": w, "data": data, "env": env, "fingerprint": fingerprint}


def _serve(setup, *flags: str, log: str) -> ServerProcess:
    models = ("--model", f"enc={setup['enc']}", "--model", f"w={setup['w']}")
    args = ("--data-dir", str(setup["data"]), *models, *flags)
    return ServerProcess(*args, log_path=setup["root"] / log, env=setup["env"])


def _refused(call) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
    return caught.value.details()


@pytest.fixture(scope="module")
def served(setup):
    """A server restarted on the data dir with checkpoint ``w``'s weights replaced in place and every
    model's max_length changed."""
    weights = setup["w"] / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one weight's lowest byte: the file still loads
    weights.write_bytes(bytes(data))
    with _serve(setup, "--max-length", "32", log="b.log") as b, grpc.insecure_channel(b.target) as channel:
        yield b, pb_grpc.IndexServiceStub(channel)


def test_changed_setting_refused_then_rebind_and_reembed_under_load(setup, served):
    _, stub = served
    query = pb.SearchRequest(index="docs", text=TEXTS[3], k=3)
    details = _refused(lambda: stub.Search(query, timeout=60))
    assert "max_length: 64 -> 32" in details and setup["fingerprint"] in details
    assert "embedsvc index reembed docs" in details and "embedsvc index rebind docs" in details
    _refused(
        lambda: stub.Upsert(pb.UpsertRequest(index="docs", items=[pb.Item(id="n", text="x")]), timeout=60)
    )
    # vectors need no model: a vector search still answers, an unchecked vector upsert is taken
    vector = stub.Get(pb.GetRequest(index="docs", ids=["d3"]), timeout=60).items[0].vector
    hits = stub.Search(pb.SearchRequest(index="docs", vector=pb.Vector(values=vector), k=1), timeout=60)
    assert hits.hits[0].id == "d3"
    # a vector upsert that says it came from another fingerprint is refused the same way
    stale = pb.UpsertRequest(
        index="docs", items=[pb.Item(id="v", vector=vector)], fingerprint=setup["fingerprint"][::-1]
    )
    assert "make them with the model the index was built with" in _refused(
        lambda: stub.Upsert(stale, timeout=60)
    )

    # an index from before bindings binds on its first text use
    legacy = stub.DescribeIndex(pb.DescribeIndexRequest(name="legacy"), timeout=60)
    assert legacy.binding == "unbound" and legacy.fingerprint == ""
    stub.Search(pb.SearchRequest(index="legacy", text=TEXTS[0], k=1), timeout=60)
    legacy = stub.DescribeIndex(pb.DescribeIndexRequest(name="legacy"), timeout=60)
    assert legacy.binding == "bound" and legacy.fingerprint not in ("", setup["fingerprint"])

    rebound = stub.Rebind(pb.RebindRequest(index="docs"), timeout=60)
    assert rebound.binding == "mixed" and rebound.fingerprint == legacy.fingerprint
    assert rebound.fingerprint_parts["max_length"] == "32" and "mixed" in rebound.status
    assert stub.Search(query, timeout=60).hits  # accepted now

    failures: list[BaseException] = []
    searches = [0]
    written: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                text = TEXTS[(worker * 31 + i) % len(TEXTS)]
                found = stub.Search(pb.SearchRequest(index="docs", text=text, k=5), timeout=60)
                assert len(found.hits) == 5
                searches[0] += 1
                if worker == 0 and i % 3 == 0:  # writes during the re-embed are carried over
                    item = pb.Item(id=f"new{i}", text=f"written during the re-embed {i}")
                    stub.Upsert(pb.UpsertRequest(index="docs", items=[item]), timeout=60)
                    written.append(item.id)
            except BaseException as exc:
                failures.append(exc)
            i += 1

    workers = [threading.Thread(target=load, args=(w,)) for w in range(3)]
    for w in workers:
        w.start()
    try:
        while searches[0] < 3 and not failures:  # the load runs before the re-embed starts
            time.sleep(0.01)
        before = searches[0]
        done = stub.Reembed(pb.ReembedRequest(index="docs"), timeout=300)
        during = searches[0] - before
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert failures == [], failures[:3]
    assert during > 0 and done.reembedded >= len(TEXTS) and done.fingerprint == legacy.fingerprint
    info = stub.DescribeIndex(pb.DescribeIndexRequest(name="docs"), timeout=60)
    assert info.binding == "bound" and "mixed" not in info.status
    ids = [f"d{i}" for i in range(len(TEXTS))]
    got = stub.Get(pb.GetRequest(index="docs", ids=ids, return_text=True), timeout=60)
    assert [item.text for item in got.items] == TEXTS and not got.missing
    # every vector is the changed model's now: each text finds itself first
    for i in (0, 100, 200):
        top = stub.Search(pb.SearchRequest(index="docs", text=TEXTS[i], k=1), timeout=60).hits[0]
        assert top.id == f"d{i}" or TEXTS[int(top.id[1:])] == TEXTS[i]
    # every write made while it ran is in the swapped-in index, with its text
    late = stub.Get(pb.GetRequest(index="docs", ids=written, return_text=True), timeout=60)
    assert not late.missing and all(i.text == f"written during the re-embed {i.id[3:]}" for i in late.items)
    count = stub.Count(pb.CountRequest(index="docs"), timeout=60).count
    assert count == len(set(ids)) + len(written)
    assert not any(p.name.startswith(".reembed-") for p in (setup["data"] / "indexes").iterdir())
    setup["count"] = count


def test_weights_replaced_in_place_are_caught_after_a_restart(served):
    _, stub = served
    item = pb.Item(id="late", text="a text for the changed weights")
    details = _refused(lambda: stub.Upsert(pb.UpsertRequest(index="weights", items=[item]), timeout=60))
    assert "weights changed" in details and "max_length: 64 -> 32" in details
    batch = pb.SearchBatchRequest(index="weights", texts=["one", "two"], k=2)
    assert "weights changed" in _refused(lambda: stub.SearchBatch(batch, timeout=60))
    # a re-embed that cannot finish (an item written as a vector has no text) changes nothing
    before = stub.DescribeIndex(pb.DescribeIndexRequest(name="weights"), timeout=60)
    vector = stub.Get(pb.GetRequest(index="weights", ids=["d0"]), timeout=60).items[0].vector
    stub.Upsert(pb.UpsertRequest(index="weights", items=[pb.Item(id="vec", vector=vector)]), timeout=60)
    assert "no stored text" in _refused(lambda: stub.Reembed(pb.ReembedRequest(index="weights"), timeout=60))
    after = stub.DescribeIndex(pb.DescribeIndexRequest(name="weights"), timeout=60)
    assert (
        (after.binding, after.fingerprint)
        == (before.binding, before.fingerprint)
        == ("bound", before.fingerprint)
    )
    assert "weights changed" in _refused(lambda: stub.SearchBatch(batch, timeout=60))


def test_reembed_finishes_under_sustained_writes(served):
    """Writers that never pause (the re-embed used to give up after 100 catch-up rounds): it finishes,
    holding writes briefly for its last copy and swap; no write fails, every id written before or during
    it is there with its text and the model's vector as served now, and searches answer throughout."""
    from embedsvc import EmbedClient
    from embedsvc.index.service import REEMBED_FREE_ROUNDS

    server, stub = served
    failures: list[BaseException] = []
    written: dict[str, str] = {}
    searches = [0]
    stop = threading.Event()

    def write(worker: int) -> None:
        i = 0
        while not stop.is_set():
            items = [
                pb.Item(id=f"w{worker}-{i}-{j}", text=f"busy writer {worker} item {i} {j}") for j in (0, 1)
            ]
            try:
                stub.Upsert(pb.UpsertRequest(index="legacy", items=items), timeout=60)
                written.update((item.id, item.text) for item in items)
            except BaseException as exc:
                failures.append(exc)
            i += 1

    def search() -> None:
        while not stop.is_set():
            try:
                found = stub.Search(
                    pb.SearchRequest(index="legacy", text=TEXTS[searches[0] % 50], k=3), timeout=60
                )
                assert len(found.hits) == 3
                searches[0] += 1
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)] + [
        threading.Thread(target=search)
    ]
    for t in threads:
        t.start()
    try:
        while len(written) < 20 and not failures:  # the writers are going before the re-embed starts
            time.sleep(0.01)
        before = searches[0]
        done = stub.Reembed(pb.ReembedRequest(index="legacy"), timeout=300)
        during = searches[0] - before
        ahead = len(written)
        while len(written) < ahead + 10 and not failures:  # and go on after it, into the new index
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == [], failures[:3]
    assert during > 0 and done.reembedded >= len(TEXTS)
    if done.rounds > REEMBED_FREE_ROUNDS:  # it held writes: the log says for how long
        assert "writes held for its last copy and swap" in server.log()
    texts = {f"d{i}": text for i, text in enumerate(TEXTS)} | written
    ids = sorted(texts)
    got = stub.Get(pb.GetRequest(index="legacy", ids=ids, return_text=True), timeout=60)
    assert not got.missing and {item.id: item.text for item in got.items} == texts
    assert stub.Count(pb.CountRequest(index="legacy"), timeout=60).count == len(ids)
    with EmbedClient(server.target) as client:  # the model as served now, every vector
        expected = client.embed([texts[i] for i in ids], model="enc", input_type="document")
    stored = np.asarray([list(item.vector) for item in got.items], dtype=np.float32)
    order = {item.id: n for n, item in enumerate(got.items)}
    stored = stored[[order[i] for i in ids]]
    np.testing.assert_allclose(stored, expected, atol=1e-5)


def test_the_reembedded_index_reopens_from_its_files(setup, served):
    from embedsvc.index.manager import IndexManager

    server, _ = served
    server.stop()
    manager = IndexManager(setup["data"])
    try:
        docs = manager.get("docs")
        assert docs.count() == setup["count"] and docs.binding is not None and docs.binding.state == "bound"
        assert docs.texts(["d7"]) == [TEXTS[7]]
    finally:
        manager.close()


@pytest.fixture(scope="module")
def local_model(tmp_path_factory) -> Path:
    return tiny_models.build_bert(tmp_path_factory.mktemp("binding-local") / "encoder", st="mean", seed=9)


@pytest.mark.parametrize(
    ("options", "changed"),
    [
        ({"pooling": "cls"}, "pooling: mean -> cls"),
        ({"prompts": {"query": "q: ", "document": "doc: "}}, "prompts: "),
        ({"normalize": False}, "normalize: true -> false"),
        # int8 linear layers through ONNX Runtime: other numerics, other vectors
        ({"quantize": "int8"}, "quantize: none -> int8"),
    ],
)
def test_pipeline_writes_through_a_changed_recipe_are_refused(local_model, tmp_path, options, changed):
    from embedsvc.pipeline.sinks import LocalSink

    if options.get("quantize") == "int8":  # the int8 extra: skipped cleanly where it is not installed
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")

    first = LocalSink(tmp_path, str(local_model), "docs", metric="cosine", kind="flat")
    first.open(restart=False)
    first.write(["a"], ["a first text"], [{}])
    first.close()
    second = LocalSink(
        tmp_path, str(local_model), "docs", metric="cosine", kind="flat", model_options=options
    )
    try:
        second.open(restart=False)
        with pytest.raises(FailedPreconditionError) as caught:
            second.write(["b"], ["a second text"], [{}])
        assert changed in str(caught.value) and "reembed docs" in str(caught.value)
        assert second.indexes.count("docs") == 1  # nothing written
        vector = np.ones(32, dtype=np.float32)
        second.write_vectors(["v"], vector[None, :], [{}])  # vectors are not checked without a fingerprint
    finally:
        second.close()


def test_resuming_a_build_with_changed_weights_stops_with_what_changed(local_model, tmp_path):
    from embedsvc.pipeline import build_index
    from embedsvc.pipeline.checkpoint import SettingsChangedError

    model = shutil.copytree(local_model, tmp_path / "encoder")
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("\n".join(TEXTS[:10]) + "\n")
    second.write_text("\n".join(TEXTS[10:20]) + "\n")
    options = {"index": "docs", "data_dir": str(tmp_path / "data"), "model": str(model), "progress": False}
    assert build_index([str(first)], **options).documents == 10
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(SettingsChangedError) as caught:
        build_index([str(first), str(second)], **options)
    assert "weights changed" in str(caught.value) and "--restart" in str(caught.value)
    assert build_index([str(first), str(second)], **options, restart=True).documents == 20


@pytest.mark.parametrize("outcome", ["swapped", "failed"])
def test_reembed_outpaced_by_writes_holds_them_and_finishes(local_model, tmp_path, outcome):
    """Through the facade, deterministically: every re-embedding call lets one write land first, so no
    catch-up pass ever sees the index still (before, the re-embed gave up after 100 passes, unchanged).
    After REEMBED_FREE_ROUNDS passes writes are held: the write begun during the last copy waits (it does
    not fail) and lands in the re-embedded index; searches answer throughout; every vector is the
    changed model's. A re-embed that fails while holding writes lets them through into the old index."""
    from embedsvc.index.service import REEMBED_FREE_ROUNDS, NewItem, SearchOptions
    from embedsvc.pipeline.sinks import DOCUMENTS, IndexParts, LocalSink, _embed_here

    keeps = IndexParts(store_text=True)
    first = LocalSink(tmp_path, str(local_model), "docs", metric="cosine", kind="flat", keeps=keeps)
    first.open(restart=False)
    first.write([f"d{i}" for i in range(60)], TEXTS[:60], [{} for _ in range(60)])
    old_fingerprint = first.model.fingerprint.digest
    first.close()
    options = {"pooling": "cls"}  # another fingerprint, other vectors
    second = LocalSink(
        tmp_path, str(local_model), "docs", metric="cosine", kind="flat", keeps=keeps, model_options=options
    )
    indexes = second.indexes
    writes: list[asyncio.Task[tuple[int, int]]] = []
    held_writes: list[str] = []
    searches = [0]
    stop = asyncio.Event()
    searchers: list[asyncio.Task[None]] = []

    async def racing_embed(served, texts, embed_options):
        """The re-embed's embedding calls: one write is let in first (or found waiting on the hold)."""
        if not searchers:  # from the first copy on: the index is bound to the changed model by then
            searchers.append(asyncio.create_task(search_on()))
        item_id = f"w{len(writes)}"
        item = NewItem(item_id, text=f"written while re-embedding {len(writes)}")
        writes.append(asyncio.create_task(indexes.upsert("docs", [item], _embed_here)))
        while not writes[-1].done():
            if indexes.writes_held("docs"):
                assert "writes held for the swap" in indexes.describe(indexes.collection("docs")).status
                held_writes.append(item_id)
                if outcome == "failed":
                    raise RuntimeError("the embedding failed while writes were held")
                break
            await asyncio.sleep(0.001)
        return await _embed_here(served, texts, embed_options)

    async def search_on() -> None:
        while not stop.is_set():
            text = TEXTS[searches[0] % 60]
            hits = await indexes.search("docs", SearchOptions(k=3), _embed_here, text=text)
            assert len(hits) == 3
            searches[0] += 1

    async def scenario() -> tuple[int, str, int]:
        try:
            return await indexes.reembed("docs", racing_embed)
        finally:
            stop.set()
            await asyncio.gather(*searchers, *writes)  # none fails: the held one goes on after the hold

    try:
        second.open(restart=False)
        originals = [f"d{i}" for i in range(60)]
        before = np.stack([v for _, v, _, _ in asyncio.run(indexes.get("docs", originals))[0]])
        if outcome == "failed":
            with pytest.raises(RuntimeError, match="while writes were held"):
                asyncio.run(scenario())
        else:
            _, fingerprint, rounds = asyncio.run(scenario())
            assert rounds == REEMBED_FREE_ROUNDS + 1 and fingerprint == second.model.fingerprint.digest
        assert held_writes == [f"w{len(writes) - 1}"] and searches[0] > 0
        assert not indexes.writes_held("docs")
        texts = {f"d{i}": TEXTS[i] for i in range(60)}
        texts |= {f"w{n}": f"written while re-embedding {n}" for n in range(len(writes))}
        ids = sorted(texts)
        found = asyncio.run(indexes.get("docs", ids, return_text=True))
        assert not found[1] and {i: t for i, _, _, t in found[0]} == texts  # every write landed
        vectors = {i: v for i, v, _, _ in found[0]}
        binding = indexes.collection("docs").binding
        assert binding is not None
        if outcome == "failed":  # the old index, its old vectors; mixed: texts went in through the new model
            np.testing.assert_array_equal(np.stack([vectors[i] for i in originals]), before)
            assert (binding.fingerprint, binding.state) == (old_fingerprint, "mixed")
            return
        expected = second.model.embed_now([texts[i] for i in ids], DOCUMENTS).vectors
        expected /= np.linalg.norm(expected, axis=1, keepdims=True)  # a cosine index keeps unit vectors
        np.testing.assert_allclose(np.stack([vectors[i] for i in ids]), expected, atol=1e-5)
        assert np.abs(before - np.stack([vectors[i] for i in originals])).max() > 0.05  # they did change
        assert binding.state == "bound" and binding.fingerprint == second.model.fingerprint.digest
    finally:
        second.close()


def test_a_changed_output_width_is_caught_at_the_first_text_write(tmp_path):
    """The model's width changes (its Dense layer dropped from modules.json, as when a Matryoshka-style
    projection is removed): the first text write names the dimension change, before any vector lands."""
    import json

    from embedsvc.pipeline.sinks import LocalSink

    model = tiny_models.build_bert(tmp_path / "encoder", st="mean", dense=True, seed=9)
    first = LocalSink(tmp_path / "data", str(model), "docs", metric="cosine", kind="flat")
    first.open(restart=False)
    first.write(["a"], ["a first text"], [{}])
    first.close()
    modules = json.loads((model / "modules.json").read_text())
    (model / "modules.json").write_text(json.dumps([m for m in modules if "Dense" not in m["type"]]))
    second = LocalSink(tmp_path / "data", str(model), "docs", metric="cosine", kind="flat")
    try:
        second.open(restart=False)
        with pytest.raises(FailedPreconditionError) as caught:
            second.write(["b"], ["a second text"], [{}])
        assert "dimension: 16 -> 32" in str(caught.value) and "reembed docs" in str(caught.value)
        assert second.indexes.count("docs") == 1
    finally:
        second.close()

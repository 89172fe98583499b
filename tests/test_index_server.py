"""IndexService end to end: a real server with a data directory, the real clients, crashes included."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import grpc
import numpy as np
import pytest

from embedsvc import AsyncEmbedClient, EmbedClient
from embedsvc.client import EmbedServiceError
from tests.server_utils import ServerProcess
from tests.tiny_models import corpus

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("index-data")


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory):
    with ServerProcess(
        "--data-dir",
        str(data_dir),
        "--max-inputs-per-request",
        "500",
        log_path=tmp_path_factory.mktemp("index-log") / "server.log",
    ) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with EmbedClient(server.target, timeout=120) as c:
        yield c


def test_search_by_text_end_to_end(client):
    texts = list(dict.fromkeys(corpus(120, seed=31)))[:100]
    info = client.create_index("docs", metric="cosine", kind="flat")
    assert (info.dimension, info.metric, info.kind, info.count, info.durable) == (
        384,
        "cosine",
        "flat",
        0,
        True,
    )
    assert info.model == "all-MiniLM-L6-v2" and info.status == "ready"
    ids = [f"doc-{i}" for i in range(len(texts))]
    assert (
        client.upsert("docs", ids, texts=texts, metadata=[{"n": i, "src": "corpus"} for i in range(100)])
        == 100
    )
    assert client.count("docs") == 100
    for i in range(0, 100, 9):
        hits = client.search("docs", text=texts[i], k=3)
        # queries get the query prompt; this model has none, so the text finds itself first
        assert hits[0].id == ids[i] and hits[0].metadata == {"n": i, "src": "corpus"}
        assert hits[0].score > 0.99


def test_vectors_filters_replace_delete_get(client):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 384)).astype(np.float32)
    client.create_index("vecs", kind="hnsw", metric="inner_product")
    client.upsert(
        "vecs",
        [f"v{i}" for i in range(50)],
        vectors=vectors,
        metadata=[{"group": "a" if i % 2 else "b", "flag": i < 10} for i in range(50)],
    )
    hits = client.search("vecs", vector=vectors[3], k=5, filter={"group": "a"})
    assert hits[0].id == "v3" and all(h.metadata["group"] == "a" for h in hits)
    assert all(
        h.metadata["flag"] for h in client.search("vecs", vector=vectors[3], k=5, filter={"flag": True})
    )
    client.upsert("vecs", ["v3"], vectors=vectors[4:5], metadata=[{"group": "replaced"}])
    assert client.count("vecs") == 50
    got = client.get("vecs", ["v3", "nope"])
    assert set(got) == {"v3"} and got["v3"][1] == {"group": "replaced"}
    np.testing.assert_allclose(got["v3"][0], vectors[4], rtol=1e-6)
    assert client.delete("vecs", ["v4", "v5", "nope"]) == 2
    assert all(
        h.id not in ("v4", "v5") for h in client.search("vecs", vector=vectors[4], k=50, ef_search=128)
    )
    names = {i.name: i for i in client.list_indexes()}
    assert {"docs", "vecs"} <= set(names) and names["vecs"].kind == "hnsw"


def test_rich_filters_over_grpc(client, server):
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((300, 384)).astype(np.float32)
    metadata = [
        {"price": i % 40, "lang": ["en", "de", "fr"][i % 3], **({"author": f"a{i % 7}"} if i % 5 else {})}
        for i in range(300)
    ]
    client.create_index("shop", kind="hnsw")
    client.upsert("shop", [f"p{i}" for i in range(300)], vectors=vectors, metadata=metadata)

    def wanted(meta):  # written out: 10 <= price < 20, and (lang de or no author), and lang not fr
        return (
            10 <= meta["price"] < 20
            and (meta["lang"] == "de" or "author" not in meta)
            and meta["lang"] != "fr"
        )

    where = {
        "price": {"gte": 10, "lt": 20},
        "$or": [{"lang": "de"}, {"author": {"exists": False}}],
        "lang": {"not_in": ["fr"]},
    }
    expected = {f"p{i}" for i, m in enumerate(metadata) if wanted(m)}
    hits = client.search("shop", vector=vectors[0], k=300, filter=where)
    assert {h.id for h in hits} == expected and len(expected) > 10
    # the wire form of the same filter, from a stub generated from protos/
    from embedsvc.v1 import index_pb2 as ipb
    from embedsvc.v1 import index_pb2_grpc as ipb_grpc

    def field(key, **match):
        return ipb.Filter(field=ipb.FieldCondition(key=key, **match))

    proto = ipb.Filter(
        all=ipb.FilterList(
            filters=[
                field("price", range=ipb.Range(gte=10, lt=20)),
                ipb.Filter(
                    any=ipb.FilterList(
                        filters=[
                            field("lang", eq=ipb.MetadataValue(string_value="de")),
                            field("author", exists=False),
                        ]
                    )
                ),
                ipb.Filter(
                    none=ipb.FilterList(filters=[field("lang", eq=ipb.MetadataValue(string_value="fr"))])
                ),
            ]
        )
    )
    with grpc.insecure_channel(server.target) as channel:
        stub = ipb_grpc.IndexServiceStub(channel)
        request = ipb.SearchRequest(index="shop", k=300, where=proto)
        request.vector.values.extend(vectors[0].tolist())
        assert {h.id for h in stub.Search(request).hits} == expected
        # the equality map and `where` together: both must hold
        request.filter["lang"].string_value = "en"
        assert {h.id for h in stub.Search(request).hits} == {
            f"p{i}" for i, m in enumerate(metadata) if wanted(m) and m["lang"] == "en"
        }
        for bad, message in [
            (ipb.Filter(), "a filter (or one nested in it) is empty"),
            (field("price", range=ipb.Range()), "filter on 'price': a range needs at least one bound"),
            (field("lang"), "filter on 'lang' sets no condition"),
            (field("", exists=True), "metadata keys are non-empty strings"),
            (field("lang", eq=ipb.MetadataValue()), "filter on 'lang': a value is empty"),
            (ipb.Filter(all=ipb.FilterList()), "filter all needs at least one filter"),
        ]:
            request = ipb.SearchRequest(index="shop", k=3, where=bad)
            request.vector.values.extend(vectors[0].tolist())
            with pytest.raises(grpc.RpcError) as info:
                stub.Search(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert message in info.value.details()
    # mistakes are caught by the client before anything is sent
    with pytest.raises(ValueError, match="filter on 'price': gt takes a finite number"):
        client.search("shop", vector=vectors[0], filter={"price": {"gt": "10"}})


def test_search_batch_equals_one_by_one(client, server):
    rng = np.random.default_rng(4)
    queries = rng.standard_normal((7, 384)).astype(np.float32)
    for filter_spec in (None, {"price": {"lt": 5}}):
        batch = client.search_batch("shop", vectors=queries, k=4, filter=filter_spec)
        single = [client.search("shop", vector=q, k=4, filter=filter_spec) for q in queries]
        assert [[h.id for h in hits] for hits in batch] == [[h.id for h in hits] for hits in single]
    texts = ["a man plays music", "a cat sits", "stock markets fell"]
    by_text = client.search_batch("docs", texts=texts, k=3)
    assert [[h.id for h in hits] for hits in by_text] == [
        [h.id for h in client.search("docs", text=t, k=3)] for t in texts
    ]
    # chunked by the client: 1200 queries, max 500 per request on this server
    many = np.repeat(queries, 172, axis=0)[:1200]
    with EmbedClient(server.target, timeout=120, chunk_size=500) as c:
        results = c.search_batch("shop", vectors=many, k=2)
    top2 = [[h.id for h in hits] for hits in client.search_batch("shop", vectors=queries, k=2)]
    assert [[h.id for h in hits] for hits in results] == [top2[i // 172] for i in range(1200)]

    async def run() -> list:
        async with AsyncEmbedClient(server.target, timeout=120) as c:
            return await c.search_batch("shop", vectors=queries, k=4)

    assert [[h.id for h in hits] for hits in asyncio.run(run())] == [
        [h.id for h in hits] for hits in client.search_batch("shop", vectors=queries, k=4)
    ]


def test_search_batch_refusals(server):
    from embedsvc.v1 import index_pb2 as ipb
    from embedsvc.v1 import index_pb2_grpc as ipb_grpc

    vector = ipb.Vector(values=[0.1] * 384)
    with grpc.insecure_channel(server.target) as channel:
        stub = ipb_grpc.IndexServiceStub(channel)
        for request, message in [
            (ipb.SearchBatchRequest(index="shop", texts=["x"], vectors=[vector]), "set texts or vectors"),
            (ipb.SearchBatchRequest(index="shop"), "set texts or vectors"),
            (ipb.SearchBatchRequest(index="shop", vectors=[vector] * 300, k=400), "asks for 120000 hits"),
            (ipb.SearchBatchRequest(index="shop", vectors=[vector] * 501), "limit is 500"),
            (
                ipb.SearchBatchRequest(index="shop", vectors=[vector, ipb.Vector(values=[1.0] * 3)]),
                "vector 1 has 3 dimensions, the index 384",
            ),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                stub.SearchBatch(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in info.value.details()


def test_ivf_reports_training(client):
    info = client.create_index("ivf", kind="ivf_flat", ivf_nlist=8)
    rng = np.random.default_rng(1)
    client.upsert("ivf", [f"x{i}" for i in range(100)], vectors=rng.standard_normal((100, 384)))
    info = client.describe_index("ivf")
    assert not info.trained and "needs 312 vectors, has 100" in info.status
    client.upsert("ivf", [f"y{i}" for i in range(300)], vectors=rng.standard_normal((300, 384)))
    info = client.describe_index("ivf")
    assert info.trained and info.status == "ready" and info.params["ivf_nlist"] == 8


@pytest.mark.parametrize(
    ("call", "code", "message"),
    [
        (lambda c: c.create_index("docs"), grpc.StatusCode.ALREADY_EXISTS, "already exists"),
        (lambda c: c.create_index("bad/name"), grpc.StatusCode.INVALID_ARGUMENT, "index name"),
        (lambda c: c.create_index("x", model="nope"), grpc.StatusCode.NOT_FOUND, "not served"),
        (lambda c: c.search("missing", text="x"), grpc.StatusCode.NOT_FOUND, "no index named 'missing'"),
        (
            lambda c: c.upsert("docs", ["a"], vectors=np.zeros((1, 5))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "vector has 5 dimensions, the index 384",
        ),
        (
            lambda c: c.upsert("docs", ["a", "b"], vectors=np.array([[np.nan] * 384, [1.0] * 384])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN or infinity",
        ),
        (
            lambda c: c.upsert("docs", ["a", "a"], texts=["x", "y"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "appears more than once",
        ),
        (
            lambda c: c.upsert("docs", [f"i{i}" for i in range(501)], texts=["t"] * 501),
            grpc.StatusCode.INVALID_ARGUMENT,
            "limit is 500",
        ),
        (lambda c: c.search("docs", vector=np.ones(3)), grpc.StatusCode.INVALID_ARGUMENT, "3 dimensions"),
    ],
)
def test_bad_requests(server, call, code, message):
    with EmbedClient(server.target, timeout=60, chunk_size=1000) as c:
        before = c.count("docs")
        with pytest.raises(EmbedServiceError) as info:
            call(c)
        assert info.value.code == code and message in info.value.details
        assert c.count("docs") == before  # nothing half-applied


def test_both_or_neither_text_and_vector(server):
    from embedsvc.v1 import index_pb2 as ipb
    from embedsvc.v1 import index_pb2_grpc as ipb_grpc

    with grpc.insecure_channel(server.target) as channel:
        stub = ipb_grpc.IndexServiceStub(channel)
        for item in (ipb.Item(id="z", text="t", vector=[0.0] * 384), ipb.Item(id="z")):
            with pytest.raises(grpc.RpcError) as info:
                stub.Upsert(ipb.UpsertRequest(index="docs", items=[ipb.Item(id="ok", text="fine"), item]))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "exactly one of text or vector" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(ipb.SearchRequest(index="docs"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert stub.Get(ipb.GetRequest(index="docs", ids=["ok"])).missing == ["ok"]


def test_async_client_and_concurrent_search_during_upserts(server):
    async def run() -> None:
        async with AsyncEmbedClient(server.target, timeout=120) as c:
            await c.create_index("live")
            texts = list(dict.fromkeys(corpus(200, seed=41)))[:120]

            async def writer() -> None:
                for lo in range(0, 120, 20):
                    await c.upsert("live", [f"t{i}" for i in range(lo, lo + 20)], texts=texts[lo : lo + 20])

            async def reader() -> list[int]:
                sizes = []
                for _ in range(15):
                    hits = await c.search("live", text="a man plays music", k=200)
                    sizes.append(len(hits))
                    await asyncio.sleep(0.01)
                return sizes

            _, sizes = await asyncio.gather(writer(), reader())
            assert all(s % 20 == 0 for s in sizes)  # whole upserts only, never a part of one
            assert await c.count("live") == 120

    asyncio.run(run())


def test_sigkill_loses_no_acknowledged_write(tmp_path):
    data = tmp_path / "data"
    first = ServerProcess("--data-dir", str(data), log_path=tmp_path / "first.log")
    acked: dict[str, dict] = {}
    attempted: list[list[str]] = []
    stop = threading.Event()
    dim = 384

    def writer() -> None:
        rng = np.random.default_rng(7)
        with EmbedClient(first.target, timeout=30) as c:
            c.create_index("crash")
            batch = 0
            while not stop.is_set():
                ids = [f"b{batch}-{j}" for j in range(8)]
                attempted.append(ids)
                meta = [{"batch": batch, "j": j} for j in range(8)]
                try:
                    c.upsert("crash", ids, vectors=rng.standard_normal((8, dim)), metadata=meta)
                except EmbedServiceError:
                    return  # the server died under us
                acked.update({i: m for i, m in zip(ids, meta, strict=True)})
                batch += 1

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    stop.set()
    thread.join(30)
    assert len(acked) >= 400

    with (
        ServerProcess("--data-dir", str(data), log_path=tmp_path / "second.log") as second,
        EmbedClient(second.target, timeout=60) as c,
    ):
        all_ids = [i for ids in attempted for i in ids]
        found = {}
        for lo in range(0, len(all_ids), 500):
            found.update(c.get("crash", all_ids[lo : lo + 500]))
        for item_id, meta in acked.items():
            assert item_id in found and found[item_id][1] == meta
        for ids in attempted:  # an unacknowledged batch is all there or not there at all
            present = [i in found for i in ids]
            assert all(present) or not any(present)
        assert c.count("crash") == len(found)
        assert c.describe_index("crash").status == "ready"


def test_index_of_an_unserved_model(tmp_path, llama_dir):
    data = tmp_path / "data"
    with (
        ServerProcess(
            "--data-dir", str(data), "--model", f"tiny={llama_dir}", log_path=tmp_path / "a.log"
        ) as s,
        EmbedClient(s.target, timeout=60) as c,
    ):
        c.create_index("tiny-docs")
        c.upsert("tiny-docs", ["a", "b"], texts=["the dog runs", "a man plays music"])
    with (
        ServerProcess("--data-dir", str(data), log_path=tmp_path / "b.log") as s,
        EmbedClient(s.target, timeout=60) as c,
    ):
        info = c.describe_index("tiny-docs")
        assert info.model == "" and "model not served" in info.status and info.count == 2
        with pytest.raises(EmbedServiceError) as err:
            c.search("tiny-docs", text="dog")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert str(llama_dir) in err.value.details
        vector = c.get("tiny-docs", ["a"])["a"][0]
        assert c.search("tiny-docs", vector=vector, k=1)[0].id == "a"  # vector search still works
    # the same model under another name serves it again
    with (
        ServerProcess(
            "--data-dir", str(data), "--model", f"renamed={llama_dir}", log_path=tmp_path / "c.log"
        ) as s,
        EmbedClient(s.target, timeout=60) as c,
    ):
        assert c.search("tiny-docs", text="the dog runs", k=1)[0].id == "a"
        assert c.describe_index("tiny-docs").model == "renamed"

"""Data that used to be dropped or bent without a word, end to end through a real server: list metadata
(tags) over gRPC and both clients, exact integer range bounds beyond 2^53, `ListIds` / `embedsvc index
ids`, and `index build` with list and object metadata and long documents (local and remote modes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedsvc import AsyncEmbedClient, EmbedClient
from embedsvc.client import EmbedServiceError
from embedsvc.index.manager import IndexManager
from embedsvc.pipeline import build_index
from embedsvc.pipeline.readers import ReaderOptions
from embedsvc.v1 import index_pb2 as ipb
from embedsvc.v1 import index_pb2_grpc as ipb_grpc
from tests.server_utils import ServerProcess
from tests.tiny_models import corpus

pytest.importorskip("faiss")
DIM = 384
BIG = 2**53


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("index-data")
    with ServerProcess("--data-dir", str(folder / "data"), log_path=folder / "server.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server):
    with EmbedClient(server.target, timeout=120) as c:
        yield c


def run_cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embedsvc", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


# ------------------------------------------------------------------------------------- list values
def test_list_metadata_over_grpc_and_both_clients(client, server):
    tags = [["a", "b"], ["b"], [], ["c", "a", "a"], "a", ["x", 1, True, 2.5]]
    metadata = [{"tags": t, "n": i} for i, t in enumerate(tags)] + [{"n": 6}]
    ids = [f"t{i}" for i in range(len(metadata))]
    vectors = _vectors(len(ids))
    client.create_index("tags")
    client.upsert("tags", ids, vectors=vectors, metadata=metadata)

    got = client.get("tags", ids)
    assert [got[i][1] for i in ids] == metadata  # lists back as given: order, repeats, empty, mixed types

    def found(where):
        return {h.id for h in client.search("tags", vector=vectors[0], k=20, filter=where)}

    assert found({"tags": "a"}) == {"t0", "t3", "t4"}  # any element (and the plain scalar)
    assert found({"tags": {"in": ["b", "c"]}}) == {"t0", "t1", "t3"}
    assert found({"tags": {"ne": "a"}}) == {"t1", "t2", "t5", "t6"}  # no element is "a"; no key matches too
    assert found({"tags": {"not_in": ["a", "b"]}}) == {"t2", "t5", "t6"}
    assert found({"tags": {"exists": True}}) == {f"t{i}" for i in range(6)}  # the empty list included
    assert found({"tags": 1}) == {"t5"} and found({"tags": True}) == {"t5"}  # typed: True is not 1
    assert found({"tags": {"gte": 2, "lt": 3}}) == {"t5"}  # 2.5: one element within the range
    hits = client.search("tags", vector=vectors[3], k=1, filter={"tags": "c"})
    assert hits[0].id == "t3" and hits[0].metadata == {"tags": ["c", "a", "a"], "n": 3}
    with pytest.raises(ValueError, match="not a list"):
        client.search("tags", vector=vectors[0], filter={"tags": ["a"]})  # refused before sending

    # the wire form, from a stub generated from protos/: list_value in, list_value out
    with grpc.insecure_channel(server.target) as channel:
        stub = ipb_grpc.IndexServiceStub(channel)
        value = ipb.MetadataValue(
            list_value=ipb.MetadataValueList(
                values=[ipb.MetadataValue(string_value="z"), ipb.MetadataValue(int_value=BIG + 1)]
            )
        )
        item = ipb.Item(id="raw", vector=vectors[0].tolist(), metadata={"tags": value})
        stub.Upsert(ipb.UpsertRequest(index="tags", items=[item]))
        (back,) = stub.Get(ipb.GetRequest(index="tags", ids=["raw"])).items
        assert back.metadata["tags"] == value
        nested = ipb.MetadataValue(list_value=ipb.MetadataValueList(values=[value]))
        bad = ipb.Item(id="bad", vector=vectors[0].tolist(), metadata={"tags": nested})
        with pytest.raises(grpc.RpcError) as info:
            stub.Upsert(ipb.UpsertRequest(index="tags", items=[bad]))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "metadata value of 'tags': list elements are strings" in info.value.details()
        request = ipb.SearchRequest(
            index="tags", k=3, where=ipb.Filter(field=ipb.FieldCondition(key="tags", eq=value))
        )
        request.vector.values.extend(vectors[0].tolist())
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a list" in info.value.details()
    assert client.count("tags") == 8  # the refused item was not written

    async def through_async():
        async with AsyncEmbedClient(server.target, timeout=120) as ac:
            await ac.upsert("tags", ["async"], vectors=vectors[:1], metadata=[{"tags": ("p", "q")}])
            return (await ac.get("tags", ["async"]))["async"][1], await ac.search(
                "tags", vector=vectors[0], k=5, filter={"tags": "q"}
            )

    meta, hits = asyncio.run(through_async())
    assert meta == {"tags": ["p", "q"]} and [h.id for h in hits] == ["async"]


# ------------------------------------------------------------------------ exact integer range bounds
def test_integer_range_bounds_beyond_2_53_are_exact_over_grpc(client, server):
    values = [BIG - 1, BIG, BIG + 1, BIG + 2, 2**62, -(2**62)]
    n = len(values) * 4
    metadata = [{"e": values[i % len(values)]} for i in range(n)]
    vectors = _vectors(n, seed=1)
    client.create_index("big")
    client.upsert("big", [f"b{i}" for i in range(n)], vectors=vectors, metadata=metadata)

    def expected(test):
        return {f"b{i}" for i, m in enumerate(metadata) if test(m["e"])}

    def found(where):
        return {h.id for h in client.search("big", vector=vectors[0], k=n, filter=where)}

    assert found({"e": {"gt": BIG, "lte": BIG + 1}}) == expected(lambda e: e == BIG + 1) != set()
    assert found({"e": {"gte": BIG + 1, "lt": BIG + 2}}) == expected(lambda e: e == BIG + 1)
    assert found({"e": {"gt": BIG - 1, "lt": BIG + 1}}) == expected(lambda e: e == BIG)
    assert found({"e": {"gt": 2**62 - 1}}) == expected(lambda e: e == 2**62)
    assert found({"e": {"lt": -(2**62) + 1}}) == expected(lambda e: e == -(2**62))
    assert found({"e": {"gt": 2**70}}) == set()  # beyond int64: sent as a double, still right
    with grpc.insecure_channel(server.target) as channel:
        stub = ipb_grpc.IndexServiceStub(channel)

        def search(bounds):
            condition = ipb.FieldCondition(key="e", range=ipb.Range(**bounds))
            request = ipb.SearchRequest(index="big", k=n, where=ipb.Filter(field=condition))
            request.vector.values.extend(vectors[0].tolist())
            return {h.id for h in stub.Search(request).hits}

        # integer fields alone (any gRPC client), and the double a client before them sends
        assert search({"gt_int": BIG, "lte_int": BIG + 1}) == expected(lambda e: e == BIG + 1)
        assert search({"gt": float(BIG), "lte": float(BIG + 1)}) == expected(lambda e: BIG < e <= BIG)
        # both set: the integer wins over its rounding
        assert search({"gt": float(BIG), "gt_int": BIG, "lte": float(BIG), "lte_int": BIG + 1}) == expected(
            lambda e: e == BIG + 1
        )


# ---------------------------------------------------------------------------------------- ListIds
def test_list_ids_pages_through_everything_in_write_order(client, server):
    n = 2500
    ids = [f"id-{i:05d}" for i in range(n)]
    client.create_index("many")
    vectors = _vectors(n, seed=2)
    for start in range(0, n, 500):
        client.upsert("many", ids[start : start + 500], vectors=vectors[start : start + 500])
    first = client.list_ids("many", page_size=1000)
    assert first.ids == ids[:1000] and first.count == n and first.next_page_token
    second = client.list_ids("many", page_size=1000, page_token=first.next_page_token)
    assert second.ids == ids[1000:2000]
    # writes between pages: a rewritten id moves to the end, a deleted one is skipped, a new one appended
    client.delete("many", [ids[2100]])
    client.upsert("many", [ids[5], "new"], vectors=vectors[:2])
    rest = client.list_ids("many", page_size=1000, page_token=second.next_page_token)
    assert rest.ids == [*ids[2000:2100], *ids[2101:], ids[5], "new"] and rest.next_page_token == ""
    assert list(client.iter_ids("many", page_size=333)) == [
        *ids[:5],
        *ids[6:2100],
        *ids[2101:],
        ids[5],
        "new",
    ]
    assert client.list_ids("many").ids == client.list_ids("many", page_size=1000).ids  # 0: the default

    async def through_async():
        async with AsyncEmbedClient(server.target, timeout=120) as ac:
            return [i async for i in ac.iter_ids("many", page_size=700)]

    assert asyncio.run(through_async()) == list(client.iter_ids("many"))
    for kwargs, message in [
        ({"page_token": "garbage"}, "page_token 'garbage' is not one this server gave"),
        ({"page_size": 10_001}, "page_size 10001 is over the limit of 10000"),
    ]:
        with pytest.raises(EmbedServiceError) as info:
            client.list_ids("many", **kwargs)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.details
    with pytest.raises(EmbedServiceError) as info:
        client.list_ids("nope")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    client.create_index("empty")
    empty = client.list_ids("empty")
    assert (empty.ids, empty.next_page_token, empty.count) == ([], "", 0)


def test_index_ids_from_the_shell(client, server):
    client.create_index("shell")
    ids = [f"s{i}" for i in range(30)]
    client.upsert("shell", ids, vectors=_vectors(30, seed=3))
    env = {"EMBEDSVC_TARGET": server.target}
    everything = run_cli("index", "ids", "shell", env=env)
    assert everything.returncode == 0 and everything.stdout.split() == ids and everything.stderr == ""
    limited = run_cli("index", "ids", "shell", "--limit", "12", env=env)
    assert limited.returncode == 0 and limited.stdout.split() == ids[:12]
    token = limited.stderr.split("--page-token ")[1].strip()
    assert "12 ids shown (30 in 'shell')" in limited.stderr
    more = run_cli("index", "ids", "shell", "--page-token", token, "--json", env=env)
    assert json.loads(more.stdout) == {"ids": ids[12:], "next_page_token": "", "count": 30}
    missing = run_cli("index", "ids", "absent", env=env)
    assert missing.returncode == 4 and "absent" in missing.stderr


# -------------------------------------------------------------------------- index build: metadata
def _corpus_with_metadata(folder: Path) -> Path:
    path = folder / "meta.jsonl"
    rows = [
        {"id": "t1", "text": "a guide to tea", "tags": ["a", "b"], "score": 1.5},
        {"id": "t2", "text": "brewing coffee at home", "tags": ["b"], "score": 2},
        {"id": "t3", "text": "the history of bread", "tags": {"k": "v"}, "score": 3},  # an object
        {"id": "t4", "text": "pasta from scratch", "tags": [["nested"]], "score": 4},
        {"id": "t5", "text": "a quiet walk", "tags": None, "score": 5},  # null: no key
        {"id": "t6", "text": "mountain hikes", "tags": ["c", 7, True]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _check_metadata_build(summary, rejects: Path, stored: dict[str, dict]) -> None:
    assert (summary.documents, summary.rejected) == (4, 2)
    reasons = {
        json.loads(line)["record"]: json.loads(line)["reason"] for line in rejects.read_text().splitlines()
    }
    assert reasons[2].startswith("metadata field 'tags' is an object: objects are not stored")
    assert (
        reasons[3]
        == "metadata field 'tags' is a list of lists: list elements must be strings, numbers or booleans"
    )
    assert stored == {
        "t1": {"tags": ["a", "b"], "score": 1.5},
        "t2": {"tags": ["b"], "score": 2},
        "t5": {"score": 5},
        "t6": {"tags": ["c", 7, True]},
    }


def test_build_keeps_list_metadata_and_rejects_objects_in_remote_mode(client, server, tmp_path):
    source = _corpus_with_metadata(tmp_path)
    rejects = tmp_path / "rejects.jsonl"
    summary = build_index(
        [str(source)],
        index="built",
        target=server.target,
        progress=False,
        reader=ReaderOptions(metadata_fields=("tags", "score")),
        checkpoint=str(tmp_path / "ck.json"),
        rejects=str(rejects),
    )
    found = client.get("built", ["t1", "t2", "t3", "t4", "t5", "t6"])
    _check_metadata_build(summary, rejects, {k: v[1] for k, v in found.items()})
    hits = client.search("built", text="tea", k=10, filter={"tags": {"in": ["a", "c"]}})
    assert {h.id for h in hits} == {"t1", "t6"}


def test_build_keeps_list_metadata_in_local_mode_through_a_restart(tmp_path):
    source = _corpus_with_metadata(tmp_path)
    rejects = tmp_path / "rejects.jsonl"
    data = tmp_path / "data"
    summary = build_index(
        [str(source)],
        index="built",
        data_dir=str(data),
        progress=False,
        reader=ReaderOptions(metadata_fields=("tags", "score")),
        rejects=str(rejects),
    )
    manager = IndexManager(data)  # reopened from its files
    try:
        found, _ = manager.get("built").get(["t1", "t2", "t3", "t4", "t5", "t6"])
        _check_metadata_build(summary, rejects, {i: meta for i, _, meta in found})
    finally:
        manager.close()


# ------------------------------------------------------------------------- index build: truncation
def _long_corpus(folder: Path) -> tuple[Path, list[str]]:
    texts = list(dict.fromkeys(corpus(200, seed=5)))
    long_doc = " ".join(texts[:120])  # far over the bundled model's 256 tokens (and the tokenizer's 512)
    short = texts[150:155]
    path = folder / "long.jsonl"
    rows = [{"id": f"long{i}", "text": long_doc[i:]} for i in range(3)] + [
        {"id": f"short{i}", "text": t} for i, t in enumerate(short)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, short


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_build_counts_and_reports_truncated_documents(mode, server, tmp_path):
    source, _ = _long_corpus(tmp_path)
    where = {"data_dir": str(tmp_path / "data")} if mode == "local" else {"target": server.target}
    command = ["index", "build", str(source), "--index", f"long-{mode}", "--no-progress"]
    command += ["--data-dir", where["data_dir"]] if mode == "local" else ["--target", where["target"]]
    out = run_cli(*command, env={}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "3 documents were longer than the model reads (256 tokens, 254 of them text)" in out.stdout
    assert "--chunk-tokens" in out.stdout and "--restart" in out.stdout
    assert "Token indices sequence length" not in out.stderr  # no tokenizer warning in the progress output
    # chunking small enough truncates nothing; chunks over the limit are counted again
    chunked = run_cli(
        *command, "--chunk-tokens", "200", "--chunk-overlap", "40", "--restart", env={}, cwd=tmp_path
    )
    assert chunked.returncode == 0 and "truncated" not in chunked.stdout, chunked.stdout
    summary = build_index(
        [str(source)],
        index=f"long2-{mode}",
        progress=False,
        chunk_tokens=400,
        checkpoint=str(tmp_path / f"ck-{mode}.json"),
        **({"data_dir": str(tmp_path / "data2")} if mode == "local" else where),
    )
    assert (summary.truncated, summary.max_tokens, summary.documents) == (3, 254, 8)
    assert "3 documents had chunks longer than the model reads (256 tokens, 254" in summary.report()
    assert "--chunk-tokens under 254 (now 400)" in summary.report()


# ------------------------------------------------------------------ acknowledged writes gone from the log
def _record_starts(wal: Path) -> list[int]:
    data, starts, offset = wal.read_bytes(), [], 0
    while offset < len(data):
        starts.append(offset)
        offset += 12 + int.from_bytes(data[offset + 4 : offset + 8], "little")
    return starts


def test_a_cut_flipped_or_deleted_log_is_reported_damaged_by_the_server(tmp_path):
    """Each used to come back "ready" with acknowledged items gone (50 / 10 / 200 in the report)."""
    data = tmp_path / "data"
    with ServerProcess("--data-dir", str(data), log_path=tmp_path / "1.log") as server:
        with EmbedClient(server.target, timeout=120) as c:
            for name in ("cut", "flipped", "nolog", "intact"):
                c.create_index(name)
                for i in range(5):  # one record each, acknowledged
                    c.upsert(name, [f"{name}{i}"], vectors=_vectors(1, seed=i), metadata=[{"tags": ["t", i]}])
        server.proc.kill()  # a crash: no closing snapshot, every item lives in the log
        server.proc.wait()
    folder = data / "indexes"
    cut = folder / "cut" / "wal.log"
    cut.write_bytes(cut.read_bytes()[: _record_starts(cut)[3]])  # records 4 and 5 gone, cleanly
    flipped = folder / "flipped" / "wal.log"
    raw = bytearray(flipped.read_bytes())
    raw[_record_starts(flipped)[4] + 20] ^= 0x40  # the last, acknowledged record
    flipped.write_bytes(bytes(raw))
    (folder / "nolog" / "wal.log").unlink()

    with (
        ServerProcess("--data-dir", str(data), log_path=tmp_path / "2.log") as server,
        EmbedClient(server.target, timeout=120) as c,
    ):
        listed = {i.name: i.status for i in c.list_indexes()}
        assert listed["intact"] == "ready"
        assert "record 5 was acknowledged" in listed["cut"] and "up to 3 only" in listed["cut"]
        assert "record 5 was acknowledged" in listed["flipped"] and "up to 4 only" in listed["flipped"]
        assert listed["nolog"].startswith("error: ") and "wal.log is missing" in listed["nolog"]
        for name in ("cut", "flipped", "nolog"):
            with pytest.raises(EmbedServiceError) as info:
                c.count(name)
            assert info.value.code == grpc.StatusCode.DATA_LOSS
        assert c.get("intact", ["intact4"])["intact4"][1] == {"tags": ["t", 4]}
    assert bytes(raw) == flipped.read_bytes()  # the evidence is left as it was

    repaired = run_cli("index", "repair", "cut", "--data-dir", str(data), env={})
    assert repaired.returncode == 0, repaired.stderr
    report = json.loads(repaired.stdout)
    assert (report["items"], report["acknowledged_records_lost"]) == (3, 2)
    manager = IndexManager(data)
    try:
        assert sorted(manager.get("cut").ids()) == ["cut0", "cut1", "cut2"]
        assert "flipped" in manager.broken and "nolog" in manager.broken
    finally:
        manager.close()


def test_the_ray_path_counts_truncation_too(tmp_path):
    pytest.importorskip("ray")
    import ray

    from embedsvc.pipeline import BuildOptions
    from embedsvc.pipeline.ray_runner import build_index_ray

    source, _ = _long_corpus(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = build_index_ray(
            [str(source)], BuildOptions(index="long", data_dir=str(tmp_path / "data"), progress=False)
        )
    finally:
        ray.shutdown()
    assert (summary.documents, summary.truncated, summary.max_tokens) == (8, 3, 254)
    assert "3 documents were longer than the model reads (256 tokens, 254 of them text)" in summary.report()

"""The indexing pipeline: formats, rejects, chunking, resumption after SIGKILL, remote mode."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedsvc.index.manager import IndexManager
from embedsvc.pipeline import build_index
from embedsvc.pipeline.readers import ReaderOptions
from embedsvc.pipeline.sinks import PipelineStopped
from tests.server_utils import ServerProcess, free_port, kill_build_midway
from tests.tiny_models import corpus

pytest.importorskip("faiss")
TEXTS = list(dict.fromkeys(corpus(120, seed=77)))[:60]


def index_ids(data_dir: Path, name: str) -> dict[str, dict]:
    manager = IndexManager(data_dir)
    collection = manager.get(name)
    found, _ = collection.get(list(collection._label_of))
    manager.close()
    return {item_id: meta for item_id, _, meta in found}


def search_top(data_dir: Path, name: str, text: str) -> str:
    from embedsvc import Embedder

    manager = IndexManager(data_dir)
    hits = manager.get(name).search(Embedder.from_pretrained().embed([text], input_type="query")[0], 1)
    manager.close()
    return hits[0].id


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"id": f"j{i}", "text": t, "lang": "en"}) + "\n" for i, t in enumerate(TEXTS))
    )
    csv_path = tmp_path / "docs.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["doc", "body", "n"])
        writer.writeheader()
        for i, t in enumerate(TEXTS):
            writer.writerow({"doc": f"c{i}", "body": t, "n": i})
    text = tmp_path / "docs.txt"
    text.write_text("\n".join(TEXTS) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": TEXTS, "year": list(range(len(TEXTS)))}), parquet)
    return {"jsonl": jsonl, "csv": csv_path, "text": text, "parquet": parquet}


@pytest.mark.parametrize(
    ("kind", "reader", "first_id", "meta"),
    [
        ("jsonl", ReaderOptions(id_field="id", metadata_fields=("lang",)), "j0", {"lang": "en"}),
        ("csv", ReaderOptions(id_field="doc", text_field="body", metadata_fields=("n",)), "c0", {"n": "0"}),
        ("text", ReaderOptions(), "docs.txt:0", {}),
        ("parquet", ReaderOptions(metadata_fields=("year",)), "docs.parquet:0", {"year": 0}),
    ],
)
def test_formats_give_counts_and_searchable_results(tmp_path, inputs, kind, reader, first_id, meta):
    data = tmp_path / "data"
    summary = build_index(
        [str(inputs[kind])],
        index="docs",
        data_dir=str(data),
        reader=reader,
        progress=False,
        rejects=str(tmp_path / "rejects.jsonl"),
    )
    assert (summary.documents, summary.chunks, summary.rejected) == (60, 60, 0)
    ids = index_ids(data, "docs")
    assert len(ids) == 60 and ids[first_id] == meta
    assert search_top(data, "docs", TEXTS[7]) == first_id[:-1] + "7"  # document 7 finds itself


def test_rejects_and_chunk_metadata(tmp_path):
    source = tmp_path / "mixed.jsonl"
    long_text = " ".join(TEXTS[:10])
    with open(source, "wb") as handle:
        handle.write(json.dumps({"id": "long", "text": long_text}).encode() + b"\n")
        handle.write(b'{"id": "no-text"}\n')
        handle.write(b'{"id": "blank", "text": "   "}\n')
        handle.write(b"this is not json\n")
        handle.write(b'{"id": "latin1", "text": "caf\xe9"}\n')
        handle.write(json.dumps({"id": "short", "text": "a dog"}).encode() + b"\n")
    rejects = tmp_path / "rejects.jsonl"
    summary = build_index(
        [str(source)],
        index="mixed",
        data_dir=str(tmp_path / "data"),
        progress=False,
        reader=ReaderOptions(id_field="id"),
        chunk_tokens=32,
        chunk_overlap=8,
        rejects=str(rejects),
    )
    reasons = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["record"], r["reason"]) for r in reasons] == [
        (1, "missing text field 'text'"),
        (2, "empty text"),
        (3, "invalid JSON: Expecting value"),
        (4, "invalid UTF-8 at byte 29"),
    ]
    assert summary.rejected == 4 and summary.documents == 2
    ids = index_ids(tmp_path / "data", "mixed")
    chunks = sorted((m["chunk"], k, m) for k, m in ids.items() if k.startswith("long#"))
    assert len(chunks) == summary.chunks - 1 >= 3
    for position, (n, key, meta) in enumerate(chunks):
        assert n == position and key == f"long#{position}"
        assert meta["parent_id"] == "long" and meta["chunks"] == len(chunks)
        assert long_text[meta["char_start"] : meta["char_end"]]  # offsets point into the parent
    assert chunks[1][2]["char_start"] < chunks[0][2]["char_end"]  # windows overlap
    assert ids["short"] == {}


def test_sigkill_midway_then_rerun_is_exact(tmp_path):
    docs = [f"{t} number {i}" for i, t in enumerate(corpus(1500, seed=5)[:1500])]
    source = tmp_path / "big.jsonl"
    source.write_text("".join(json.dumps({"id": f"b{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
    data = tmp_path / "data"
    command = [
        sys.executable,
        "-m",
        "embedsvc",
        "index",
        "build",
        str(source),
        "--index",
        "big",
        "--data-dir",
        str(data),
        "--id-field",
        "id",
        "--batch-size",
        "16",
        "--no-progress",
    ]
    checkpoint = data / "pipeline" / "big.checkpoint.json"
    done_before = kill_build_midway(command, tmp_path, checkpoint, 300)
    assert 300 <= done_before < 1500
    rerun = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "indexed 1500 documents (1500 chunks" in rerun.stdout
    assert f"this run: {1500 - done_before} documents" in rerun.stdout
    ids = index_ids(data, "big")
    assert set(ids) == {f"b{i}" for i in range(1500)}


def test_remote_mode_and_dead_server(tmp_path, inputs):
    with ServerProcess(log_path=tmp_path / "server.log") as server:
        summary = build_index(
            [str(inputs["jsonl"])],
            index="remote",
            target=server.target,
            progress=False,
            reader=ReaderOptions(id_field="id"),
            batch_size=8,
            in_flight=3,
            checkpoint=str(tmp_path / "ck.json"),
            rejects=str(tmp_path / "rj.jsonl"),
        )
        assert summary.documents == 60
        from embedsvc import EmbedClient

        with EmbedClient(server.target) as client:
            assert client.count("remote") == 60
            assert client.search("remote", text=TEXTS[3], k=1)[0].id == "j3"
            # --store-text: the index the build creates through the server keeps each chunk's text
            build_index(
                [str(inputs["jsonl"])],
                index="remote-text",
                target=server.target,
                progress=False,
                store_text=True,
                checkpoint=str(tmp_path / "ck-text.json"),
            )
            assert client.get("remote-text", ["j7"], return_text=True)["j7"][2] == TEXTS[7]
            assert client.get("remote", ["j7"], return_text=True)["j7"][2] is None
    # the server is gone now: retried with backoff, then a clear stop with the checkpoint kept
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(PipelineStopped, match="failed 2 times in a row"):
        build_index(
            [str(inputs["jsonl"])],
            index="remote",
            target=dead,
            progress=False,
            retries=1,
            checkpoint=str(tmp_path / "ck2.json"),
            tokenizer=None,
            model="x",
        )


def test_cli_reports_bad_arguments(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedsvc",
            "index",
            "build",
            str(tmp_path / "none*.jsonl"),
            "--index",
            "x",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 4 and "matches no file" in out.stderr  # 4: not found


@pytest.mark.slow
def test_ray_path_gives_the_same_index(tmp_path, inputs):
    """The Ray path, local mode and remote mode, with --store-text: the same ids, metadata, vectors and
    kept texts as the plain path."""
    pytest.importorskip("ray")
    import ray

    from embedsvc import EmbedClient
    from embedsvc.pipeline import BuildOptions
    from embedsvc.pipeline.ray_runner import build_index_ray

    plain_dir, ray_dir = tmp_path / "plain", tmp_path / "ray"
    options = {
        "index": "docs",
        "reader": ReaderOptions(id_field="id", metadata_fields=("lang",)),
        "chunk_tokens": 12,
        "chunk_overlap": 3,
        "progress": False,
        "store_text": True,
    }
    plain = build_index(
        [str(inputs["jsonl"])], data_dir=str(plain_dir), rejects=str(tmp_path / "a.jsonl"), **options
    )
    with ServerProcess(log_path=tmp_path / "server.log") as server:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            distributed = build_index_ray(
                [str(inputs["jsonl"])],
                BuildOptions(data_dir=str(ray_dir), rejects=str(tmp_path / "b.jsonl"), **options),
            )
            remote = build_index_ray(  # remote mode: the texts go to the server, which embeds and keeps them
                [str(inputs["jsonl"])],
                BuildOptions(target=server.target, rejects=str(tmp_path / "c.jsonl"), **options),
            )
        finally:
            ray.shutdown()
        assert (distributed.documents, distributed.chunks) == (plain.documents, plain.chunks)
        assert (remote.documents, remote.chunks) == (plain.documents, plain.chunks)
        left, right = IndexManager(plain_dir).get("docs"), IndexManager(ray_dir).get("docs")
        ids = sorted(left._label_of)
        assert ids == sorted(right._label_of) and len(ids) > plain.documents  # chunked
        a, _ = left.get(ids)
        b, _ = right.get(ids)
        for (i, va, ma), (j, vb, mb) in zip(a, b, strict=True):
            assert i == j and ma == mb
            assert float(va @ vb) > 0.99999
        texts = left.texts(ids)
        assert all(texts) and right.texts(ids) == texts
        with EmbedClient(server.target) as client:
            assert client.count("docs") == len(ids)
            got = client.get("docs", ids, return_text=True)
        for i, vector, meta in a:
            assert got[i][1] == meta and got[i][2] == texts[ids.index(i)]
            assert float(np.asarray(got[i][0]) @ vector) > 0.99999


def test_ray_path_refuses_sparse_and_token_vectors_by_name(tmp_path, inputs, capsys):
    from embedsvc.cli.failures import USAGE
    from embedsvc.cli.main import main

    args = [
        "index",
        "build",
        str(inputs["jsonl"]),
        "--index",
        "x",
        "--data-dir",
        str(tmp_path / "d"),
        "--ray",
    ]
    assert main([*args, "--sparse", "--multi-vector", "--store-text"]) == USAGE
    message = capsys.readouterr().err.strip()
    assert "--ray with --sparse and --multi-vector" in message and "drop --ray" in message
    assert "\n" not in message and not (tmp_path / "d").exists()  # refused before anything was made

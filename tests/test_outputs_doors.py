"""Sparse and multi-vector outputs through every door (issue 25 item 2): the proto fields and their
conversions in wire.py (plain arrays in, plain arrays out, the bytes checked against numpy written out
here), then one real ``embedsvc serve`` with a bge-m3-layout checkpoint: gRPC Embed and EmbedStream,
the Python clients, TEI's /embed_sparse and /embed_all, and the CLI's JSON lines, all equal to each
other and to the engine in this process."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import httpx
import numpy as np
import pytest

from embedsvc import wire
from embedsvc.client import EmbedClient, EmbedServiceError
from embedsvc.engine.options import EmbedOptions
from embedsvc.errors import FailedPreconditionError, InvalidInputError
from embedsvc.server import embedding as embedding_servicer
from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc
from tests import families, tiny_models
from tests.server_utils import ServerProcess

RNG = np.random.default_rng(25)


def _sparse(n: int, vocab: int = 500) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(n):
        ids = np.sort(RNG.choice(vocab, size=int(RNG.integers(0, 12)), replace=False)).astype(np.int32)
        out.append((ids, RNG.random(len(ids), dtype=np.float32) + np.float32(0.01)))
    return out


def _multi(n: int, dim: int = 8) -> list[np.ndarray]:
    return [RNG.standard_normal((int(RNG.integers(1, 7)), dim)).astype(np.float32) for _ in range(n)]


def _response(
    vectors, tokens, *, sparse=None, multi=None, encoding=pb.ENCODING_FLOAT32, mv=pb.ENCODING_FLOAT32
):
    response = wire.embed_response(
        request_id="r",
        model="m",
        vectors=vectors,
        token_counts=tokens,
        encoding=encoding,
        total_tokens=sum(tokens),
    )
    wire.add_outputs(response, sparse=sparse, sparse_dimension=500, multi_vectors=multi, encoding=mv)
    return pb.EmbedResponse.FromString(response.SerializeToString())  # what a client parses


# ------------------------------------------------------------------ wire, plain arrays


def test_all_three_outputs_round_trip_exactly():
    n = 5
    dense = RNG.standard_normal((n, 16)).astype(np.float32)
    sparse, multi, tokens = _sparse(n), _multi(n), [3, 4, 5, 6, 7]
    got = wire.embed_outputs(
        _response(dense, tokens, sparse=sparse, multi=multi), ("dense", "sparse", "multi_vector")
    )
    assert len(got) == n and got.tokens == tokens
    np.testing.assert_array_equal(got.dense, dense)
    assert got.sparse is not None and got.multi_vectors is not None
    for (ids, weights), vector in zip(sparse, got.sparse, strict=True):
        assert vector.indices.dtype == np.int32 and vector.values.dtype == np.float32
        np.testing.assert_array_equal(vector.indices, ids)
        np.testing.assert_array_equal(vector.values, weights)
        assert vector.dimension == 500
        assert vector.as_dict() == {int(i): float(w) for i, w in zip(ids, weights, strict=True)}
    for sent, back in zip(multi, got.multi_vectors, strict=True):
        assert back.dtype == np.float32 and back.flags.writeable
        np.testing.assert_array_equal(back, sent)


def test_multi_vector_float16_is_half_the_bytes_and_rounds_like_numpy():
    multi = _multi(3, dim=32)
    response = _response(np.zeros((3, 0), np.float32), [1, 1, 1], multi=multi, mv=pb.ENCODING_FLOAT16)
    for item, matrix in zip(response.embeddings, multi, strict=True):
        assert item.multi_vector.encoding == pb.ENCODING_FLOAT16
        assert len(item.multi_vector.data) == matrix.size * 2
        # the bytes themselves: little-endian IEEE half floats, row-major
        assert item.multi_vector.data == matrix.astype("<f2").tobytes(order="C")
    got = wire.embed_outputs(response, ("multi_vector",))
    assert got.dense is None and got.sparse is None and got.multi_vectors is not None
    for sent, back in zip(multi, got.multi_vectors, strict=True):
        np.testing.assert_array_equal(back, sent.astype(np.float16).astype(np.float32))


def test_dense_left_out_when_not_asked():
    response = _response(np.zeros((2, 0), np.float32), [4, 9], sparse=_sparse(2))
    assert response.dimensions == 0
    for item, tokens in zip(response.embeddings, [4, 9], strict=True):
        assert not item.values and not item.data and item.tokens == tokens and item.HasField("sparse")
    got = wire.embed_outputs(response, ("sparse",))
    assert got.dense is None and got.multi_vectors is None and got.tokens == [4, 9]


def test_an_empty_sparse_vector_is_still_an_answer():
    empty = [(np.zeros(0, np.int32), np.zeros(0, np.float32))]
    got = wire.embed_outputs(_response(np.zeros((1, 0), np.float32), [2], sparse=empty), ("sparse",))
    assert got.sparse is not None and got.sparse[0].indices.size == 0 and got.sparse[0].dimension == 500


def test_a_server_that_ignores_outputs_is_told_not_silently_read_as_dense():
    """A server before the field answers dense only: asking sparse of it must fail clearly."""
    old = _response(RNG.standard_normal((2, 4)).astype(np.float32), [3, 3])
    for kind in ("sparse", "multi_vector"):
        with pytest.raises(FailedPreconditionError, match=f"without the {kind} output.*upgrade"):
            wire.embed_outputs(old, ("dense", kind))
    np.testing.assert_array_equal(wire.embed_outputs(old, ("dense",)).dense, wire.embeddings(old))


def test_sparse_matrix_equals_the_dense_layout():
    pytest.importorskip("scipy")
    sparse = _sparse(4)
    got = wire.embed_outputs(_response(np.zeros((4, 0), np.float32), [1] * 4, sparse=sparse), ("sparse",))
    matrix = got.sparse_matrix()
    assert matrix.shape == (4, 500)
    expected = np.zeros((4, 500), np.float32)
    for row, (ids, weights) in enumerate(sparse):
        expected[row, ids] = weights
    np.testing.assert_array_equal(matrix.toarray(), expected)


def test_joined_keeps_the_order_of_the_requests():
    a = _response(np.ones((2, 3), np.float32), [1, 2], sparse=_sparse(2), multi=_multi(2))
    b = _response(np.full((1, 3), 2, np.float32), [3], sparse=_sparse(1), multi=_multi(1))
    kinds = ("dense", "sparse", "multi_vector")
    parts = [wire.embed_outputs(r, kinds) for r in (a, b)]
    joined = wire.EmbedOutputs.joined(parts)
    assert joined.tokens == [1, 2, 3] and joined.dense is not None and joined.dense.shape == (3, 3)
    assert joined.sparse is not None and joined.multi_vectors is not None
    assert [len(v.indices) for v in joined.sparse] == [len(v.indices) for p in parts for v in p.sparse]  # type: ignore[union-attr]
    np.testing.assert_array_equal(joined.multi_vectors[2], parts[1].multi_vectors[0])  # type: ignore[index]


def test_request_fields_leave_old_requests_byte_identical():
    """No ``outputs`` argument: the request is byte for byte what clients sent before the field."""
    options = dict(
        input_type=None, prompt_name=None, instruction=None, dimensions=None, normalize=None,
        truncation="end", chunked=False, encoding="float32",
    )  # fmt: skip
    before = pb.EmbedRequest(inputs=["a"], **wire.embed_request_fields(**options))  # type: ignore[arg-type]
    (now,) = wire.embed_requests(["a"], 8, model=None, **options)
    assert now.SerializeToString() == pb.EmbedRequest(id="0", **{**_fields(before)}).SerializeToString()
    assert not now.outputs and not now.multi_vector_encoding
    (asked,) = wire.embed_requests(
        ["a"], 8, model=None, outputs=["sparse", "dense"], multi_vector_encoding="float16", **options
    )
    assert list(asked.outputs) == [pb.OUTPUT_KIND_SPARSE, pb.OUTPUT_KIND_DENSE]
    assert asked.multi_vector_encoding == pb.ENCODING_FLOAT16
    assert wire.request_outputs(asked) == ("sparse", "dense")


def _fields(message: pb.EmbedRequest) -> dict:
    return {f.name: v for f, v in message.ListFields()}


@pytest.mark.parametrize(
    ("outputs", "error", "match"),
    [
        (
            ["colbert"],
            InvalidInputError,
            "unknown outputs 'colbert'; choose one of dense, sparse, multi_vector",
        ),
        ("sparse", ValueError, r"a list of kinds, such as \['sparse'\]"),
        ([], ValueError, "at least one of dense, sparse, multi_vector"),
    ],
)
def test_client_side_mistakes_fail_before_sending(outputs, error, match):
    with pytest.raises(error, match=match):
        wire.output_request_fields(outputs, "float32")


def test_server_side_conversion_errors_name_the_field():
    with pytest.raises(InvalidInputError, match=r"outputs\[1\] is 0, not an output kind") as caught:
        wire.request_outputs(pb.EmbedRequest(outputs=[pb.OUTPUT_KIND_SPARSE, 0]))
    assert caught.value.field == "outputs"
    with pytest.raises(InvalidInputError, match="use ENCODING_FLOAT32 or ENCODING_FLOAT16") as caught:
        wire.multi_vector_encoding(pb.EmbedRequest(multi_vector_encoding=pb.ENCODING_INT8))
    assert caught.value.field == "multi_vector_encoding"
    with pytest.raises(InvalidInputError, match="multi_vector_encoding"):
        wire.output_request_fields(["multi_vector"], "int8")


def test_model_info_from_a_server_before_outputs_says_dense_only():
    assert wire.plain_output_facts(pb.ModelInfo(name="old")) == {
        "outputs": ("dense",),
        "sparse_dimension": 0,
        "multi_vector_dimension": 0,
    }
    info = pb.ModelInfo(
        outputs=[pb.OUTPUT_KIND_DENSE, pb.OUTPUT_KIND_SPARSE],
        sparse_dimension=250002,
        multi_vector_dimension=0,
    )
    assert wire.plain_output_facts(info)["outputs"] == ("dense", "sparse")


def test_multi_vector_requests_are_split_by_estimated_tokens():
    """Multi-vector answers grow with tokens: the client's requests stay under the server's bound."""
    texts = [
        "x" * 3000,
        "short",
        "y" * 60_000,
        *["z" * 30_000] * 3,
        "w",
    ]  # ~1002, 3, 20002, 10002 x3, 2 tokens
    requests = wire.embed_requests(texts, 256, model=None, outputs=["multi_vector"], **_DEFAULTS)
    assert [list(r.inputs) for r in requests] == [texts[:2], [texts[2]], texts[3:4], texts[4:5], texts[5:]]
    assert [r.id for r in requests] == ["0", "2", "3", "4", "5"]  # the position of each one's first text
    by_count = wire.embed_requests(["a"] * 5, 2, model=None, outputs=["multi_vector", "dense"], **_DEFAULTS)
    assert [len(r.inputs) for r in by_count] == [2, 2, 1]
    dense_only = wire.embed_requests(texts, 256, model=None, outputs=["sparse"], **_DEFAULTS)
    assert len(dense_only) == 1  # only multi-vector answers need the token split


_DEFAULTS = dict(
    input_type=None, prompt_name=None, instruction=None, dimensions=None, normalize=None,
    truncation="end", chunked=False, encoding="float32",
)  # fmt: skip


# ------------------------------------------------- one real server: a bge-m3 layout and a dense model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Children read books at school.", "a"]
ALL = ("dense", "sparse", "multi_vector")
# floats: over the server's 1 M floats filled off the event loop, under 64 texts of 512 tokens x 64 wide
MULTI_VECTOR_BOUND = 2_000_000


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("outputs")
    return {
        "m3": tiny_models.build_bge_m3(folder / "m3"),
        "dense": families.build_bert_layout(folder / "plain", pooling="mean"),
    }


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory):
    log = tmp_path_factory.mktemp("outputs-log") / "server.log"
    with ServerProcess(
        "--model", f"m3={checkpoints['m3']}", "--model", f"plain={checkpoints['dense']}",
        "--max-multi-vector-values", str(MULTI_VECTOR_BOUND), log_path=log,
    ) as s:  # fmt: skip
        yield s


@pytest.fixture(scope="module")
def client(server):
    with EmbedClient(server.target, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(checkpoints):
    """The engine in this process, with no door in between: what every door must hand back."""
    from embedsvc.engine.embedder import Embedder
    from embedsvc.engine.service import ModelService

    service = ModelService.in_process(Embedder.from_pretrained(str(checkpoints["m3"])))
    return service.embed_now(TEXTS, EmbedOptions(outputs=ALL))


@pytest.fixture(scope="module")
def answer(client):
    return client.embed(TEXTS, model="m3", outputs=list(ALL))


def _assert_same(got: wire.EmbedOutputs, expected, *, atol: float = 1e-5) -> None:
    assert got.dense is not None and got.sparse is not None and got.multi_vectors is not None
    np.testing.assert_allclose(got.dense, expected.vectors, atol=atol)
    for vector, (ids, weights) in zip(got.sparse, expected.sparse, strict=True):
        np.testing.assert_array_equal(vector.indices, ids)
        np.testing.assert_allclose(vector.values, weights, atol=atol)
    for matrix, want in zip(got.multi_vectors, expected.multi_vectors, strict=True):
        np.testing.assert_allclose(matrix, want, atol=atol)
    assert got.tokens == expected.token_counts


def test_list_models_says_what_each_model_offers(client):
    infos = {m.name: m for m in client.list_models()}
    m3, plain = infos["m3"], infos["plain"]
    assert m3.outputs == ALL and m3.sparse_dimension > 0 and m3.multi_vector_dimension == m3.dimension
    assert plain.outputs == ("dense",) and plain.sparse_dimension == plain.multi_vector_dimension == 0


def test_the_models_table_shows_each_models_outputs(server, capsys, monkeypatch):
    from embedsvc.cli.main import main

    monkeypatch.setenv("EMBEDSVC_TARGET", server.target)
    assert main(["models"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["MODEL", "TASK", "OUTPUTS"]
    # each row's TASK and OUTPUTS cells, after the name (and the default's "(default)")
    cells = {row.split()[0]: row.replace("(default)", "").split()[1:3] for row in rows}
    assert cells == {"m3": ["embed", "dense,sparse,multi_vector"], "plain": ["embed", "dense"]}


def test_grpc_client_gets_every_output_as_the_engine_gives_it(answer, reference, client):
    _assert_same(answer, reference)
    info = {m.name: m for m in client.list_models()}["m3"]
    assert all(v.dimension == info.sparse_dimension for v in answer.sparse)
    assert all(m.shape[1] == info.multi_vector_dimension for m in answer.multi_vectors)
    # dense asked with the others is the dense of a plain call
    np.testing.assert_allclose(answer.dense, client.embed(TEXTS, model="m3"), atol=1e-5)
    only = client.embed(TEXTS, model="m3", outputs=["sparse"])
    assert only.dense is None and only.multi_vectors is None
    for a, b in zip(only.sparse, answer.sparse, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.values, b.values, atol=1e-5)
    matrix = answer.sparse_matrix()
    assert matrix.shape == (len(TEXTS), info.sparse_dimension)


def test_an_old_client_gets_exactly_the_dense_response(server, client):
    """No outputs field: the response holds what it held before the field, byte for byte (beside the
    model fingerprint every response now carries)."""
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        response = stub.Embed(pb.EmbedRequest(id="old", model="m3", inputs=TEXTS), timeout=60)
    assert all(not e.HasField("sparse") and not e.HasField("multi_vector") for e in response.embeddings)
    vectors = wire.embeddings(response)
    rebuilt = wire.embed_response(
        request_id="old",
        model="m3",
        vectors=vectors,
        token_counts=[e.tokens for e in response.embeddings],
        encoding=pb.ENCODING_FLOAT32,
        total_tokens=response.usage.total_tokens,
        fingerprint=response.fingerprint,  # the one field added since, which old clients skip
    )
    assert response.SerializeToString() == rebuilt.SerializeToString()
    np.testing.assert_allclose(vectors, client.embed(TEXTS, model="m3"), atol=1e-6)


def test_float16_multi_vectors_are_the_float32_ones_rounded(client, answer):
    half = client.embed(TEXTS, model="m3", outputs=["multi_vector"], multi_vector_encoding="float16")
    for got, full in zip(half.multi_vectors, answer.multi_vectors, strict=True):
        np.testing.assert_allclose(got, full.astype(np.float16).astype(np.float32), atol=2e-3)


def test_embed_stream_carries_outputs(server, answer):
    requests = [
        pb.EmbedRequest(
            id="a", model="m3", inputs=TEXTS, outputs=[pb.OUTPUT_KIND_SPARSE, pb.OUTPUT_KIND_MULTI_VECTOR]
        ),
        pb.EmbedRequest(id="b", model="m3", inputs=TEXTS),
    ]
    with grpc.insecure_channel(server.target) as channel:
        replies = {
            r.id: r for r in pb_grpc.EmbeddingServiceStub(channel).EmbedStream(iter(requests), timeout=60)
        }
    got = wire.embed_outputs(replies["a"].response, ("sparse", "multi_vector"))
    for a, b in zip(got.sparse, answer.sparse, strict=True):
        np.testing.assert_array_equal(a.indices, b.indices)
    for a, b in zip(got.multi_vectors, answer.multi_vectors, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    plain = replies["b"].response
    assert plain.dimensions == answer.dense.shape[1] and not plain.embeddings[0].HasField("sparse")


def test_tei_embed_sparse_and_embed_all(server, answer):
    url = server.http_url()
    sparse = httpx.post(url + "/embed_sparse", json={"inputs": TEXTS, "model": "m3"}, timeout=60)
    assert sparse.status_code == 200, sparse.text
    for entries, vector in zip(sparse.json(), answer.sparse, strict=True):
        assert [e["index"] for e in entries] == vector.indices.tolist()
        np.testing.assert_allclose([e["value"] for e in entries], vector.values, atol=1e-5)
    single = httpx.post(url + "/embed_all?model=m3", json={"inputs": TEXTS[1]}, timeout=60)
    assert single.status_code == 200, single.text
    (tokens,) = single.json()
    np.testing.assert_allclose(np.array(tokens, dtype=np.float32), answer.multi_vectors[1], atol=1e-5)
    info = httpx.get(url + "/info?model=m3", timeout=10).json()
    assert info["outputs"] == list(ALL) and info["sparse_dimension"] == answer.sparse[0].dimension


def test_cli_writes_json_lines_with_the_outputs(server, answer, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "embedsvc", "embed", "--target", server.target, "--model", "m3",
         "--outputs", "dense,sparse,multi_vector", "--multi-vector-encoding", "float16", *TEXTS],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["id"] for line in lines] == [0, 1, 2] and [line["text"] for line in lines] == TEXTS
    for line, dense, vector, matrix in zip(
        lines, answer.dense, answer.sparse, answer.multi_vectors, strict=True
    ):
        np.testing.assert_allclose(line["embedding"], dense, atol=1e-5)
        assert line["sparse"]["indices"] == vector.indices.tolist()
        assert line["sparse"]["dimension"] == vector.dimension
        np.testing.assert_allclose(line["sparse"]["values"], vector.values, atol=1e-5)
        np.testing.assert_allclose(line["multi_vector"], matrix, atol=2e-3)
    npy = subprocess.run(
        [sys.executable, "-m", "embedsvc", "embed", "--target", server.target, "--model", "m3",
         "--outputs", "sparse", "--output", str(tmp_path / "x.npy"), "a"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert npy.returncode != 0 and "npy holds dense vectors only" in npy.stderr


def test_what_a_model_lacks_and_what_is_too_big_are_clear_errors(server, client):
    with pytest.raises(EmbedServiceError) as caught:
        client.embed(["x"], model="plain", outputs=["sparse"])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "dense" in caught.value.details
    long_text = "many words here " * 200  # ~1 000 estimated tokens: the model's 512 x the width, 70 times
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.Embed(
                pb.EmbedRequest(model="m3", inputs=[long_text] * 70, outputs=[pb.OUTPUT_KIND_MULTI_VECTOR]),
                timeout=60,
            )
        assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_multi_vector_values" in raw.value.details()
        with pytest.raises(grpc.RpcError) as raw:
            stub.Embed(pb.EmbedRequest(model="m3", inputs=["x"], outputs=[pb.OUTPUT_KIND_MULTI_VECTOR],
                                       multi_vector_encoding=pb.ENCODING_INT8), timeout=60)  # fmt: skip
        assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "multi_vector_encoding" in raw.value.details()
        with pytest.raises(grpc.RpcError) as raw:
            stub.Embed(pb.EmbedRequest(model="m3", inputs=["x"], outputs=[7]), timeout=60)
        assert "outputs[0] is 7" in raw.value.details()
    url = server.http_url()
    lacking = httpx.post(url + "/embed_sparse", json={"inputs": ["x"], "model": "plain"}, timeout=60)
    assert lacking.status_code == 413 and lacking.json()["error_type"] == "Validation"
    too_big = httpx.post(
        url + "/embed_all", json={"inputs": [long_text] * 70, "model": "m3", "truncate": True}, timeout=60
    )
    assert too_big.status_code == 413 and "max_multi_vector_values" in too_big.json()["error"]


def test_a_big_multi_vector_answer_is_the_same_filled_off_the_event_loop(server, client):
    """Over 1 M floats the servicer fills the response on a thread: same answer as small requests."""
    texts = [f"{i} " + "the quick brown fox jumps over the lazy dog " * 26 for i in range(64)]
    receive = [("grpc.max_receive_message_length", 64 << 20)]  # gRPC's default 4 MiB is too small
    with grpc.insecure_channel(server.target, options=receive) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        request = pb.EmbedRequest(model="m3", inputs=texts, outputs=[pb.OUTPUT_KIND_MULTI_VECTOR])
        big = wire.embed_outputs(stub.Embed(request, timeout=120), ("multi_vector",))
    assert big.multi_vectors is not None
    assert sum(m.size for m in big.multi_vectors) > embedding_servicer.OFF_LOOP_OUTPUT_VALUES
    client.chunk_size = 8  # the same texts in small requests, each filled on the event loop
    try:
        small = client.embed(texts, model="m3", outputs=["multi_vector"])
    finally:
        client.chunk_size = 256
    for a, b in zip(big.multi_vectors, small.multi_vectors, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)

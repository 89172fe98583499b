"""Sparse and multi-vector outputs through every door (issue 25 item 2): the proto fields and their
conversions in wire.py (plain arrays in, plain arrays out, the bytes checked against numpy written out
here), then one real ``embedsvc serve`` with a bge-m3-layout checkpoint: gRPC Embed and EmbedStream,
the Python clients, TEI's /embed_sparse and /embed_all, and the CLI's JSON lines, all equal to each
other and to the engine in this process."""

from __future__ import annotations

import numpy as np
import pytest

from embedsvc import wire
from embedsvc.errors import FailedPreconditionError, InvalidInputError
from embedsvc.v1 import embedding_pb2 as pb

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
    texts = ["x" * 3000, "short", "y" * 60_000, *["z" * 30_000] * 3, "w"]  # ~1002, 3, 20002, 10002 x3, 2 tokens
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

"""The index facade is the one place writes are checked: the gRPC door (a real server) and the
pipeline's local sink (in process) answer the same bad input with the same error class and message."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from embedsvc.errors import InvalidInputError
from embedsvc.server.errors import message_for, status_for
from embedsvc.v1 import index_pb2 as pb
from embedsvc.v1 import index_pb2_grpc as pb_grpc
from tests.server_utils import ServerProcess

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    data = tmp_path_factory.mktemp("facade-server")
    with (
        ServerProcess("--data-dir", str(data), log_path=data / "server.log") as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = pb_grpc.IndexServiceStub(channel)
        stub.CreateIndex(pb.CreateIndexRequest(name="docs", kind=pb.INDEX_KIND_FLAT), timeout=120)
        yield stub


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    from embedsvc.pipeline.sinks import LocalSink

    local = LocalSink(tmp_path_factory.mktemp("facade-local"), None, "docs", metric="cosine", kind="flat")
    local.open(restart=False)
    yield local
    local.close()


def _same_error(stub, request: pb.UpsertRequest, local_write) -> str:
    with pytest.raises(grpc.RpcError) as remote:
        stub.Upsert(request, timeout=120)
    with pytest.raises(InvalidInputError) as local:
        local_write()
    assert remote.value.code() == status_for(local.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert remote.value.details() == message_for(local.value)
    return remote.value.details()


def test_empty_write_is_refused_alike(stub, sink):
    details = _same_error(stub, pb.UpsertRequest(index="docs"), lambda: sink.write([], [], []))
    assert details == "items must not be empty"


def test_wrong_dimension_is_refused_alike(stub, sink):
    request = pb.UpsertRequest(
        index="docs", items=[pb.Item(id="a", vector=[1.0, 2.0, 3.0]), pb.Item(id="b", vector=[1.0, 2.0, 3.0])]
    )
    vectors = np.ones((2, 3), dtype=np.float32)
    details = _same_error(stub, request, lambda: sink.write_vectors(["a", "b"], vectors, [{}, {}]))
    assert details == "vector: item 0 ('a'): vector has 3 dimensions, the index 384"


def test_good_writes_agree(stub, sink):
    """Both doors store the same text as the same vector (a control: the refusals above are not all)."""
    stub.Upsert(pb.UpsertRequest(index="docs", items=[pb.Item(id="t", text="a quiet harbour")]), timeout=120)
    sink.write(["t"], ["a quiet harbour"], [{}])
    remote = np.asarray(stub.Get(pb.GetRequest(index="docs", ids=["t"]), timeout=120).items[0].vector)
    found, missing = sink.manager.get("docs").get(["t"])
    assert missing == [] and remote.shape == (384,)
    np.testing.assert_allclose(found[0][1], remote, atol=1e-4)

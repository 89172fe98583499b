"""Every line the server prints is a log record in its format, and third-party chatter stays out: the
first `--quantize int8` start (ONNX export and quantization) and a client speaking plaintext to a TLS
port used to print raw TracerWarnings, ~40 quantizer INFO lines and a raw gRPC C-core line."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.server_utils import ServerProcess

CHATTER = ("Quantization parameters for tensor", "TracerWarning", "pre-processing before quantization")


@pytest.mark.slow
def test_int8_first_start_and_a_wrong_protocol_client_log_only_json(tmp_path, tls_files):
    pytest.importorskip("onnxruntime")
    cert, key = tls_files
    args = ("--quantize", "int8", "--tls-cert", str(cert), "--tls-key", str(key))
    cache = {"EMBEDSVC_CACHE": str(tmp_path / "cache")}  # empty: the export and quantization run now
    with ServerProcess(*args, env=cache, log_path=tmp_path / "server.log") as server:
        with grpc.insecure_channel(server.target) as plaintext, pytest.raises(grpc.RpcError):
            # the wrong protocol for this port
            health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5)
        time.sleep(1)  # the server's side of the failed handshake is logged by another thread
    lines = [line for line in server.log().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a line outside the JSON log format: {line!r}")
    assert any(r["msg"] == "serving" for r in records)
    for record in records:
        assert not any(noise in record["msg"] for noise in CHATTER), record
    assert (tmp_path / "cache" / "onnx-int8").is_dir()  # the export did run in this start

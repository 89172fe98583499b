"""What one client can cost the doors, and what a refused or cut-off client is told (issue 20 items 2,
5-9, 16, 18; issue 23 item 5). Each test runs a real ``embedsvc serve`` process and real clients."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
import resource
import socket
import subprocess
import sys
import threading
import time

import grpc
import httpx
import pytest

from embedsvc.v1 import embedding_pb2 as pb
from embedsvc.v1 import embedding_pb2_grpc as pb_grpc
from embedsvc.v1 import index_pb2 as ipb
from embedsvc.v1 import index_pb2_grpc as ipb_grpc
from tests.server_utils import ServerProcess, free_port

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

KEY = "s3cret"
OTHER = "other-key"  # a second caller (tenant): callers are told apart by key
LONG_TEXT = "the quick brown fox jumps over the lazy dog " * 80  # ~720 tokens: over MiniLM's 256
HEAVY = ["a longer text to embed, over and over again, with enough words to cost something " * 3] * 2048


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A keyed server with a tiny queue bound, small filter bound, metrics, and an index on disk."""
    folder = tmp_path_factory.mktemp("doors")
    metrics_port = free_port()
    with ServerProcess(
        "--http-port", "0", "--api-key", KEY, "--api-key", OTHER, "--max-queue-seconds", "0.05",
        "--max-inputs-per-request", "4096", "--max-filter-leaves", "64",
        "--metrics-port", str(metrics_port), "--data-dir", str(folder / "data"),
        log_path=folder / "server.log",
    ) as s:  # fmt: skip
        s.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"  # type: ignore[attr-defined]
        yield s


def keyed(scheme: str = "Bearer", key: str = KEY) -> dict[str, str]:
    return {"authorization": f"{scheme} {key}"}


def metadata(scheme: str = "Bearer", key: str = KEY) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"{scheme} {key}"),)


def metric(server, pattern: str) -> float:
    """The sum of the samples whose line matches ``pattern`` (a regex over the metric line)."""
    text = httpx.get(server.metrics_url).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(pattern, line))


# --------------------------------------------------------------- item 18 + 16


def test_bearer_scheme_is_case_insensitive_on_both_doors(server):
    url = server.http_url()
    for scheme in ("bearer", "BEARER", "Bearer"):
        reply = httpx.post(url + "/v1/embeddings", json={"input": "x"}, headers=keyed(scheme))
        assert reply.status_code == 200, (scheme, reply.text)
        with grpc.insecure_channel(server.target) as channel:
            response = pb_grpc.EmbeddingServiceStub(channel).Embed(
                pb.EmbedRequest(inputs=["x"]), metadata=metadata(scheme), timeout=60
            )
            assert len(response.embeddings) == 1
    assert (
        httpx.post(url + "/v1/embeddings", json={"input": "x"}, headers={"authorization": KEY}).status_code
        == 401
    )
    assert httpx.post(url + "/embed", json={"inputs": "x"}, headers=keyed("Basic")).status_code == 401


def test_tei_booleans_are_json_booleans_and_413_names_truncate(server):
    url = server.http_url()
    for field, value in (
        ("truncate", "false"),
        ("truncate", "true"),
        ("normalize", 1),
        ("add_special_tokens", "no"),
    ):
        path = "/tokenize" if field == "add_special_tokens" else "/embed"
        reply = httpx.post(url + path, json={"inputs": "x", field: value}, headers=keyed())
        assert reply.status_code == 413, (field, value, reply.text)  # TEI's status for validation
        assert reply.json() == {
            "error": f"{field} must be true or false (a JSON boolean), got {value!r}",
            "error_type": "Validation",
        }
    # "truncate": false is honoured: a long text is refused, naming TEI's field
    too_long = httpx.post(url + "/embed", json={"inputs": LONG_TEXT, "truncate": False}, headers=keyed())
    assert too_long.status_code == 413
    message = too_long.json()["error"]
    assert '"truncate": true' in message and "truncation='end'" not in message, message
    assert (
        httpx.post(url + "/embed", json={"inputs": LONG_TEXT, "truncate": True}, headers=keyed()).status_code
        == 200
    )
    # OpenAI's door names its own field too
    openai_style = httpx.post(
        url + "/v1/embeddings", json={"input": LONG_TEXT, "truncate": "none"}, headers=keyed()
    )
    assert openai_style.status_code == 400
    assert '"truncate": "end"' in openai_style.json()["error"]["message"]


def test_malformed_protobuf_is_invalid_argument_in_plain_words(server):
    with grpc.insecure_channel(server.target) as channel:
        for method in ("/embedsvc.v1.EmbeddingService/Embed", "/embedsvc.v1.IndexService/Search"):
            call = channel.unary_unary(method)  # raw bytes in, raw bytes out
            with pytest.raises(grpc.RpcError) as caught:
                call(b"\xff\xff\xff\x0f", metadata=metadata(), timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
            assert "is not a valid" in caught.value.details()
            assert "<class" not in caught.value.details()
        # nesting past protobuf's recursion limit: the same plain refusal, before any work
        # (written by hand: the protobuf library refuses to build it)
        where = ipb.Filter(field=ipb.FieldCondition(key="k", exists=True)).SerializeToString()
        for _ in range(120):
            filters = _field(1, where)  # FilterList.filters
            where = _field(3, filters)  # Filter.any
        deep = ipb.SearchRequest(index="none", vector=ipb.Vector(values=[0.0])).SerializeToString()
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary("/embedsvc.v1.IndexService/Search")(
                deep + _field(9, where), metadata=metadata(), timeout=30
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    size, length = len(payload), b""
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            break
    return bytes([number << 3 | 2]) + length + payload


# ------------------------------------------------------------------- item 8


def test_filter_size_is_bounded_before_any_work(server):
    with grpc.insecure_channel(server.target) as channel:
        index = ipb_grpc.IndexServiceStub(channel)
        index.CreateIndex(ipb.CreateIndexRequest(name="bounded"), metadata=metadata(), timeout=60)
        items = [
            ipb.Item(id=str(i), text=f"text {i}", metadata={"n": ipb.MetadataValue(int_value=i)})
            for i in range(8)
        ]
        index.Upsert(ipb.UpsertRequest(index="bounded", items=items), metadata=metadata(), timeout=120)

        def leaves(n: int) -> ipb.Filter:
            conditions = [
                ipb.Filter(field=ipb.FieldCondition(key="n", eq=ipb.MetadataValue(int_value=i)))
                for i in range(n)
            ]
            return ipb.Filter(any=ipb.FilterList(filters=conditions))

        small = index.Search(
            ipb.SearchRequest(index="bounded", text="text", k=8, where=leaves(4)),
            metadata=metadata(),
            timeout=60,
        )
        assert sorted(h.id for h in small.hits) == ["0", "1", "2", "3"]
        for n in (65, 200_000):  # over the bound; the big one is ~2 MB
            with pytest.raises(grpc.RpcError) as caught:
                index.Search(
                    ipb.SearchRequest(index="bounded", text="text", where=leaves(n)),
                    metadata=metadata(),
                    timeout=60,
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "more than 64 conditions and listed values (max_filter_leaves)" in caught.value.details()
        listed = ipb.FieldCondition(key="n")
        getattr(listed, "in").values.extend(ipb.MetadataValue(int_value=i) for i in range(65))
        with pytest.raises(grpc.RpcError) as caught:
            index.Search(
                ipb.SearchRequest(index="bounded", text="text", where=ipb.Filter(field=listed)),
                metadata=metadata(),
                timeout=60,
            )
        assert "max_filter_leaves" in caught.value.details()


# ------------------------------------------------------------- items 2 and 9


def test_a_lone_caller_is_queued_not_refused_for_its_own_work(server):
    """One caller, many requests in flight at once (as the client splits a big list): the old
    scheduler refused its later ones once its own earlier ones filled the (tiny) queue bound."""
    texts = [f"text number {i} about something or other" for i in range(256)]
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        calls = [
            stub.Embed.future(pb.EmbedRequest(inputs=texts), metadata=metadata(), timeout=300)
            for _ in range(12)
        ]
        results = []
        for call in calls:
            try:
                results.append(len(call.result().embeddings))
            except grpc.RpcError as exc:
                results.append(exc.code())
    assert results == [256] * 12, results


def _while_heavy(server, key: str, attempt):
    """Run ``attempt()`` repeatedly while another caller (``key``) has heavy work in the queue, until it
    returns something; a fresh heavy request if the last one finished first."""
    for _ in range(3):
        done = threading.Event()

        def heavy(done: threading.Event = done) -> None:
            with httpx.Client(timeout=600) as client:
                client.post(
                    server.http_url() + "/v1/embeddings", json={"input": HEAVY}, headers=keyed(key=key)
                )
            done.set()

        thread = threading.Thread(target=heavy)
        thread.start()
        time.sleep(0.3)
        try:
            while not done.is_set():
                if (result := attempt()) is not None:
                    return result
                time.sleep(0.05)
        finally:
            thread.join()
    raise AssertionError("the heavy caller always finished before the other one was refused")


def test_refusals_carry_a_retry_hint_on_both_doors(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmbeddingServiceStub(channel)
        request = pb.EmbedRequest(inputs=[f"a lighter text, number {i}, to embed" for i in range(512)])

        def refused_grpc():
            try:
                stub.Embed(request, metadata=metadata(), timeout=300)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                return dict(exc.trailing_metadata())
            return None

        trailer = _while_heavy(server, OTHER, refused_grpc)
    assert re.fullmatch(r"[1-9][0-9]*", trailer["retry-after-ms"]), trailer
    assert trailer["x-request-id"]

    def refused_http():
        reply = httpx.post(
            server.http_url() + "/v1/embeddings", json={"input": list(request.inputs)}, headers=keyed()
        )
        return reply if reply.status_code == 429 else None

    reply = _while_heavy(server, OTHER, refused_http)
    assert int(reply.headers["retry-after"]) >= 1 and int(reply.headers["retry-after-ms"]) >= 1
    assert int(reply.headers["retry-after"]) * 1000 >= int(reply.headers["retry-after-ms"])
    assert reply.json()["error"]["type"] == "rate_limit_exceeded"


def test_the_openai_sdk_retries_through_refusals(server):
    import openai

    seen: list[int] = []
    hints: list[str] = []

    def record(response: httpx.Response) -> None:
        seen.append(response.status_code)
        if response.status_code == 429:
            hints.append(response.headers.get("retry-after-ms", ""))

    texts = [f"a lighter text, number {i}, to embed" for i in range(512)]
    # a lone caller sending several requests at once, no retries: every one is served
    lone = openai.OpenAI(base_url=server.http_url() + "/v1", api_key=KEY, max_retries=0)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: lone.embeddings.create(input=texts, model=""), range(8)))
    assert [len(r.data) for r in replies] == [512] * 8

    # another caller's heavy work fills the queue: the SDK is refused, waits as told, and succeeds
    sdk = openai.OpenAI(
        base_url=server.http_url() + "/v1",
        api_key=KEY,
        max_retries=10,
        http_client=httpx.Client(event_hooks={"response": [record]}, timeout=600),
    )

    def until_refused_once():
        seen.clear()
        reply = sdk.embeddings.create(input=texts, model="")
        return reply if 429 in seen else None

    reply = _while_heavy(server, OTHER, until_refused_once)
    assert len(reply.data) == 512 and seen[-1] == 200, seen
    assert hints and all(h.isdigit() for h in hints), hints


# ----------------------------------------------------------- items 7 and 23.5


def test_an_http_client_that_disconnects_cancels_its_work(server):
    """Measured by the engine's forward passes (embedsvc_batch_sequences), not by the clock."""
    forwarded = r"embedsvc_batch_sequences_sum\{"
    before = metric(server, forwarded)
    texts = [f"text {i} " + "with quite a few words to embed in it, " * 6 for i in range(4096)]
    body = httpx.Request("POST", "http://x/v1/embeddings", json={"input": texts}).read()
    host, port = server.http_url().removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
    sock.sendall(
        (head + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    )
    deadline = time.monotonic() + 180
    while metric(server, forwarded) < before + 64 and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until the engine works on it
    sock.close()
    # the batches in flight finish, nothing after them starts: the count settles (no change for 10 s)
    settled, stable_since, deadline = metric(server, forwarded), time.monotonic(), time.monotonic() + 240
    while time.monotonic() - stable_since < 10 and time.monotonic() < deadline:
        time.sleep(1)
        if (now := metric(server, forwarded)) != settled:
            settled, stable_since = now, time.monotonic()
    assert settled - before < len(texts) / 2, (before, settled)
    assert metric(server, r'embedsvc_errors_total\{code="499",method="http:/v1/embeddings"\}') >= 1
    assert "internal error" not in server.log()


def test_http_deadlines_and_latency_labelled_by_model(server):
    url = server.http_url()
    model = httpx.get(url + "/v1/models", headers=keyed()).json()["data"][0]["id"]
    late = httpx.post(
        url + "/v1/embeddings",
        json={"input": HEAVY},
        headers={**keyed(), "X-Request-Timeout": "0.05"},
        timeout=600,
    )
    assert late.status_code == 504, late.text
    assert late.json()["error"]["type"] == "timeout"
    bad = httpx.post(url + "/embed", json={"inputs": "x"}, headers={**keyed(), "X-Request-Timeout": "soon"})
    assert bad.status_code == 413 and "x-request-timeout must be a number of seconds" in bad.json()["error"]
    ok = httpx.post(
        url + "/v1/embeddings", json={"input": "x"}, headers={**keyed(), "X-Request-Timeout": "120"}
    )
    assert ok.status_code == 200
    pattern = rf'embedsvc_request_seconds_count\{{method="http:/v1/embeddings",model="{re.escape(model)}"\}}'
    assert metric(server, pattern) >= 1
    assert metric(server, r'embedsvc_request_seconds_count\{.*model="http"') == 0


# ------------------------------------------------------------------- item 5


def _start(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "embedsvc", "serve", *args], stdout=log, stderr=subprocess.STDOUT
    )


def test_while_loading_every_data_call_is_unavailable(tmp_path):
    """Text Search/Upsert on an existing index answered FAILED_PRECONDITION ("which this server does
    not serve") while the model loaded; a client retrying across a restart then gave up."""
    data = tmp_path / "data"
    two_models = ["--model", "a=@bundled", "--model", "b=@bundled"]  # a longer loading window
    with (
        ServerProcess("--data-dir", str(data), *two_models, log_path=tmp_path / "first.log") as first,
        grpc.insecure_channel(first.target) as channel,
    ):
        index = ipb_grpc.IndexServiceStub(channel)
        index.CreateIndex(ipb.CreateIndexRequest(name="docs", model="a"), timeout=60)
        index.Upsert(ipb.UpsertRequest(index="docs", items=[ipb.Item(id="1", text="hello")]), timeout=120)
    port = free_port()
    log_path = tmp_path / "second.log"
    with open(log_path, "w") as log:
        proc = _start(["--port", str(port), "--http-port", "0", "--data-dir", str(data), *two_models], log)
        try:
            seen: list[tuple[str, grpc.StatusCode]] = []
            trailers: list[dict[str, str]] = []
            http: list[httpx.Response] = []
            url = None
            deadline = time.monotonic() + 180
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                index = ipb_grpc.IndexServiceStub(channel)
                embed = pb_grpc.EmbeddingServiceStub(channel)
                calls = {
                    "search": lambda: index.Search(ipb.SearchRequest(index="docs", text="hi"), timeout=10),
                    "upsert": lambda: index.Upsert(
                        ipb.UpsertRequest(index="docs", items=[ipb.Item(id="2", text="more")]), timeout=10
                    ),
                    "embed": lambda: embed.Embed(pb.EmbedRequest(inputs=["x"]), timeout=10),
                }
                while time.monotonic() < deadline:
                    if url is None and '"msg": "listening"' in log_path.read_text():
                        line = next(x for x in log_path.read_text().splitlines() if '"msg": "listening"' in x)
                        url = "http://" + line.split('"http": "')[1].split('"')[0]
                    codes = []
                    for name, call in calls.items():
                        try:
                            call()
                            codes.append((name, grpc.StatusCode.OK))
                        except grpc.RpcError as exc:
                            codes.append((name, exc.code()))
                            if exc.code() == grpc.StatusCode.UNAVAILABLE and exc.trailing_metadata():
                                trailers.append(dict(exc.trailing_metadata()))
                    if url is not None:
                        http.append(httpx.post(url + "/v1/embeddings", json={"input": "x"}, timeout=10))
                    seen += codes
                    if all(code == grpc.StatusCode.OK for _, code in codes):
                        break
                    time.sleep(0.05)
            assert all(code == grpc.StatusCode.OK for _, code in seen[-3:]), seen[-6:]
            wrong = {code for _, code in seen} - {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
            assert not wrong, seen  # never FAILED_PRECONDITION
            loading = [name for name, code in seen if code == grpc.StatusCode.UNAVAILABLE]
            assert {"search", "upsert", "embed"} <= set(loading), seen  # the window was seen
            assert trailers and all(int(t["retry-after-ms"]) >= 1 for t in trailers), trailers
            refused = [r for r in http if r.status_code == 503]
            assert refused and all(r.headers["retry-after"] == "1" for r in refused), [
                r.status_code for r in http
            ]
        finally:
            proc.terminate()
            proc.wait(60)


# ------------------------------------------------------------------- item 6


class LimitedServer(ServerProcess):
    """A server whose process may open only ``nofile`` files (sockets included)."""

    def __init__(self, *args: str, log_path, nofile: int) -> None:
        original = subprocess.Popen
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

        def popen(command, **kwargs):
            kwargs["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
            return original(command, **kwargs)

        subprocess.Popen = popen  # type: ignore[misc]
        try:
            super().__init__(*args, log_path=log_path)
        finally:
            subprocess.Popen = original  # type: ignore[misc]


def test_silent_http_sockets_cannot_stop_either_door(tmp_path):
    """More half-sent requests than the server has file descriptors used to stop HTTP and gRPC both."""
    nofile, sockets = 512, 700
    with LimitedServer(
        "--http-port", "0", "--http-idle-timeout", "2", log_path=tmp_path / "s.log", nofile=nofile
    ) as server:  # fmt: skip
        host, port = server.http_url().removeprefix("http://").split(":")
        silent = []
        for _ in range(sockets):
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: appl"
            )  # ... and nothing more
            silent.append(sock)
        try:
            with grpc.insecure_channel(server.target) as channel:  # a new connection, while they wait
                reply = pb_grpc.EmbeddingServiceStub(channel).Embed(pb.EmbedRequest(inputs=["x"]), timeout=60)
            assert len(reply.embeddings) == 1
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(server.http_url() + "/health", timeout=5).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise AssertionError("HTTP did not answer while the silent sockets were open")
            answers = []
            for sock in silent:  # every one was closed by the server: a 503 at once, or the idle timeout
                sock.settimeout(30)
                answers.append(sock.recv(200))
            assert all(a == b"" or a.startswith(b"HTTP/1.1 503") for a in answers)
            assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) >= sockets - nofile // 4
            assert '"max_http_connections": 128' in server.log()
        finally:
            for sock in silent:
                sock.close()

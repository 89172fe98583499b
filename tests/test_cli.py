"""The `embedsvc` command as users run it: real processes against a real server, exit codes, one-line
errors, and outputs checked against the Python client and sentence-transformers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedsvc.client import EmbedClient
from tests.server_utils import ServerProcess, free_port

KEY = "cli-test-key"


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
):
    return subprocess.run(
        [sys.executable, "-m", "embedsvc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def assert_one_line_error(out: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    with ServerProcess(
        "--data-dir", str(folder / "data"), "--api-key", KEY, "--plain-logs", log_path=folder / "server.log"
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def minilm_st(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture
def env(server):
    return {"EMBEDSVC_TARGET": server.target, "EMBEDSVC_API_KEY": KEY}


# ------------------------------------------------------------------ parsing, version, start-up checks
def test_version_and_subcommand_usage():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip().startswith("embedsvc 0.")
    wrong = run_cli("serve", "--prot", "5")
    assert wrong.returncode == 2
    assert "usage: embedsvc serve" in wrong.stderr and "unrecognized arguments: --prot 5" in wrong.stderr
    nested = run_cli("index", "search", "x", "--bogus")
    assert nested.returncode == 2 and "usage: embedsvc index search" in nested.stderr


def test_debug_shows_the_traceback_and_plain_runs_do_not():
    unreachable = ("index", "count", "x", "--target", f"127.0.0.1:{free_port()}", "--timeout", "3")
    plain = run_cli(*unreachable)
    assert_one_line_error(plain, 5, "cannot reach the server")
    for debug in (run_cli("--debug", *unreachable), run_cli(*unreachable, env={"EMBEDSVC_DEBUG": "1"})):
        assert debug.returncode == 5 and "Traceback" in debug.stderr


def test_config_mistakes_fail_before_loading_anything():
    started = time.monotonic()
    out = run_cli("serve", "--port", "0", "--deterministic", "--quantize", "int8", "--plain-logs")
    assert_one_line_error(out, 2, "cannot be combined with deterministic mode")
    assert "listening" not in out.stdout + out.stderr and time.monotonic() - started < 30
    bad_source = run_cli("serve", "--port", "0", "--model", "m=./no/such/folder")
    assert_one_line_error(bad_source, 2, "no such checkpoint folder")


def test_ports_in_use_are_one_line_errors():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        grpc_clash = run_cli("serve", "--port", str(taken))
        assert_one_line_error(grpc_clash, 9, f"127.0.0.1:{taken}", "--port")
        metrics_clash = run_cli("serve", "--port", "0", "--no-http", "--metrics-port", str(taken))
        assert_one_line_error(metrics_clash, 9, "metrics", "--metrics-port")


def test_plain_logs_keep_fields_and_faiss_noise_is_gone(server, env):
    assert run_cli("index", "create", "logcheck", env=env).returncode == 0  # imports faiss in the server
    log = server.log()
    listening = next(line for line in log.splitlines() if " listening " in line)
    assert f"address=127.0.0.1:{server.port}" in listening
    loading = next(line for line in log.splitlines() if " loading model " in line)
    assert "source=bundled" in loading
    assert "ModuleNotFoundError" not in log and "AVX512" not in log


# ------------------------------------------------------------------------------------ models, embed
def test_models(env):
    out = run_cli("models", "--json", env=env)
    assert out.returncode == 0, out.stderr
    (model,) = json.loads(out.stdout)
    assert model["dimension"] == 384 and model["default"] is True
    table = run_cli("models", env=env)
    assert table.stdout.startswith("MODEL") and "(default)" in table.stdout


def test_embed_arguments_stdin_files_and_npy(server, env, tmp_path, minilm_st):
    texts = ["a cat sat on the mat", "vector indexes find neighbours", "the weather is mild"]
    reference = minilm_st.encode(texts, normalize_embeddings=True)

    args = run_cli("embed", *texts, env=env)
    assert args.returncode == 0, args.stderr
    rows = [json.loads(line) for line in args.stdout.splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2] and [r["text"] for r in rows] == texts
    got = np.array([r["embedding"] for r in rows], dtype=np.float32)
    assert np.abs(got - reference).max() < 1e-5
    with EmbedClient(server.target, api_key=KEY) as client:
        assert np.array_equal(got, client.embed(texts))  # 9 significant digits: the same float32 bits

    piped = run_cli("embed", "--input-type", "query", env=env, stdin="\n".join(texts) + "\n\n")
    assert piped.returncode == 0 and len(piped.stdout.splitlines()) == 3
    dash = run_cli("embed", "-", "--dimensions", "8", env=env, stdin=texts[0])
    assert dash.returncode == 0 and len(json.loads(dash.stdout)["embedding"]) == 8

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    from_file = run_cli("embed", "--input", str(corpus), env=env)
    assert [json.loads(line)["id"] for line in from_file.stdout.splitlines()] == ["d0", "d1", "d2"]
    npy = tmp_path / "vectors.npy"
    out = run_cli("embed", "--input", str(corpus), "--output", str(npy), "--encoding", "float16", env=env)
    assert out.returncode == 0, out.stderr
    assert np.abs(np.load(npy) - reference).max() < 2e-3  # float16 on the wire


def test_embed_errors(env, tmp_path):
    wrong_key = run_cli("embed", "hello", env={**env, "EMBEDSVC_API_KEY": "nope"})
    assert_one_line_error(wrong_key, 6, "--api-key")
    no_server = run_cli("embed", "hello", "--target", f"127.0.0.1:{free_port()}", "--timeout", "5", env=env)
    assert_one_line_error(no_server, 5, "cannot reach the server", "--target")
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    partial = tmp_path / "out.jsonl"
    refused = run_cli("embed", "--input", str(bad_json), "--output", str(partial), env=env)
    assert_one_line_error(refused, 2, "record 1", "--text-field")
    assert not partial.exists()  # nothing half-written
    missing = run_cli("embed", "--input", str(tmp_path / "nope.txt"), env=env)
    assert_one_line_error(missing, 4, "nope.txt")
    unknown_model = run_cli("embed", "x", "--model", "nope", env=env)
    assert_one_line_error(unknown_model, 4, "nope")


def test_tls_and_key_flags(tmp_path, tls_files, monkeypatch):
    cert, key = tls_files
    monkeypatch.setenv("EMBEDSVC_API_KEY", "tls-key")  # the server reads the variable the clients read
    with ServerProcess(
        "--tls-cert", str(cert), "--tls-key", str(key), log_path=tmp_path / "tls.log"
    ) as secure:
        target = ("--target", f"localhost:{secure.port}")
        out = run_cli("models", "--json", "--tls-ca", str(cert), *target)
        assert out.returncode == 0, out.stderr
        refused = run_cli("models", "--tls-ca", str(cert), *target, "--api-key", "wrong")
        assert_one_line_error(refused, 6, "--api-key")
        plain = run_cli("models", "--timeout", "5", *target)
        assert plain.returncode == 5, plain.stderr
        corpus = tmp_path / "tls.jsonl"
        corpus.write_text('{"id": "t1", "text": "over TLS"}\n')
        build = run_cli(
            "index",
            "build",
            str(corpus),
            "--index",
            "tls",
            "--tls-ca",
            str(cert),
            *target,
            "--no-progress",
            cwd=tmp_path,
        )
        assert build.returncode == 0, build.stderr
        assert run_cli("index", "count", "tls", "--tls-ca", str(cert), *target).stdout.strip() == "1"


# ------------------------------------------------------------------------------------------- index
def test_index_lifecycle_from_the_shell(env, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = [
        ("k1", "how to rotate an API key", "en", 2021),
        ("k2", "rotating credentials safely", "en", 2023),
        ("k3", "comment changer une clé", "fr", 2022),
        ("k4", "the history of tea", "en", 2019),
    ]
    corpus.write_text(
        "".join(json.dumps({"id": i, "text": t, "lang": lang, "year": y}) + "\n" for i, t, lang, y in docs)
    )
    created = run_cli("index", "create", "docs", "--kind", "hnsw", "--hnsw-m", "16", env=env)
    assert created.returncode == 0, created.stderr
    assert "hnsw_m" in created.stdout and "16" in created.stdout
    stray = run_cli("index", "create", "flatx", "--hnsw-m", "16", env=env)
    assert_one_line_error(stray, 2, "hnsw_m", "flat")

    build = run_cli(
        "index",
        "build",
        str(corpus),
        "--index",
        "docs",
        "--metadata-fields",
        "lang,year",
        "--no-progress",
        env=env,
        cwd=tmp_path,  # remote mode keeps its checkpoint in ./.embedsvc/
    )
    assert build.returncode == 0, build.stderr
    assert run_cli("index", "count", "docs", env=env).stdout.strip() == "4"

    listed = json.loads(run_cli("index", "list", "--json", env=env).stdout)
    assert {"name": "docs", "kind": "hnsw", "count": 4}.items() <= next(
        i for i in listed if i["name"] == "docs"
    ).items()
    flat = run_cli("index", "create", "plain", env=env)
    assert flat.returncode == 0 and "hnsw" not in flat.stdout and "ivf" not in flat.stdout

    hits = run_cli("index", "search", "docs", "rotate my api key", "-k", "2", "--json", env=env)
    assert hits.returncode == 0, hits.stderr
    assert next(h["id"] for h in json.loads(hits.stdout)) == "k1"  # ids taken from the records' "id"
    filtered = run_cli(
        "index",
        "search",
        "docs",
        "keys",
        "--filter",
        '{"year": {"gte": 2022}, "lang": "en"}',
        "--json",
        env=env,
    )
    assert [h["id"] for h in json.loads(filtered.stdout)] == ["k2"]
    table = run_cli("index", "search", "docs", "tea", "-k", "1", env=env)
    assert table.stdout.splitlines()[0].split() == ["#", "SCORE", "ID", "METADATA"] and "k4" in table.stdout
    batch = run_cli("index", "search", "docs", "--input", "-", "-k", "1", env=env, stdin="tea\nclé\n")
    assert [json.loads(line)["hits"][0]["id"] for line in batch.stdout.splitlines()] == ["k4", "k3"]
    bad_filter = run_cli("index", "search", "docs", "x", "--filter", "{year: 1}", env=env)
    assert_one_line_error(bad_filter, 2, "--filter", "JSON")

    got = run_cli("index", "get", "docs", "k3", "nope", "--vectors", env=env)
    assert got.returncode == 4 and "nope" in got.stderr
    (item,) = [json.loads(line) for line in got.stdout.splitlines()]
    assert item["metadata"] == {"lang": "fr", "year": 2022} and len(item["vector"]) == 384

    deleted = run_cli("index", "delete", "docs", "k3", "k4", "missing", env=env)
    assert deleted.returncode == 0 and "deleted 2 of 3" in deleted.stdout and "2 items left" in deleted.stdout
    refused = run_cli("index", "drop", "docs", env=env, stdin="")
    assert_one_line_error(refused, 2, "--yes")
    assert run_cli("index", "drop", "docs", "--yes", env=env).returncode == 0
    gone = run_cli("index", "describe", "docs", env=env)
    assert_one_line_error(gone, 4, "docs")


# ------------------------------------------------------------------------------- pipeline defaults
def test_build_defaults_ids_rejects_and_changed_settings(tmp_path):
    corpus = tmp_path / "mixed.jsonl"
    corpus.write_text(
        json.dumps({"id": "first", "text": "has an id"})
        + "\n"
        + json.dumps({"text": "has none"})
        + "\n"
        + json.dumps({"id": "third"})
        + "\n"
    )
    data = tmp_path / "data"
    command = ("index", "build", str(corpus), "--index", "mixed", "--data-dir", str(data), "--no-progress")
    out = run_cli(*command)
    assert out.returncode == 0, out.stderr
    from embedsvc.index.manager import IndexManager

    manager = IndexManager(data)
    assert sorted(manager.get("mixed").ids()) == ["first", "mixed.jsonl:1"]
    manager.close()
    rejects = data / "pipeline" / "mixed.rejects.jsonl"
    assert json.loads(rejects.read_text())["reason"] == "missing text field 'text'"
    assert not (tmp_path / "mixed.rejects.jsonl").exists()

    changed = run_cli(*command, "--text-field", "body")
    assert_one_line_error(changed, 7, "--text-field text -> body", "--restart")
    restarted = run_cli(*command, "--text-field", "body", "--restart")
    assert restarted.returncode == 0, restarted.stderr

    # a checkpoint written before reader settings were kept (version 1) is continued, with a warning that
    # ids now come from records' "id" fields
    checkpoint = data / "pipeline" / "mixed.checkpoint.json"
    totals = {"documents": 0, "chunks": 0, "tokens": 0, "rejected": 0}
    checkpoint.write_text(json.dumps({"version": 1, "index": "mixed", "files": {}, "totals": totals}))
    old = run_cli(*command)
    assert old.returncode == 0 and "before 0.2" in old.stderr and "--restart" in old.stderr, old.stderr


def test_shell_completion(tmp_path):
    pytest.importorskip("argcomplete")
    answers = tmp_path / "completions.txt"

    def complete(line: str) -> set[str]:
        env = {
            "_ARGCOMPLETE": "1",
            "_ARGCOMPLETE_IFS": "\n",
            "COMP_LINE": line,
            "COMP_POINT": str(len(line)),
            "_ARGCOMPLETE_STDOUT_FILENAME": str(answers),
        }
        assert run_cli(env=env).returncode == 0
        return {word.strip() for word in answers.read_text().splitlines()}

    assert complete("embedsvc index se") == {"search"}
    assert "--quantize" in complete("embedsvc serve --quan")
    assert complete("embedsvc index create x --kind ivf") == {"ivf_flat", "ivf_pq"}

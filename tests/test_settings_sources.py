"""Every server setting comes from one merge: defaults < config file < EMBEDSVC_* environment < flags,
where a flag not given never overrides. The security-relevant settings (API keys, TLS certificate and
key, listening host) are each set in one place alone, against a real `embedsvc serve`, and their
effect is checked over gRPC and HTTP."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import httpx
import pytest

from embedsvc import EmbedClient
from embedsvc.cli.main import main
from embedsvc.client import EmbedServiceError
from embedsvc.config import build_server_config
from embedsvc.errors import InvalidInputError
from tests.server_utils import ServerProcess, free_port

KEY = "s3cret-key"
HOST = "127.0.0.2"  # loopback, but not the default 127.0.0.1: where the server listens shows the setting


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory):
    """A self-signed certificate valid for 127.0.0.1 and 127.0.0.2, and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("tls-sources")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(autouse=True)
def no_inherited_settings(monkeypatch):
    for name in ("EMBEDSVC_API_KEY", "EMBEDSVC_API_KEYS", "EMBEDSVC_HOST", "EMBEDSVC_TLS_CERT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("EMBEDSVC_TLS_KEY", raising=False)


def _code(call) -> grpc.StatusCode | None:
    try:
        call()
    except EmbedServiceError as exc:
        return exc.code
    return None


@pytest.mark.parametrize("source", ["file", "env", "flag"])
def test_keys_tls_and_host_take_effect_from_each_source_alone(source, tmp_path, tls_pair):
    cert, key = tls_pair
    args: list[str] = []
    env: dict[str, str] = {}
    if source == "file":
        config = tmp_path / "server.toml"
        config.write_text(
            f'[server]\nhost = "{HOST}"\napi_keys = ["{KEY}"]\ntls_cert = "{cert}"\ntls_key = "{key}"\n'
        )
        args = ["--config", str(config)]
    elif source == "env":
        env = {
            "EMBEDSVC_HOST": HOST,
            "EMBEDSVC_API_KEY": KEY,
            "EMBEDSVC_TLS_CERT": str(cert),
            "EMBEDSVC_TLS_KEY": str(key),
        }
    else:
        args = ["--host", HOST, "--api-key", KEY, "--tls-cert", str(cert), "--tls-key", str(key)]
    with ServerProcess(*args, env=env, secure=True, log_path=tmp_path / "server.log") as server:
        target = f"{HOST}:{server.port}"
        ca = cert.read_bytes()
        # API key: enforced over gRPC ...
        with EmbedClient(target, api_key=KEY, tls=True, root_certificates=ca, timeout=60) as client:
            assert client.embed(["hello"]).shape == (1, 384)
        for offered in (None, "wrong"):
            with EmbedClient(target, api_key=offered, tls=True, root_certificates=ca, timeout=60) as client:
                assert _code(lambda c=client: c.embed(["hello"])) == grpc.StatusCode.UNAUTHENTICATED
        # ... TLS: a plaintext channel gets no answer; host: nothing listens on 127.0.0.1
        with EmbedClient(target, api_key=KEY, timeout=10) as plain:
            assert _code(lambda: plain.embed(["hello"])) == grpc.StatusCode.UNAVAILABLE
        elsewhere = f"127.0.0.1:{server.port}"
        with EmbedClient(elsewhere, api_key=KEY, tls=True, root_certificates=ca, timeout=10) as other:
            assert _code(lambda: other.embed(["hello"])) == grpc.StatusCode.UNAVAILABLE
        # ... and over HTTP, which is HTTPS with the same certificate, on the same host
        base = server.http_url()
        assert base.startswith(f"https://{HOST}:")
        body = {"input": ["hello"]}
        with httpx.Client(verify=str(cert), timeout=60) as http:
            assert http.post(base + "/v1/embeddings", json=body).status_code == 401
            wrong = {"Authorization": "Bearer wrong"}
            assert http.post(base + "/v1/embeddings", json=body, headers=wrong).status_code == 401
            right = {"Authorization": f"Bearer {KEY}"}
            answer = http.post(base + "/v1/embeddings", json=body, headers=right)
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["data"][0]["embedding"]) == 384
            with pytest.raises(httpx.ConnectError):
                http.get(base.replace(HOST, "127.0.0.1") + "/health")


# ------------------------------------------------------------------ the merge itself (no server)
def test_precedence_defaults_file_env_flags():
    file = {"server": {"host": "10.0.0.1", "port": 6000, "http_port": 6001}}
    assert build_server_config(None, {}, environ={}).host == "127.0.0.1"
    assert build_server_config(file, {}, environ={}).host == "10.0.0.1"
    env = {"EMBEDSVC_HOST": "10.0.0.2", "EMBEDSVC_PORT": "7000", "EMBEDSVC_HTTP": "false"}
    merged = build_server_config(file, {"host": None, "port": None}, environ=env)
    assert (merged.host, merged.port, merged.http, merged.http_port) == ("10.0.0.2", 7000, False, 6001)
    flagged = build_server_config(file, {"host": "10.0.0.3", "port": None}, environ=env)
    assert (flagged.host, flagged.port) == ("10.0.0.3", 7000)


def test_an_unset_flag_never_replaces_the_files_keys():
    file = {"server": {"api_keys": ["from-file"]}}
    assert build_server_config(file, {"api_keys": None}, environ={}).api_keys == ("from-file",)
    assert build_server_config(file, {"api_keys": []}, environ={}).api_keys == ("from-file",)
    both = build_server_config(file, {"api_keys": ["from-flag"]}, environ={"EMBEDSVC_API_KEY": "a, b"})
    assert both.api_keys == ("from-file", "a", "b", "from-flag")


def test_http_is_on_by_default_and_each_source_can_turn_it_off():
    default = build_server_config(None, {}, environ={})
    assert (default.http, default.http_port) == (True, 8080)
    assert not build_server_config({"server": {"http": False}}, {}, environ={}).http
    assert not build_server_config(None, {}, environ={"EMBEDSVC_HTTP": "0"}).http
    assert not build_server_config(None, {"http": False}, environ={}).http
    with pytest.raises(InvalidInputError, match="EMBEDSVC_HTTP='maybe': expected true or false"):
        build_server_config(None, {}, environ={"EMBEDSVC_HTTP": "maybe"})


@pytest.mark.parametrize(
    ("argv", "env", "file_keys", "message"),
    [
        ([], {"EMBEDSVC_API_KEY": ""}, None, "EMBEDSVC_API_KEY holds an empty API key"),
        ([], {"EMBEDSVC_API_KEY": "  "}, None, "EMBEDSVC_API_KEY holds an empty API key"),
        ([], {"EMBEDSVC_API_KEY": ","}, None, "EMBEDSVC_API_KEY holds an empty API key"),
        ([], {"EMBEDSVC_API_KEYS": "k1,,k2"}, None, "EMBEDSVC_API_KEYS holds an empty API key"),
        ([], {}, '[" "]', "an API key is empty"),
        ([], {}, '"s3cret"', "api_keys must be a list of strings"),
        (["--api-key", " "], {}, None, "an API key is empty"),
        (["--api-key", ","], {}, None, "an API key contains a comma"),
        (["--port", "70000"], {}, None, "port must be a port number from 0 to 65535"),
        (["--port", "-1"], {}, None, "port must be a port number from 0 to 65535"),
        (["--http-port", "65536"], {}, None, "http_port must be a port number"),
        ([], {"EMBEDSVC_HOST": ""}, None, "EMBEDSVC_HOST is set but empty"),
    ],
)
def test_bad_settings_from_any_source_are_one_line_usage_errors(
    argv, env, file_keys, message, tmp_path, monkeypatch, capsys
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if file_keys is not None:
        config = tmp_path / "c.toml"
        config.write_text(f"[server]\napi_keys = {file_keys}\n")
        argv = [*argv, "--config", str(config)]
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert "s3cret" not in err[0]  # a key is never echoed


def test_http_port_and_no_http_cannot_both_be_given(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--no-http", "--http-port", str(free_port())])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err

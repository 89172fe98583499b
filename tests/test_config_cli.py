"""Config file merging and the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from embedsvc.cli import parse_model as _parse_model
from embedsvc.config import ModelConfig, build_server_config, load_toml
from embedsvc.errors import InvalidInputError


def test_cli_overrides_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[server]\nport = 6000\napi_keys = ["k"]\n\n[[models]]\nname = "e5"\nsource = "/m/e5"\n'
        'dtype = "bfloat16"\n[models.prompts]\nquery = "q: "\n'
    )
    config = build_server_config(
        load_toml(path), {"port": 7000, "host": None, "model_options": {"device": "cpu"}}
    )
    assert config.port == 7000 and config.api_keys == ("k",)
    (model,) = config.models
    assert model.name == "e5" and model.source == "/m/e5"
    assert model.options == {"dtype": "bfloat16", "prompts": {"query": "q: "}, "device": "cpu"}


def test_model_flag_takes_file_options_by_name(tmp_path):
    data = {"models": [{"name": "e5", "source": "/m/e5", "pooling": "last"}]}
    config = build_server_config(data, {"models": [ModelConfig(name="e5"), ModelConfig(source="/m/other")]})
    assert [m.source for m in config.models] == ["/m/e5", "/m/other"]
    assert config.models[0].options == {"pooling": "last"}


def test_no_models_means_the_bundled_one():
    (model,) = build_server_config(None, {}).models
    assert model.source is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"server": {"prot": 1}}, "unknown \\[server\\] key"),
        ({"servers": {}}, "unknown section"),
        ({"server": {"tls_cert": "a.pem"}}, "TLS needs both"),
        ({"server": {"max_queue_requests": 0}}, "max_queue_requests must be at least 1"),
        ({"models": [{"name": "a"}, {"name": "a"}]}, "model names must be unique"),
    ],
)
def test_bad_config(data, message):
    with pytest.raises(InvalidInputError, match=message):
        build_server_config(data, {})


def test_bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[server\nport=1")
    with pytest.raises(InvalidInputError, match="not valid TOML"):
        load_toml(path)


def test_model_flag_parsing():
    assert _parse_model("/models/bge") == ModelConfig(source="/models/bge")
    assert _parse_model("bge=BAAI/bge-base-en-v1.5") == ModelConfig(
        name="bge", source="BAAI/bge-base-en-v1.5"
    )
    assert _parse_model("mini=@bundled") == ModelConfig(name="mini", source=None)


def test_serve_help_explains_options():
    out = subprocess.run(
        [sys.executable, "-m", "embedsvc", "serve", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for word in (
        "--model",
        "--config",
        "--api-key",
        "--tls-cert",
        "--metrics-port",
        "[[models]]",
        "@bundled",
    ):
        assert word in out.stdout


def test_serve_reports_bad_config_clearly(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nbogus = 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "embedsvc", "serve", "--config", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "unknown [server] key(s) bogus" in out.stderr


def test_serve_refuses_a_gpu_index_device_it_does_not_have(tmp_path):
    faiss = pytest.importorskip("faiss")
    if getattr(faiss, "get_num_gpus", lambda: 0)():
        pytest.skip("this faiss has GPUs")
    out = subprocess.run(
        [sys.executable, "-m", "embedsvc", "serve", "--index-device", "gpu", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "pip install 'embedsvc[index-gpu]'" in out.stderr, out.stderr[-2000:]


def test_preflight_checks_the_whole_config_without_loading(tmp_path):
    from embedsvc.config import ModelConfig, ServerConfig
    from embedsvc.errors import InvalidInputError, StartupError
    from embedsvc.server.preflight import check_before_start

    def config(**kwargs):
        return ServerConfig(**{"port": 0, "models": (ModelConfig(),), **kwargs})

    check_before_start(config(models=(ModelConfig(options={"dtype": "bf16", "pooling": "mean"}),)))
    with pytest.raises(InvalidInputError, match="unknown dtype 'bf17'"):
        check_before_start(config(models=(ModelConfig(name="m", options={"dtype": "bf17"}),)))
    with pytest.raises(InvalidInputError, match="model m: unknown option"):
        check_before_start(config(models=(ModelConfig(name="m", options={"qantize": "int8"}),)))
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="CUDA is not available"):
            check_before_start(config(models=(ModelConfig(options={"device": "cuda"}),)))
    with pytest.raises(InvalidInputError, match="unknown pooling"):
        check_before_start(config(models=(ModelConfig(options={"pooling": "avg"}),)))
    with pytest.raises(StartupError, match="TLS certificate"):
        check_before_start(config(tls_cert=str(tmp_path / "none.pem"), tls_key=str(tmp_path / "none.key")))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StartupError, match="data directory"):
        check_before_start(config(data_dir=str(blocker / "sub")))
    with pytest.raises(StartupError, match="more than one listener"):
        check_before_start(config(port=45123, metrics_port=45123))

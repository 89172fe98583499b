from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests import tiny_models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


STSB_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsb" / "sts-dev.csv"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def e5_mistral_dir(models_dir: Path) -> Path:
    return tiny_models.build_decoder(
        models_dir / "intfloat" / "e5-mistral-7b-instruct", "mistral", e5_st_files=True
    )


@pytest.fixture(scope="session")
def llama_dir(models_dir: Path) -> Path:
    return tiny_models.build_decoder(models_dir / "meta-llama" / "Llama-tiny", "llama", seed=1)


@pytest.fixture(scope="session")
def qwen2_dir(models_dir: Path) -> Path:
    return tiny_models.build_decoder(models_dir / "Qwen" / "Qwen2-tiny", "qwen2", seed=2)


@pytest.fixture(scope="session")
def bge_dir(models_dir: Path) -> Path:
    return tiny_models.build_bert(models_dir / "BAAI" / "bge-base-en-v1.5", st="bge", seed=3)


@pytest.fixture(scope="session")
def bert_dir(models_dir: Path) -> Path:
    """Plain BERT checkpoint without sentence-transformers files."""
    return tiny_models.build_bert(models_dir / "plain" / "bert-tiny", seed=4)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from embedsvc.models.loading import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def minilm():
    from embedsvc import Embedder

    return Embedder.from_pretrained()


@pytest.fixture(scope="session")
def stsb_dev() -> tuple[list[str], list[str], list[float]]:
    if not STSB_DEV.exists():
        pytest.skip(f"STS-B dev data not present at {STSB_DEV}")
    s1, s2, scores = [], [], []
    for line in STSB_DEV.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 7:
            continue
        scores.append(float(parts[4]))
        s1.append(parts[5])
        s2.append(parts[6])
    return s1, s2, scores


@pytest.fixture(scope="session")
def main_server(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path):
    """The bundled model (default) and a tiny decoder on one port, configured from a TOML file."""
    from tests.server_utils import ServerProcess

    folder = tmp_path_factory.mktemp("main-server")
    config = folder / "embedsvc.toml"
    config.write_text(
        "[server]\nmax_inputs_per_request = 300\nbatch_wait_ms = 1\n\n"
        '[[models]]\nname = "minilm"\ndefault = true\n\n'
        f'[[models]]\nname = "llama"\nsource = "{llama_dir}"\nmax_length = 128\n'
    )
    with ServerProcess("--config", str(config), log_path=folder / "server.log") as server:
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for localhost / 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    return folder / "cert.pem", folder / "key.pem"

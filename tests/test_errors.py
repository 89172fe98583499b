"""Every error class has a category, and every category a status on every door (gRPC, HTTP for OpenAI and
TEI, CLI exit code); a real server's refusals reach the client and the CLI as those categories say."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import embedsvc
from embedsvc import errors
from embedsvc.cli import failures
from embedsvc.client import EmbedClient, EmbedServiceError
from embedsvc.errors import Category, EmbedsvcError
from embedsvc.server import errors as grpc_errors
from embedsvc.server.http.plumbing import STATUSES, error_response, status_of
from tests.server_utils import ServerProcess, free_port

C = grpc.StatusCode
PRECONDITION = (400, "failed_precondition")
# the documented contract, per category: gRPC code, (OpenAI status, code), (TEI status, error_type), exit
DOORS: dict[Category, tuple[grpc.StatusCode, tuple[int, str], tuple[int, str], int]] = {
    Category.INVALID: (C.INVALID_ARGUMENT, (400, "invalid_request_error"), (413, "Validation"), 2),
    Category.TOO_LARGE: (C.INVALID_ARGUMENT, (413, "request_too_large"), (413, "Validation"), 2),
    Category.TOO_LONG: (C.INVALID_ARGUMENT, (400, "context_length_exceeded"), (413, "Validation"), 2),
    Category.UNAUTHENTICATED: (C.UNAUTHENTICATED, (401, "invalid_api_key"), (401, "Unauthorized"), 6),
    Category.NOT_FOUND: (C.NOT_FOUND, (404, "model_not_found"), (404, "Validation"), 4),
    Category.ALREADY_EXISTS: (C.ALREADY_EXISTS, (409, "already_exists"), (409, "Validation"), 7),
    Category.FAILED_PRECONDITION: (C.FAILED_PRECONDITION, PRECONDITION, (400, "Validation"), 7),
    Category.OVERLOADED: (C.RESOURCE_EXHAUSTED, (429, "rate_limit_exceeded"), (429, "Overloaded"), 8),
    Category.STORAGE_FULL: (C.RESOURCE_EXHAUSTED, (429, "rate_limit_exceeded"), (429, "Overloaded"), 8),
    Category.UNAVAILABLE: (C.UNAVAILABLE, (503, "service_unavailable"), (503, "Unhealthy"), 5),
    Category.DEADLINE_EXCEEDED: (C.DEADLINE_EXCEEDED, (504, "timeout"), (504, "Backend"), 5),
    Category.DATA_LOSS: (C.DATA_LOSS, (500, "data_loss"), (500, "Backend"), 7),
    Category.CANNOT_LOAD: (C.FAILED_PRECONDITION, PRECONDITION, (400, "Validation"), 9),
    Category.MISSING_EXTRA: (C.FAILED_PRECONDITION, PRECONDITION, (400, "Validation"), 10),
    Category.STOPPED: (C.ABORTED, (409, "aborted"), (409, "Backend"), 3),
    Category.INTERNAL: (C.INTERNAL, (500, "server_error"), (500, "Backend"), 1),
}


def all_error_classes() -> list[type[EmbedsvcError]]:
    """Every subclass of EmbedsvcError anywhere in the package (modules whose extra is absent skipped)."""
    for module in pkgutil.walk_packages(embedsvc.__path__, "embedsvc."):
        if module.name.startswith(("embedsvc.__main__", "embedsvc.v1.")):
            continue
        try:
            importlib.import_module(module.name)
        except ImportError:
            continue
    found: list[type[EmbedsvcError]] = []
    pending = list(EmbedsvcError.__subclasses__())
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending += cls.__subclasses__()
    return found


def instance(cls: type[BaseException]) -> BaseException:
    """An instance whatever its constructor takes: the doors read only its class and attributes."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, "some message")
    return exc


ERROR_CLASSES = [cls for cls in all_error_classes() if cls is not EmbedServiceError]


def test_the_walk_finds_classes_outside_errors_py():
    names = {cls.__name__ for cls in ERROR_CLASSES}
    assert {"DeadlineExceededError", "PipelineStopped", "SettingsChangedError", "DataDirInUseError"} <= names
    assert {name for name, value in vars(errors).items() if isinstance(value, type)} - {
        "Category",
        "EmbedsvcError",
        "annotations",
    } <= names


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_has_a_category_and_a_status_on_every_door(cls):
    assert cls.category is not Category.INTERNAL, f"{cls.__name__} needs a category in embedsvc/errors.py"
    exc = instance(cls)
    code, openai, tei, exit_code = DOORS[cls.category]
    assert grpc_errors.status_for(exc) == code
    assert status_of(exc, tei=False) == openai
    assert status_of(exc, tei=True) == tei
    assert failures.describe(exc)[1] == exit_code
    assert "this is a bug" not in error_response(exc, tei=False, request_id="r").body.decode()


def test_each_door_has_one_row_per_category_and_says_what_the_contract_says():
    assert set(DOORS) == set(Category)
    for category, (code, openai, tei, exit_code) in DOORS.items():
        row = STATUSES[category]
        assert grpc_errors.CODES[category] == code
        assert ((row.status, row.openai), (row.tei_status, row.tei)) == (openai, tei)
        assert failures.EXIT_CODES[category] == exit_code


def test_the_documented_table_is_the_code_s():
    page = (Path(__file__).parent.parent / "docs" / "serving.md").read_text()
    rows = {}
    for line in page.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] in {c.value for c in Category}:
            openai, tei = cells[3].split(), cells[4].split()
            rows[Category(cells[0])] = (
                C[cells[2]],
                (int(openai[0]), openai[1]),
                (int(tei[0]), tei[1]),
                int(cells[5]),
            )
    assert rows == DOORS


def test_foreign_exceptions_keep_their_meaning():
    # a missing extra is an ImportError from a third-party import; anything else unexpected is a bug
    assert grpc_errors.status_for(ImportError("needs faiss")) == C.FAILED_PRECONDITION
    assert failures.describe(ImportError("pip install 'embedsvc[qdrant]'")) == (
        "pip install 'embedsvc[qdrant]'",
        10,
    )
    assert grpc_errors.status_for(KeyError("x")) is None
    assert status_of(KeyError("x"), tei=False) == (500, "server_error")
    assert "this is a bug" in error_response(KeyError("x"), tei=True, request_id="r").body.decode()
    # the CLI's own argument and file checks
    assert failures.describe(FileNotFoundError(2, "gone", "a.txt")) == ("no such file: a.txt", 4)
    assert failures.describe(ValueError("--batch-size must be positive"))[1] == 2
    assert failures.describe(KeyError("x"))[1] == 1


def test_the_client_error_is_in_the_hierarchy_with_the_category_of_its_code():
    for category, (code, _, _, exit_code) in DOORS.items():
        exc = EmbedServiceError(code, "details")
        assert isinstance(exc, EmbedsvcError) and (exc.code, exc.details) == (code, "details")
        # several categories share a code: the client sees the first, and the CLI the same exit code
        # except for the CLI's own categories (cannot load, missing extra, stopped); ABORTED from a
        # server stays a conflict (exit 7) as it always was
        assert grpc_errors.CODES[exc.category] == (C.FAILED_PRECONDITION if code == C.ABORTED else code)
        if category not in (Category.CANNOT_LOAD, Category.MISSING_EXTRA, Category.STOPPED):
            assert failures.describe(exc)[1] == exit_code
    # codes only other servers send keep the exit codes they always had
    assert failures.describe(EmbedServiceError(C.PERMISSION_DENIED, "no"))[1] == 6
    assert failures.describe(EmbedServiceError(C.OUT_OF_RANGE, "no"))[1] == 2
    assert failures.describe(EmbedServiceError(C.ABORTED, "no"))[1] == 7
    assert failures.describe(EmbedServiceError(C.UNIMPLEMENTED, "no"))[1] == 1
    assert EmbedServiceError(C.UNKNOWN, "?").category is Category.INTERNAL


# ------------------------------------------------------------------ a real server, a real client, the CLI
KEY = "errors-test-key"


def run_cli(*args: str, target: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDSVC_TARGET": target}
    env.pop("EMBEDSVC_API_KEY", None)
    if key:
        env["EMBEDSVC_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "embedsvc", *args], capture_output=True, text=True, timeout=300, env=env
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("errors")
    with ServerProcess(
        "--data-dir", str(folder / "data"), "--api-key", KEY, "--no-http", log_path=folder / "server.log"
    ) as proc:
        yield proc


def refusal(call) -> EmbedServiceError:
    with pytest.raises(EmbedServiceError) as caught:
        call()
    return caught.value


def test_a_real_server_s_refusals_reach_the_client_and_the_cli_by_category(server):
    long_text = "word " * 2000
    with EmbedClient(server.target, KEY, timeout=120) as client:
        client.create_index("taken")
        cases = {
            Category.INVALID: lambda: client.embed([long_text], truncation="none"),
            Category.NOT_FOUND: lambda: client.embed(["x"], model="no-such-model"),
            Category.ALREADY_EXISTS: lambda: client.create_index("taken"),
        }
        for category, call in cases.items():
            exc = refusal(call)
            assert exc.category is category, (category, exc)
            assert exc.code == DOORS[category][0]
    with EmbedClient(server.target, "wrong-key", timeout=60) as stranger:
        assert refusal(lambda: stranger.list_models()).category is Category.UNAUTHENTICATED
    with EmbedClient(f"127.0.0.1:{free_port()}", timeout=5, retry=False) as nobody:
        assert refusal(lambda: nobody.list_models()).category is Category.UNAVAILABLE

    cli = {
        Category.INVALID: run_cli("embed", long_text, "--truncation", "none", target=server.target),
        Category.NOT_FOUND: run_cli("index", "describe", "no-such-index", target=server.target),
        Category.ALREADY_EXISTS: run_cli("index", "create", "taken", target=server.target),
        Category.UNAUTHENTICATED: run_cli("models", target=server.target, key="wrong-key"),
        Category.UNAVAILABLE: run_cli("models", "--timeout", "5", target=f"127.0.0.1:{free_port()}"),
    }
    for category, out in cli.items():
        assert out.returncode == DOORS[category][3], (category, out.returncode, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr


def test_a_deadline_passed_in_process_is_exit_5_not_a_bug():
    # before categories the CLI had no row for DeadlineExceededError: exit 1, "internal error"
    message, code = failures.describe(errors.DeadlineExceededError("deadline passed after 2.000s"))
    assert (message, code) == ("deadline passed after 2.000s", 5)


def test_a_missing_extra_is_its_own_class_and_still_an_import_error():
    from embedsvc.stores.base import needs

    with pytest.raises(errors.MissingExtraError) as caught:
        needs("embedsvc_no_such_module", "qdrant")
    assert isinstance(caught.value, ImportError)  # callers catching ImportError still do
    assert failures.describe(caught.value) == (
        "this store needs embedsvc_no_such_module: pip install 'embedsvc[qdrant]'",
        10,
    )
    assert grpc_errors.status_for(caught.value) == C.FAILED_PRECONDITION

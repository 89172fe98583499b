"""Import rules between embedsvc's packages, read from the source with ``ast`` (nothing is imported).

Every import counts: top-level, inside functions (lazy) and under ``TYPE_CHECKING`` (a type is a
dependency too). Each package's ``__init__`` docstring says the same rules in words.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

import embedsvc

ROOT = Path(embedsvc.__file__).parent
GENERATED = "embedsvc.v1"
# third-party transport packages; only the doors and the client speak gRPC
GRPC = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "google.protobuf", GENERATED)
GRPC_ALLOWED = ("embedsvc.server", "embedsvc.client", "embedsvc.wire", "embedsvc.pacing", "embedsvc.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    base = ROOT.parent / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@functools.cache
def imports() -> dict[str, set[str]]:
    """module -> every module it imports (``from embedsvc import wire`` counts as ``embedsvc.wire``)."""
    found: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        if module.startswith(GENERATED):
            continue
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                names.add(base)
                for alias in node.names:
                    if _is_module(f"{base}.{alias.name}"):
                        names.add(f"{base}.{alias.name}")
        found[module] = names
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    # "embedsvc" alone is the root package's __init__ (the lazy Embedder/EmbedClient names), not all of it
    return any(name == p or (p != "embedsvc" and name.startswith(p + ".")) for p in prefixes)


def _unit(name: str) -> str:
    """The package (``embedsvc.engine``) or top-level module (``embedsvc.wire``) a module belongs to."""
    return ".".join(name.split(".")[:2])


def violations(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in imports().items()
        if _within(module, importers)
        for name in names
        if _within(name, forbidden) and not _within(name, importers)
    )


def test_the_walker_sees_lazy_and_type_checking_imports():
    found = imports()
    assert len(found) > 60
    assert "embedsvc.models.loading" in found["embedsvc.engine.embedder"]
    assert "grpc" in found["embedsvc.server.app"]
    assert "embedsvc.wire" in found["embedsvc.client"]  # from embedsvc import pacing, wire
    assert "embedsvc.engine.embedder" in found["embedsvc"]  # lazy, inside __getattr__
    assert "embedsvc.client" in found["embedsvc"]  # under TYPE_CHECKING and lazily
    assert violations(("embedsvc.server",), ("grpc",))  # a rule that matches something does report it


def test_only_the_doors_and_the_client_speak_grpc():
    everyone = tuple(sorted({_unit(m) for m in imports()} - set(GRPC_ALLOWED)))
    assert violations(everyone, GRPC) == []


def test_engine_and_index_take_plain_values():
    doors = (
        "embedsvc.server",
        "embedsvc.cli",
        "embedsvc.client",
        "embedsvc.wire",
        "embedsvc.pipeline",
        *GRPC,
    )
    assert violations(("embedsvc.engine", "embedsvc.index"), doors) == []
    assert violations(("embedsvc.engine",), ("embedsvc.index", "embedsvc.config")) == []


def test_models_never_import_the_engine():
    above = ("embedsvc.engine", "embedsvc.index", "embedsvc.server", "embedsvc.pipeline", "embedsvc.cli")
    assert violations(("embedsvc.models",), (*above, "embedsvc.config", *GRPC)) == []


def test_config_imports_no_subpackage():
    # plain values: anything may read a config without pulling in faiss, torch or grpc
    assert {n for n in imports()["embedsvc.config"] if n.startswith("embedsvc")} <= {"embedsvc.errors"}


def test_kernels_are_reached_through_the_engine_only():
    everyone = tuple(sorted({_unit(m) for m in imports()} - {"embedsvc.engine", "embedsvc.kernels"}))
    assert violations(everyone, ("embedsvc.kernels",)) == []


def test_nothing_below_the_doors_imports_them():
    below = ("embedsvc.pipeline", "embedsvc.stores", "embedsvc.integrations", "embedsvc.index")
    assert violations(below, ("embedsvc.server", "embedsvc.cli")) == []
    assert (
        violations(("embedsvc.integrations",), ("embedsvc.engine", "embedsvc.index", "embedsvc.pipeline"))
        == []
    )
    assert violations(("embedsvc.stores",), ("embedsvc.engine", "embedsvc.pipeline")) == []
    everyone = tuple(sorted({_unit(m) for m in imports()} - {"embedsvc.cli", "embedsvc.__main__"}))
    assert violations(everyone, ("embedsvc.cli",)) == []


def test_no_import_cycles_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    for module, names in imports().items():
        for name in names:
            if name.startswith("embedsvc.") and _unit(name) != _unit(module):
                graph[_unit(module)].add(_unit(name))

    def reach(unit: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph.get(unit, ()))
        while todo:
            after = todo.pop()
            if after not in seen:
                seen.add(after)
                todo.extend(graph.get(after, ()))
        return seen

    reached = {unit: reach(unit) for unit in list(graph)}
    cycles = sorted(
        f"{a} <-> {b}" for a in reached for b in reached[a] if a < b and a in reached.get(b, set())
    )
    assert cycles == []


def test_no_module_imports_another_modules_private_names():
    # a leading underscore means "this module's business": the Ray runner and the CLI use public names
    private = []
    for path in sorted(ROOT.rglob("*.py")):
        if _module_name(path).startswith(GENERATED):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("embedsvc"):
                private += [
                    f"{_module_name(path)} imports {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert private == []


def _message_builds(path: Path) -> list[str]:
    """Calls that build a protobuf message or read an enum of the generated modules in ``path``:
    ``pb.EmbedRequest(...)``, ``ipb.Filter(...)``, ``pb.ENCODING_FLOAT32`` (type annotations aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(GENERATED)
        for alias in node.names
        if alias.name.endswith("_pb2")
    }
    annotations = {
        id(sub)
        for node in ast.walk(tree)
        for part in (
            [node.returns, *(a.annotation for a in node.args.args + node.args.kwonlyargs)]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            else [node.annotation]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if part is not None
        for sub in ast.walk(part)
    }
    return [
        f"{_module_name(path)}:{node.lineno} {node.value.id}.{node.attr}"  # type: ignore[attr-defined]
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and id(node) not in annotations
        and not node.attr.endswith("Servicer")
        and node.attr != "DESCRIPTOR"  # service names for reflection and health
    ]


def test_only_wire_builds_protobuf_messages():
    # servicers, clients and the CLI call wire.py; a message built anywhere else is a second conversion
    found = [
        build
        for path in sorted(ROOT.rglob("*.py"))
        if not _module_name(path).startswith(GENERATED) and _module_name(path) != "embedsvc.wire"
        for build in _message_builds(path)
    ]
    assert found == []


def test_the_message_walker_sees_builds():
    assert any(".EmbedResponse" in b or ".ENCODING_" in b for b in _message_builds(ROOT / "wire.py"))

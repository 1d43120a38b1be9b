"""The layers of the code, checked over every import statement (at module level, inside
functions and under TYPE_CHECKING alike): lower layers never import upper ones, and no
module reaches itself through its imports. The rule is written at the top of each package's
`__init__.py`; this test is what holds the code to it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "channels", "storage", "mailer", "harness", "tests", "bench")

# What each layer may import from the project (itself always included). A module belongs to
# the longest prefix listed.
SERVER = ("server.settings", "server.domain", "server.edge", "server")
ALLOWED: dict[str, set[str]] = {
    "storage": set(),
    "channels": set(),
    "mailer": {"storage", "channels"},
    "server.settings": {"storage", "channels"},
    "server.domain": {"storage", "channels", "mailer", "server.settings"},
    "server.edge": {"storage", "channels", "mailer", "server.settings", "server.domain"},
    "server": {"storage", "channels", "mailer", "server.settings", "server.domain", "server.edge"},
    "harness": set(),
    "tests": {"storage", "channels", "mailer", *SERVER, "harness"},
    "bench": {"storage", "channels", "mailer", *SERVER, "harness"},
}
# Third-party packages a layer must not touch: the domain knows no web framework.
FORBIDDEN_LIBRARIES = {
    "server.domain": {"starlette", "uvicorn", "httptools", "websockets"},
    "channels": {"starlette", "uvicorn", "sqlalchemy"},
    "storage": {"starlette", "uvicorn"},
    "mailer": {"starlette", "uvicorn"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "peers" in path.parts or "migrations" in path.parts:
                continue  # other projects' code; Alembic's scripts load through alembic
            found[_module_name(path)] = path
    return found


SOURCES = _sources()


def _imports(name: str, path: Path) -> set[str]:
    """Every module named by an import in the file, resolved to a module of the project
    where it is one (`from server.edge import ws` names `server.edge.ws`)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.add(candidate if candidate in SOURCES else base)
    return out


GRAPH = {name: _imports(name, path) for name, path in SOURCES.items()}


def _layer(module: str) -> str:
    best = ""
    for layer in ALLOWED:
        if (module == layer or module.startswith(layer + ".")) and len(layer) > len(best):
            best = layer
    return best


def _in_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def test_every_module_belongs_to_a_layer() -> None:
    assert {name: _layer(name) for name in SOURCES if not _layer(name)} == {}


def test_lower_layers_never_import_upper_ones() -> None:
    upward = []
    for name, imported in GRAPH.items():
        layer = _layer(name)
        allowed = ALLOWED[layer] | {layer}
        for target in imported:
            if _in_project(target) and _layer(target) not in allowed:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_layers_keep_off_the_libraries_they_must_not_know() -> None:
    found = []
    for name, imported in GRAPH.items():
        banned = FORBIDDEN_LIBRARIES.get(_layer(name), set())
        found += [f"{name} -> {t}" for t in imported if t.split(".")[0] in banned]
    assert found == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycles() -> None:
    # A module importing its own package's __init__ is no cycle: Python runs the package
    # first, and these __init__ files import none of their modules.
    graph = {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in GRAPH.items()
    }
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    "package", ["channels", "storage", "mailer", "server/domain", "server/edge"]
)
def test_each_package_states_its_layer_rule(package: str) -> None:
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert docstring is not None and "Layer rule:" in docstring


def test_the_server_package_lists_every_layer_in_order() -> None:
    docstring = ast.get_docstring(ast.parse((ROOT / "server" / "__init__.py").read_text()))
    assert docstring is not None
    order = ["storage, channels", "mailer", "server.settings", "server.domain", "server.edge"]
    positions = [docstring.index(name) for name in order]
    assert positions == sorted(positions)
    for package in ("storage", "channels", "mailer", "server.settings", "server.domain"):
        assert ALLOWED[package] <= {"storage", "channels", "mailer", "server.settings"}


def test_the_in_process_backends_never_load_the_redis_client() -> None:
    """Backends are imported lazily: a process on memory:// never imports redis."""
    code = (
        "import sys\n"
        "from channels.backends import create_broker, create_presence\n"
        "import server.app\n"
        "create_broker('memory://'); create_presence('memory://')\n"
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('redis.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout

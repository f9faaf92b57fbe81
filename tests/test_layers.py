"""The package layers hold: who may import whom, no import cycles, light modules stay light.

Imports are read with :mod:`ast` from the source (every ``import`` statement, at module level
or inside a function, except under ``if TYPE_CHECKING:``), so a lazy import that closes a
cycle counts as one. ``docs/architecture.md`` explains the layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("callwire", "callclient", "signaling_server")

TOP_LAYER = ("callclient.apps", "callclient.cli", "callclient.__main__")
"""Programs: they may import every package; no library module imports them."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str) -> str | None:
    """The project module ``name`` refers to (a package's ``__init__`` for a package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """The project modules ``module`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _violations(source: str, forbidden: str) -> list[str]:
    return sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _in(module, source)
        for target in targets
        if _in(target, forbidden)
    )


def test_the_wire_contract_imports_neither_half() -> None:
    """callwire is the bottom layer: it imports no client and no server module."""
    assert _violations("callwire", "callclient") == []
    assert _violations("callwire", "signaling_server") == []


def test_the_server_does_not_import_the_client() -> None:
    """signaling_server imports only callwire of the project."""
    assert _violations("signaling_server", "callclient") == []


def test_the_client_library_imports_neither_server_nor_programs() -> None:
    """Library modules of callclient import no server module and no program."""
    library = [m for m in GRAPH if _in(m, "callclient") and not any(_in(m, t) for t in TOP_LAYER)]
    bad = sorted(
        f"{module} imports {target}"
        for module in library
        for target in GRAPH[module]
        if _in(target, "signaling_server") or any(_in(target, t) for t in TOP_LAYER)
    )
    assert bad == []


def test_the_server_core_is_free_of_io_modules() -> None:
    """The call state machine imports no store, websocket, HTTP or webhook module."""
    io_modules = ("signaling_server.store", "signaling_server.server", "signaling_server.janus",
                  "signaling_server.http_api", "signaling_server.webhooks")
    bad = sorted(t for t in GRAPH["signaling_server.core"] if t in io_modules)
    assert bad == []


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in GRAPH:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(GRAPH[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(GRAPH[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _package_of(module: str) -> str:
    """A module's package (``callclient.media.mixer`` -> ``callclient.media``)."""
    if MODULES[module].name == "__init__.py":
        return module
    return module.rpartition(".")[0] or module


def test_no_import_cycle_between_modules() -> None:
    """No module imports itself through others (a package's __init__ re-exporting is allowed
    to import its own submodules, which never import it back)."""
    assert _cycles() == []


def test_no_import_cycle_between_packages() -> None:
    """Sub-packages form a directed acyclic graph too (callclient.media never imports back)."""
    edges: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        source = _package_of(module)
        for target in targets:
            destination = _package_of(target)
            # A package importing its own parent's __init__ (callclient.media -> callclient)
            # is how re-exports resolve; only sibling/child edges can close a cycle.
            if destination != source and not _in(source, destination):
                edges.setdefault(source, set()).add(destination)
    seen: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        seen[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if seen.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in seen and (cycle := visit(nxt, [*path, node])):
                return cycle
        seen[node] = 2
        return None

    for node in sorted(edges):
        if node not in seen:
            assert visit(node, []) is None


@pytest.mark.parametrize(
    ("module", "heavy"),
    [
        ("callclient.media.levels", ("aiortc", "cv2", "av", "sounddevice")),
        ("callclient.media.quality", ("aiortc", "cv2", "av", "sounddevice")),
        ("callwire.protocol", ("aiortc", "cv2", "av", "numpy", "websockets")),
        ("signaling_server.core", ("aiortc", "cv2", "av", "numpy", "sqlite3", "aiohttp")),
    ],
)
def test_light_modules_do_not_import_heavy_libraries(module: str, heavy: tuple[str, ...]) -> None:
    """Importing a pure module loads none of the media or I/O libraries."""
    code = (
        f"import sys, {module}\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=True)
    assert result.stdout.strip() == ""

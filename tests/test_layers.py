"""The package's layering, checked from the source (stdlib ``ast``, nothing imported).

The layers, bottom to top (docs/architecture.md, "Layers"); a module may import modules of
its own layer or of a lower one, never of a higher one:

0. ``leaf``: ``nuraft_mesg.errors``, the error types every layer raises.
1. ``raft``: ``nuraft_mesg.raft.*``, the sans-IO core (with its ``params`` and ``types``).  It
   imports nothing of the package outside ``raft/`` but the leaf, and no I/O or clock module
   of the standard library (no trio, sockets, time, threads, sqlite).
2. ``storage``: ``nuraft_mesg.storage.*``, log stores and state managers.
3. ``transport``: ``nuraft_mesg.transport.*``, the codec, the peers' batching and the gRPC
   transport (whatever its sub-package looks like).
4. ``runtime``: every other module of the library: the manager, the groups and the modules
   split from them, the data service, sessions, the external client, discovery, the
   application helpers, metrics, timers, the status collection (``admin``) and the package's
   ``__init__``.
5. ``testing``: ``nuraft_mesg.testing.*``, the public test harness.
6. ``cli``: ``nuraft_mesg.cli.*`` and ``nuraft_mesg.__main__``, the programs.

Layers are named by module-name prefix (the longest prefix wins; ``nuraft_mesg`` itself is the
runtime's), so a module added under ``nuraft_mesg/transport/`` is transport, one added at the
top level is runtime, without editing this test.

And no import cycle between modules of the package.  Every import counts: at module level,
under ``if TYPE_CHECKING:`` (a type-only import still means each module needs the other to be
understood) and inside functions (a deferred import hides a cycle from Python's import
machinery but not from a reader: the two modules still depend on each other).  An import of a
submodule does not count as an import of its parent package's ``__init__`` (Python runs it,
but every module would then depend on ``nuraft_mesg/__init__.py``, which re-exports the
runtime).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nuraft_mesg"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaf", ("nuraft_mesg.errors",)),
    ("raft", ("nuraft_mesg.raft",)),
    ("storage", ("nuraft_mesg.storage",)),
    ("transport", ("nuraft_mesg.transport",)),
    ("runtime", ("nuraft_mesg",)),
    ("testing", ("nuraft_mesg.testing",)),
    ("cli", ("nuraft_mesg.cli", "nuraft_mesg.__main__")),
)
"""Bottom to top: (layer, module-name prefixes)."""

RAFT_MAY_IMPORT = ("nuraft_mesg.raft", "nuraft_mesg.errors")
RAFT_FORBIDDEN = frozenset({
    "trio", "socket", "time", "asyncio", "threading", "selectors", "ssl", "sqlite3",
    "subprocess", "purerpc",
})
"""Standard-library and third-party modules that would give the core I/O or a clock."""

def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of the layer whose longest prefix matches ``module``."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if _matches(module, prefix) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{module} is in no layer"
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    """Every module of the package except the generated protobuf code."""
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))
            if "_proto" not in p.relative_to(PACKAGE).parts}


def imported_names(source: str, module: str, *, is_package: bool) -> Iterator[str]:
    """Every module name ``source`` imports, wherever the import statement is (module level,
    ``if TYPE_CHECKING:``, functions); ``from m import x`` yields ``m`` and ``m.x`` (``x``
    may be a submodule: the caller keeps the names that are modules)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target
            for alias in node.names:
                yield f"{target}.{alias.name}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (external imports dropped)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = imported_names(path.read_text(), name, is_package=path.name == "__init__.py")
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def external_imports(module: str) -> set[str]:
    """The top-level names of what ``module`` imports from outside the package."""
    path = _modules()[module]
    found = imported_names(path.read_text(), module, is_package=path.name == "__init__.py")
    return {m.split(".")[0] for m in found if m and not _matches(m, "nuraft_mesg")}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# ==============================================================================================
# The checker itself
# ==============================================================================================
def test_every_kind_of_import_is_seen() -> None:
    source = (
        "from __future__ import annotations\n"
        "import nuraft_mesg.raft.types\n"
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from ..errors import RaftError\n"
        "if TYPE_CHECKING:\n"
        "    from nuraft_mesg.manager import Manager\n"
        "def f() -> None:\n"
        "    from nuraft_mesg.cli.demo import main\n"
    )
    found = set(imported_names(source, "nuraft_mesg.transport.x", is_package=False))
    assert {"nuraft_mesg.raft.types", "nuraft_mesg.transport.sibling", "nuraft_mesg.errors",
            "nuraft_mesg.manager", "nuraft_mesg.cli.demo"} <= found


def test_cycle_finder() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]


def test_layers_by_prefix() -> None:
    names = [name for name, _ in LAYERS]
    assert names[layer_of("nuraft_mesg.errors")] == "leaf"
    assert names[layer_of("nuraft_mesg.raft.node")] == "raft"
    assert names[layer_of("nuraft_mesg.transport.grpc.server")] == "transport"
    assert names[layer_of("nuraft_mesg.some_new_runtime_module")] == "runtime"
    assert names[layer_of("nuraft_mesg")] == "runtime"
    assert names[layer_of("nuraft_mesg.testing.cluster")] == "testing"
    assert names[layer_of("nuraft_mesg.cli.main")] == "cli"
    assert names[layer_of("nuraft_mesg.__main__")] == "cli"


def test_the_graph_is_not_empty() -> None:
    """The walk reads the real tree (a wrong root would pass every check vacuously)."""
    graph = import_graph()
    assert len(graph) > 40
    assert "nuraft_mesg.raft.types" in graph["nuraft_mesg.raft.node"]
    assert "nuraft_mesg.cli.remote" in graph["nuraft_mesg.cli.main"]  # a function-level one


# ==============================================================================================
# The package
# ==============================================================================================
def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_no_import_goes_up_a_layer() -> None:
    names = [name for name, _ in LAYERS]
    wrong = [
        f"{module} ({names[layer_of(module)]}) imports {dep} ({names[layer_of(dep)]})"
        for module, deps in sorted(import_graph().items())
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(module)
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(m for m in _modules() if _matches(m, "nuraft_mesg.raft")))
def test_raft_core_is_sans_io(module: str) -> None:
    graph = import_graph()
    outside = sorted(d for d in graph[module]
                     if not any(_matches(d, p) for p in RAFT_MAY_IMPORT))
    assert not outside, f"{module} imports {outside}"
    io = sorted(external_imports(module) & RAFT_FORBIDDEN)
    assert not io, f"{module} imports {io}"

"""The layer rule of CONTRIBUTING.md, checked on the source: who may import whom.

    plugin            may import anything (the only place that imports pytest)
    tls, faults       may import servers (public names) and _runtime
    servers, detect   may import _runtime only
    _runtime          imports the standard library only
    hookspecs         imports nothing of the package at run time

No module imports a private module (``_name``) or a private name of another package, and the
import graph has no cycle. Inside a package, a module may import its package's private
modules, but uses no private name (``_name``) of a sibling module, imported or reached as an
attribute (``locks._waits``): what siblings share is public in the module that defines it.
Imports under ``if TYPE_CHECKING:`` are for the type checker only and do not count; imports
inside functions do.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "pytest_netthreads"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# What each layer may import, besides itself (a layer is the first name below the package).
ALLOWED: dict[str, set[str]] = {
    "_runtime": set(),
    "servers": {"_runtime"},
    "detect": {"_runtime"},
    "faults": {"_runtime", "servers"},
    "tls": {"_runtime", "servers"},
    "hookspecs": set(),
    "_version": set(),
    "handlers": {"servers"},  # a re-export shim
    "__init__": {"_version", "servers", "faults", "detect", "handlers", "tls", "_runtime"},
    "plugin": {"*"},
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted
    names: tuple[str, ...]  # names imported from it (``from x import a, b``)
    line: int
    lazy: bool  # inside a function


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(name: str) -> bool:
    return (ROOT.parent / name.replace(".", "/") / "__init__.py").exists()


def is_module(name: str) -> bool:
    return is_package(name) or (ROOT.parent / (name.replace(".", "/") + ".py")).exists()


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def resolve(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from ... import`` reads from (relative to ``package``)."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, source: str | None = None) -> Iterator[Import]:
    """The imports in ``path``, read as module ``source`` (by default: where it lies)."""
    source = source or module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))

    def visit(node: ast.AST, lazy: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                yield from (i for c in child.orelse for i in visit_one(c, lazy))
                continue
            yield from visit_one(child, lazy)

    def visit_one(node: ast.AST, lazy: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(source, alias.name, (), node.lineno, lazy)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(node, package)
            names = tuple(a.name for a in node.names)
            yield Import(source, target, names, node.lineno, lazy)
            for name in names:  # ``from . import values``: the submodule is imported
                if is_module(f"{target}.{name}"):
                    yield Import(source, f"{target}.{name}", (), node.lineno, lazy)
        else:
            inner = lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            yield from visit(node, inner)

    yield from visit(tree, False)


def all_imports() -> list[Import]:
    return [i for path in sorted(ROOT.rglob("*.py")) for i in imports_of(path)]


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def package_of(module: str) -> str:
    return module if is_package(module) else module.rpartition(".")[0]


def own(imports: list[Import]) -> list[Import]:
    return [i for i in imports if i.target == PACKAGE or i.target.startswith(PACKAGE + ".")]


def test_each_layer_imports_only_what_is_below_it() -> None:
    bad = []
    for imp in own(all_imports()):
        src, dst = layer(imp.source), layer(imp.target)
        allowed = ALLOWED.get(src)
        assert allowed is not None, f"{imp.source}: a new top-level module needs a layer here"
        if dst != src and "*" not in allowed and dst not in allowed:
            bad.append(f"{imp.source}:{imp.line} imports {imp.target} ({src} -> {dst})")
    assert bad == []


def test_only_the_plugin_imports_pytest() -> None:
    bad = [
        f"{i.source}:{i.line}"
        for i in all_imports()
        if i.target.split(".")[0] in ("pytest", "_pytest") and layer(i.source) != "plugin"
    ]
    assert bad == []


def test_no_private_module_or_name_of_another_package_is_imported() -> None:
    bad = []
    for imp in own(all_imports()):
        if package_of(imp.target) == package_of(imp.source):
            continue  # inside one package, modules share what they like
        module_parts = imp.target.split(".")[1:]
        private = [p for p in module_parts if p.startswith("_") and p != "_runtime"]
        names = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private or names:
            bad.append(f"{imp.source}:{imp.line} imports {imp.target} {names or ''}".rstrip())
    assert bad == []


def private_uses(path: Path, source: str | None = None) -> Iterator[str]:
    """``module._name`` uses of the package's own modules in ``path``: imported by name
    (``from .locks import _allocate``) or reached as an attribute (``locks._waits``)."""
    source = source or module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    modules: dict[str, str] = {}  # a local name -> the package's module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = resolve(node, package)
            if not target.startswith(PACKAGE):
                continue
            for alias in node.names:
                name = alias.name
                if is_module(f"{target}.{name}"):
                    modules[alias.asname or name] = f"{target}.{name}"
                elif name.startswith("_") and not name.startswith("__") and target != source:
                    yield f"{source}:{node.lineno} imports {target}.{name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name.startswith(PACKAGE + "."):
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not is_module(f"{modules[node.value.id]}.{node.attr}")
        ):
            yield f"{source}:{node.lineno} uses {modules[node.value.id]}.{node.attr}"


def test_no_module_uses_a_private_name_of_another_module() -> None:
    bad = [use for path in sorted(ROOT.rglob("*.py")) for use in private_uses(path)]
    assert bad == []


def test_the_import_graph_has_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for imp in own(all_imports()):
        if imp.target != imp.source:
            graph.setdefault(imp.source, set()).add(imp.target)
    # A package imports its own modules through __init__ (re-exports): edges from a module
    # to the package that contains it are what makes such a cycle, and only those are the
    # package's own business; any other cycle is a real one.
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + ".") or nxt == PACKAGE:
                continue  # a module importing a name its own package re-exports
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert cycles == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("from ..servers import _hidden\n", [("servers", ("_hidden",))]),
        ("from ..detect.locks import _allocate\n", [("detect.locks", ("_allocate",))]),
        ("from .._runtime import reactor\n",
         [("_runtime", ("reactor",)), ("_runtime.reactor", ())]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..plugin import x\n", []),
        ("def f():\n    from ..plugin import x\n", [("plugin", ("x",))]),
    ],
)
def test_the_checker_sees_what_it_should(
    tmp_path: Path, code: str, expected: list[tuple[str, tuple[str, ...]]]
) -> None:
    """The walker itself: relative imports, submodules, TYPE_CHECKING and lazy imports."""
    probe = tmp_path / "probe.py"
    probe.write_text("from __future__ import annotations\n" + code)
    imports = imports_of(probe, f"{PACKAGE}.faults.probe")
    found = [(i.target.removeprefix(PACKAGE + "."), i.names) for i in own(list(imports))]
    assert found == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("from .locks import _allocate\n", ["imports pytest_netthreads.detect.locks._allocate"]),
        ("from . import locks\nx = locks._waits\n", ["uses pytest_netthreads.detect.locks._waits"]),
        ("from .. import _runtime as rt\nx = rt.stacks\n", []),  # a private package, used
        ("from .._runtime import reactor\nx = reactor._reactor\n",
         ["uses pytest_netthreads._runtime.reactor._reactor"]),
        ("from .locks import raw_lock\nfrom . import locks\nx = locks.raw_lock\n", []),
        ("class A:\n    def f(self):\n        return self._x\n", []),  # not a module
    ],
)
def test_the_private_name_check_sees_what_it_should(
    tmp_path: Path, code: str, expected: list[str]
) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from __future__ import annotations\n" + code)
    found = [use.split(" ", 1)[1] for use in private_uses(probe, f"{PACKAGE}.detect.probe")]
    assert found == expected

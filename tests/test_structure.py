"""The package's shape, read from its source (nothing is imported): which module imports which.

* The torchcells package has no import cycle among its modules' top-level imports.
* Inside ``anatomy/`` there is no cycle even counting the imports made inside functions: the
  records hold data, the renderers read them, and only ``Anatomy``'s one-line conveniences reach
  the renderers (lazily).
* No module in ``anatomy/`` imports ``torchcells.engine``: explaining a model reads it, it does not run
  the time loops itself.
* The layers of docs/architecture.md point one way: ``engine/`` never imports the zoo (``cells/``: a
  cell declares what the engine may use), ``graph/`` imports neither the engine nor anatomy, and
  nothing imports the command line (``cli``, ``cli_spec``).
* No function in the package is over 90 lines (in anatomy, none over 60).

An import ``from .x import y`` is an edge to ``x`` (or to ``x.y`` where that is a module); imports
under ``if TYPE_CHECKING:`` are for annotations only and are not edges. A package's ``__init__`` is
not counted as imported by its submodules (Python runs it first, but a submodule that does not
name it does not depend on it).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "torchcells"


def modules() -> dict[str, Path]:
    """Dotted name → file, for every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, *, lazy: bool = False, annotations: bool = False) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree`` at module level; with ``lazy`` also those inside functions,
    with ``annotations`` also those under ``if TYPE_CHECKING:``."""
    def walk(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for branch in (child.body, child.orelse) if annotations else (child.orelse,):
                    for statement in branch:
                        yield from walk(ast.Module(body=[statement], type_ignores=[]))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not lazy:
                continue
            else:
                yield from walk(child)
    yield from walk(tree)


def _resolve(name: str, node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """The package's modules that ``node`` (in module ``name``) imports."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:
            base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
                   for alias in node.names]
    out = []
    for target in targets:
        while target and target not in MODULES:  # ``import torchcells.x.y`` of a name inside a module
            target = target.rpartition(".")[0]
        if target:
            out.append(target)
    return out


def import_graph(*, lazy: bool = False, annotations: bool = False, within: str = PACKAGE) -> dict[str, set[str]]:
    """Module → the package's modules it imports (at module level; see :func:`_imports` for the flags)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        if name != within and not name.startswith(within + "."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[name] = {t for node in _imports(tree, lazy=lazy, annotations=annotations)
                       for t in _resolve(name, node, path)
                       if t != name and (t == within or t.startswith(within + "."))}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    """One cycle of ``graph`` as a list of modules (the first repeated at the end), or ``None``."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    stack: list[str] = []

    def visit(n: str) -> Optional[list[str]]:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_graph_reader_sees_imports():
    graph = import_graph(lazy=False)
    assert "torchcells.anatomy.explain" in graph["torchcells.anatomy"]
    assert "torchcells.layers.torch_compat" in graph["torchcells.layers"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


ANATOMY = f"{PACKAGE}.anatomy"


def test_anatomy_has_no_import_cycle_even_through_lazy_imports():
    cycle = find_cycle(import_graph(lazy=True, within=ANATOMY))
    assert cycle is None, "import cycle inside anatomy: " + " → ".join(cycle or [])


def test_anatomy_has_no_import_cycle_even_through_annotations():
    # a renderer names Anatomy in its annotations; the records never name a renderer
    cycle = find_cycle(import_graph(annotations=True, within=ANATOMY))
    assert cycle is None, "import cycle inside anatomy (annotations counted): " + " → ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(ANATOMY)))
def test_anatomy_does_not_import_the_engine(name):
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    engine = [t for node in _imports(tree, lazy=True, annotations=True) for t in _resolve(name, node, MODULES[name])
              if t == f"{PACKAGE}.engine" or t.startswith(f"{PACKAGE}.engine.")]
    assert not engine, f"{name} imports {engine}"


@pytest.mark.parametrize("name", [f"{ANATOMY}.records", f"{ANATOMY}.kinds"])
def test_the_records_are_plain_data(name):
    """The record modules import no torch and no renderer at run time (``Anatomy``'s conveniences
    reach the renderers inside their bodies), and each convenience is one call: an import and a return."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    top = [alias.name if isinstance(node, ast.Import) else (node.module or "")
           for node in _imports(tree) for alias in node.names]
    assert not [m for m in top if m == "torch" or m.startswith(("torch.", "render", ".render"))], top
    assert not [t for node in _imports(tree) for t in _resolve(name, node, MODULES[name])
                if t.startswith(f"{ANATOMY}.render")]
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(fn)):
            body = fn.body[1:] if ast.get_docstring(fn) else fn.body
            assert len(body) == 2 and isinstance(body[-1], ast.Return), f"{name}.{fn.name} does more than delegate"


def test_no_function_in_anatomy_is_long():
    """A reader can hold each function of the anatomy: none is over 60 lines."""
    long = []
    for name, path in MODULES.items():
        if name.startswith(ANATOMY):
            for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.end_lineno is not None \
                        and fn.end_lineno - fn.lineno + 1 > 60:
                    long.append(f"{name}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines")
    assert not long, long


def _module_ref(name: str, ref: str) -> str:
    """``:mod:`.x``` in module ``name`` → the dotted module it names."""
    ref = ref.lstrip("~")
    if not ref.startswith("."):
        return ref
    level = len(ref) - len(ref.lstrip("."))
    base = name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + [ref.lstrip(".")]) if ref.lstrip(".") else ".".join(base)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(ANATOMY)))
def test_anatomy_docstrings_point_to_what_exists(name):
    text = MODULES[name].read_text(encoding="utf-8")
    missing = [ref for ref in re.findall(r":mod:`([~.\w]+)`", text) if _module_ref(name, ref) not in MODULES]
    missing += [f for f in re.findall(r"\b([\w/-]+\.md)\b", text) if not (ROOT.parent / f).exists()]
    assert not missing, f"{name} points to {missing}"


def _imported(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    return {t for node in _imports(tree, lazy=True, annotations=True) for t in _resolve(name, node, MODULES[name])}


def _under(target: str, *packages: str) -> bool:
    return any(target == f"{PACKAGE}.{p}" or target.startswith(f"{PACKAGE}.{p}.") for p in packages)


@pytest.mark.parametrize("name,forbidden", [
    *[(n, ("cells",)) for n in sorted(MODULES) if _under(n, "engine")],
    *[(n, ("engine", "anatomy", "layers", "cells")) for n in sorted(MODULES) if _under(n, "graph")],
    *[(n, ("cli", "cli_spec")) for n in sorted(MODULES) if not _under(n, "cli", "cli_spec", "__main__")],
])
def test_imports_point_down_the_layers(name, forbidden):
    wrong = sorted(t for t in _imported(name) if _under(t, *forbidden))
    assert not wrong, f"{name} imports {wrong}"


def test_no_function_in_the_package_is_over_90_lines():
    long = []
    for name, path in MODULES.items():
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.end_lineno is not None \
                    and fn.end_lineno - fn.lineno + 1 > 90:
                long.append(f"{name}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines")
    assert not long, long

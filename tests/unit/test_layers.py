"""The imports of ``introspect/`` follow the layer map in docs/architecture.md: nothing imports a
layer above its own, there is no import cycle, and every module has a place in the map.

The map is read from the doc's ``layers`` block, so the doc and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "introspect"
DOC = REPO / "docs" / "architecture.md"


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    lazy: bool  # inside a function: runs when called, not when the module is imported


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """Imports of our own modules in one file. ``from a import b`` is an import of ``a.b`` when
    that is a module, else of ``a``; relative imports are resolved against the package."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend(Import(name, a.name, child.lineno, lazy) for a in child.names
                           if a.name.split(".")[0] == "introspect")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "introspect":
                    continue
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    out.append(Import(name, full if full in known else base, child.lineno, lazy))
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return [i for i in out if i.target != name]


def layer_map() -> list[tuple[str, list[str]]]:
    """(layer, patterns) from the ``layers`` block of docs/architecture.md, top layer first."""
    block = re.search(r"^```layers\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert block, f"{DOC} has no ```layers block"
    layers = []
    for line in block.group(1).splitlines():
        if line.strip():
            layer, *patterns = line.split()
            layers.append((layer, patterns))
    return layers


def place(name: str, layers: list[tuple[str, list[str]]]) -> int | None:
    """Index of the layer that places ``name``: an exact name first, else the longest ``pkg.*``."""
    for i, (_, patterns) in enumerate(layers):
        if name in patterns:
            return i
    best: tuple[int, int] | None = None
    for i, (_, patterns) in enumerate(layers):
        for pattern in patterns:
            if pattern.endswith(".*") and name.startswith(pattern[:-1]):
                if best is None or len(pattern) > best[0]:
                    best = (len(pattern), i)
    return None if best is None else best[1]


def graph() -> tuple[dict[str, Path], list[Import]]:
    known = modules()
    return known, [imp for name, path in known.items() for imp in imports_of(name, path, known)]


def test_every_module_is_placed() -> None:
    layers = layer_map()
    unplaced = [name for name in modules() if place(name, layers) is None]
    assert not unplaced, f"not in the layer map of {DOC.name}: {unplaced}"


def test_no_upward_import() -> None:
    layers = layer_map()
    known, imports = graph()
    upward = []
    for imp in imports:
        src, dst = place(imp.source, layers), place(imp.target, layers)
        if src is not None and dst is not None and dst < src:
            upward.append(f"{known[imp.source].relative_to(REPO)}:{imp.line}: {imp.source} "
                          f"({layers[src][0]}) imports {imp.target} ({layers[dst][0]}, above it)")
    assert not upward, "imports up the layer map (move the shared piece down):\n" + "\n".join(upward)


def _registry(imp: Import, known: dict[str, Path]) -> bool:
    """A package's __init__ importing its own submodule inside a function (see the doc)."""
    return (imp.lazy and known[imp.source].name == "__init__.py"
            and imp.target.startswith(imp.source + "."))


def test_no_import_cycle() -> None:
    known, imports = graph()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for imp in imports:
        if imp.target in known and not _registry(imp, known):
            edges[imp.source].add(imp.target)
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_what_it_must() -> None:
    """The checks above pass because the imports are right, not because the parser misses them."""
    known, imports = graph()
    found = {(i.source, i.target, i.lazy) for i in imports}
    # a lazy import inside a function, and a `from package import module` form
    assert ("introspect.target", "introspect.inject.symbols", True) in found
    assert ("introspect.inject.symbols", "introspect.maps", False) in found
    assert ("introspect.commands.ps", "introspect.roles", False) in found
    # the registry exception covers exactly the lazy imports of a package's own submodules
    registry = {(i.source, i.target) for i in imports if _registry(i, known)}
    assert ("introspect.inject", "introspect.inject.ptrace") in registry
    assert ("introspect.commands", "introspect.commands.top") in registry
    assert ("introspect.inject.ptrace", "introspect.inject") not in registry
    layers = layer_map()
    html, text = place("introspect.render.html", layers), place("introspect.render.text", layers)
    symbols, target = place("introspect.inject.symbols", layers), place("introspect.target", layers)
    assert html is not None and text is not None and html < text
    assert symbols is not None and target is not None and symbols > target

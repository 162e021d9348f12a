"""The layers import downward only: no module of libmgsave imports, however indirectly, one that
imports it back, and the bottom floor (``history``) imports nothing of mgsave outside itself.

Read from the source with ``ast``, every import counted: at the top, inside a function (where a
circle is usually dodged) and under ``TYPE_CHECKING``. A circle is named by its edges, each with
the file and line of the import, so that the one to cut is plain to see.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "libmgsave"
BOTTOM_FLOOR = "libmgsave.history"

Edges = dict[str, dict[str, str]]  # module -> imported module -> where ("file:line")


def module_names(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for __init__.py)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _targets(node: ast.AST, module: str, is_package: bool, known: Mapping[str, Path]) -> Iterable[str]:
    """The package's modules an import statement loads (its own code: ``from a.b import c``
    is ``a.b.c`` when that is a module, else ``a.b``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            here = module.split(".") if is_package else module.split(".")[:-1]
            here = here[:len(here) - (node.level - 1)]
            base = ".".join(here + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    for name in names:
        while name and name not in known:  # ``import libmgsave.plan.model.x``: the module it is in
            name = name.rpartition(".")[0]
        if name:
            yield name


def import_edges(package: Path = PACKAGE) -> Edges:
    known = module_names(package)
    edges: Edges = {name: {} for name in known}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, module, path.name == "__init__.py", known):
                    if target != module:
                        where = f"{path.relative_to(package.parent)}:{node.lineno}"
                        edges[module].setdefault(target, where)
    return edges


def circles(edges: Edges) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def described(edges: Edges, group: list[str]) -> str:
    inside = set(group)
    return "\n".join(f"  {source} -> {target} ({where})" for source in group
                     for target, where in sorted(edges[source].items()) if target in inside)


def folders(edges: Edges) -> Edges:
    """The same imports between the package's rooms: a subpackage (``plan``, ``state``) is one
    room, as a reader walks it; imports inside one room are its own business."""
    def room(name: str) -> str:
        return ".".join(name.split(".")[:2])

    collapsed: Edges = {}
    for source, targets in edges.items():
        for target, where in targets.items():
            if room(source) != room(target):
                collapsed.setdefault(room(source), {}).setdefault(room(target), where)
            collapsed.setdefault(room(target), {})
    return collapsed


def test_no_module_imports_one_that_imports_it_back():
    edges = import_edges()
    found = circles(edges)
    assert not found, "import circles:\n" + "\n\n".join(described(edges, group) for group in found)


def test_no_room_imports_one_that_imports_it_back():
    """Between subpackages too: ``plan`` importing ``state`` while a file of ``state`` imports
    ``plan`` is a circle of the layers, whichever files carry it."""
    edges = folders(import_edges())
    found = circles(edges)
    assert not found, "import circles between rooms:\n" + "\n\n".join(described(edges, group) for group in found)


def test_the_bottom_floor_imports_nothing_of_mgsave():
    """``history`` and its modules import each other only."""
    edges = import_edges()
    floor = [module for module in edges if module == BOTTOM_FLOOR or module.startswith(BOTTOM_FLOOR + ".")]
    assert len(floor) > 1, floor
    outside = {module: {target: where for target, where in edges[module].items()
                        if target != BOTTOM_FLOOR and not target.startswith(BOTTOM_FLOOR + ".")}
               for module in floor}
    assert not any(outside.values()), f"{BOTTOM_FLOOR} imports {outside}"


def test_the_walk_sees_imports_inside_functions_and_names_the_edge(tmp_path):
    """The test itself bites: a circle closed by an import inside a function is found, and
    named by the file and line of each import in it."""
    package = tmp_path / "libmgsave"
    (package / "plan").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plan" / "__init__.py").write_text("from libmgsave.plan.model import Action\n")
    (package / "plan" / "model.py").write_text("import enum\nfrom libmgsave import outcomes\n")
    (package / "outcomes.py").write_text("def step():\n    from .plan import Action\n    return Action\n")
    edges = import_edges(package)
    assert circles(edges) == [["libmgsave.outcomes", "libmgsave.plan", "libmgsave.plan.model"]]
    assert described(edges, circles(edges)[0]).splitlines() == [
        "  libmgsave.outcomes -> libmgsave.plan (libmgsave/outcomes.py:2)",
        "  libmgsave.plan -> libmgsave.plan.model (libmgsave/plan/__init__.py:1)",
        "  libmgsave.plan.model -> libmgsave.outcomes (libmgsave/plan/model.py:2)",
    ]

"""The floor plan, checked on the source: every import (at module level or inside a function,
type-only ones included) points to the same layer or a lower one, peers of one layer do not
import each other, and no modules import each other in a circle.

Layers, lowest first: the core (``conscience/``), ``engine``, ``server`` and ``trainer``,
``evals`` and ``testing``, ``bench``, ``cli``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> (installed package, rank); the core is everything under conscience/.
LAYERS = {
    "conscience": ("conscience", 0),
    "engine": ("conscience.engine", 1),
    "server": ("conscience.server", 2),
    "trainer": ("conscience.trainer", 2),
    "evals": ("conscience.evals", 3),
    "testing": ("conscience.testing", 3),  # test support: the scripted engine, random models
    "bench": ("conscience.bench", 4),
    "cli": ("conscience.cli", 5),
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, (package, _) in LAYERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _layer(module: str) -> tuple[str, int]:
    """The layer a module of the project belongs to: its package and rank."""
    best = ("conscience", 0)
    for package, rank in LAYERS.values():
        if (module == package or module.startswith(package + ".")) and len(package) > len(best[0]):
            best = (package, rank)
    return best


def _imports(module: str, path: Path) -> set[str]:
    """The project's modules that ``module`` imports, resolved to modules that exist."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name in MODULES and name != module}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_the_walk_sees_the_whole_project() -> None:
    # A walk that found nothing would pass everything below.
    assert len(MODULES) > 60
    assert "conscience.server.app" in GRAPH["conscience.cli.commands"]
    assert "conscience.engine.connect" in GRAPH["conscience.server.app"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_reaches_up_or_across(module: str) -> None:
    package, rank = _layer(module)
    wrong = []
    for target in sorted(GRAPH[module]):
        target_package, target_rank = _layer(target)
        if target_rank > rank or (target_rank == rank and target_package != package):
            wrong.append(target)
    assert not wrong, f"{module} ({package}) imports a layer above or beside it: {wrong}"


def test_no_circles() -> None:
    # Tarjan's strongly connected components; a component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not circles, f"modules that import each other: {circles}"

"""The package layout as its imports draw it: rooms (top-level packages, and the sub-packages of
``pretrain``) form layers with no circle, and no module imports one that imports it back.

Every import counts, the lazy ones inside functions too: a lazy import hides a circle from the
interpreter, not from a reader. The graph is read from the source with ``ast`` (nothing is
imported), so the test takes well under a second.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pretrain", "augment", "objectives", "cluster")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    """``pretrain.train.loop`` -> ``pretrain.train``; ``augment.ops`` -> ``augment``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pretrain" and len(parts) > 1 else parts[0]


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from a.b import c`` counts ``a.b.c`` when that
    is a module, else ``a.b``)."""
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.split(".")[0] in PACKAGES:
                    graph[name].add(target)
    for name in modules:
        graph.setdefault(name, set())
    return graph


def room_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    rooms: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        rooms[room_of(source)] |= {room_of(t) for t in targets} - {room_of(source)}
    return rooms


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first search, as the circle it closes (empty: a DAG)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_planted_circle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # pretrain.models.model_registry imports the model card inside a function.
    assert "pretrain.models.card" in graph["pretrain.models.model_registry"]


def test_no_module_imports_one_that_imports_it_back():
    assert find_cycles(import_graph()) == []


def test_rooms_form_layers_without_a_circle():
    assert find_cycles(room_graph(import_graph())) == []


@pytest.mark.parametrize("low, high", [
    ("augment", "pretrain"), ("objectives", "pretrain"), ("augment", "objectives"),
    ("pretrain.trust", "pretrain.config"), ("pretrain.data", "pretrain.config"),
    ("pretrain.models", "pretrain.workflows"), ("pretrain.train", "pretrain.workflows"),
    ("pretrain.probes", "pretrain.models"),
])
def test_lower_rooms_do_not_import_higher_ones(low, high):
    upward = sorted((source, target) for source, targets in import_graph().items()
                    for target in targets
                    if room_of(source).startswith(low) and room_of(target).startswith(high)
                    and not room_of(source).startswith(high))
    assert upward == []

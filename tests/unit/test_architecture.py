"""The house reads top-down: commands -> loops -> Kafka I/O and the registry -> pure core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2] / "workers"
# Modules that may import a command: the entry point and the reference generated from it.
ENTRY_POINTS = {"workers.cli", "workers.reference"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Every workers module and the workers modules it imports (at any depth of its code)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            imported |= {t for t in targets if t in modules and t != "workers"}
        graph[name] = imported - {name}
    return graph


def _on_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Modules that reach themselves through their imports."""

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return seen

    return sorted(node for node in graph if node in reachable(node))


def test_the_import_graph_has_no_cycles() -> None:
    assert _on_cycles(_graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert _on_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c"]


def test_nothing_below_the_commands_imports_them() -> None:
    upward = {
        (name, target)
        for name, targets in _graph().items()
        if not name.startswith("workers.commands") and name not in ENTRY_POINTS
        for target in targets
        if target.startswith("workers.commands") or target in ENTRY_POINTS
    }
    assert upward == set()


def test_core_imports_only_core() -> None:
    outside = {
        (name, target)
        for name, targets in _graph().items()
        if name.startswith("workers.core")
        for target in targets
        if not target.startswith("workers.core")
    }
    assert outside == set()


def test_every_verb_is_one_module_in_commands() -> None:
    from workers.commands import COMMANDS  # noqa: PLC0415

    for verb in COMMANDS:
        assert (ROOT / "commands" / f"{verb}.py").is_file(), verb
    loose = {p.stem for p in ROOT.glob("*.py")}
    assert loose.isdisjoint({"demo", "produce", "report", "training", "benchmark", "run_infer"})

"""Imports run one way, ``workers`` -> ``geojobs`` -> ``analysis``, and form no cycle.

Every module is parsed with :mod:`ast` (nothing is imported), so the test sees imports inside
functions too: an import moved into a function to dodge a cycle is still an edge here.
``geojobs/registry.py`` names the job-type modules by string (``importlib``), which is not an
import statement and so not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

PACKAGES = ("analysis", "geojobs", "workers")
FORBIDDEN = {"analysis": {"geojobs", "workers"}, "geojobs": {"workers"}, "workers": set()}
"""Top-level packages that a package may not import."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every module this one imports (absolute name, line), at any depth of the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, node.lineno))
            # ``from pkg import module`` imports pkg.module when it is one of ours
            found.extend((f"{base}.{alias.name}", node.lineno) for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    """Our module -> the modules of ours it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {target for target, _ in _imports(name, path)
                       if target in modules and target != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_run_one_way(package: str) -> None:
    bad = []
    for name, path in _modules().items():
        if name.split(".")[0] != package:
            continue
        for target, line in _imports(name, path):
            if target.split(".")[0] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, f"{package}/ may not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(bad)


def test_no_import_cycle() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_registry_names_job_types_by_string() -> None:
    """The registry reaches workers only through its string table, and names real modules."""
    from geojobs import registry

    modules = _modules()
    assert all(path in modules for path in registry.JOB_TYPES.values())
    assert not any(t.startswith("workers") for t, _ in _imports(
        "geojobs.registry", ROOT / "geojobs" / "registry.py"))


def test_the_checker_sees_what_it_must() -> None:
    """The parser finds imports inside functions, relative imports and cycles."""
    source = ROOT / "geojobs" / "cli.py"
    assert ("geojobs.db", 11) in _imports("geojobs.cli", source) or any(
        t == "geojobs.db" for t, _ in _imports("geojobs.cli", source))
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []

"""Imports go one way (DESIGN.md, "Rooms and doors"): the package-level import graph of
``gan_suite/`` and ``datamodules/``, read with ``ast`` (imports inside functions and under
``TYPE_CHECKING`` included), has no cycles and respects each package's allowed neighbours."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = (
    "gan_suite.nets",
    "gan_suite.losses",
    "gan_suite.models",
    "gan_suite.callbacks",
    "gan_suite.eval",
    "gan_suite.utils",
    "gan_suite.cli",
    "gan_suite.bench",
    "gan_suite.loggers",
    "datamodules",
)
# What each layer may import of the suite, beyond itself (DESIGN.md: "models and callbacks use
# nets, losses, eval, datamodules; datamodules and eval use utils").
LOWER = {"gan_suite.nets", "gan_suite.losses", "gan_suite.eval", "datamodules", "gan_suite.utils"}
ALLOWED: dict[str, set[str]] = {
    "gan_suite.nets": set(),
    "gan_suite.utils": set(),
    "datamodules": {"gan_suite.utils"},
    "gan_suite.eval": {"gan_suite.nets", "gan_suite.losses", "datamodules", "gan_suite.utils"},
    "gan_suite.models": LOWER,
    "gan_suite.callbacks": LOWER,
}
# (file, imported module) -> why it is tolerated for now. An entry that no longer matches an
# import fails the test too, so the list can only shrink.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "gan_suite.eval.report"
    target: str  # imported module, e.g. "gan_suite.eval.compare"
    names: tuple[str, ...]  # names taken from it ("from X import a, b"); () for "import X"
    where: str  # "gan_suite/eval/report.py:17"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scan(roots: Iterable[str] = ("gan_suite", "datamodules")) -> list[Import]:
    """Every import statement of every module under ``roots``, resolved to module names."""
    files = sorted(p for r in roots for p in (ROOT / r).rglob("*.py"))
    modules = {module_name(p) for p in files}
    found = []
    for path in files:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        where = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.append(Import(name, alias.name, (), f"{where}:{node.lineno}"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    # "from pkg import submodule" imports the submodule itself
                    sub = f"{base}.{alias.name}"
                    target = sub if sub in modules else base
                    found.append(Import(name, target, (alias.name,), f"{where}:{node.lineno}"))
    return found


def unit_of(module: str) -> str | None:
    return next((u for u in UNITS if module == u or module.startswith(u + ".")), None)


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of a directed graph, or None (self-loops ignored)."""
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return scan()


def unit_edges(imports: list[Import]) -> dict[tuple[str, str], list[Import]]:
    edges: dict[tuple[str, str], list[Import]] = {}
    for imp in imports:
        src, dst = unit_of(imp.source), unit_of(imp.target)
        if src and dst and src != dst:
            edges.setdefault((src, dst), []).append(imp)
    return edges


def describe(imps: Iterable[Import]) -> str:
    return "\n".join(f"  {i.where}: {i.source} imports {i.target}" for i in imps)


# ---------------------------------------------------------------------- the scanner itself
def test_scanner_sees_lazy_and_relative_imports(imports):
    edges = unit_edges(imports)
    # a function-level import (evaluator._plan imports datamodules inside the function)
    lazy = [i for i in edges[("gan_suite.eval", "datamodules")] if "evaluator.py" in i.where]
    assert lazy, "imports inside functions are not scanned"
    assert ("datamodules", "gan_suite.utils") in edges
    relative = {(i.source, i.target) for i in imports if i.source == "datamodules.base"}
    assert ("datamodules.base", "datamodules.io") in relative  # "from .io import require_dir"


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "a"], "b": ["c"], "c": []}) is None


# ---------------------------------------------------------------------- the rules
def test_no_cycle_between_packages(imports):
    edges = unit_edges(imports)
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        graph.setdefault(src, set()).add(dst)
    cycle = find_cycle(graph)
    assert cycle is None, (
        "package cycle "
        + " -> ".join(cycle)
        + "\n"
        + describe(i for a, b in zip(cycle, cycle[1:]) for i in edges[(a, b)])
    )


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_package_imports_only_its_allowed_neighbours(imports, unit):
    """nets and utils import nothing of the suite (torch is fine); datamodules only utils;
    eval nothing of models/callbacks/cli; models and callbacks only the lower layers."""
    bad = [
        i
        for (src, dst), imps in unit_edges(imports).items()
        if src == unit and dst not in ALLOWED[unit]
        for i in imps
        if (i.where.split(":")[0], i.target) not in KNOWN_VIOLATIONS
    ]
    # `import gan_suite` alone would bypass the unit mapping
    bad += [i for i in imports if unit_of(i.source) == unit and i.target == "gan_suite"]
    assert not bad, f"{unit} may import only {sorted(ALLOWED[unit])} of the suite:\n" + describe(
        bad
    )


def test_known_violations_are_still_real(imports):
    """Remove an entry of KNOWN_VIOLATIONS once its import is gone."""
    present = {(i.where.split(":")[0], i.target) for i in imports}
    stale = [key for key in KNOWN_VIOLATIONS if key not in present]
    assert not stale, f"fixed, remove from KNOWN_VIOLATIONS: {stale}"


def test_no_private_names_across_packages(imports):
    """A package's ``_private`` names and modules are its internals (DESIGN.md)."""
    bad = [
        i
        for i in imports
        if unit_of(i.source) != unit_of(i.target)
        and unit_of(i.target) is not None
        and (
            any(n.startswith("_") for n in i.names)
            or any(p.startswith("_") and p != "__init__" for p in i.target.split("."))
        )
        and (i.where.split(":")[0], i.target) not in KNOWN_VIOLATIONS
    ]
    assert not bad, "private names imported across packages:\n" + describe(bad)


def test_no_module_cycle_inside_eval(imports):
    graph: dict[str, set[str]] = {}
    for i in imports:
        if unit_of(i.source) == unit_of(i.target) == "gan_suite.eval":
            graph.setdefault(i.source, set()).add(i.target)
    assert "gan_suite.eval.report" in graph  # the scan found eval's internal imports
    cycle = find_cycle(graph)
    assert cycle is None, "module cycle in gan_suite.eval: " + " -> ".join(cycle)

"""Package boundaries, by walking every import statement (top-level and inside functions alike).

`globai` is what both sides share, so it imports neither side; the worker runs on other people's machines with
only `globai`, so it never imports `market`; product code never imports the development helpers in `globai.dev`;
and no module reaches itself through its imports (no import circles).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name `path` imports (relative imports would stay inside the package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offenders(package: str, forbidden: tuple[str, ...], *, exempt: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(exempt):
            continue
        for name in sorted(imported_modules(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{relative} imports {name}")
    return found


def test_the_import_walker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\ndef f():\n    from market.db import engine\n    import worker.cli\n")
    assert imported_modules(source) >= {"os", "market.db", "market.db.engine", "worker.cli"}


def module_graph(packages: tuple[str, ...] = ("globai", "market", "worker")) -> dict[str, set[str]]:
    """Module name -> the project modules it imports."""
    files = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            files[name] = path
    return {name: {m for m in imported_modules(path) if m in files and m != name} for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_circle_finder_finds_a_circle_through_a_function_level_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_no_import_circles() -> None:
    assert circles(module_graph()) == []


@pytest.mark.parametrize(
    ("package", "forbidden", "exempt"),
    [
        ("worker", ("market", "globai.dev"), ()),
        ("globai", ("market", "worker"), ()),
        ("market", ("worker", "globai.dev"), ("market/cli.py", "market/commands/", "market/demo/")),
    ],
)
def test_package_boundaries(package: str, forbidden: tuple[str, ...], exempt: tuple[str, ...]) -> None:
    assert offenders(package, forbidden, exempt=exempt) == []

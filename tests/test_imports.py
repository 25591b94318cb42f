"""Package boundaries, by walking every import statement (top-level and inside functions alike).

`globai` is what both sides share, so it imports neither side; the worker runs on other people's machines with
only `globai`, so it never imports `market`; product code never imports the development helpers in `globai.dev`.
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

"""The names of the families in this package, found without importing any of them (for cheap manifest checks)."""

from __future__ import annotations

import pkgutil
from functools import cache
from pathlib import Path


@cache
def family_names() -> tuple[str, ...]:
    """Every family module of this package, sorted (modules starting with `_` are shared machinery)."""
    here = str(Path(__file__).resolve().parent)
    return tuple(sorted(m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_")))

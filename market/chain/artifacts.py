"""Compiled contract artifacts (ABI + bytecode), package data loaded once per process."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from market.errors import ConfigError

ARTIFACTS_DIR = Path(__file__).with_name("artifacts")


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """The artifact of contract `name`: {"abi": [...], "bytecode": "0x...", ...}."""
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"no compiled artifact for {name} at {path}: run `globai contracts build`")
    return json.loads(path.read_text())

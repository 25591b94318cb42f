"""Compiled contract artifacts (ABI + bytecode), package data loaded once per process.

Built by `globai contracts build` (`globai.chain.build`); the package needs neither node nor solc at runtime.
Test-only contracts live under `artifacts/test/` (name them "test/<Contract>") and are not package data.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from globai.errors import ConfigError

ARTIFACTS_DIR = Path(__file__).with_name("artifacts")
# The contracts a deployment consists of, in deployment order.
DEPLOYED_CONTRACTS: tuple[str, ...] = ("GLBToken", "JobEscrow", "StakingVault")


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """The artifact of contract `name`: {"abi": [...], "bytecode": "0x...", ...}."""
    path = ARTIFACTS_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"no compiled artifact for {name} at {path}: run `globai contracts build`")
    return json.loads(path.read_text())


def abi(name: str) -> list[dict[str, Any]]:
    """The ABI of contract `name`."""
    return list(load_artifact(name)["abi"])


def bytecode(name: str) -> str:
    """The creation bytecode of contract `name`, 0x-prefixed."""
    return str(load_artifact(name)["bytecode"])


@cache
def artifacts_hash(names: tuple[str, ...] = DEPLOYED_CONTRACTS) -> str:
    """sha256 over the ABIs and bytecode of `names`: identifies what a deployment record was deployed from."""
    digest = hashlib.sha256()
    for name in names:
        artifact = load_artifact(name)
        digest.update(name.encode() + b"\0")
        digest.update(json.dumps(artifact["abi"], sort_keys=True, separators=(",", ":")).encode() + b"\0")
        digest.update(artifact["bytecode"].encode() + b"\n")
    return digest.hexdigest()

"""Compile `contracts/` with the official compiler (npm solc, WebAssembly) into package artifacts.

Each artifact (`globai/chain/artifacts/<Name>.json`, test-only contracts under `artifacts/test/`) holds the ABI,
the bytecode and a sha256 over every source file the build read (ours and OpenZeppelin's) plus the compiler
settings. Comparing that hash with the files on disk tells whether the committed artifacts are stale without
running the compiler, which needs node and takes tens of seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from globai.chain.artifacts import ARTIFACTS_DIR
from globai.errors import ConfigError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = REPO_ROOT / "contracts"
DEVNET_DIR = REPO_ROOT / "hardhat-free-devnet"
NODE_MODULES = DEVNET_DIR / "node_modules"
TEST_SUBDIR = "test"

# Part of the source hash: changing them makes the artifacts stale like a source edit does.
# runs=10_000 favours call cost over deployment size: settlement runs for every job, deployment once.
COMPILER_SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 10_000},
    "evmVersion": "cancun",
    "viaIR": True,
}
OUTPUT_SELECTION = {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object", "metadata"]}}


@dataclass(frozen=True)
class BuildResult:
    source_hash: str
    written: list[Path]
    unchanged: list[Path]


def project_sources(contracts_dir: Path = CONTRACTS_DIR) -> dict[str, bytes]:
    """Our Solidity files keyed by source unit name (path relative to `contracts_dir`, '/'-separated)."""
    return {
        path.relative_to(contracts_dir).as_posix(): path.read_bytes() for path in sorted(contracts_dir.rglob("*.sol"))
    }


def source_hash(files: Mapping[str, str], settings: Mapping[str, Any] = COMPILER_SETTINGS) -> str:
    """sha256 over (unit name, sha256 of content) pairs in name order and the canonical settings JSON."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\n")
    digest.update(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _resolve_unit(name: str, contracts_dir: Path, node_modules: Path) -> Path:
    # Our units are relative to contracts/; imports like "@openzeppelin/..." come from node_modules.
    return (node_modules / name) if name.startswith("@") else (contracts_dir / name)


def _run_solcjs(solcjs: Path, standard_input: dict[str, Any], *, base_path: Path, include_path: Path) -> Any:
    """Run solcjs in standard-JSON mode; raise `ConfigError` with the compiler's messages on errors.

    Not through the py-solc-x wrapper (`hardhat-free-devnet/bin/solc`): solcjs calls process.exit() right after
    writing, and node drops everything past the first 64 KiB written to a pipe, which truncates our output.
    Writing to a regular file is synchronous in node, so stdout goes to a temporary file here.
    """
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(
            ["node", str(solcjs), "--standard-json"]
            + ["--base-path", str(base_path), "--include-path", str(include_path)],
            input=json.dumps(standard_input).encode(),
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )
        out.seek(0)
        # solcjs prints an SMT-solver notice starting with ">>>" before the JSON.
        text = "\n".join(line for line in out.read().decode().splitlines() if not line.startswith(">>>"))
    if proc.returncode != 0 or not text.strip():
        raise ConfigError(f"solc failed ({proc.returncode}): {proc.stderr.decode().strip()[:2000]}")
    output = json.loads(text)
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise ConfigError("solc: " + "\n".join(e.get("formattedMessage", str(e)) for e in errors))
    return output


def compile_contracts(
    *,
    contracts_dir: Path = CONTRACTS_DIR,
    node_modules: Path = NODE_MODULES,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Run the compiler over every file of `contracts_dir`; return (solc output, {unit: sha256} it read)."""
    solcjs = node_modules / "solc" / "solc.js"
    if not solcjs.is_file():
        raise ConfigError(f"solc not found under {node_modules}: run `npm ci` in {node_modules.parent}")
    sources = project_sources(contracts_dir)
    if not sources:
        raise ConfigError(f"no .sol files under {contracts_dir}")
    standard_input = {
        "language": "Solidity",
        "sources": {name: {"content": content.decode()} for name, content in sources.items()},
        "settings": {**COMPILER_SETTINGS, "outputSelection": OUTPUT_SELECTION},
    }
    output = _run_solcjs(solcjs, standard_input, base_path=contracts_dir, include_path=node_modules)
    for warning in output.get("errors", []):
        ours = warning.get("sourceLocation", {}).get("file", "") in sources
        # Dependency warnings (e.g. OpenZeppelin's note on transient storage) are known and not ours to fix.
        log.log(logging.WARNING if ours else logging.DEBUG, "solc: %s", warning.get("formattedMessage", "").strip())
    files: dict[str, str] = {}
    for name in output["sources"]:
        path = _resolve_unit(name, contracts_dir, node_modules)
        files[name] = _sha256(sources[name] if name in sources else path.read_bytes())
    return output, files


def build(
    *,
    contracts_dir: Path = CONTRACTS_DIR,
    artifacts_dir: Path = ARTIFACTS_DIR,
    node_modules: Path = NODE_MODULES,
) -> BuildResult:
    """Compile and write one artifact per deployable contract; files whose content is unchanged are not touched."""
    output, files = compile_contracts(contracts_dir=contracts_dir, node_modules=node_modules)
    digest = source_hash(files)
    written: list[Path] = []
    unchanged: list[Path] = []
    expected: set[Path] = set()
    for unit, contracts in sorted(output["contracts"].items()):
        if unit.startswith("@"):
            continue
        for name, compiled in sorted(contracts.items()):
            bytecode = compiled["evm"]["bytecode"]["object"]
            if not bytecode:  # interfaces and abstract contracts
                continue
            metadata = json.loads(compiled["metadata"])
            artifact = {
                "contractName": name,
                "sourceName": unit,
                "abi": compiled["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + compiled["evm"]["deployedBytecode"]["object"],
                "compiler": {"version": metadata["compiler"]["version"], "settings": COMPILER_SETTINGS},
                "sourceHash": digest,
                "sources": files,
            }
            folder = artifacts_dir / TEST_SUBDIR if unit.startswith(TEST_SUBDIR + "/") else artifacts_dir
            path = folder / f"{name}.json"
            expected.add(path)
            text = json.dumps(artifact, indent=2, sort_keys=True) + "\n"
            if path.is_file() and path.read_text() == text:
                unchanged.append(path)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    for old in _artifact_files(artifacts_dir):
        if old not in expected:  # a contract that no longer exists must not linger as package data
            old.unlink()
            written.append(old)
    return BuildResult(digest, written, unchanged)


def _artifact_files(artifacts_dir: Path) -> list[Path]:
    return sorted([*artifacts_dir.glob("*.json"), *(artifacts_dir / TEST_SUBDIR).glob("*.json")])


def stale_reasons(
    *,
    contracts_dir: Path = CONTRACTS_DIR,
    artifacts_dir: Path = ARTIFACTS_DIR,
    node_modules: Path = NODE_MODULES,
) -> list[str]:
    """Why the artifacts do not match the sources on disk (empty when they are fresh). Does not compile."""
    paths = _artifact_files(artifacts_dir)
    if not paths:
        return [f"no artifacts in {artifacts_dir}"]
    reasons: list[str] = []
    ours = project_sources(contracts_dir)
    for path in paths:
        artifact = json.loads(path.read_text())
        recorded: dict[str, str] = artifact.get("sources", {})
        if artifact.get("compiler", {}).get("settings") != COMPILER_SETTINGS:
            reasons.append(f"{path.name}: built with other compiler settings")
        for unit in sorted(set(ours) - set(recorded)):
            reasons.append(f"{path.name}: {unit} was added after the build")
        current: dict[str, str] = {}
        for unit in sorted(recorded):
            if unit in ours:
                current[unit] = _sha256(ours[unit])
                continue
            file = _resolve_unit(unit, contracts_dir, node_modules)
            if not file.is_file():
                reasons.append(f"{path.name}: {unit} no longer exists")
                continue
            current[unit] = _sha256(file.read_bytes())
            if current[unit] != recorded[unit]:
                reasons.append(f"{path.name}: {unit} changed since the build")
        for unit in sorted(set(recorded) & set(ours)):
            if current[unit] != recorded[unit]:
                reasons.append(f"{path.name}: {unit} changed since the build")
        if source_hash(recorded) != artifact.get("sourceHash"):
            reasons.append(f"{path.name}: sourceHash does not match its recorded sources")
    for unit in ours:  # one contract per file, named like the file
        folder = artifacts_dir / TEST_SUBDIR if unit.startswith(TEST_SUBDIR + "/") else artifacts_dir
        if not (folder / f"{Path(unit).stem}.json").is_file():
            reasons.append(f"{unit}: no artifact named {Path(unit).stem}.json")
    return reasons


def is_stale(**kwargs: Any) -> bool:
    """True when `stale_reasons` finds anything."""
    return bool(stale_reasons(**kwargs))

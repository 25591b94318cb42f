"""Committed artifacts are fresh against the sources; deployment records, ids and roles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from eth_utils import keccak

from globai.chain import build
from globai.chain.artifacts import ARTIFACTS_DIR, DEPLOYED_CONTRACTS, artifacts_hash, load_artifact
from globai.chain.deploy import DeployConfig, Deployment, role_id
from globai.chain.ids import job_id_bytes, job_key_bytes
from globai.errors import ConfigError

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (build.NODE_MODULES / "solc").is_dir(), reason="node or npm solc missing"
)


def test_artifacts_are_not_stale() -> None:
    """Cheap: the source hash stored in every artifact equals the hash of today's sources (no compiler)."""
    assert build.stale_reasons() == [], "run `globai contracts build` and commit globai/chain/artifacts"


def test_staleness_is_detected(tmp_path: Path) -> None:
    contracts = tmp_path / "contracts"
    shutil.copytree(build.CONTRACTS_DIR, contracts)
    artifacts = tmp_path / "artifacts"
    shutil.copytree(ARTIFACTS_DIR, artifacts)
    assert build.stale_reasons(contracts_dir=contracts, artifacts_dir=artifacts) == []

    source = contracts / "JobEscrow.sol"
    source.write_text(source.read_text() + "\n// edited\n")
    assert any(
        "JobEscrow.sol changed" in r for r in build.stale_reasons(contracts_dir=contracts, artifacts_dir=artifacts)
    )

    source.write_text((build.CONTRACTS_DIR / "JobEscrow.sol").read_text())
    (contracts / "Extra.sol").write_text("// SPDX-License-Identifier: MIT\npragma solidity ^0.8.24;\n")
    reasons = build.stale_reasons(contracts_dir=contracts, artifacts_dir=artifacts)
    assert any("Extra.sol was added" in r for r in reasons)
    assert any("no artifact named Extra.json" in r for r in reasons)


@needs_node
def test_compiling_again_gives_the_committed_bytecode() -> None:
    """Slower (one solc run, ~10-30 s): the artifacts really are what today's sources compile to."""
    output, files = build.compile_contracts()
    assert build.source_hash(files) == load_artifact("JobEscrow")["sourceHash"]
    for name in DEPLOYED_CONTRACTS:
        compiled = output["contracts"][f"{name}.sol"][name]
        assert "0x" + compiled["evm"]["bytecode"]["object"] == load_artifact(name)["bytecode"], name
        assert compiled["abi"] == load_artifact(name)["abi"], name


def test_job_key_is_keccak_of_the_uuid_string_and_the_id_binds_the_requester() -> None:
    uuid = "0b7e2d1c-8f3a-4c55-9e1d-2a6f0c3b9d47"
    assert job_key_bytes(uuid) == keccak(uuid.encode())
    # Known vector: keccak256("") .
    assert job_key_bytes("").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    a, b = "0x" + "11" * 20, "0x" + "22" * 20
    assert job_id_bytes(uuid, a) == keccak(bytes(12) + bytes.fromhex("11" * 20) + job_key_bytes(uuid))
    assert job_id_bytes(uuid, a) != job_id_bytes(uuid, b)


def test_deployment_record_round_trips(tmp_path: Path, deployment: Deployment) -> None:
    record = deployment.to_json()
    assert set(record) == {"chainId", "contracts", "artifactsHash"}
    assert set(record["contracts"]) == set(DEPLOYED_CONTRACTS)
    assert record["artifactsHash"] == artifacts_hash()
    path = tmp_path / "deployments" / "31337.json"
    deployment.save(path)
    assert json.loads(path.read_text()) == record
    assert Deployment.load(path) == Deployment.from_json(record)
    assert Deployment.load(path).escrow == deployment.escrow


@pytest.mark.parametrize("bad", [{}, {"chainId": 1}, {"chainId": 1, "contracts": {"GLBToken": {"address": "0x1"}}}])
def test_malformed_deployment_record_is_one_config_error(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Deployment.from_json(bad)


def test_deploy_all_wires_roles_and_defaults(anvil: Any, deployment: Deployment) -> None:
    client, admin = anvil.client, anvil.accounts[0].address
    c = deployment.bind(client)
    config = DeployConfig()
    for contract, roles in ((c.escrow, ["SETTLER_ROLE", "PAUSER_ROLE"]), (c.vault, ["SLASHER_ROLE", "PAUSER_ROLE"])):
        assert contract.functions.hasRole(b"\0" * 32, admin).call()
        for role in roles:
            assert contract.functions.hasRole(role_id(role), admin).call(), role
            assert contract.functions[role]().call() == role_id(role)
    assert c.token.functions.balanceOf(admin).call() > 0
    assert c.vault.functions.minStake().call() == config.min_stake
    assert c.vault.functions.unbondingPeriod().call() == config.unbonding_period
    assert c.escrow.functions.feeBps().call() == config.fee_bps
    assert deployment.first_block <= client.block_number()


def test_cli_check_reports_fresh_artifacts() -> None:
    from typer.testing import CliRunner

    from market.commands.contracts import app

    result = CliRunner().invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output

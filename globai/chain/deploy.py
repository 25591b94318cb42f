"""Deploy GLBToken, StakingVault and JobEscrow and describe the result as a JSON deployment record.

The record (`hardhat-free-devnet/deployments/<chainId>.json` on the devnet) has the form
{"chainId": 31337, "contracts": {"GLBToken": {"address": "0x…", "block": 1}, …}, "artifactsHash": "…"}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from web3.contract import Contract

from globai.chain.artifacts import DEPLOYED_CONTRACTS, artifacts_hash
from globai.chain.client import ChainClient
from globai.errors import ConfigError

GLB = 10**18
SETTLER_ROLE = "SETTLER_ROLE"
SLASHER_ROLE = "SLASHER_ROLE"
PAUSER_ROLE = "PAUSER_ROLE"
STAKES_ROLE = "STAKES_ROLE"  # JobEscrow: the StakingVault marks who has stake


@dataclass(frozen=True)
class DeployConfig:
    """Constructor parameters; the defaults suit the devnet."""

    initial_supply: int = 1_000_000_000 * GLB  # minted once to the treasury (the faucet on the devnet)
    min_stake: int = 100 * GLB
    # Longer than any dispute window, so a cheater's stake is still there when the verdict comes.
    unbonding_period: int = 7 * 24 * 3600
    fee_bps: int = 200  # 2 % of what workers are paid
    slash_requester_bps: int = 5_000  # 50 % of a slash to the harmed requester
    slash_finder_bps: int = 1_000  # 10 % to the replica that caught it; the remaining 40 % is burned


@dataclass(frozen=True)
class DeployedContract:
    address: str
    block: int


@dataclass(frozen=True)
class Deployment:
    """Where the GlobAI contracts live on one chain."""

    chain_id: int
    contracts: Mapping[str, DeployedContract]
    artifacts_hash: str = field(default="")

    def address(self, name: str) -> str:
        try:
            return self.contracts[name].address
        except KeyError:
            raise ConfigError(f"deployment on chain {self.chain_id} has no {name}") from None

    @property
    def token(self) -> str:
        return self.address("GLBToken")

    @property
    def vault(self) -> str:
        return self.address("StakingVault")

    @property
    def escrow(self) -> str:
        return self.address("JobEscrow")

    @property
    def first_block(self) -> int:
        """The block of the earliest deployment: where an indexer starts."""
        return min(c.block for c in self.contracts.values())

    def bind(self, client: ChainClient) -> BoundContracts:
        """web3 contracts for this deployment."""
        return BoundContracts(
            token=client.contract("GLBToken", self.token),
            vault=client.contract("StakingVault", self.vault),
            escrow=client.contract("JobEscrow", self.escrow),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "chainId": self.chain_id,
            "contracts": {name: {"address": c.address, "block": c.block} for name, c in sorted(self.contracts.items())},
            "artifactsHash": self.artifacts_hash,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Deployment:
        """Parse a deployment record; a malformed one is a one-line `ConfigError`."""
        try:
            contracts = {
                str(name): DeployedContract(to_checksum_address(entry["address"]), int(entry["block"]))
                for name, entry in data["contracts"].items()
            }
            deployment = cls(int(data["chainId"]), contracts, str(data.get("artifactsHash", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"malformed deployment record: {exc!r}") from exc
        for name in DEPLOYED_CONTRACTS:
            deployment.address(name)
        return deployment

    def save(self, path: Path) -> None:
        """Write the record atomically (a crash never leaves half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"no deployment record at {path}") from None
        except ValueError as exc:
            raise ConfigError(f"deployment record {path} is not JSON: {exc}") from exc


def deployment_is_live(client: ChainClient, deployment: Deployment) -> bool:
    """True when every recorded contract has code on the chain (a wiped chain needs a new deployment)."""
    return all(len(client.w3.eth.get_code(c.address)) > 0 for c in deployment.contracts.values())  # type: ignore[arg-type]


@dataclass(frozen=True)
class BoundContracts:
    token: Contract
    vault: Contract
    escrow: Contract


def _address(who: LocalAccount | str) -> str:
    return to_checksum_address(who if isinstance(who, str) else who.address)


def role_id(role: str) -> bytes:
    """The bytes32 id of `role` (e.g. "SETTLER_ROLE"): keccak256 of its name, as the contracts define it."""
    return keccak(text=role)


def deploy_all(
    client: ChainClient,
    *,
    admin: LocalAccount,
    treasury: LocalAccount | str,
    fee_recipient: LocalAccount | str | None = None,
    config: DeployConfig = DeployConfig(),
    operators: bool = True,
) -> Deployment:
    """Deploy the three contracts from `admin` (who gets DEFAULT_ADMIN_ROLE on both role-based contracts), and give
    the vault the escrow's STAKES_ROLE.

    The whole GLB supply goes to `treasury`; protocol fees are credited to `fee_recipient` (default: treasury).
    With `operators` (the devnet), `admin` also gets SETTLER/SLASHER/PAUSER so one key runs the market;
    elsewhere grant those roles to the market's own keys.
    """
    token, token_receipt = client.deploy("GLBToken", _address(treasury), config.initial_supply, sender=admin)
    escrow, escrow_receipt = client.deploy(
        "JobEscrow",
        token.address,
        admin.address,
        _address(fee_recipient if fee_recipient is not None else treasury),
        config.fee_bps,
        sender=admin,
    )
    vault, vault_receipt = client.deploy(
        "StakingVault",
        token.address,
        escrow.address,
        admin.address,
        config.min_stake,
        config.unbonding_period,
        config.slash_requester_bps,
        config.slash_finder_bps,
        sender=admin,
    )
    # The vault tells the escrow who has stake (only they may be paid): before anyone can stake.
    client.transact(escrow.functions.grantRole(role_id(STAKES_ROLE), vault.address), admin)
    if operators:
        for contract, role in (
            (escrow, SETTLER_ROLE),
            (escrow, PAUSER_ROLE),
            (vault, SLASHER_ROLE),
            (vault, PAUSER_ROLE),
        ):
            client.transact(contract.functions.grantRole(role_id(role), admin.address), admin)
    return Deployment(
        chain_id=client.chain_id,
        contracts={
            "GLBToken": DeployedContract(token.address, int(token_receipt["blockNumber"])),
            "StakingVault": DeployedContract(vault.address, int(vault_receipt["blockNumber"])),
            "JobEscrow": DeployedContract(escrow.address, int(escrow_receipt["blockNumber"])),
        },
        artifacts_hash=artifacts_hash(),
    )

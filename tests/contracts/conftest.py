"""Fixtures for contract tests: the session deployment, funded and approved actors, revert assertions.

All tests run on the session Anvil and are isolated by the `chain` snapshot fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from globai.chain.client import ChainClient, ContractReverted
from globai.chain.deploy import GLB, BoundContracts, Deployment
from globai.chain.ids import escrow_job_id
from globai.chain.ports import ChainLog

MAX_UINT = 2**256 - 1
DAY = 24 * 3600
FUNDS = 1_000_000 * GLB  # handed to every actor once per session


@dataclass
class Env:
    """One test's view of the deployed contracts and the actors."""

    anvil: Any
    deployment: Deployment
    c: BoundContracts
    admin: LocalAccount  # DEFAULT_ADMIN + SETTLER/SLASHER/PAUSER, treasury and fee recipient
    requester: LocalAccount
    requester2: LocalAccount
    worker: LocalAccount
    worker2: LocalAccount
    finder: LocalAccount
    outsider: LocalAccount  # holds GLB but no role

    @property
    def client(self) -> ChainClient:
        return self.anvil.client

    def tx(self, fn: Any, sender: LocalAccount) -> dict[str, Any]:
        return self.client.transact(fn, sender)

    def events(self, receipt: dict[str, Any]) -> list[ChainLog]:
        return self.client.events(receipt, self.c.token, self.c.vault, self.c.escrow)

    def now(self) -> int:
        return int(self.client.w3.eth.get_block("latest")["timestamp"])

    def glb(self, who: LocalAccount | str) -> int:
        address = who if isinstance(who, str) else who.address
        return int(self.c.token.functions.balanceOf(address).call())

    def fund(
        self,
        name: str,
        amount: int = 100 * GLB,
        *,
        requester: LocalAccount | None = None,
        deadline: int | None = None,
    ) -> bytes:
        """Fund the job keyed `job(name)`; returns its escrow id (bound to the requester)."""
        requester = requester or self.requester
        deadline = self.now() + DAY if deadline is None else deadline
        fn = self.c.escrow.functions.fundJob(job(name), amount, keccak(text=f"spec:{name}"), deadline)
        self.tx(fn, requester)
        return job_id_of(requester.address, job(name))

    def stake_payees(self, amount: int = 1) -> None:
        """A payee needs stake in the vault to be credited: give both workers some."""
        for worker in (self.worker, self.worker2):
            self.tx(self.c.vault.functions.stake(amount), worker)

    def settle(self, job_id: bytes, payees: list[str], amounts: list[int], root: bytes | None = None) -> Any:
        fn = self.c.escrow.functions.settle(job_id, payees, amounts, root or report_root(job_id))
        return self.tx(fn, self.admin)

    def warp(self, seconds: int) -> None:
        self.anvil.increase_time(seconds)


def job(name: str) -> bytes:
    """A job key (what `fundJob` takes)."""
    return keccak(text=f"job:{name}")


job_id_of = escrow_job_id  # the escrow's id of `requester`'s job `key`


def report_root(job_id: bytes) -> bytes:
    return keccak(b"report" + job_id)


def assert_reverts(client: ChainClient, fn: Any, sender: LocalAccount, error: str, *args: Any) -> ContractReverted:
    """`fn` sent by `sender` reverts with custom error `error` (decoded from its selector) and, if given, `args`."""
    with pytest.raises(ContractReverted) as info:
        client.transact(fn, sender)
    assert info.value.error == error, f"expected {error}, got {info.value}"
    if args:
        got = tuple(_normal(a) for a in info.value.args_)
        assert got == tuple(_normal(a) for a in args), f"{error} args {info.value.args_} != {args}"
    return info.value


def _normal(value: Any) -> Any:
    # eth_abi decodes addresses in lower case; compare them case-insensitively.
    return value.lower() if isinstance(value, str) else value


def names(events: list[ChainLog]) -> list[str]:
    return [e.name for e in events]


@pytest.fixture(scope="session")
def funded(anvil: Any, deployment: Deployment) -> Deployment:
    """Once per session: GLB for every actor and unlimited approvals to escrow and vault (before any snapshot)."""
    client: ChainClient = anvil.client
    contracts = deployment.bind(client)
    admin = anvil.accounts[0]
    for account in anvil.accounts[1:9]:
        client.transact(contracts.token.functions.transfer(account.address, FUNDS), admin)
        for spender in (contracts.escrow.address, contracts.vault.address):
            client.transact(contracts.token.functions.approve(spender, MAX_UINT), account)
    return deployment


@pytest.fixture
def env(funded: Deployment, chain: Any) -> Iterator[Env]:
    accounts = chain.accounts
    yield Env(
        anvil=chain,
        deployment=funded,
        c=funded.bind(chain.client),
        admin=accounts[0],
        requester=accounts[1],
        requester2=accounts[2],
        worker=accounts[3],
        worker2=accounts[4],
        finder=accounts[5],
        outsider=accounts[6],
    )

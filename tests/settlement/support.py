"""Shared helpers for settlement, audit and verification tests: a migrated DB, funded jobs on the real Anvil."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from globai.chain.client import ChainClient
from globai.chain.deploy import GLB, Deployment
from globai.chain.ids import job_id_bytes, job_key_bytes
from globai.chain.web3_market import Web3Operator
from market.db import Base, Job, Worker
from market.db.engine import make_engine
from market.db.migrate import upgrade


def migrated_engine(url: str) -> Engine:
    engine = make_engine(url, pool_size=5)
    upgrade(engine)
    return engine


def empty(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))


def operator_for(client: ChainClient, deployment: Deployment, admin: LocalAccount) -> Web3Operator:
    c = deployment.bind(client)
    return Web3Operator(client=client, escrow=c.escrow, vault=c.vault, account=admin)


# Workers the settlement tests pay: a payee needs stake in the vault to be credited (`funder` stakes them).
PAYEES = [Account.from_key(bytes([0x51 + i]) * 32) for i in range(3)]


@dataclass
class Funder:
    """Creates market jobs and funds them on chain from `requester` (GLB from the treasury, account 0)."""

    client: ChainClient
    deployment: Deployment
    treasury: LocalAccount
    requester: LocalAccount

    def __post_init__(self) -> None:
        self.c = self.deployment.bind(self.client)

    def give(self, to: str, amount: int) -> None:
        self.client.transact(self.c.token.functions.transfer(to, amount), self.treasury)

    def stake(self, worker: LocalAccount, amount: int) -> None:
        self.give(worker.address, amount)
        self.client.transact(self.c.token.functions.approve(self.deployment.vault, amount), worker)
        self.client.transact(self.c.vault.functions.stake(amount), worker)

    def stake_payees(self, amount: int = GLB) -> None:
        for payee in PAYEES:
            self.client.rpc("anvil_setBalance", payee.address, hex(10**20))
            self.stake(payee, amount)

    def prefund(self, total: int) -> None:
        """Give the requester `total` and approve the escrow once (then `job(prefunded=True)` is one transaction)."""
        self.give(self.requester.address, total)
        self.client.transact(self.c.token.functions.approve(self.deployment.escrow, total), self.requester)

    def job(
        self,
        session: Session,
        *,
        budget: int = 100 * GLB,
        price: int = GLB,
        units: int = 60,
        fund: bool = True,
        status: str = "completed",
        prefunded: bool = False,
    ) -> Job:
        job_uuid = str(uuid.uuid4())
        block = self.client.block_number()
        now_chain = int(self.client.w3.eth.get_block("latest")["timestamp"])
        deadline = now_chain + 3600
        job = Job(
            id=job_uuid,
            chain_job_id="0x" + job_id_bytes(job_uuid, self.requester.address).hex(),
            requester=self.requester.address,
            kind="inference",
            model="tiny",
            spec={},
            spec_hash="0x" + "ab" * 32,
            budget=budget,
            price_per_unit=price,
            max_units=units,
            deadline=datetime.fromtimestamp(deadline, UTC),
            status=status,
            created_block=block,
            created_at=datetime.now(UTC),
        )
        if fund:
            if not prefunded:
                self.give(self.requester.address, budget)
                self.client.transact(self.c.token.functions.approve(self.deployment.escrow, budget), self.requester)
            receipt = self.client.transact(
                self.c.escrow.functions.fundJob(job_key_bytes(job_uuid), budget, b"\xab" * 32, deadline),
                self.requester,
            )
            job.funded_amount = budget
            job.funded_block = int(receipt["blockNumber"])
            job.funded_tx = "0x" + bytes(receipt["transactionHash"]).hex()
        session.add(job)
        session.commit()
        return job


def register_worker(session: Session, account: LocalAccount | str, operator: str) -> Worker:
    address = account if isinstance(account, str) else account.address
    worker = Worker(
        address=address,
        operator_id=operator,
        device="cpu",
        memory_bytes=1,
        throughput_tokens_s=1,
        bandwidth_bytes_s=1,
        latency_ms=1,
        reference_layer="r",
        models=["tiny"],
        eligible=True,
    )
    session.add(worker)
    session.commit()
    return worker


def credited(client: ChainClient, deployment: Deployment, who: str) -> int:
    return int(client.call(deployment.bind(client).escrow.functions.balanceOf(who)))


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def iter_events(client: ChainClient, deployment: Deployment, name: str) -> Iterator[Any]:
    c = deployment.bind(client)
    for ev in client.get_logs([c.escrow, c.vault], deployment.first_block):
        if ev.name == name:
            yield ev

"""Market test fixtures.

- `db_engine`: a fresh database per test module, migrated with Alembic: Postgres when reachable (a throwaway
  database created and dropped here) and always SQLite; tests using it run once per backend.
- `market`: the app on that database with a controllable clock and an in-memory `ChainView` (the chain-facing
  code is exercised against the real Anvil in test_chain_*.py); tables are emptied after each test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from fastapi.testclient import TestClient
from sqlalchemy import Engine, delete

from globai.chain.ports import ChainLog, OnchainJob
from globai.protocol.siwe import build_message, sign_message
from market.api import create_app
from market.config import Settings
from market.db import Base
from market.db.engine import make_engine
from market.db.migrate import upgrade

TEST_SECRET = "test-secret-" + "0123456789abcdef" * 3
ADMIN = Account.from_key("0x" + "a1" * 32)
MIN_STAKE = 100


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def create_pg_database(base_url: str) -> str:
    """A new empty database next to `base_url`'s; returns its SQLAlchemy URL."""
    name = f"globai_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_psycopg_url(base_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base_url.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    base, name = url.rsplit("/", 1)
    with psycopg.connect(_psycopg_url(base + "/postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'market.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    if base is None:
        pytest.skip("Postgres not reachable (set GLOBAI_TEST_PG_URL)")
    url = create_pg_database(base)
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="module")
def db_engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url, pool_size=20)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def empty_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(delete(table))


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeChain:
    """In-memory `ChainView`: stakes, escrowed jobs and their events, one block per change."""

    chain_id: int = 31337
    escrow_address: str = to_checksum_address("0x" + "e5" * 20)
    staking_address: str = to_checksum_address("0x" + "5a" * 20)
    block: int = 1
    minimum: int = MIN_STAKE
    stakes: dict[str, tuple[int, int]] = field(default_factory=dict)
    jobs: dict[str, OnchainJob] = field(default_factory=dict)
    staking: list[ChainLog] = field(default_factory=list)
    escrow: list[ChainLog] = field(default_factory=list)

    def latest_block(self) -> int:
        return self.block

    def min_stake(self) -> int:
        return self.minimum

    def fee_bps(self) -> int:
        return 200

    def stake_of(self, address: str, *, block: int | None = None) -> tuple[int, int]:
        return self.stakes.get(address, (0, 0))

    def get_job(self, chain_job_id: str) -> OnchainJob:
        return self.jobs.get(chain_job_id, OnchainJob("0x" + "0" * 40, 0, "0x" + "0" * 64, 0, "none"))

    def staking_logs(self, from_block: int, to_block: int) -> list[ChainLog]:
        return [e for e in self.staking if from_block <= e.block_number <= to_block]

    def escrow_logs(self, from_block: int, to_block: int) -> list[ChainLog]:
        return [e for e in self.escrow if from_block <= e.block_number <= to_block]

    def _log(self, name: str, address: str, args: dict[str, Any]) -> ChainLog:
        self.block += 1
        return ChainLog(name, args, address, self.block, "0x" + uuid.uuid4().hex * 2, 0)

    def stake(self, address: str, amount: int) -> None:
        stake, unbonding = self.stakes.get(address, (0, 0))
        self.stakes[address] = (stake + amount, unbonding)
        self.staking.append(
            self._log("Staked", self.staking_address, {"worker": address, "amount": amount, "newStake": stake + amount})
        )

    def slash(self, address: str, amount: int) -> None:
        stake, unbonding = self.stakes.get(address, (0, 0))
        self.stakes[address] = (max(0, stake - amount), unbonding)
        self.staking.append(self._log("Slashed", self.staking_address, {"worker": address, "amount": amount}))

    def fund(
        self, escrow: dict[str, Any], requester: str, *, amount: int | None = None, spec_hash: str | None = None
    ) -> ChainLog:
        args = {
            "jobId": escrow["job_id"],
            "requester": requester,
            "amount": int(escrow["amount"]) if amount is None else amount,
            "specHash": spec_hash or escrow["spec_hash"],
            "deadline": escrow["deadline"],
        }
        event = self._log("JobFunded", self.escrow_address, args)
        self.escrow.append(event)
        self.jobs[escrow["job_id"]] = OnchainJob(
            requester, args["amount"], args["specHash"], args["deadline"], "funded"
        )
        return event


def make_settings(db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "profile": "test",
        "database_url": db_url,
        "auth_secret": TEST_SECRET,
        "admin_addresses": [ADMIN.address],
        "rate_limit_per_s": 10_000.0,
        "rate_limit_burst": 10_000,
        "min_stake_wei": MIN_STAKE,
        "lease_ttl_s": 30,
        "worker_cache_ttl_s": 0.0,  # tests change stake and expect the next request to see it
    }
    values.update(overrides)
    return Settings(**values)


def login(client: TestClient, clock: Clock, account: LocalAccount, roles: list[str] | None = None) -> dict[str, str]:
    """Sign in through the API (nonce, signed EIP-4361 message, verify); returns the auth headers."""
    nonce = client.post("/v1/auth/nonce", json={"address": account.address})
    assert nonce.status_code == 200, nonce.text
    n = nonce.json()
    message = build_message(
        domain=n["domain"],
        address=account.address,
        uri=n["uri"],
        chain_id=n["chain_id"],
        nonce=n["nonce"],
        issued_at=clock.now,
        expiration_time=clock.now + timedelta(minutes=5),
    )
    body: dict[str, Any] = {"message": message.to_text(), "signature": sign_message(message, account.key)}
    if roles is not None:
        body["roles"] = roles
    token = client.post("/v1/auth/verify", json=body)
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


@dataclass
class Market:
    client: TestClient
    clock: Clock
    chain: FakeChain
    engine: Engine
    settings: Settings

    def login(self, account: LocalAccount, roles: list[str] | None = None) -> dict[str, str]:
        return login(self.client, self.clock, account, roles)

    def worker(
        self,
        account: LocalAccount | None = None,
        *,
        operator: str = "op-1",
        stake: int = MIN_STAKE,
        memory: int = 16 << 30,
        models: list[str] | None = None,
    ) -> dict[str, str]:
        """A signed-in, registered, staked worker; returns its auth headers."""
        account = account or Account.create()
        if stake:
            self.chain.stake(account.address, stake)
        headers = self.login(account)
        r = self.client.post(
            "/v1/workers", headers=headers, json=profile(operator=operator, memory=memory, models=models)
        )
        assert r.status_code == 200, r.text
        return headers

    def training_job(
        self,
        headers: dict[str, str],
        *,
        tasks: int = 4,
        price: int = 10,
        model: str = "tiny-llama",
        fund: bool = True,
        rounds: int = 1,
    ) -> dict[str, Any]:
        spec = {
            "kind": "training",
            "model": model,
            "dataset": "tiny-shakespeare",
            "rounds": rounds,
            "tasks_per_round": tasks,
            "local_steps": 2,
            "layer_start": 0,
            "layer_end": 4,
            "memory_bytes": 1 << 30,
        }
        units = rounds * tasks * 2
        body = {
            "spec": spec,
            "budget": str(price * units),
            "price_per_unit": str(price),
            "deadline": (self.clock.now + timedelta(hours=2)).isoformat(),
        }
        r = self.client.post("/v1/jobs", headers=headers, json=body)
        assert r.status_code == 201, r.text
        created = r.json()
        if fund:
            me = self.client.get("/v1/auth/me", headers=headers).json()["address"]
            self.chain.fund(created["escrow"], me)
            f = self.client.post(f"/v1/jobs/{created['job']['id']}/confirm-funding", headers=headers)
            assert f.status_code == 200, f.text
        return created


def profile(*, operator: str = "op-1", memory: int = 16 << 30, models: list[str] | None = None) -> dict[str, Any]:
    return {
        "device": "cpu",
        "memory_bytes": memory,
        "throughput_tokens_s": 850.0,
        "bandwidth_bytes_s": 1e8,
        "latency_ms": 12.5,
        "reference_layer": "llama-256x4",
        "operator_id": operator,
        "models": models or ["tiny-llama"],
    }


CLAIM_ALL = {
    "kinds": ["train"],
    "models": ["tiny-llama"],
    "layer_ranges": [{"start": 0, "end": 8}],
    "memory_bytes": 16 << 30,
}


@pytest.fixture
def market(db_engine: Engine, db_url: str) -> Iterator[Market]:
    settings = make_settings(db_url)
    clock = Clock()
    chain = FakeChain()
    app = create_app(settings, engine=db_engine, chain=chain, clock=clock)
    with TestClient(app) as client:
        yield Market(client=client, clock=clock, chain=chain, engine=db_engine, settings=settings)
    empty_tables(db_engine)

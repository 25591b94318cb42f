"""End-to-end fixtures for training jobs: the market over real HTTP (uvicorn in a thread) on the session's real
Anvil with the real contracts, a real Celery worker over a private Redis for aggregation, verification, slashing and
settlement, worker clients talking HTTP, a requester signed in with SIWE.

Workers stake GLB in the StakingVault and requesters fund with a permit (`fundJobWithPermit`), exactly as in
production; the market reads stakes and the `JobFunded` event from the chain and settles on it.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount

from globai.chain.permit import fund_job_with_permit
from globai.chain.web3_market import Web3ChainView
from globai.client import check, sign_in
from globai.dev.services import free_port, wait_port
from market.api import create_app
from market.config import Settings
from market.db.engine import make_engine
from market.db.migrate import upgrade
from market.training.model import tiny_llama_config
from market.training.spec import ConfigModelRef, TrainingJobSpec
from tests.market.conftest import make_settings
from worker.training_client import Tamper, TrainingClient

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus.txt"
GLB = 10**18


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def private_redis(redis_url: str) -> Iterator[str]:
    """A Redis of our own when redis-server exists: other test sessions' Celery workers can't eat our messages."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield redis_url.rsplit("/", 1)[0] + "/13"
        return
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc=proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def tiny_spec(**overrides: Any) -> TrainingJobSpec:
    fields: dict[str, Any] = {
        "model": ConfigModelRef(config=tiny_llama_config(), init_seed=7),
        "seq_len": 64,
        "batch_size": 8,
        "inner_steps": 8,
        "rounds": 3,
        "workers_per_round": 2,
        "inner_lr": 3e-3,
        "compression": "none",
        "seed": 11,
        "round_timeout_s": 60.0,
    }
    fields.update(overrides)
    return TrainingJobSpec(**fields)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # running in a thread
        pass


@dataclass
class OnChain:
    """The session Anvil (tests/conftest.py) with the deployed contracts: money moves the way it does in production."""

    anvil: Any  # tests.conftest.Anvil
    deployment: Any

    @property
    def contracts(self) -> Any:
        return self.deployment.bind(self.anvil.client)

    @property
    def operator(self) -> LocalAccount:
        return self.anvil.accounts[0]  # admin, treasury, settler and slasher of the test deployment

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.anvil.client.w3.eth.get_block("latest")["timestamp"], UTC)

    def give(self, account: LocalAccount, glb_wei: int) -> None:
        """ETH for gas and `glb_wei` GLB from the treasury."""
        self.anvil.client.rpc("anvil_setBalance", account.address, hex(10**20))
        if glb_wei:
            self.anvil.client.transact(self.contracts.token.functions.transfer(account.address, glb_wei), self.operator)

    def stake(self, account: LocalAccount, amount: int) -> None:
        c = self.contracts
        self.give(account, amount)
        self.anvil.client.transact(c.token.functions.approve(c.vault.address, amount), account)
        self.anvil.client.transact(c.vault.functions.stake(amount), account)

    def min_stake(self) -> int:
        return int(self.anvil.client.call(self.contracts.vault.functions.minStake()))

    def stake_of(self, address: str) -> int:
        return int(self.anvil.client.call(self.contracts.vault.functions.stakeOf(address)))

    def escrow_status(self, chain_job_id: str) -> int:
        job_id = bytes.fromhex(chain_job_id.removeprefix("0x"))
        return int(self.anvil.client.call(self.contracts.escrow.functions.getJob(job_id))[3])

    def credited(self, address: str) -> int:
        return int(self.anvil.client.call(self.contracts.escrow.functions.balanceOf(address)))

    def fund(self, escrow: dict[str, Any], requester: LocalAccount) -> None:
        self.give(requester, int(escrow["amount"]))
        fund_job_with_permit(self.anvil.client, requester, escrow)


@pytest.fixture(scope="module")
def onchain(anvil: Any, deployment: Any) -> Iterator[OnChain]:
    """The session Anvil for one test module, reverted to its state before the module when it ends."""
    snapshot = anvil.snapshot()
    try:
        yield OnChain(anvil, deployment)
    finally:
        anvil.revert(snapshot)


@dataclass
class Market:
    url: str
    settings: Settings
    chain: OnChain
    clients: list[httpx.Client] = field(default_factory=list)

    def http(self) -> httpx.Client:
        client = httpx.Client(base_url=self.url, timeout=60)
        self.clients.append(client)
        return client

    def requester(self, account: LocalAccount | None = None) -> Requester:
        account = account or Account.create()
        http = self.http()
        http.headers["Authorization"] = "Bearer " + sign_in(http, account, ["requester"])
        return Requester(self, http, account)

    def worker(
        self, operator: str, *, tamper: Tamper | None = None, cache: Path, local_data: Path | None = None
    ) -> TrainingClient:
        account = Account.create()
        self.chain.stake(account, self.chain.min_stake())
        client = TrainingClient(
            self.http(),
            account,
            cache_dir=cache / account.address,
            operator_id=operator,
            tamper=tamper,
            heartbeat_s=2.0,
            local_data=local_data,
        )
        client.sign_in()
        client.register()
        return client


@dataclass
class Requester:
    market: Market
    http: httpx.Client
    account: LocalAccount

    def post_job(
        self,
        spec: TrainingJobSpec,
        corpus: bytes,
        *,
        verify_rate: float = 0.0,
        price: int = 1,
        checkpoint_key: bytes | None = None,
    ) -> dict[str, Any]:
        ds = check(
            self.http.post(
                "/v1/training/datasets", content=corpus, headers={"Content-Type": "application/octet-stream"}
            )
        ).json()
        units = spec.rounds * spec.workers_per_round * spec.inner_steps
        body = {
            "spec": spec.model_dump(mode="json"),
            "dataset_sha256": ds["sha256"],
            "budget": str(price * units * 2),
            "price_per_unit": str(price),
            "verify_rate": verify_rate,
            "deadline": (max(datetime.now(UTC), self.market.chain.now()) + timedelta(hours=1)).isoformat(),
        }
        if checkpoint_key is not None:
            body["checkpoint_key"] = checkpoint_key.hex()
        created = check(self.http.post("/v1/training/jobs", json=body)).json()
        self.market.chain.fund(created["escrow"], self.account)
        check(self.http.post(f"/v1/jobs/{created['job']['id']}/confirm-funding"))
        return dict(created["job"])

    def progress(self, job_id: str) -> dict[str, Any]:
        return dict(check(self.http.get(f"/v1/training/jobs/{job_id}")).json())

    def wait(self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 90) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            p = self.progress(job_id)
            if until(p):
                return p
            time.sleep(0.2)
        raise AssertionError(f"timed out; last progress: {p}")


def settle_and_audit(market: Market, job: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """Wait until the escrow has the job settled on chain, then audit it from the chain and the market's published
    report (`globai audit job`'s check, in process); returns the report."""
    from market.audit.job import audit_job

    chain, job_id = market.chain, job["id"]
    end = time.monotonic() + timeout
    while chain.escrow_status(job["chain_job_id"]) != 2:
        if time.monotonic() > end:
            raise AssertionError(f"job {job_id} not settled on chain after {timeout:.0f} s")
        time.sleep(0.25)
    report = check(httpx.get(f"{market.url}/v1/audit/jobs/{job_id}/report", timeout=30)).json()
    first = int(getattr(chain.deployment, "first_block", 0) or 0)
    result = audit_job(chain.anvil.client, chain.contracts.escrow, report, from_block=first)
    assert result.ok, result.reason
    return dict(report)


def run_workers(
    clients: list[TrainingClient], stop: threading.Event, *, max_tasks: list[int | None] | None = None
) -> list[threading.Thread]:
    threads = []
    for i, client in enumerate(clients):
        limit = None if max_tasks is None else max_tasks[i]
        t = threading.Thread(
            target=client.run,
            args=(stop,),
            kwargs={"idle_s": 0.2, "max_tasks": limit},
            daemon=True,
            name=f"train-worker-{i}",
        )
        t.start()
        threads.append(t)
    return threads


def train_until_done(
    requester: Any, job_id: str, clients: list[TrainingClient], *, max_tasks: list[int | None] | None = None
) -> dict[str, Any]:
    """Run `clients` in threads until the job completes; stop and join them whatever happens."""
    stop = threading.Event()
    threads = run_workers(clients, stop, max_tasks=max_tasks)
    try:
        return requester.wait(job_id, lambda p: p["status"] == "completed")  # type: ignore[no-any-return]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)


def chain_settings(onchain: OnChain) -> dict[str, Any]:
    """Settings pointing a market at the test deployment (its operator key settles and slashes)."""
    d = onchain.deployment
    return {
        "rpc_url": onchain.anvil.url,
        "chain_id": Web3ChainView(onchain.anvil.client, staking_address=d.vault, escrow_address=d.escrow).chain_id,
        "staking_vault_address": d.vault,
        "job_escrow_address": d.escrow,
        "token_address": d.token,
        "operator_private_key": "0x" + bytes(onchain.operator.key).hex(),
        "chain_start_block": int(getattr(d, "first_block", 0) or 0),
        "min_stake_wei": onchain.min_stake(),
        "slash_amount_wei": onchain.min_stake() // 2,
    }


@pytest.fixture(scope="module")
def market(private_redis: str, onchain: OnChain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    """Market API on a real port + a real Celery worker (solo pool) with a beat-like ticker thread, on Anvil."""
    from celery.contrib.testing.worker import start_worker

    from market.tasks.celery_app import create_celery, runtime
    from market.tasks.leases import requeue_expired_leases
    from market.tasks.settlement import settle_ready
    from market.tasks.training import tick_training_jobs
    from market.tasks.verification import recover

    root = tmp_path_factory.mktemp("training-e2e")
    db_url = f"sqlite:///{root / 'market.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    settings = make_settings(
        db_url,
        redis_url=private_redis,
        training_dir=str(root / "training"),
        training_tick_s=0.5,
        lease_ttl_s=30,
        **chain_settings(onchain),
    )
    port = free_port()
    server = _Server(
        uvicorn.Config(create_app(settings, engine=engine), host="127.0.0.1", port=port, log_level="warning")
    )
    serve = threading.Thread(target=server.run, daemon=True)
    serve.start()
    wait_port(port)
    celery = create_celery(settings)
    stop = threading.Event()

    def beat() -> None:  # what `celery beat` does, at test speed
        while not stop.wait(0.5):
            tick_training_jobs.apply_async(expires=2)
            requeue_expired_leases.apply_async(expires=2)
            recover.apply_async(expires=2)
            settle_ready.apply_async(expires=2)

    with start_worker(celery, pool="solo", perform_ping_check=False, shutdown_timeout=20):
        ticker = threading.Thread(target=beat, daemon=True)
        ticker.start()
        m = Market(f"http://127.0.0.1:{port}", settings, onchain)
        try:
            yield m
        finally:
            stop.set()
            ticker.join(timeout=5)
            for c in m.clients:
                c.close()
    runtime(celery).dispose()
    server.should_exit = True
    serve.join(timeout=10)
    engine.dispose()


@pytest.fixture(scope="session")
def corpus() -> bytes:
    return CORPUS.read_bytes()

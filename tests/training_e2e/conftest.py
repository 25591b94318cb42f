"""End-to-end fixtures for training jobs: the market over real HTTP (uvicorn in a thread), a real Celery worker
over a private Redis for aggregation, worker clients talking HTTP, a requester signed in with SIWE.

Funding goes through the in-memory `FakeChain` of the market tests (the escrow path itself is covered by the
chain tests); everything else is the production code path.
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

from globai.client import check, sign_in
from globai.dev.services import free_port, wait_port
from market.api import create_app
from market.config import Settings
from market.db.engine import make_engine
from market.db.migrate import upgrade
from market.training.model import tiny_llama_config
from market.training.spec import ConfigModelRef, TrainingJobSpec
from tests.market.conftest import FakeChain, make_settings
from worker.training_client import Tamper, TrainingClient

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus.txt"
STAKE = 1000


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
class Market:
    url: str
    settings: Settings
    chain: FakeChain
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

    def worker(self, operator: str, *, tamper: Tamper | None = None, cache: Path) -> TrainingClient:
        account = Account.create()
        self.chain.stake(account.address, STAKE)
        client = TrainingClient(
            self.http(),
            account,
            cache_dir=cache / account.address,
            operator_id=operator,
            tamper=tamper,
            heartbeat_s=2.0,
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
        self, spec: TrainingJobSpec, corpus: bytes, *, verify_rate: float = 0.0, price: int = 1
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
            "deadline": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        }
        created = check(self.http.post("/v1/training/jobs", json=body)).json()
        self.market.chain.fund(created["escrow"], self.account.address)
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


@pytest.fixture(scope="module")
def market(private_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    """Market API on a real port + a real Celery worker (solo pool) with a beat-like ticker thread."""
    from celery.contrib.testing.worker import start_worker

    from market.tasks.celery_app import create_celery, runtime
    from market.tasks.leases import requeue_expired_leases
    from market.tasks.training import tick_training_jobs

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
        min_stake_wei=1,
    )
    chain = FakeChain(minimum=1)
    port = free_port()
    server = _Server(
        uvicorn.Config(
            create_app(settings, engine=engine, chain=chain), host="127.0.0.1", port=port, log_level="warning"
        )
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

    with start_worker(celery, pool="solo", perform_ping_check=False, shutdown_timeout=20):
        ticker = threading.Thread(target=beat, daemon=True)
        ticker.start()
        m = Market(f"http://127.0.0.1:{port}", settings, chain)
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

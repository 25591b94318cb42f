"""Runtime fixtures: a real uvicorn market (SQLite, Anvil for stake) and staked worker keys.

- `tiny_model`: a 4-layer tiny Llama (hidden 128) in a models directory the market serves.
- `market`: the app under uvicorn in a background thread of this process, restartable on the same port
  (the coordinator lives in the market process; workers connect to it over real sockets).
- `staked`: fresh worker accounts with ETH and the vault minimum staked (fresh, so other tests' accounts and
  chain snapshots are untouched).
- `InProcessWorker`: a `WorkerDaemon` on its own thread and event loop (fast cases); the failover test runs
  `globai worker run` subprocesses instead.
- `openai_client(market)`: the `openai` client on /openai/v1 with a key whose credit is funded.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from eth_account import Account
from eth_account.signers.local import LocalAccount

from globai.client import check, sign_in
from globai.dev.forker import Process, shared_forker
from globai.dev.services import free_port, globai_command
from globai.models.tiny import build_tiny_llama
from market.api import create_app
from market.config import Settings
from market.db.engine import make_engine
from market.db.migrate import upgrade
from worker.runtime.daemon import WorkerConfig, WorkerDaemon

SECRET = "runtime-test-secret-" + "0123456789abcdef" * 2
MODEL = "tiny-llama-h128-l4-s0"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    manifest = build_tiny_llama(models / MODEL, hidden=128, layers=4, seed=0)
    assert manifest.name == MODEL, manifest.name
    return models / MODEL


class MarketServer:
    """uvicorn serving `create_app(settings)` on a fixed port; stop()/start() simulate a market restart."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.app: Any = None

    def start(self) -> None:
        self.app = create_app(self.settings)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ws="websockets-sansio",
            ws_max_size=64 << 20,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("market did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        assert self.server is not None and self.thread is not None
        self.server.should_exit = True
        self.thread.join(timeout=20)

    @property
    def coordinator(self) -> Any:
        return self.app.state.ctx.coordinator

    def wait_workers(self, n: int, timeout: float = 60.0, *, model: str = MODEL) -> None:
        deadline = time.monotonic() + timeout
        while len(self.coordinator.links.live(model)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.coordinator.links.live(model))} of {n} workers connected")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def market(
    tiny_model: Path, deployment: Any, anvil: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MarketServer]:
    yield from serve_market(tiny_model.parent, deployment, anvil, tmp_path_factory)


def serve_market(
    models_dir: Path, deployment: Any, anvil: Any, tmp_path_factory: pytest.TempPathFactory, **overrides: Any
) -> Iterator[MarketServer]:
    """A uvicorn market serving every model in `models_dir` (SQLite, the session Anvil for stake); `overrides` are
    further settings."""
    var = tmp_path_factory.mktemp("market")
    settings = Settings(
        profile="test",
        database_url=f"sqlite:///{var / 'market.db'}",
        auth_secret=SECRET,  # type: ignore[arg-type]
        auth_domain="localhost",
        auth_uri="http://localhost",
        chain_id=31337,
        rpc_url=anvil.url,
        staking_vault_address=deployment.vault,
        job_escrow_address=deployment.escrow,
        token_address=deployment.token,
        models_dir=str(models_dir),
        blob_dir=str(var / "blobs"),
        stage_timeout_s=30.0,
        rate_limit_per_s=1000.0,
        rate_limit_burst=1000,
        **overrides,
    )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    server = MarketServer(settings, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _stake(anvil: Any, deployment: Any, account: LocalAccount) -> None:
    contracts = deployment.bind(anvil.client)
    admin = anvil.accounts[0]
    anvil.client.rpc("anvil_setBalance", account.address, hex(10**20))
    minimum = int(anvil.client.call(contracts.vault.functions.minStake()))
    anvil.client.transact(contracts.token.functions.transfer(account.address, minimum), admin)
    anvil.client.transact(contracts.token.functions.approve(contracts.vault.address, minimum), account)
    anvil.client.transact(contracts.vault.functions.stake(minimum), account)


@pytest.fixture(scope="session")
def staked(anvil: Any, deployment: Any) -> list[LocalAccount]:
    accounts = [Account.from_key(bytes([0x40 + i]) * 32) for i in range(6)]
    for account in accounts:
        _stake(anvil, deployment, account)
    return accounts


@dataclass
class InProcessWorker:
    daemon: WorkerDaemon
    thread: threading.Thread | None = None
    loop: asyncio.AbstractEventLoop | None = None
    stop_event: asyncio.Event | None = None
    errors: list[BaseException] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        market: MarketServer,
        account: LocalAccount,
        layers: str,
        cache: Path,
        *,
        model: str = MODEL,
        setup: Callable[[WorkerDaemon], None] | None = None,
        **kw: Any,
    ) -> InProcessWorker:
        """`setup(daemon)` runs after it registered and loaded its stage, before it connects."""
        config = WorkerConfig(
            market_url=market.url,
            account=account,
            model=model,
            layers=layers,
            threads=1,
            cache_dir=cache,
            show_progress=False,
            reconnect_min_s=0.05,
            reconnect_max_s=0.5,
            **kw,
        )
        worker = cls(WorkerDaemon(config))
        worker.daemon.prepare()
        if setup is not None:
            setup(worker.daemon)
        ready = threading.Event()

        def run() -> None:
            worker.loop = asyncio.new_event_loop()
            worker.stop_event = asyncio.Event()
            ready.set()
            try:
                worker.loop.run_until_complete(worker.daemon.serve(worker.stop_event))
            except BaseException as exc:  # surfaced by the test
                worker.errors.append(exc)
            finally:
                worker.loop.close()

        worker.thread = threading.Thread(target=run, daemon=True)
        worker.thread.start()
        ready.wait(10)
        return worker

    def stop(self) -> None:
        if self.loop is not None and self.stop_event is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        if self.thread is not None:
            self.thread.join(timeout=15)
        self.daemon.close()


def worker_process(
    market: MarketServer, account: LocalAccount, layers: str, cache: Path, log: Path, *, model: str = MODEL
) -> Process:
    """`globai worker run` as a real process (its own torch, its own socket), forked from the tests' preloaded
    interpreter (globai/dev/forker.py) to save each one the ~8 s of imports."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = ["worker", "run", "--market", market.url, "--key", "0x" + account.key.hex().removeprefix("0x")]
    args += ["--model", model, "--layers", layers, "--threads", "1", "--cache-dir", str(cache), "--no-progress"]
    return shared_forker(env, ROOT, log.parent).spawn(globai_command(*args), env, ROOT, log)


class Requester:
    def __init__(self, market: MarketServer, account: LocalAccount, *, model: str = MODEL) -> None:
        self.model = model
        self.http = httpx.Client(base_url=market.url, timeout=120)
        self.token = sign_in(self.http, account, ["requester"])
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def generate(self, prompt_ids: list[list[int]], max_new_tokens: int, **kw: Any) -> dict[str, Any]:
        """Start a run and read its NDJSON stream to the end; returns the `done` event (or raises on `error`)."""
        body = {"model": self.model, "prompt_ids": prompt_ids, "max_new_tokens": max_new_tokens, **kw}
        if "messages" in kw or "prompts" in kw:
            del body["prompt_ids"]
        run = check(self.http.post("/v1/inference", json=body, headers=self.headers)).json()
        events = self.stream(run["id"])
        assert events[-1]["event"] == "done", events[-1]
        return {**events[-1], "id": run["id"], "events": events}

    def stream(self, run_id: str) -> list[dict[str, Any]]:
        import json

        events = []
        with self.http.stream(
            "GET", f"/v1/inference/{run_id}/stream", params={"format": "ndjson"}, headers=self.headers
        ) as response:
            check(response)
            for line in response.iter_lines():
                if line:
                    events.append(json.loads(line))
        return events


def openai_client(market: MarketServer, requester: str = "0x" + "5c" * 20) -> Any:
    """The `openai` client on the market's /openai/v1 with a new API key of `requester`, whose credit is funded
    (written as confirm-funding leaves it: no escrow deposit needed for serving)."""
    from datetime import UTC, datetime, timedelta

    import openai

    from market.db.engine import make_session_factory
    from market.services import api_keys, credits

    engine = make_engine(market.settings.database_url)
    now = datetime.now(UTC)
    with make_session_factory(engine)() as session:
        key = api_keys.create_key(
            session, requester=requester, name="", spend_cap=None, rate_limit_per_min=600, now=now
        )
        job, _ = credits.create_credit(
            session, requester=requester, amount=10**18, deadline=now + timedelta(days=2), fee_bps=200,
            created_block=0, now=now,
        )  # fmt: skip
        job.status, job.funded_amount = "funded", 10**18
        session.commit()
        secret = key.key
    engine.dispose()
    return openai.OpenAI(base_url=f"{market.url}/openai/v1", api_key=secret, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def requester(market: MarketServer) -> Iterator[Requester]:
    r = Requester(market, Account.from_key(b"\x77" * 32))
    yield r
    r.http.close()

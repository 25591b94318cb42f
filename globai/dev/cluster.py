"""A whole GlobAI market on one machine, as child processes: Redis, the market API (uvicorn), a Celery worker and
beat, `globai worker run` daemons; plus the devnet helpers to stake workers and to post and fund a paid job over
REST with a permit. Used by `globai demo run` and by the end-to-end test (tests/e2e/), so both run the same code.

Every child is started in its own process group and ended (SIGTERM, then SIGKILL) by `Cluster.stop()`, which the
context manager calls on any exit, Ctrl-C included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from eth_account.signers.local import LocalAccount

from globai.chain.client import ChainClient
from globai.chain.deploy import Deployment
from globai.chain.permit import fund_job_with_permit
from globai.client import MarketClient
from globai.dev.forker import Forker, Process
from globai.dev.services import Service, free_port, globai_command, redis_service, wait_port
from globai.errors import GlobaiError

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-llama-h128-l4-s0"  # the name build_tiny_llama(hidden=128, layers=4, seed=0) gives
AUTH_SECRET = "globai-local-cluster-secret-" + "5f3a9c1e" * 4  # a local cluster's own market only


class ClusterError(GlobaiError):
    """A child process died or something did not happen in time."""


@dataclass
class ClusterConfig:
    var: Path  # everything the cluster writes: DB, blobs, models, worker caches, logs
    rpc_url: str
    deployment: Deployment
    operator: LocalAccount  # settler + slasher + treasury on the devnet (account 0)
    model: str = MODEL
    hidden: int = 128
    layers: int = 4
    # A built-in real model ("smollm2") instead of the tiny one: imported once into `var/models` and reused;
    # or `model_dir`, an already imported model directory to serve (linked, not copied). `prepare` sets
    # `model` and `layers` from its manifest.
    builtin: str | None = None
    model_dir: Path | None = None
    redis_url: str | None = None  # None: a private redis-server of our own (never a shared one)
    redis_db: int | None = None  # a private DB number on a shared Redis (tests: no other suite takes the tasks)
    slash_amount: int = 50 * 10**18
    extra_env: dict[str, str] = field(default_factory=dict)
    worker_metrics: bool = False  # each `globai worker run` serves Prometheus metrics on a free port of its own


@dataclass
class Child:
    name: str
    proc: Process
    log: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


class Cluster:
    def __init__(self, cfg: ClusterConfig, *, say: Callable[[str], None] = lambda _m: None) -> None:
        self.cfg = cfg
        self.say = say
        self.var = cfg.var
        self.logs = cfg.var / "logs"
        self.children: list[Child] = []
        self.redis: Service | None = None
        self.market_url = ""
        self.env: dict[str, str] = {}
        self.worker_metrics: dict[str, str] = {}  # worker name -> its /metrics URL (cfg.worker_metrics)
        self.forker: Forker | None = None  # started by `prepare`: children fork from a preloaded interpreter
        self.chain = ChainClient(cfg.rpc_url)
        self.contracts = cfg.deployment.bind(self.chain)

    # --- lifecycle -------------------------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.proc.poll() is None:
                try:
                    os.killpg(child.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for child in reversed(self.children):
            try:
                child.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.proc.wait()
        self.children.clear()
        if self.forker is not None:
            self.forker.close()
            self.forker = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def kill(self, name: str) -> None:
        """SIGKILL a child's process group (a crash, for tests) and forget it."""
        for child in [c for c in self.children if c.name == name]:
            try:
                os.killpg(child.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.proc.wait()
            self.children.remove(child)

    def restart(self, name: str) -> None:
        """kill -9 a child (a crash) and start it again with the same arguments (the market on the same port)."""
        (child,) = [c for c in self.children if c.name == name]
        self.kill(name)
        again = self._spawn(name, child.args, child.env)
        if name == "market":
            wait_port(int(self.env["GLOBAI_PORT"]), timeout=60, proc=again.proc)

    def restart_redis(self) -> None:
        """kill -9 the cluster's own redis-server and start an empty one on the same port (every queued message
        is lost, as after a crash without persistence). Only a Redis this cluster started."""
        if self.redis is None or self.redis.proc is None:
            raise ClusterError("restart_redis needs the cluster's own redis-server")
        port = int(self.redis.url.rsplit(":", 1)[1].split("/")[0])
        self.redis.proc.kill()
        self.redis.proc.wait()
        binary = self.redis.proc.args[0] if isinstance(self.redis.proc.args, list) else self.redis.proc.args
        proc = subprocess.Popen(
            [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(port, proc=proc)
        self.redis = Service(self.redis.url, proc)

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        proc = self._forker().spawn(globai_command(*args), env or self.env, ROOT, log)
        child = Child(name, proc, log, list(args), dict(env or self.env))
        self.children.append(child)
        return child

    def _forker(self) -> Forker:
        if self.forker is None:
            self.forker = Forker(self.env, ROOT, self.logs / "forker.log")
        return self.forker

    def check_alive(self) -> None:
        for child in self.children:
            if child.proc.poll() is not None:
                tail = child.log.read_text(errors="replace")[-800:] if child.log.exists() else ""
                raise ClusterError(f"{child.name} exited with {child.proc.returncode}; log {child.log}:\n{tail}")

    # --- services --------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Redis, a tiny model, a fresh SQLite DB (migrated), and the environment every child gets."""
        self.var.mkdir(parents=True, exist_ok=True)
        self.redis = redis_service(self.cfg.redis_url)
        redis_url = self.redis.url
        if self.cfg.redis_db is not None:
            redis_url = redis_url.rsplit("/", 1)[0] + f"/{self.cfg.redis_db}"
        models = self.var / "models"
        self._models(models)
        db = self.var / "market.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)  # one run, one market: a fresh DB
        db_url = f"sqlite:///{db}"
        port = free_port()
        self.market_url = f"http://127.0.0.1:{port}"
        d = self.cfg.deployment
        first_block = int(getattr(d, "first_block", 0) or 0)
        self.env = {
            **os.environ,
            "GLOBAI_PROFILE": "test",
            "GLOBAI_AUTH_SECRET": AUTH_SECRET,
            "GLOBAI_DATABASE_URL": db_url,
            "GLOBAI_REDIS_URL": redis_url,
            "GLOBAI_RPC_URL": self.cfg.rpc_url,
            "GLOBAI_CHAIN_ID": str(d.chain_id),
            "GLOBAI_STAKING_VAULT_ADDRESS": d.vault,
            "GLOBAI_JOB_ESCROW_ADDRESS": d.escrow,
            "GLOBAI_TOKEN_ADDRESS": d.token,
            "GLOBAI_OPERATOR_PRIVATE_KEY": "0x" + bytes(self.cfg.operator.key).hex(),
            "GLOBAI_ADMIN_ADDRESSES": json.dumps([self.cfg.operator.address]),
            "GLOBAI_MODELS_DIR": str(models),
            "GLOBAI_BLOB_DIR": str(self.var / "blobs"),
            "GLOBAI_SLASH_AMOUNT_WEI": str(self.cfg.slash_amount),
            "GLOBAI_MARKET_URL": self.market_url,
            "GLOBAI_HOST": "127.0.0.1",
            "GLOBAI_PORT": str(port),
            "GLOBAI_WORKERS": "1",
            "GLOBAI_AUTH_DOMAIN": "127.0.0.1",
            "GLOBAI_AUTH_URI": self.market_url,
            "GLOBAI_RATE_LIMIT_PER_S": "1000",
            "GLOBAI_RATE_LIMIT_BURST": "1000",
            "GLOBAI_VERIFY_INTERVAL_S": "1",
            "GLOBAI_SETTLE_INTERVAL_S": "1",
            "GLOBAI_INDEX_INTERVAL_S": "2",
            "GLOBAI_CHAIN_START_BLOCK": str(first_block),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            **self.cfg.extra_env,
        }
        # migrated by the market's own command, like every other step: this package imports nothing from `market`
        self._forker()  # started now: its imports run while the DB is migrated
        migrated = self.globai("market", "migrate")
        if migrated.returncode != 0:
            raise ClusterError(f"migrating {db_url} failed: {migrated.stderr.strip()[-800:]}")

    def _models(self, models: Path) -> None:
        """The model the cluster serves: a linked directory, a built-in real model (imported once), or tiny."""
        from globai.models.builtin import add_builtin
        from globai.models.manifest import load_manifest
        from globai.models.tiny import build_tiny_llama

        models.mkdir(parents=True, exist_ok=True)
        if self.cfg.model_dir is not None:
            source = self.cfg.model_dir.resolve()
            link = models / source.name
            if not link.exists():
                link.symlink_to(source, target_is_directory=True)
            manifest = load_manifest(link)
        elif self.cfg.builtin is not None:
            directory, manifest, imported = add_builtin(self.cfg.builtin, models)
            self.say(f"• model {manifest.name} {'imported into' if imported else 'reused from'} {directory}")
        else:
            if not (models / self.cfg.model / "manifest.json").exists():
                build_tiny_llama(models / self.cfg.model, hidden=self.cfg.hidden, layers=self.cfg.layers, seed=0)
            return
        self.cfg.model, self.cfg.layers = manifest.name, manifest.num_layers

    def start_market(self, name: str = "market", *, port: int | None = None) -> str:
        """`globai market serve`; another `port` (and name) starts one more market process on the same DB and
        Redis (they share the swarm with GLOBAI_SHARED_COORDINATOR). Returns its URL."""
        env = self.env if port is None else {**self.env, "GLOBAI_PORT": str(port)}
        child = self._spawn(name, ["market", "serve"], env)
        try:
            wait_port(int(env["GLOBAI_PORT"]), timeout=60, proc=child.proc)
        except GlobaiError as exc:
            self.check_alive()
            raise ClusterError(str(exc)) from exc
        return f"http://127.0.0.1:{env['GLOBAI_PORT']}"

    def start_celery_worker(self) -> None:
        self._spawn("celery-worker", ["market", "celery-worker", "--pool", "solo", "--loglevel", "INFO"])

    def start_celery_beat(self) -> None:
        sched = self.var / "celerybeat-schedule"
        for p in self.var.glob("celerybeat-schedule*"):
            p.unlink()
        self._spawn("celery-beat", ["market", "celery-beat", "--schedule", str(sched), "--loglevel", "INFO"])

    def start_worker(
        self,
        name: str,
        account: LocalAccount,
        *,
        layers: str,
        operator: str,
        cheat: str | None = None,
        market_url: str | None = None,  # default the cluster's market; "a,b,c": several market processes
    ) -> Child:
        env = {**self.env, **({"GLOBAI_WORKER_CHEAT": cheat} if cheat else {})}
        env.pop("GLOBAI_OPERATOR_PRIVATE_KEY", None)  # a worker has only its own key
        metrics: list[str] = []
        if self.cfg.worker_metrics:
            port = free_port()
            metrics = ["--metrics-port", str(port)]
            self.worker_metrics[name] = f"http://127.0.0.1:{port}/metrics"
        return self._spawn(
            name,
            [
                "worker",
                "run",
                "--market",
                market_url or self.market_url,
                "--key",
                "0x" + bytes(account.key).hex(),
                "--model",
                self.cfg.model,
                "--layers",
                layers,
                "--threads",
                "1",
                "--operator",
                operator,
                "--cache-dir",
                str(self.var / "cache" / name),
                "--no-progress",
                *metrics,
            ],
            env,
        )

    def start_trainer(self, name: str, account: LocalAccount, *, operator: str) -> Child:
        """A `globai worker train` process: claims DiLoCo training tasks of this market."""
        env = dict(self.env)
        env.pop("GLOBAI_OPERATOR_PRIVATE_KEY", None)
        return self._spawn(
            name,
            [
                "worker",
                "train",
                "--market",
                self.market_url,
                "--key",
                "0x" + bytes(account.key).hex(),
                "--operator",
                operator,
                "--threads",
                "1",
                "--cache-dir",
                str(self.var / "cache" / name),
            ],
            env,
        )

    def connected(self) -> list[dict[str, Any]]:
        for attempt in range(2):
            r = httpx.get(
                f"{self.market_url}/v1/models/{self.cfg.model}/coverage",
                timeout=10,
                headers={"Authorization": f"Bearer {self._anon_token()}"},
            )
            if r.status_code == 401 and attempt == 0:  # the cached sign-in expired (a long bench): sign in again
                self._token = None
                continue
            break
        r.raise_for_status()
        return list(r.json()["workers"])

    _token: str | None = None

    def _anon_token(self) -> str:
        if self._token is None:
            self._token = MarketClient(self.market_url, self.cfg.operator).sign_in()
        return self._token

    def wait_workers(self, addresses: list[str], *, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        want = {a.lower() for a in addresses}
        while True:
            self.check_alive()
            have = {w["address"].lower() for w in self.connected()}
            if want <= have:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"{len(want - have)} worker(s) not connected after {timeout:.0f} s")
            time.sleep(0.2)

    # --- chain (devnet: the operator is the treasury) -------------------------------------------------------
    def give(self, account: LocalAccount, glb: int) -> None:
        """ETH for gas and `glb` wei of GLB from the treasury."""
        self.chain.rpc("anvil_setBalance", account.address, hex(10**20))
        if glb:
            self.chain.transact(self.contracts.token.functions.transfer(account.address, glb), self.cfg.operator)

    def stake(self, account: LocalAccount, amount: int) -> None:
        self.give(account, amount)
        c = self.contracts
        self.chain.transact(c.token.functions.approve(c.vault.address, amount), account)
        self.chain.transact(c.vault.functions.stake(amount), account)

    def requester(self, account: LocalAccount) -> MarketClient:
        return MarketClient(self.market_url, account)

    def post_and_fund(
        self, account: LocalAccount, spec: dict[str, Any], *, price_per_unit: int, budget: int, hours: float = 1.0
    ) -> tuple[str, str]:
        """POST /v1/jobs, fund with permit + fundJobWithPermit (one transaction), confirm funding.
        Returns (job id, funding tx hash)."""
        client = self.requester(account)
        deadline = datetime.now(UTC) + timedelta(hours=hours)
        created = client.request(
            "POST",
            "/v1/jobs",
            json={
                "spec": spec,
                "price_per_unit": str(price_per_unit),
                "budget": str(budget),
                "deadline": deadline.isoformat(),
                "replicas": 1,
            },
        )
        job_id = created["job"]["id"]
        receipt = fund_job_with_permit(self.chain, account, created["escrow"])
        client.request("POST", f"/v1/jobs/{job_id}/confirm-funding")
        return job_id, "0x" + bytes(receipt["transactionHash"]).hex().removeprefix("0x")

    def wait(self, what: str, check: Callable[[], Any], *, timeout: float, every: float = 0.25) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.logs}")
            time.sleep(every)

    def globai(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            globai_command(*args),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

"""`globai dev`: the whole local stack (devnet, a private Redis, the market, a Celery worker and beat) as detached
processes, recorded in one state file (`var/dev/state.json`, or GLOBAI_DEV_STATE).

Every `globai` command reads its endpoints from that file when no GLOBAI_* variable names them (`apply_env`), so
the market, the workers, the requester and the auditor all talk to the same chain, Redis and market. Nothing here
touches a service it did not start: Redis is a private redis-server on a free port, ports in use are skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from globai.chain.local import pid_alive
from globai.dev.services import globai_command
from globai.errors import ConfigError

STATE_ENV = "GLOBAI_DEV_STATE"
DEFAULT_STATE = Path("var/dev/state.json")
MARKET_PORT = 8000
# The devnet's account 0 (a well-known Anvil test key): settler, slasher, treasury and admin of the local market.
DEVNET_OPERATOR_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEVNET_OPERATOR = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def state_path() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE)


@dataclass
class StackState:
    var: str
    rpc_url: str
    chain_id: int
    genesis_hash: str
    token: str
    vault: str
    escrow: str
    first_block: int
    redis_url: str
    market_url: str
    database_url: str
    models_dir: str
    auth_secret: str
    devnet_started: bool = False
    pids: dict[str, int] = field(default_factory=dict)

    # --- environment ------------------------------------------------------------------------------------------
    def public_env(self) -> dict[str, str]:
        """What a client command needs: endpoints and contract addresses (no secrets)."""
        return {
            "GLOBAI_RPC_URL": self.rpc_url,
            "GLOBAI_CHAIN_ID": str(self.chain_id),
            "GLOBAI_TOKEN_ADDRESS": self.token,
            "GLOBAI_STAKING_VAULT_ADDRESS": self.vault,
            "GLOBAI_JOB_ESCROW_ADDRESS": self.escrow,
            "GLOBAI_CHAIN_START_BLOCK": str(self.first_block),
            "GLOBAI_REDIS_URL": self.redis_url,
            "GLOBAI_MARKET_URL": self.market_url,
            "GLOBAI_DATABASE_URL": self.database_url,
            "GLOBAI_MODELS_DIR": self.models_dir,
        }

    def server_env(self) -> dict[str, str]:
        """What the market and Celery get on top: their secret, operator key, admin list, data dirs, port."""
        port = self.market_url.rsplit(":", 1)[1]
        var = Path(self.var)
        return {
            **self.public_env(),
            "GLOBAI_PROFILE": "dev",
            "GLOBAI_AUTH_SECRET": self.auth_secret,
            "GLOBAI_AUTH_DOMAIN": f"127.0.0.1:{port}",
            "GLOBAI_AUTH_URI": self.market_url,
            "GLOBAI_HOST": "127.0.0.1",
            "GLOBAI_PORT": port,
            "GLOBAI_OPERATOR_PRIVATE_KEY": DEVNET_OPERATOR_KEY,
            "GLOBAI_ADMIN_ADDRESSES": json.dumps([DEVNET_OPERATOR]),
            "GLOBAI_BLOB_DIR": str(var / "blobs"),
            "GLOBAI_TRAINING_DIR": str(var / "training"),
            "GLOBAI_VERIFY_INTERVAL_S": "1",
            "GLOBAI_SETTLE_INTERVAL_S": "2",
            "GLOBAI_INDEX_INTERVAL_S": "2",
            "PYTHONUNBUFFERED": "1",
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.chmod(0o600)  # holds the local market's auth secret
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> StackState:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not a dev stack state file ({exc.__class__.__name__}); remove it") from None


def read_state(path: Path | None = None) -> StackState | None:
    path = path or state_path()
    return StackState.load(path) if path.is_file() else None


def apply_env(environ: dict[str, str] | Any = os.environ) -> StackState | None:
    """Fill GLOBAI_* endpoints from the state file where the environment names none; returns the state used.

    An explicit GLOBAI_RPC_URL or GLOBAI_MARKET_URL other than the stack's wins, and then nothing else of the
    stack is taken (mixing the stack's contracts with another chain is what this prevents).
    """
    try:
        state = read_state()
    except ConfigError:
        return None
    if state is None:
        return None
    rpc, market = environ.get("GLOBAI_RPC_URL"), environ.get("GLOBAI_MARKET_URL")
    if (rpc and rpc != state.rpc_url) or (market and market != state.market_url):
        return None
    for key, value in state.public_env().items():
        environ.setdefault(key, value)
    return state


# --- processes ----------------------------------------------------------------------------------------------------
def spawn(name: str, args: list[str], *, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    """Start `args` detached (its own session: it outlives this command), output to logs/<name>.log."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        return subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def stop_pid(pid: int, *, timeout: float = 5.0) -> bool:
    """SIGTERM the process group `pid` leads, then SIGKILL after `timeout`; False if it was not running."""
    if not pid_alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def genesis_hash(client: Any) -> str:
    return "0x" + bytes(client.w3.eth.get_block(0)["hash"]).hex().removeprefix("0x")


# --- up / down ----------------------------------------------------------------------------------------------------
def up(
    *, var: Path, chain_port: int | None, market_port: int | None, say: Callable[[str], None] = lambda _m: None
) -> StackState:
    """Start what is not running yet; reuse what runs (its state file says where)."""
    from globai.dev import devnet
    from globai.dev.services import free_port, port_open, wait_port

    path = state_path()
    old = read_state(path)
    if old is not None and all(pid_alive(p) for p in old.pids.values()) and old.pids:
        say(f"the stack is already up ({path}); `globai dev down` stops it")
        return old
    if old is not None:  # a half-dead stack: stop what is left of it first
        down(say=say, keep_devnet=True)

    var.mkdir(parents=True, exist_ok=True)
    logs = var / "logs"
    say("[1/5] devnet (Anvil + contracts)...")
    if chain_port is not None and devnet.running_pid(devnet.DevnetPaths()) is None and port_open(chain_port):
        raise ConfigError(f"port {chain_port} is in use by another process; choose another with --chain-port")
    rpc, record, devnet_started, deployed = devnet.up(chain_port)  # None: 8545, or a free port when it is taken
    from globai.chain.client import ChainClient

    client = ChainClient(rpc)
    genesis = genesis_hash(client)
    say(
        f"      {rpc} chain {record.chain_id} ({'started' if devnet_started else 'reused'}"
        f"{', contracts deployed' if deployed else ''})"
    )

    say("[2/5] private Redis...")
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError("redis-server not found: install it (apt-get install redis-server)")
    redis_port = free_port()
    redis = spawn(
        "redis",
        [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        env=dict(os.environ),
        logs=logs,
    )
    wait_port(redis_port, timeout=10, proc=redis)
    say(f"      redis://127.0.0.1:{redis_port}/0 (ours alone; stopped by `globai dev down`)")

    say("[3/5] market database...")
    db = var / "market.db"
    if old is not None and old.genesis_hash != genesis or deployed:
        for suffix in ("", "-wal", "-shm"):  # a new chain: the old DB describes jobs that no longer exist
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    database_url = f"sqlite:///{db.resolve()}"
    # the market's own command migrates it (this package imports nothing from `market`)
    migrated = subprocess.run(
        globai_command("market", "migrate"),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "GLOBAI_DATABASE_URL": database_url},
    )
    if migrated.returncode != 0:
        raise ConfigError(f"migrating {database_url} failed: {migrated.stderr.strip()[-400:]}")
    say(f"      {database_url}")

    mport = market_port or MARKET_PORT
    if port_open(mport):
        if market_port is not None:
            raise ConfigError(f"port {mport} is in use by another process; choose another with --market-port")
        mport = free_port()
    state = StackState(
        var=str(var.resolve()),
        rpc_url=rpc,
        chain_id=record.chain_id,
        genesis_hash=genesis,
        token=record.token,
        vault=record.vault,
        escrow=record.escrow,
        first_block=record.first_block,
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        market_url=f"http://127.0.0.1:{mport}",
        database_url=database_url,
        models_dir=str((var / "models").resolve()),
        auth_secret=old.auth_secret if old is not None else secrets.token_hex(32),
        devnet_started=devnet_started or (old is not None and old.devnet_started),
        pids={"redis": redis.pid},
    )
    Path(state.models_dir).mkdir(parents=True, exist_ok=True)
    state.save(path)
    env = {**os.environ, **state.server_env()}

    say(f"[4/5] market at {state.market_url}...")
    market = spawn("market", globai_command("market", "serve"), env=env, logs=logs)
    state.pids["market"] = market.pid
    state.save(path)
    try:
        wait_port(mport, timeout=180, proc=market)  # the market imports torch: slow on a loaded machine
    except ConfigError:
        raise ConfigError(f"the market did not start; see {logs / 'market.log'}") from None

    say("[5/5] Celery worker (verification, settlement, indexer) and beat...")
    state.pids["celery-worker"] = spawn(
        "celery-worker",
        globai_command(
            "market",
            "celery-worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            # one local worker: no peers to sync with; stops in < 2 s on SIGTERM
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ),
        env=env,
        logs=logs,
    ).pid
    for p in var.glob("celerybeat-schedule*"):
        p.unlink()
    state.pids["celery-beat"] = spawn(
        "celery-beat",
        globai_command("market", "celery-beat", "--schedule", str(var / "celerybeat-schedule"), "--loglevel", "INFO"),
        env=env,
        logs=logs,
    ).pid
    state.save(path)
    return state


def down(*, say: Callable[[str], None] = lambda _m: None, keep_devnet: bool = False) -> bool:
    """Stop every process the state file records (and the devnet if `dev up` started it)."""
    path = state_path()
    state = read_state(path)
    if state is None:
        say(f"no dev stack recorded at {path}")
        return False
    for name, pid in reversed(list(state.pids.items())):
        started = time.monotonic()
        stopped = stop_pid(pid)
        took = f" in {time.monotonic() - started:.1f} s" if stopped else ""
        say(f"{name:14s} {'stopped' + took if stopped else 'was not running'} (pid {pid})")
    state.pids = {}
    if state.devnet_started and not keep_devnet:
        from globai.dev import devnet

        say(
            f"{'devnet':14s} {'stopped' if devnet.stop_anvil(devnet.DevnetPaths()) else 'was not running'} "
            "(its chain state is kept)"
        )
        state.devnet_started = False
    state.save(path)
    return True

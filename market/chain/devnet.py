"""`globai devnet`: a persistent local Anvil with the GlobAI contracts deployed once.

State lives in `hardhat-free-devnet/state/` (Anvil's state dump, written every second so it survives
SIGKILL, plus a pid file); addresses in `hardhat-free-devnet/deployments/<chainId>.json`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from market.chain.client import ChainClient
from market.chain.deploy import Deployment, deploy_all
from market.devservices import DEVNET_DIR, anvil_command, dev_accounts, port_open, wait_port
from market.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8545


def _default_root() -> Path:
    """GLOBAI_DEVNET_DIR: a devnet of its own (tests, a second checkout) instead of the repository's."""
    return Path(os.environ.get("GLOBAI_DEVNET_DIR") or DEVNET_DIR)


@dataclass(frozen=True)
class DevnetPaths:
    root: Path = field(default_factory=_default_root)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "anvil-state.json"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "anvil.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "anvil.log"

    def deployment_file(self, chain_id: int) -> Path:
        return self.root / "deployments" / f"{chain_id}.json"


def rpc_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _pid_alive(pid: int) -> bool:
    try:  # reap it if it is our own dead child (a zombie still answers kill(pid, 0))
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_pid(paths: DevnetPaths) -> int | None:
    try:
        pid = int(paths.pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if _pid_alive(pid) else None


def start_anvil(port: int, paths: DevnetPaths) -> int:
    """Start Anvil detached (it outlives this command) with persisted state; return its pid."""
    if port_open(port):
        raise ConfigError(f"port {port} is already in use by another process; choose another with --port")
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    cmd = anvil_command(port, state_file=paths.state_file)
    if paths.state_file.is_file() and paths.state_file.stat().st_size == 0:
        paths.state_file.unlink()  # an empty dump (killed mid-write) would make anvil refuse to start
    with open(paths.log_file, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, start_new_session=True)
    wait_port(port, timeout=15, proc=proc)
    paths.pid_file.write_text(f"{proc.pid} {port}\n")
    return proc.pid


def stop_anvil(paths: DevnetPaths, *, timeout: float = 10.0) -> bool:
    """Stop the devnet Anvil cleanly (SIGTERM: it writes its state); False if none was running."""
    pid = running_pid(paths)
    if pid is None:
        paths.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    paths.pid_file.unlink(missing_ok=True)
    return True


def read_deployment(paths: DevnetPaths, chain_id: int) -> Deployment:
    """The deployment record for `chain_id`, or a one-line ConfigError."""
    path = paths.deployment_file(chain_id)
    if not path.is_file():
        raise ConfigError(f"no deployment for chain {chain_id} at {path}: run `globai devnet up` (or deploy there)")
    deployment = Deployment.load(path)
    if deployment.chain_id != chain_id:
        raise ConfigError(f"deployment file {path} is for chain {deployment.chain_id}, not {chain_id}")
    return deployment


def deployment_is_live(client: ChainClient, deployment: Deployment) -> bool:
    """True when every recorded contract has code on the chain (a wiped chain needs a new deployment)."""
    return all(len(client.w3.eth.get_code(c.address)) > 0 for c in deployment.contracts.values())  # type: ignore[arg-type]


def ensure_deployed(client: ChainClient, paths: DevnetPaths) -> tuple[Deployment, bool]:
    """Deploy the contracts unless a live deployment is recorded; return (deployment, deployed_now)."""
    chain_id = client.check()
    path = paths.deployment_file(chain_id)
    if path.is_file():
        deployment = read_deployment(paths, chain_id)
        from market.chain.artifacts import artifacts_hash

        stale = bool(deployment.artifacts_hash) and deployment.artifacts_hash != artifacts_hash()
        if deployment_is_live(client, deployment) and not stale:
            return deployment, False
        log.warning("recorded deployment on chain %s is %s; deploying again", chain_id,
                    "of other contract sources" if stale else "without code")
    admin = dev_accounts(1)[0]
    deployment = deploy_all(client, admin=admin, treasury=admin)
    deployment.save(path)
    return deployment, True


def up(port: int | None = DEFAULT_PORT, paths: DevnetPaths | None = None) -> tuple[str, Deployment, bool, bool]:
    """Start (or reuse) the devnet and make sure it is deployed: (rpc url, record, started, deployed).

    `port=None`: the default port, or a free one when another process holds it."""
    paths = paths or DevnetPaths()
    started = False
    pid = running_pid(paths)
    if pid is not None:
        port = int(paths.pid_file.read_text().split()[1])
    else:
        if port is None:
            from market.devservices import free_port

            port = free_port() if port_open(DEFAULT_PORT) else DEFAULT_PORT
        start_anvil(port, paths)
        started = True
    client = ChainClient(rpc_url(port))
    client.check()
    record, deployed = ensure_deployed(client, paths)
    return rpc_url(port), record, started, deployed


def connect(url: str, paths: DevnetPaths | None = None) -> tuple[ChainClient, Deployment]:
    """A client for `url` and its deployment record; one-line errors for RPC down / unknown chain."""
    client = ChainClient(url, retries=1)
    return client, read_deployment(paths or DevnetPaths(), client.check())

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

from globai.chain.client import ChainClient
from globai.chain.deploy import Deployment, deploy_all, deployment_is_live
from globai.chain.local import (
    DEFAULT_PORT,
    DevnetPaths,
    dev_accounts,
    pid_alive,
    read_deployment,
    rpc_url,
    running_pid,
    running_port,
)
from globai.dev.services import anvil_command, free_port, port_open, wait_port
from globai.errors import ConfigError

log = logging.getLogger(__name__)


def start_anvil(port: int, paths: DevnetPaths) -> int:
    """Start Anvil detached (it outlives this command) with persisted state; return its pid."""
    # A devnet killed a moment ago may still hold its socket (a multi-threaded process shows as a zombie before
    # its last thread has closed its files): give the port a few seconds to come free before refusing it.
    deadline = time.monotonic() + 5
    while port_open(port):
        if time.monotonic() > deadline:
            raise ConfigError(f"port {port} is already in use by another process; choose another with --port")
        time.sleep(0.1)
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
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    paths.pid_file.unlink(missing_ok=True)
    return True


def ensure_deployed(client: ChainClient, paths: DevnetPaths) -> tuple[Deployment, bool]:
    """Deploy the contracts unless a live deployment is recorded; return (deployment, deployed_now)."""
    chain_id = client.check()
    path = paths.deployment_file(chain_id)
    if path.is_file():
        deployment = read_deployment(paths, chain_id)
        from globai.chain.artifacts import artifacts_hash

        stale = bool(deployment.artifacts_hash) and deployment.artifacts_hash != artifacts_hash()
        if deployment_is_live(client, deployment) and not stale:
            return deployment, False
        log.warning(
            "recorded deployment on chain %s is %s; deploying again",
            chain_id,
            "of other contract sources" if stale else "without code",
        )
    admin = dev_accounts(1)[0]
    deployment = deploy_all(client, admin=admin, treasury=admin)
    deployment.save(path)
    return deployment, True


def up(port: int | None = DEFAULT_PORT, paths: DevnetPaths | None = None) -> tuple[str, Deployment, bool, bool]:
    """Start (or reuse) the devnet and make sure it is deployed: (rpc url, record, started, deployed).

    `port=None`: the default port, or a free one when another process holds it."""
    paths = paths or DevnetPaths()
    started = False
    running = running_port(paths)
    if running is not None:
        port = running
    else:
        if port is None:
            port = free_port() if port_open(DEFAULT_PORT) else DEFAULT_PORT
        start_anvil(port, paths)
        started = True
    client = ChainClient(rpc_url(port))
    client.check()
    record, deployed = ensure_deployed(client, paths)
    return rpc_url(port), record, started, deployed

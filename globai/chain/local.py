"""The local development chain as a client sees it: where `globai devnet up` left it listening, its deployment
records, and Anvil's well-known funded accounts.

Read-only facts, so the worker and the CLI can find the devnet without importing the tooling that starts it;
starting, stopping and deploying the devnet is `globai.dev.devnet`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from globai.errors import ConfigError

if TYPE_CHECKING:  # web3 and eth-account load only when a chain is actually used (the CLI starts fast)
    from eth_account.signers.local import LocalAccount

    from globai.chain.client import ChainClient
    from globai.chain.deploy import Deployment

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVNET_DIR = REPO_ROOT / "hardhat-free-devnet"
DEFAULT_PORT = 8545
DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"


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


def pid_alive(pid: int) -> bool:
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
    try:  # exited but not yet reaped by init (detached children are init's): dead
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return True


def running_pid(paths: DevnetPaths) -> int | None:
    try:
        pid = int(paths.pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def running_port(paths: DevnetPaths) -> int | None:
    """The port of the running devnet, or None when none runs."""
    if running_pid(paths) is None:
        return None
    return int(paths.pid_file.read_text().split()[1])


def read_deployment(paths: DevnetPaths, chain_id: int) -> Deployment:
    """The deployment record for `chain_id`, or a one-line ConfigError."""
    from globai.chain.deploy import Deployment

    path = paths.deployment_file(chain_id)
    if not path.is_file():
        raise ConfigError(f"no deployment for chain {chain_id} at {path}: run `globai devnet up` (or deploy there)")
    deployment = Deployment.load(path)
    if deployment.chain_id != chain_id:
        raise ConfigError(f"deployment file {path} is for chain {deployment.chain_id}, not {chain_id}")
    return deployment


def connect(url: str, paths: DevnetPaths | None = None) -> tuple[ChainClient, Deployment]:
    """A client for `url` and its deployment record; one-line errors for RPC down / unknown chain."""
    from globai.chain.client import ChainClient

    client = ChainClient(url, retries=1)
    return client, read_deployment(paths or DevnetPaths(), client.check())


def dev_accounts(n: int = 10, mnemonic: str = DEFAULT_MNEMONIC) -> list[LocalAccount]:
    """Anvil's default funded accounts as eth-account LocalAccounts."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    return [Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/0'/0/{i}") for i in range(n)]

"""Local services for the demo and the tests: free ports, a private Redis, an Anvil process.

Used where no service is running yet (a newcomer's fresh machine); production points at real services
through Settings instead.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from globai.chain.local import DEVNET_DIR
from globai.dev.forker import Process
from globai.errors import ConfigError

ANVIL_BIN = DEVNET_DIR / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


def globai_command(*args: str) -> list[str]:
    """`globai ARGS` as a child of this interpreter (the dev helpers run the market only as commands)."""
    return [sys.executable, "-c", "from market.cli import main; main()", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_port(port: int, *, timeout: float = 10.0, proc: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise ConfigError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        time.sleep(0.02)
    raise ConfigError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Service:
    """A child process serving on a local port; `stop()` ends it."""

    url: str
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def redis_service(url: str | None = None) -> Service:
    """Use the Redis at `url` when one is given, else start a private redis-server on a free port.

    Never picks up a Redis it was not told about: another program's data may live there (a shared :6379 is used
    only when its URL is passed explicitly, e.g. through GLOBAI_REDIS_URL).
    """
    if url is not None:
        return Service(url)
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            "redis-server not found: install it (apt-get install redis-server) or pass a Redis of your own "
            "with GLOBAI_REDIS_URL"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc=proc)
    return Service(f"redis://127.0.0.1:{port}/0", proc)


def anvil_command(port: int, *, state_file: Path | None = None, chain_id: int = 31337) -> list[str]:
    if not ANVIL_BIN.is_file():
        raise ConfigError(f"anvil not found at {ANVIL_BIN}: run `npm ci` in {DEVNET_DIR}")
    cmd = [str(ANVIL_BIN), "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(chain_id), "--silent"]
    if state_file is not None:
        # --state alone is written only on a clean exit; the interval makes it survive SIGKILL.
        cmd += ["--state", str(state_file), "--state-interval", "1"]
    return cmd


def anvil_service(*, port: int | None = None, state_file: Path | None = None, chain_id: int = 31337) -> Service:
    """Start an Anvil child process and wait until it answers."""
    port = port or free_port()
    proc = subprocess.Popen(
        anvil_command(port, state_file=state_file, chain_id=chain_id),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port(port, proc=proc)
    return Service(f"http://127.0.0.1:{port}", proc)

"""`globai devnet`: idempotent deployment, state that survives kill -9, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from globai.chain.client import ChainClient
from globai.chain.local import dev_accounts
from globai.dev import devnet
from globai.dev.services import anvil_service, free_port
from globai.errors import ConfigError

GLB = 10**18


@pytest.fixture
def paths(tmp_path: Path):
    p = devnet.DevnetPaths(tmp_path / "devnet")
    yield p
    devnet.stop_anvil(p)


def test_up_twice_deploys_once_and_kill9_keeps_addresses_balances_and_events(paths) -> None:
    port = free_port()
    url, first, started, deployed = devnet.up(port, paths)
    assert started and deployed
    assert paths.deployment_file(31337).is_file()

    url2, second, started2, deployed2 = devnet.up(port, paths)
    assert (url2, started2, deployed2) == (url, False, False)
    assert second.to_json() == first.to_json()

    client = ChainClient(url)
    contracts = first.bind(client)
    admin, worker = dev_accounts(2)
    client.transact(contracts.token.functions.transfer(worker.address, 500 * GLB), admin)
    client.transact(contracts.token.functions.approve(first.vault, 200 * GLB), worker)
    client.transact(contracts.vault.functions.stake(200 * GLB), worker)
    events_before = client.get_logs([contracts.vault], 0)
    assert [e.name for e in events_before][-1] == "Staked"
    # Anvil dumps its state every second (--state-interval 1): wait for two dumps that start after the stake
    # (the first may have begun before it), however slow a loaded machine makes them.
    staked_at = time.time()
    deadline = time.monotonic() + 30
    dumps = 0
    last = 0.0
    while dumps < 2 and time.monotonic() < deadline:
        mtime = paths.state_file.stat().st_mtime if paths.state_file.exists() else 0.0
        if mtime > max(staked_at, last):
            dumps, last = dumps + 1, mtime
        time.sleep(0.05)
    assert dumps == 2, "anvil did not write its state file twice within 30 s"

    os.kill(devnet.running_pid(paths), signal.SIGKILL)
    deadline = time.monotonic() + 5
    while devnet.running_pid(paths) is not None and time.monotonic() < deadline:
        time.sleep(0.05)

    url3, third, started3, deployed3 = devnet.up(port, paths)
    assert started3 and not deployed3
    assert third.to_json() == first.to_json()
    client = ChainClient(url3)
    contracts = third.bind(client)
    assert client.call(contracts.token.functions.balanceOf(worker.address)) == 300 * GLB
    assert client.call(contracts.vault.functions.stakeOf(worker.address)) == 200 * GLB
    events_after = client.get_logs([contracts.vault], 0)
    assert [(e.name, e.args, e.tx_hash) for e in events_after] == [(e.name, e.args, e.tx_hash) for e in events_before]


def _globai(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("globai")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)


def test_rpc_down_is_one_line_error() -> None:
    result = _globai("devnet", "status", "--rpc", f"http://127.0.0.1:{free_port()}")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "not reachable" in result.stderr


def test_unknown_chain_is_one_line_error() -> None:
    # A chain with no deployment file must be named in the error.
    service = anvil_service(chain_id=424242)
    try:
        result = _globai("devnet", "status", "--rpc", service.url)
    finally:
        service.stop()
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "no deployment for chain 424242" in result.stderr


def test_missing_deployment_file_is_clear(paths) -> None:
    with pytest.raises(ConfigError, match="no deployment for chain 31337"):
        devnet.read_deployment(paths, 31337)
    paths.deployment_file(31337).parent.mkdir(parents=True)
    paths.deployment_file(31337).write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        devnet.read_deployment(paths, 31337)


def test_up_redeploys_a_recorded_deployment_of_other_contract_sources(paths) -> None:
    """A devnet deployed before the contracts changed would answer with another ABI: `up` deploys again."""
    import json

    port = free_port()
    _, first, _, _ = devnet.up(port, paths)
    record = paths.deployment_file(31337)
    data = json.loads(record.read_text())
    data["artifactsHash"] = "00" * 32
    record.write_text(json.dumps(data))
    _, second, started, deployed = devnet.up(port, paths)
    assert deployed and not started
    assert second.escrow != first.escrow
    assert json.loads(record.read_text())["artifactsHash"] == second.artifacts_hash != "00" * 32

"""End to end through the real processes: `globai market migrate` + `serve` (uvicorn) on Anvil, a worker that
stakes and registers, and `globai job post|fund|get|list|cancel` as the requester."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from market.cli import app as cli
from tests.market.conftest import TEST_SECRET, login, profile

pytestmark = pytest.mark.timeout(240)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(chain: Any, deployment: Any, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = _free_port()
    env = {
        **os.environ,
        "GLOBAI_PROFILE": "test",
        "GLOBAI_AUTH_SECRET": TEST_SECRET,
        "GLOBAI_DATABASE_URL": f"sqlite:///{tmp_path / 'market.db'}",
        "GLOBAI_RPC_URL": chain.url,
        "GLOBAI_STAKING_VAULT_ADDRESS": deployment.vault,
        "GLOBAI_JOB_ESCROW_ADDRESS": deployment.escrow,
        "GLOBAI_PORT": str(port),
        "GLOBAI_AUTH_DOMAIN": f"127.0.0.1:{port}",
        "GLOBAI_MARKET_URL": f"http://127.0.0.1:{port}",
    }
    globai = [sys.executable, "-c", "from market.cli import main; main()"]
    subprocess.run([*globai, "market", "migrate"], env=env, check=True, capture_output=True)
    log = tmp_path / "server.log"  # a file, not a pipe: an unread pipe can fill up and block the server
    server = subprocess.Popen([*globai, "market", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        # The app imports torch (inference routes): allow for a slow start on a loaded machine.
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"market did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", env
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_newcomer_flow(
    served: tuple[str, dict[str, str]], chain: Any, deployment: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, env = served
    contracts = deployment.bind(chain.client)
    admin, worker, requester = chain.accounts[0], chain.accounts[5], chain.accounts[6]
    minimum = int(chain.client.call(contracts.vault.functions.minStake()))
    for who in (worker, requester):
        chain.client.transact(contracts.token.functions.transfer(who.address, 10 * minimum), admin)

    # worker: stake, sign in, register with a measured profile -> eligible
    chain.client.transact(contracts.token.functions.approve(contracts.vault.address, minimum), worker)
    chain.client.transact(contracts.vault.functions.stake(minimum), worker)
    from tests.market.conftest import Clock

    with httpx.Client(base_url=url) as http:
        headers = login(http, Clock(), worker)  # type: ignore[arg-type]
        registered = http.post("/v1/workers", headers=headers, json=profile()).json()
        assert registered["eligible"] is True and registered["stake"] == str(minimum)

    # requester: the CLI, configured only through the environment
    for key, value in env.items():
        if key.startswith("GLOBAI_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("GLOBAI_PRIVATE_KEY", "0x" + bytes(requester.key).hex())
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "kind": "training",
                "model": "tiny-llama",
                "dataset": "d",
                "rounds": 1,
                "tasks_per_round": 2,
                "local_steps": 3,
                "layer_start": 0,
                "layer_end": 4,
            }
        )
    )
    runner = CliRunner()
    posted = runner.invoke(cli, ["job", "post", str(spec), "--price", "1000", "--wei"])
    assert posted.exit_code == 0, posted.output
    job_id = json.loads(posted.stdout)["job"]["id"]
    funded = runner.invoke(cli, ["job", "fund", job_id])
    assert funded.exit_code == 0, (funded.output, funded.exception)
    assert json.loads(funded.stdout)["status"] == "funded"
    listed = json.loads(runner.invoke(cli, ["job", "list", "--status", "funded"]).stdout)
    assert [j["id"] for j in listed["items"]] == [job_id]
    got = json.loads(runner.invoke(cli, ["job", "get", job_id]).stdout)
    assert got["funded_amount"] == "6000"
    cancelled = runner.invoke(cli, ["job", "cancel", job_id, "--wait", "0"])
    assert cancelled.exit_code == 0 and "refund" in cancelled.stdout, cancelled.output
    assert json.loads(runner.invoke(cli, ["job", "get", job_id]).stdout)["status"] == "cancelled"
    with httpx.Client(base_url=url) as http:
        workers = http.get("/v1/workers", headers=headers).json()
        assert [w["address"] for w in workers["items"]] == [worker.address]

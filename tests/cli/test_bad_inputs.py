"""Each bad input a newcomer typed (issue 10) gives one line saying what is wrong, exit code 1 or 2, no traceback,
and moves no funds. Runs the real `globai` command against a real Anvil with the contracts deployed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from globai.dev.forker import shared_forker
from globai.dev.services import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`globai ARGS` as a fresh process (forked from a preloaded parent: globai/dev/forker.py)."""
    command = [sys.executable, "-c", "from market.cli import main; main()", *args]
    return shared_forker(env, ROOT, Path(tempfile.gettempdir())).run(command, env, ROOT, timeout=120)


def assert_one_line_error(out: subprocess.CompletedProcess[str], *, says: str) -> None:
    assert out.returncode in (1, 2), (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stdout + out.stderr
    errors = [line for line in out.stderr.splitlines() if not line.startswith("using market ")]
    assert len(errors) == 1 and errors[0].startswith("error: "), out.stderr
    assert says in errors[0], errors[0]


@pytest.fixture
def cli_env(chain: Any, deployment: Any, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOBAI_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "GLOBAI_DEV_STATE": str(tmp_path / "no-stack.json"),
            "GLOBAI_RPC_URL": chain.url,
            "GLOBAI_TOKEN_ADDRESS": deployment.token,
            "GLOBAI_STAKING_VAULT_ADDRESS": deployment.vault,
            "GLOBAI_JOB_ESCROW_ADDRESS": deployment.escrow,
            "GLOBAI_MARKET_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        }
    )
    return env


def test_bad_inputs_one_line_no_traceback_no_funds_moved(
    cli_env: dict[str, str], chain: Any, deployment: Any, tmp_path: Path
) -> None:
    contracts = deployment.bind(chain.client)
    treasury = chain.accounts[0]
    funded_key = "0x" + bytes(chain.accounts[7].key).hex()
    broke = Account.create()  # no ETH, no GLB

    def balances() -> list[int]:
        token, vault = contracts.token.functions, contracts.vault.functions
        return [
            int(chain.client.call(token.balanceOf(a)))
            for a in (treasury.address, chain.accounts[7].address, broke.address, contracts.vault.address)
        ] + [int(chain.client.call(vault.stakeOf(chain.accounts[7].address)))]

    before = balances()
    good_spec = {"kind": "inference", "model": "m", "prompts": ["hi"], "max_new_tokens": 4}
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({**good_spec, "max_new_token": 4}))
    malformed = tmp_path / "bad.json"
    malformed.write_text('{"kind": "inference", "model": ')
    good = tmp_path / "spec.json"
    good.write_text(json.dumps(good_spec))
    bad_key_file = tmp_path / "bad.key"
    bad_key_file.write_text("0x1234\n")
    missing_key = str(tmp_path / "missing.key")

    cases: list[tuple[list[str], str]] = [
        (["worker", "stake", "--key", "0x12zz"], "not a private key"),
        (["job", "get", "some-job", "--key-file", missing_key], "does not exist"),
        (["job", "get", "some-job", "--key-file", str(bad_key_file)], "not a private key"),
        (["job", "post", str(typo), "--price", "0.001", "--key-file", missing_key], "max_new_token"),
        (["job", "post", str(malformed), "--price", "0.001"], "not valid JSON"),
        (["job", "post", str(good), "--price", "0.0000000000000000001"], "finer than 1 wei"),
        (["job", "post", str(good), "--price", "abc"], "not a number"),
        (["worker", "stake", "--key", funded_key, "--amount", "-5"], "more than zero"),
        (["worker", "stake", "--key", "0x" + bytes(broke.key).hex()], "no ETH"),
        (["worker", "withdraw", "--key", funded_key], "nothing to withdraw"),
        (["worker", "unstake", "--key", funded_key], "cannot unstake"),
        (["job", "post", str(good), "--price", "0.001", "--key", "x"], "No such option"),
        (["job", "get", "some-job", "--key-file", str(bad_key_file.parent)], "directory"),
        (["devnet", "faucet", "0xnot-an-address"], "not an Ethereum address"),
    ]
    for args, says in cases:
        out = run_cli(cli_env, *args)
        assert_one_line_error(out, says=says)
    assert balances() == before, "a bad input moved funds"
    # -v shows the traceback that the one line hides
    verbose = run_cli(cli_env, "-v", "job", "post", str(malformed), "--price", "0.001")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_a_market_on_another_chain_is_refused_before_any_transaction(
    cli_env: dict[str, str], chain: Any, deployment: Any
) -> None:
    """Same chain id and contract addresses, another genesis block (a second devnet): staking is refused."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    info = {
        "chain_id": chain.client.chain_id,
        "staking_address": deployment.vault,
        "escrow_address": deployment.escrow,
        "genesis_hash": "0x" + "00" * 32,
    }

    class Info(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(info).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Info)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    contracts = deployment.bind(chain.client)
    worker = chain.accounts[8]
    stake_before = int(chain.client.call(contracts.vault.functions.stakeOf(worker.address)))
    glb_before = int(chain.client.call(contracts.token.functions.balanceOf(worker.address)))
    try:
        out = run_cli(
            cli_env,
            "worker",
            "stake",
            "--key",
            "0x" + bytes(worker.key).hex(),
            "--market",
            f"http://127.0.0.1:{server.server_address[1]}",
        )
    finally:
        server.shutdown()
    assert_one_line_error(out, says="uses another chain")
    assert "genesis block" in out.stderr
    assert int(chain.client.call(contracts.vault.functions.stakeOf(worker.address))) == stake_before
    assert int(chain.client.call(contracts.token.functions.balanceOf(worker.address))) == glb_before

"""The README's path, through the `globai` command only, against a local stack of the test's own:
`dev up` → model → stake → workers → paid job → verification → settlement → earnings (checked against the escrow on
chain) → withdraw (checked against the token balance) → audits → a funded, unstarted job cancelled and refunded →
`dev down`. Bad inputs that need a running market are fed on the way (one line, exit 1/2, no funds moved)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from globai.chain.client import ChainClient
from globai.chain.deploy import DeployedContract, Deployment
from globai.chain.local import dev_accounts, pid_alive
from globai.dev.forker import Process, shared_forker
from globai.dev.services import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
K = [dev_accounts(8)[i] for i in range(8)]  # the devnet's well-known keys, on this test's own devnet
MODEL = "tiny-llama-h64-l4-s0"


def key(i: int) -> str:
    return "0x" + bytes(K[i].key).hex()


class Cli:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.daemons: list[Process] = []

    def __call__(self, *args: str, ok: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        # Every command is a fresh `globai` process with its own environment; it forks from a preloaded parent
        # (globai/dev/forker.py) only to skip re-importing torch and friends each time.
        forker = shared_forker(self.env, ROOT, self.tmp)
        out = forker.run(
            [sys.executable, "-c", "from market.cli import main; main()", *args], self.env, ROOT, timeout=timeout
        )
        assert "Traceback" not in out.stderr, out.stderr
        if ok:
            assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out

    def daemon(self, name: str, *args: str) -> Process:
        command = [sys.executable, "-c", "from market.cli import main; main()", *args]
        proc = shared_forker(self.env, ROOT, self.tmp).spawn(command, self.env, ROOT, self.tmp / f"{name}.log")
        self.daemons.append(proc)
        return proc

    def stop_daemons(self) -> None:
        for proc in self.daemons:
            if proc.poll() is not None:
                continue
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
                print(f"worker daemon {proc.pid} exited {time.monotonic() - started:.2f} s after SIGTERM")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def one_line_error(out: subprocess.CompletedProcess[str], says: str) -> None:
    assert out.returncode in (1, 2), (out.returncode, out.stdout, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and says in lines[0], out.stderr


def test_readme_path_through_the_cli(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLOBAI_")}
    env.update(
        PYTHONPATH=str(ROOT),
        GLOBAI_DEV_STATE=str(tmp_path / "var" / "state.json"),
        GLOBAI_DEVNET_DIR=str(tmp_path / "devnet"),
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    (tmp_path / "devnet").mkdir()
    g = Cli(env, tmp_path)
    try:
        up = g(
            "dev",
            "up",
            "--var",
            str(tmp_path / "var"),
            "--chain-port",
            str(free_port()),
            "--market-port",
            str(free_port()),
            timeout=300,
        )
        assert "[5/5]" in up.stderr  # set-up shows its progress
        status = g("dev", "status").stdout
        assert status.count("running") == 4 and "NOT RUNNING" not in status, status
        state = json.loads((tmp_path / "var" / "state.json").read_text())
        chain = ChainClient(state["rpc_url"])
        (tmp_path / "k0").write_text(key(0))
        d = Deployment(
            state["chain_id"],
            {
                n: DeployedContract(state[a], state["first_block"])
                for n, a in (("GLBToken", "token"), ("StakingVault", "vault"), ("JobEscrow", "escrow"))
            },
        )
        c = d.bind(chain)

        def glb(address: str) -> int:
            return int(chain.call(c.token.functions.balanceOf(address)))

        def credited(address: str) -> int:
            return int(chain.call(c.escrow.functions.balanceOf(address)))

        assert "dev stack" in g("job", "list", "--key-file", str(tmp_path / "k0")).stderr  # which stack it uses
        g("models", "build-tiny", "--hidden", "64", "--layers", "4")
        assert (Path(state["models_dir"]) / MODEL / "manifest.json").is_file()
        workers = (1, 2, 4, 5)
        for i in workers:
            g("worker", "stake", "--key", key(i))
        g.daemon("w1", "worker", "run", "--key", key(1), "--layers", "0:2", "--no-progress")
        g.daemon("w2", "worker", "run", "--key", key(2), "--layers", "2:4", "--no-progress")
        g.daemon("w4", "worker", "run", "--key", key(4), "--layers", "0:2", "--no-progress")  # replicas: other
        g.daemon("w5", "worker", "run", "--key", key(5), "--layers", "2:4", "--no-progress")  # operators

        # Bad inputs that need a market: one line, exit 1/2, no funds moved.
        before = [glb(K[i].address) for i in (3, 6, 7)]
        one_line_error(
            g("worker", "run", "--key", key(7), "--layers", "4:99", "--no-progress", ok=False), "not inside 0:4"
        )
        started = time.monotonic()
        one_line_error(g("worker", "train", "--key", key(6), "--max-tasks", "1", ok=False), "not eligible")
        assert time.monotonic() - started < 120  # it stopped instead of looping
        req = tmp_path / "requester"
        req.mkdir()
        (req / "key").write_text(key(3) + "\n")
        spec = {
            "kind": "inference",
            "model": MODEL,
            "prompts": ["Once upon a time", "The market"],
            "max_new_tokens": 8,
            "sampling": {"temperature": 0.0, "top_p": 1.0, "seed": 0},
        }
        (req / "gpt4.json").write_text(json.dumps({**spec, "model": "gpt-4"}))
        one_line_error(
            g("job", "post", str(req / "gpt4.json"), "--price", "0.001", "--key-file", str(req / "key"), ok=False),
            "not served",
        )
        one_line_error(g("job", "list", "--limit", "0", "--key-file", str(req / "key"), ok=False), "limit")
        assert [glb(K[i].address) for i in (3, 6, 7)] == before

        # A paid job.
        g("devnet", "faucet", K[3].address, "--amount", "100")
        (req / "spec.json").write_text(json.dumps(spec))
        posted = g("job", "post", str(req / "spec.json"), "--price", "0.001", "--key-file", str(req / "key"))
        job = json.loads(posted.stdout)["job"]["id"]
        g("job", "fund", job, "--key-file", str(req / "key"))
        deadline = time.monotonic() + 300
        while True:
            result = json.loads(g("job", "result", job, "--json", "--key-file", str(req / "key")).stdout)
            if result.get("settlement"):
                break
            assert time.monotonic() < deadline, result
            time.sleep(2)
        assert all(o["text"] for o in result["outputs"])
        deadline = time.monotonic() + 60
        while json.loads(g("job", "get", job, "--key-file", str(req / "key")).stdout)["status"] != "settled":
            assert time.monotonic() < deadline
            time.sleep(1)

        # Earnings: the market's per-job rows agree with the escrow's events and with the credited balance.
        paid = {p["payee"].lower(): int(p["amount"]) for p in result["settlement"]["payees"]}
        assert paid, result["settlement"]
        for i in workers:
            rows = json.loads(g("worker", "earnings", "--key", key(i), "--json").stdout)
            assert rows["agrees"] is True
            assert int(rows["credited_on_chain"]) == credited(K[i].address) == paid.get(K[i].address.lower(), 0)
            assert sum(int(r["amount"]) for r in rows["jobs"]) == credited(K[i].address)
            assert "GLB earned" in g("worker", "status", "--key", key(i)).stdout
        worker = next(i for i in workers if credited(K[i].address) > 0)
        had, owed = glb(K[worker].address), credited(K[worker].address)
        g("worker", "withdraw", "--key", key(worker))
        assert glb(K[worker].address) == had + owed and credited(K[worker].address) == 0
        one_line_error(g("worker", "withdraw", "--key", key(worker), ok=False), "nothing to withdraw")
        assert "audit ok" in g("audit", "job", job).stdout
        g("audit", "chain")
        # Unstake: requested now, withdrawable only after the unbonding period (one line says when).
        assert "unbonds at" in g("worker", "unstake", "--key", key(worker)).stdout
        assert int(chain.call(c.vault.functions.stakeOf(K[worker].address))) == 0
        one_line_error(g("worker", "unstake", "--withdraw", "--key", key(worker), ok=False), "withdraw after that")

        # Cancel a funded job no worker started: refunded on chain within seconds.
        g.stop_daemons()
        posted = g("job", "post", str(req / "spec.json"), "--price", "0.001", "--key-file", str(req / "key"))
        job2 = json.loads(posted.stdout)["job"]["id"]
        before_fund, owed = glb(K[3].address), credited(K[3].address)  # owed: job 1's unspent part
        g("job", "fund", job2, "--key-file", str(req / "key"))
        assert glb(K[3].address) < before_fund
        cancelled = g("job", "cancel", job2, "--wait", "120", "--key-file", str(req / "key"))
        assert "refunded" in cancelled.stdout and "withdrew" in cancelled.stdout, cancelled.stdout
        assert glb(K[3].address) == before_fund + owed and credited(K[3].address) == 0
    finally:
        g.stop_daemons()
        print(g("dev", "down", ok=False).stdout)  # how long each process took to stop after SIGTERM
    assert not any(pid_alive(int(pid)) for pid in state["pids"].values())  # zombie-aware (init reaps late)

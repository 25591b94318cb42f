"""One operator key, several processes: settlement and slashing sent at the same time from two processes never
collide on a nonce (`ChainClient(tx_lock=redis_tx_lock(...))`), and a stale cached nonce ("nonce too low", a
`Web3RPCError` in web3 7+) is recovered instead of failing the transaction. Real Anvil, real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from eth_account import Account
from eth_utils import keccak
from sqlalchemy.orm import Session

from globai.chain.client import ChainClient
from globai.chain.deploy import GLB
from globai.protocol.signing import sign_digest
from tests.settlement.support import Funder

ROOT = Path(__file__).resolve().parents[2]

# Each process: its own ChainClient with the shared Redis lock, the operator key, a list of calls to send.
SENDER = r"""
import json, sys, time
from eth_account import Account
from globai.chain.client import ChainClient, redis_tx_lock
from globai.chain.deploy import Deployment
args = json.loads(sys.argv[1])
client = ChainClient(args["rpc"], tx_lock=redis_tx_lock(args["redis"]))
c = Deployment.from_json(args["deployment"]).bind(client)
op = Account.from_key(args["key"])
while time.time() < args["start_at"]:
    time.sleep(0.005)
for call in args["calls"]:
    if call[0] == "settle":
        _, job, payee, amount, root = call
        fn = c.escrow.functions.settle(bytes.fromhex(job), [payee], [amount], bytes.fromhex(root))
    else:
        _, worker, amount, job, requester, evidence, signature = call
        fn = c.vault.functions.slash(
            worker, amount, bytes.fromhex(job), bytes.fromhex(evidence), bytes.fromhex(signature), requester, requester
        )
    receipt = client.transact(fn, op)
    assert receipt["status"] == 1
print("sent", len(args["calls"]))
"""


def test_settlement_and_slashing_from_two_processes_share_the_operator_key(
    chain,
    deployment,
    redis_url: str,
    db,  # type: ignore[no-untyped-def]
) -> None:
    admin, requester = chain.accounts[0], chain.accounts[1]
    funder = Funder(chain.client, deployment, admin, requester)
    c = deployment.bind(chain.client)
    n = 6
    funder.prefund(n * 10 * GLB)
    with Session(db, expire_on_commit=False) as s:
        jobs = [funder.job(s, budget=10 * GLB, prefunded=True) for _ in range(n)]
    workers = [Account.create() for _ in range(n)]
    for w in workers:
        chain.client.rpc("anvil_setBalance", w.address, hex(10**20))
        funder.stake(w, 200 * GLB)
    settle_calls = [
        ["settle", j.chain_job_id[2:], workers[i].address, GLB, (b"\xee" * 31 + bytes([i + 1])).hex()]
        for i, j in enumerate(jobs)
    ]
    evidence = [keccak(text=f"evidence {i}") for i in range(n)]  # each worker signs its own (the vault checks)
    slash_calls = [
        [
            "slash",
            w.address,
            10 * GLB,
            jobs[i].chain_job_id[2:],
            requester.address,
            evidence[i].hex(),
            sign_digest(w, evidence[i]).hex(),
        ]
        for i, w in enumerate(workers)
    ]
    start_at = time.time() + 3.0  # both processes start sending at the same moment
    common = {
        "rpc": chain.url,
        "redis": redis_url,
        "deployment": deployment.to_json(),
        "key": "0x" + bytes(admin.key).hex(),
        "start_at": start_at,
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER, json.dumps({**common, "calls": calls})],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for calls in (settle_calls, slash_calls)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == f"sent {n}"
    for j in jobs:  # every settlement and every slash landed
        assert int(chain.client.call(c.escrow.functions.getJob(bytes.fromhex(j.chain_job_id[2:])))[3]) == 2
    for w in workers:
        assert int(chain.client.call(c.vault.functions.stakeOf(w.address))) == 190 * GLB
    chain.client.reset_nonces()


def test_a_stale_cached_nonce_is_recovered(chain, deployment) -> None:  # type: ignore[no-untyped-def]
    admin = chain.accounts[0]
    c = deployment.bind(chain.client)
    ours = ChainClient(chain.url)  # no shared lock: it caches its nonce
    token = ours.contract("GLBToken", deployment.token)
    ours.transact(token.functions.transfer(chain.accounts[2].address, 1), admin)
    # Another process (here: another client) sends with the same key: our cached nonce is now too low.
    other = ChainClient(chain.url)
    other.transact(other.contract("GLBToken", deployment.token).functions.transfer(chain.accounts[2].address, 1), admin)
    before = int(chain.client.call(c.token.functions.balanceOf(chain.accounts[3].address)))
    receipt = ours.transact(token.functions.transfer(chain.accounts[3].address, 5), admin)
    assert receipt["status"] == 1
    assert int(chain.client.call(c.token.functions.balanceOf(chain.accounts[3].address))) == before + 5
    chain.client.reset_nonces()

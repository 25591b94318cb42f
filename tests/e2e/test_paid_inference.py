"""Acceptance for paid inference, through the real flow: real Anvil, Redis, a Celery worker + beat, the market
(uvicorn, `globai market serve`) and four `globai worker run` processes, one cheating (GLOBAI_WORKER_CHEAT=noise).
A requester posts and funds (permit) an inference job over REST; the market runs it; the honest worker is paid on
chain, the cheater is slashed, `globai audit job` and `globai audit chain` pass. The processes and the story are
`globai/dev/cluster.py` and `market/demo/` (the same code `globai demo run` runs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from globai.chain.deploy import GLB
from globai.dev.cluster import Cluster, ClusterConfig
from market.demo.paid_inference import STAKE, demo_account, run_paid_inference

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_paid_inference_job_verified_settled_audited(
    chain: Any, deployment: Any, redis_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    cfg = ClusterConfig(
        var=tmp_path,
        rpc_url=chain.url,
        deployment=deployment,
        operator=chain.accounts[0],
        redis_url=redis_url,
        redis_db=13,
    )
    prompts = [
        "Once upon a time",
        "The market pays",
        "A verifier replays",
        "Settlement means",
        "Workers stake GLB",
        "Requesters fund jobs",
        "Chunks are committed",
        "Roots are signed",
        "Ninth prompt: a second batch",
    ]
    with Cluster(cfg) as cluster:
        out = run_paid_inference(cluster, prompts=prompts, max_new_tokens=12)
        # Confirming funding again changes nothing: the job ran once (two runs: 8 + 1 prompts) and stays settled.
        client = cluster.requester(demo_account("requester"))
        client.request("POST", f"/v1/jobs/{out.job_id}/confirm-funding")
        time.sleep(1.0)  # > the runner's poll interval
        again = client.request("GET", f"/v1/jobs/{out.job_id}/result")
        assert [o["run_id"] for o in again["outputs"]] == [o["run_id"] for o in out.outputs]
        assert again["status"] == out.result["status"] != "running"

    # The requester got text for every prompt (two batches: 8 + 1).
    assert [o["prompt"] for o in out.outputs] == prompts
    assert all(o["tokens"] is not None and len(o["tokens"]) == 12 for o in out.outputs)
    assert len({o["run_id"] for o in out.outputs}) == 2
    # The cheater is slashed, the honest worker paid, and the verifiers are paid for their replays (work too).
    assert [(s["status"]) for s in out.result["slashes"]] == ["confirmed"]
    assert out.stake_after["worker-cheat"] == out.stake_before["worker-cheat"] - 50 * GLB
    assert out.credited["worker-cheat"] == 0
    assert out.credited["worker-honest"] > 0
    assert out.stake_after["worker-honest"] == out.stake_before["worker-honest"] >= STAKE
    assert out.escrow_status == 2 and out.settlement_tx
    s = out.result["settlement"]
    address = {name: demo_account(name).address for name in out.credited}
    assert {p["payee"]: int(p["amount"]) for p in s["payees"]} == {
        address[name]: wei for name, wei in out.credited.items() if wei > 0
    }
    assert any(wei > 0 for name, wei in out.credited.items() if name.startswith("verifier"))
    assert out.audit_job[0], out.audit_job[1]
    assert out.audit_chain[0], out.audit_chain[1]
    elapsed = time.monotonic() - started
    print(f"\npaid inference e2e: {elapsed:.1f} s ({out.timings})")
    assert elapsed < 120  # ~35-60 s on the shared 2 cores; the bound catches a hang, not noise

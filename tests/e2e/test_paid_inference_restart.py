"""A paid inference job survives a market crash: `kill -9` of the market while the job's first batch is being
generated; the restarted market resumes the job (the cut-off run is dropped and its batch generated again) and the
requester gets text for every prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from globai.chain.deploy import GLB
from globai.dev.cluster import Cluster, ClusterConfig
from market.demo.paid_inference import demo_account

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_market_killed_mid_job_resumes_it(chain: Any, deployment: Any, redis_url: str, tmp_path: Path) -> None:
    cfg = ClusterConfig(
        var=tmp_path,
        rpc_url=chain.url,
        deployment=deployment,
        operator=chain.accounts[0],
        redis_url=redis_url,
        redis_db=14,
    )
    prompts = [f"prompt number {i}" for i in range(10)]  # two batches: 8 + 2
    with Cluster(cfg) as cluster:
        cluster.prepare()
        cluster.start_market()
        workers = [demo_account("restart-a"), demo_account("restart-b")]
        for w in workers:
            cluster.stake(w, 200 * GLB)
        cluster.start_worker("wa", workers[0], layers="0:2", operator="op-a")
        cluster.start_worker("wb", workers[1], layers="2:4", operator="op-b")
        cluster.wait_workers([w.address for w in workers])
        requester = demo_account("restart-requester")
        cluster.give(requester, 10 * GLB)
        spec = {"kind": "inference", "model": cfg.model, "prompts": prompts, "max_new_tokens": 200}
        job_id, _tx = cluster.post_and_fund(requester, spec, price_per_unit=GLB // 1000, budget=10 * GLB)
        client = cluster.requester(requester)

        def first_run_started() -> bool:
            r = client.request("GET", f"/v1/jobs/{job_id}/result")
            return r["status"] == "running" and r["outputs"][0]["run_id"] is None and _linked(tmp_path, job_id)

        cluster.wait("the first batch to start", first_run_started, timeout=60, every=0.05)
        cluster.kill("market")
        cut = _linked(tmp_path, job_id)
        cluster.start_market()  # same port, same DB: workers reconnect, the job is resumed
        client = cluster.requester(requester)
        result = cluster.wait(
            "the job to complete",
            lambda: (r := client.request("GET", f"/v1/jobs/{job_id}/result"))["status"] == "completed" and r,
            timeout=120,
        )
        assert [o["prompt"] for o in result["outputs"]] == prompts
        assert all(o["tokens"] is not None and len(o["tokens"]) == 200 for o in result["outputs"])
        assert not set(cut) & {o["run_id"] for o in result["outputs"]}  # the cut-off run is not part of the job
        assert len({o["run_id"] for o in result["outputs"]}) == 2


def _linked(var: Path, job_id: str) -> list[str]:
    import sqlite3

    with sqlite3.connect(var / "market.db") as db:
        return [r[0] for r in db.execute("SELECT run_id FROM job_runs WHERE job_id = ?", (job_id,))]

"""Fault injection on real processes (market/demo/faults.py): each scenario kills one process with SIGKILL at one
stage of a paid job (Celery worker, Celery beat, Redis, the market, worker daemons; generation, replaying,
settling, right after the settlement was sent) and restarts it. Every job must reach a terminal state (settled or
refunded), `globai audit chain` must pass, an independent reconciliation from raw events must agree, and nothing is
paid twice. One run per scenario here; `bench/faults.py` repeats them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from globai.dev.cluster import Cluster, ClusterConfig
from market.demo.faults import FAULT_ENV, SCENARIOS, run_scenario, start_cluster

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_every_fault_scenario_ends_terminal_and_reconciles(chain: Any, deployment: Any, tmp_path: Path) -> None:
    cfg = ClusterConfig(
        var=tmp_path,
        rpc_url=chain.url,
        deployment=deployment,
        operator=chain.accounts[0],
        redis_url=None,
        extra_env=dict(FAULT_ENV),
    )  # its own redis-server: the test restarts it
    runs = []
    with Cluster(cfg) as cluster:
        start_cluster(cluster)
        for scenario in SCENARIOS:
            runs.append(run_scenario(cluster, scenario, prompts=4, new_tokens=12, timeout=180, say=print))
            print(runs[-1])
    bad = [r for r in runs if not r.ok]
    assert not bad, "\n".join(f"{r.scenario}: {r.terminal} {r.reconcile} {r.detail}" for r in bad)
    assert sum(r.stage_hit for r in runs) >= len(runs) // 2, [(r.scenario, r.stage_hit) for r in runs]

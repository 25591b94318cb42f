"""Fault injection on a real local cluster (tests/faults/, bench/faults.py): a paid job runs while one process is
killed with SIGKILL and restarted at a chosen stage; afterwards the job must reach a terminal state, `globai audit
chain` must pass and an independent reconciliation from raw events (market/demo/reconcile_raw.py, which uses no
project code) must agree, with no double payment.

Workers: a cheater on [0, 2) and two honest verifiers there (routes pick among them: the cheater is on the route
of about a third of the jobs and then slashed), two honest workers on [2, 4) (one is the other's standby).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from globai.chain.deploy import GLB
from globai.dev.cluster import Cluster, ClusterError
from market.demo.paid_inference import PRICE_PER_UNIT, STAKE, Actor, demo_account

TERMINAL = ("settled", "refunded")
# stage: when the fault hits. generation = the job is running; replaying/slashing/settling = the verification
# run's state; sent = the escrow already shows the job settled (right after the settlement transaction).
STAGES = ("generation", "replaying", "slashing", "settling", "sent")
TARGETS = ("celery-worker", "celery-beat", "redis", "market", "worker")


@dataclass(frozen=True)
class Scenario:
    target: str
    stage: str

    @property
    def name(self) -> str:
        return f"{self.target}@{self.stage}"


SCENARIOS = [
    Scenario("celery-worker", "replaying"),
    Scenario("celery-worker", "settling"),
    Scenario("celery-worker", "sent"),
    Scenario("celery-beat", "replaying"),
    Scenario("redis", "generation"),
    Scenario("redis", "replaying"),
    Scenario("market", "generation"),
    Scenario("market", "replaying"),
    Scenario("worker", "generation"),
]
# Needs an Anvil the caller owns, started with --state (kill -9 + restart from the state file): bench/faults.py.
ANVIL_SCENARIOS = [Scenario("anvil", "sent"), Scenario("anvil", "replaying")]


@dataclass
class FaultRun:
    scenario: str
    job_id: str = ""
    stage_hit: bool = False  # the fault hit the stage it was meant for (a fast stage may be missed)
    terminal: str | None = None  # settled | refunded; None = stuck
    seconds: float = 0.0
    audit_chain: bool = False
    reconcile: list[str] = field(default_factory=list)
    double_payments: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.terminal is not None and self.audit_chain and not self.reconcile and not self.double_payments


def fault_actors() -> list[Actor]:
    return [
        Actor("worker-cheat", demo_account("worker-cheat"), "0:2", "op-mallory", cheat="noise"),
        Actor("verifier-1", demo_account("verifier-1"), "0:2", "op-bob"),
        Actor("verifier-2", demo_account("verifier-2"), "0:2", "op-carol"),
        Actor("worker-honest", demo_account("worker-honest"), "2:4", "op-alice"),
        Actor("worker-honest-b", demo_account("worker-honest-b"), "2:4", "op-dave"),
    ]


FAULT_ENV = {
    # Lost steps are re-driven after 3 s instead of 2 minutes; Celery redelivers after its minimum of 60 s.
    "GLOBAI_RECOVERY_STALE_S": "3",
    "GLOBAI_TASK_VISIBILITY_TIMEOUT_S": "60",
    "GLOBAI_STAGE_TIMEOUT_S": "10",
}


def start_cluster(cluster: Cluster) -> None:
    """Market, Celery worker + beat and every worker, staked (re-runs top the stake up)."""
    cluster.prepare()
    cluster.start_market()
    cluster.start_celery_worker()
    cluster.start_celery_beat()
    c, chain = cluster.contracts, cluster.chain
    for a in fault_actors():
        missing = STAKE - int(chain.call(c.vault.functions.stakeOf(a.account.address)))
        if missing > 0:
            cluster.stake(a.account, missing)
        else:
            cluster.give(a.account, 0)
        cluster.start_worker(a.name, a.account, layers=a.layers, operator=a.operator, cheat=a.cheat)
    cluster.wait_workers([a.account.address for a in fault_actors()])


def _state(client: Any, job_id: str) -> dict[str, Any]:
    r = client.request("GET", f"/v1/jobs/{job_id}/result")
    return {
        "job": r["status"],
        "verification": (r.get("verification") or {}).get("status"),
        "settlement": r.get("settlement"),
    }


def _at(stage: str, state: dict[str, Any], escrow_status: Callable[[], int]) -> bool:
    if stage == "generation":
        return state["job"] == "running"
    if stage == "sent":
        return escrow_status() == 2
    return state["verification"] == stage


def _progress(state: dict[str, Any]) -> int:
    if state["job"] in TERMINAL or state["job"] == "cancelled":
        return 5
    if state["job"] in ("created", "funded"):
        return 0
    if state["job"] == "running":
        return 1
    return {"replaying": 2, "slashing": 3, "settling": 4, "done": 5}.get(state["verification"] or "", 2)


def _past(stage: str, state: dict[str, Any]) -> bool:
    return _progress(state) > {"generation": 1, "replaying": 2, "slashing": 3, "settling": 4, "sent": 4}[stage]


def inject(cluster: Cluster, target: str, restarters: dict[str, Callable[[], None]]) -> None:
    if target in restarters:  # e.g. "anvil": only where the caller owns the process (bench/faults.py)
        restarters[target]()
    elif target == "redis":
        cluster.restart_redis()
    elif target == "worker":
        cluster.restart("verifier-1")  # a [0, 2) worker: on the route in about a third of the jobs
        cluster.restart("worker-honest")  # a [2, 4) worker: its standby takes over
    else:
        cluster.restart(target)


def run_scenario(
    cluster: Cluster,
    scenario: Scenario,
    *,
    prompts: int = 8,
    new_tokens: int = 24,
    timeout: float = 240.0,
    say: Callable[[str], None] = lambda _m: None,
    restarters: dict[str, Callable[[], None]] | None = None,
) -> FaultRun:
    from globai.chain.ids import job_id_bytes
    from market.demo.reconcile_raw import double_payments, reconcile

    run = FaultRun(scenario.name)
    started = time.monotonic()
    requester = demo_account("requester")
    budget = PRICE_PER_UNIT * prompts * new_tokens * 3
    cluster.give(requester, budget)
    spec = {
        "kind": "inference",
        "model": cluster.cfg.model,
        "prompts": [f"Fault run {i}: once upon a time" for i in range(prompts)],
        "max_new_tokens": new_tokens,
        "sampling": {"temperature": 0.8, "top_p": 0.95, "seed": int(time.time()) % 1000},
    }
    run.job_id, _ = cluster.post_and_fund(requester, spec, price_per_unit=PRICE_PER_UNIT, budget=budget)
    client = cluster.requester(requester)
    c = cluster.contracts

    def escrow_status() -> int:
        return int(cluster.chain.call(c.escrow.functions.getJob(job_id_bytes(run.job_id, requester.address)))[3])

    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:  # wait for the stage (or notice it was passed)
        try:
            state = _state(client, run.job_id)
        except Exception:  # noqa: BLE001 - a slow answer is retried
            time.sleep(0.2)
            continue
        if _at(scenario.stage, state, escrow_status):
            run.stage_hit = True
            break
        if _past(scenario.stage, state):
            break
        time.sleep(0.05)
    say(f"  {scenario.name}: fault {'at' if run.stage_hit else 'after'} the stage ({state})")
    inject(cluster, scenario.target, restarters or {})
    while time.monotonic() < deadline:
        try:
            state = _state(client, run.job_id)
        except Exception as exc:  # the market may be restarting
            run.detail = str(exc)[:200]
            time.sleep(0.5)
            continue
        # A refunded job may have a verification run that never started (its work was never completed).
        if state["job"] == "refunded" or (state["job"] == "settled" and state["verification"] in (None, "done")):
            run.terminal = state["job"]
            break
        time.sleep(0.25)
    run.seconds = time.monotonic() - started
    if run.terminal is None:
        run.detail = f"stuck: {state}"
    d = cluster.cfg.deployment
    audit = cluster.globai("audit", "chain", "--rpc", cluster.cfg.rpc_url, "--deployment", str(_record(cluster)))
    run.audit_chain = audit.returncode == 0
    if not run.audit_chain:
        run.detail += " audit: " + (audit.stdout + audit.stderr).strip()[-300:]
    run.reconcile = reconcile(cluster.cfg.rpc_url, d.escrow, d.vault, d.token, d.first_block)
    run.double_payments = double_payments(cluster.cfg.rpc_url, d.escrow, d.vault, d.first_block)
    # Leave the cluster whole for the next run. The cheater may be gone: banned after repeated guilt.
    for child in list(cluster.children):
        if child.name == "worker-cheat" and child.proc.poll() is not None:
            cluster.kill(child.name)
    names = {c.name for c in cluster.children}
    try:
        cluster.check_alive()
        cluster.wait_workers(
            [a.account.address for a in fault_actors() if a.name in names and a.name != "worker-cheat"], timeout=60
        )
    except ClusterError as exc:
        run.detail += f" cluster: {str(exc)[:200]}"
    return run


def _record(cluster: Cluster) -> Any:
    import json

    path = cluster.var / "deployment.json"
    if not path.exists():
        path.write_text(json.dumps(cluster.cfg.deployment.to_json()))
    return path


__all__ = ["ANVIL_SCENARIOS", "GLB", "SCENARIOS", "FaultRun", "Scenario", "run_scenario", "start_cluster"]

"""Fault-injection benchmark: every scenario of market/demo/faults.py repeated N times (default 10) on one local
cluster (its own Anvil with persisted state and a 1 s block time, settlements confirmed 2 blocks deep; its own
Redis, the market, Celery worker + beat, five worker daemons), plus kill -9 of Anvil itself. Reports per
scenario: runs, stage hit, terminal (settled / refunded), stuck, lost (stuck with money in
escrow), double payments, audit failures, reconciliation failures, seconds to terminal (median, max).

    python bench/faults.py [--runs 10] [--scenario celery-worker@replaying ...] [--json out.json]

Needs: anvil (hardhat-free-devnet/node_modules), redis-server. Takes ~30 s per run on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from globai.chain.client import ChainClient  # noqa: E402
from globai.chain.deploy import deploy_all  # noqa: E402
from globai.chain.local import dev_accounts  # noqa: E402
from globai.dev.cluster import Cluster, ClusterConfig  # noqa: E402
from globai.dev.services import Service, anvil_command, free_port, wait_port  # noqa: E402
from market.demo.faults import (  # noqa: E402
    ANVIL_SCENARIOS,
    FAULT_ENV,
    SCENARIOS,
    FaultRun,
    run_scenario,
    start_cluster,
)

CONFIRMATIONS = 2  # settlements and slashes count once 2 blocks deep; Anvil mines a block every second


class OwnAnvil:
    """Anvil with persisted state (survives kill -9 up to its last 1 s state write) and a 1 s block time."""

    def __init__(self, state: Path) -> None:
        self.port, self.state = free_port(), state
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = self._start()

    def _start(self):  # type: ignore[no-untyped-def]
        import subprocess

        cmd = anvil_command(self.port, state_file=self.state) + ["--block-time", "1"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=proc)
        return proc

    def restart(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc = self._start()

    def stop(self) -> None:
        Service(self.url, self.proc).stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--scenario", action="append", default=None, help="e.g. redis@replaying (default: all)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--max-minutes", type=float, default=None, help="start no new round after this long")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS + ANVIL_SCENARIOS if args.scenario is None or s.name in args.scenario]
    var = Path(tempfile.mkdtemp(prefix="globai-faults-"))
    anvil = OwnAnvil(var / "anvil-state.json")
    results: list[FaultRun] = []
    started = time.monotonic()
    try:
        client = ChainClient(anvil.url)
        accounts = dev_accounts(4)
        deployment = deploy_all(client, admin=accounts[0], treasury=accounts[0].address)
        env = {**FAULT_ENV, "GLOBAI_CONFIRMATIONS": str(CONFIRMATIONS)}
        cfg = ClusterConfig(
            var=var / "cluster", rpc_url=anvil.url, deployment=deployment, operator=accounts[0], extra_env=env
        )
        with Cluster(cfg) as cluster:
            start_cluster(cluster)

            def restart_anvil() -> None:
                anvil.restart()
                cluster.chain.reset_nonces()  # the last second of blocks may be gone with their nonces

            # Anvil's own crash comes last: if it ever lost history, it must not spoil the other scenarios' audits.
            normal = [sc for sc in chosen if sc.target != "anvil"]
            last = [sc for sc in chosen if sc.target == "anvil"]
            budget = None if args.max_minutes is None else args.max_minutes * 60
            for phase, scenarios, share in ((1, normal, 0.75 if last else 1.0), (2, last, 1.0)):
                for n in range(args.runs if scenarios else 0):
                    if budget is not None and time.monotonic() - started > budget * share:
                        print(
                            f"phase {phase}: stopping after {n} rounds (--max-minutes {args.max_minutes:g})", flush=True
                        )
                        break
                    for scenario in scenarios:
                        run = run_scenario(
                            cluster,
                            scenario,
                            prompts=args.prompts,
                            new_tokens=args.new_tokens,
                            timeout=240,
                            restarters={"anvil": restart_anvil},
                        )
                        results.append(run)
                        print(
                            f"[{n + 1}/{args.runs}] {run.scenario:28s} hit={run.stage_hit!s:5s} "
                            f"terminal={run.terminal} {run.seconds:.1f}s ok={run.ok} {run.detail[:160]}",
                            flush=True,
                        )
    finally:
        anvil.stop()
    print(f"\n{len(results)} runs in {time.monotonic() - started:.0f} s (logs under {var})\n")
    header = (
        "scenario",
        "runs",
        "stage hit",
        "settled",
        "refunded",
        "stuck",
        "lost",
        "double",
        "audit fail",
        "reconcile fail",
        "s p50",
        "s max",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    summary = []
    for scenario in chosen:
        rs = [r for r in results if r.scenario == scenario.name]
        secs = [r.seconds for r in rs] or [0.0]
        row = {
            "scenario": scenario.name,
            "runs": len(rs),
            "stage_hit": sum(r.stage_hit for r in rs),
            "settled": sum(r.terminal == "settled" for r in rs),
            "refunded": sum(r.terminal == "refunded" for r in rs),
            "stuck": sum(r.terminal is None for r in rs),
            "lost": sum(r.terminal is None for r in rs),  # money stays in escrow only while a job is not terminal
            "double": sum(r.double_payments for r in rs),
            "audit_fail": sum(not r.audit_chain for r in rs),
            "reconcile_fail": sum(bool(r.reconcile) for r in rs),
            "s_p50": round(statistics.median(secs), 1),
            "s_max": round(max(secs), 1),
        }
        summary.append(row)
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"summary": summary, "runs": [r.__dict__ for r in results]}, indent=1, default=str)
        )


if __name__ == "__main__":
    main()

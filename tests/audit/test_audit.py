"""`globai audit job|chain` against the real Anvil: a true report passes; every tampering is caught."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from globai.chain.deploy import GLB
from market.audit.job import audit_job
from market.db import SettlementReport, VerificationRun, WorkPart
from market.services.settlement import settle_jobs
from market.settlement.payout import WorkItem, plan_settlement
from market.settlement.report import build_report
from tests.settlement.support import PAYEES

A, B = (p.address for p in PAYEES[:2])
NOW = datetime.now(UTC)


def globai(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from market.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def settled(db, funder, operator, chain, deployment, tmp_path: Path) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with Session(db) as s:
        job = funder.job(s, budget=100 * GLB, price=GLB)
        for i, (worker, units) in enumerate([(A, 30), (B, 20), (A, 5)]):
            s.add(WorkPart(job_id=job.id, work_key=f"{job.id}-{i}", worker=worker, units=units, status="paid"))
        s.add(VerificationRun(job_id=job.id, status="settling", secret="0x" + "11" * 32, beacon="0x" + "22" * 32))
        s.commit()
        settle_jobs(s, operator, job_ids=[job.id], now=NOW)
        report = s.get(SettlementReport, job.id).report  # type: ignore[union-attr]
    record = tmp_path / "deployment.json"
    record.write_text(json.dumps(deployment.to_json()))
    return {"job": job.id, "report": report, "deployment": record}


def test_cli_passes_on_the_true_report_and_whole_chain(settled, chain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(settled["report"]))
    ok = globai(
        "audit",
        "job",
        settled["job"],
        "--rpc",
        chain.url,
        "--report",
        str(path),
        "--deployment",
        str(settled["deployment"]),
    )
    assert ok.returncode == 0, ok.stderr
    assert "audit ok" in ok.stdout
    whole = globai("audit", "chain", "--rpc", chain.url, "--deployment", str(settled["deployment"]))
    assert whole.returncode == 0, whole.stdout + whole.stderr


def test_cli_fails_with_one_line_on_a_tampered_report(settled, chain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = copy.deepcopy(settled["report"])
    bad["records"][0]["amount"] = str(int(bad["records"][0]["amount"]) + 1)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    out = globai(
        "audit",
        "job",
        settled["job"],
        "--rpc",
        chain.url,
        "--report",
        str(path),
        "--deployment",
        str(settled["deployment"]),
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("audit FAILED:"), out.stderr


def _first_paid(r: dict[str, Any]) -> dict[str, Any]:
    return next(x for x in r["records"] if x["payee"] == A)


def _rebuilt(r: dict[str, Any], change: Any) -> None:
    """A forged but self-consistent report: other amounts, root recomputed, proofs rebuilt."""
    items = [WorkItem(x["task"], x["payee"], x["units"]) for x in r["records"]]
    items = change(items)
    plan = plan_settlement(
        job_key=r["job"]["id"],
        chain_job_id=bytes.fromhex(r["job"]["chain_job_id"][2:]),
        funded=int(r["job"]["funded"]),
        price_per_unit=int(r["job"]["price_per_unit"]),
        fee_bps=r["job"]["fee_bps"],
        items=items,
    )
    r.clear()
    r.update(build_report(plan, chain_id=31337, escrow=settled_escrow[0]))


settled_escrow: list[str] = []

TAMPERINGS = {
    "amount_changed": (lambda r: _first_paid(r).update(amount=str(int(_first_paid(r)["amount"]) - 1)), "root"),
    "payee_swapped": (lambda r: _first_paid(r).update(payee=B), "root"),
    "record_dropped": (lambda r: r["records"].pop(), "root"),
    "fake_root": (lambda r: r.update(report_root="0x" + "77" * 32), "reportRoot"),
    "proof_corrupted": (lambda r: r["records"][0]["proof"].__setitem__(0, "0x" + "00" * 32), "prove"),
    "payee_totals_inflated": (
        lambda r: r["payees"][0].update(amount=str(int(r["payees"][0]["amount"]) + 1)),
        "payee totals",
    ),
    "fee_changed": (lambda r: r.update(fee=str(int(r["fee"]) + 1)), "fee"),
    "refund_changed": (lambda r: r.update(refunded="0"), "funded"),
    "wrong_escrow": (lambda r: r.update(escrow="0x" + "12" * 20), "escrow"),
    "self_consistent_forgery": (
        lambda r: _rebuilt(r, lambda items: [WorkItem(i.task_key, B, i.units) for i in items]),
        "reportRoot",
    ),
    "units_below_amount": (lambda r: _first_paid(r).update(units=0), "root"),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_every_tampering_is_caught(name: str, settled, chain, operator, deployment) -> None:  # type: ignore[no-untyped-def]
    settled_escrow[:] = [operator.escrow.address]
    assert audit_job(chain.client, operator.escrow, settled["report"], from_block=deployment.first_block).ok
    tamper, expected = TAMPERINGS[name]
    bad = copy.deepcopy(settled["report"])
    tamper(bad)
    result = audit_job(chain.client, operator.escrow, bad, from_block=deployment.first_block)
    assert not result.ok
    assert expected in result.reason, result.reason
    assert "\n" not in result.reason


def test_unsettled_job_fails(db, funder, operator, chain, deployment) -> None:  # type: ignore[no-untyped-def]
    with Session(db, expire_on_commit=False) as s:
        job = funder.job(s)
    plan = plan_settlement(
        job_key=job.id,
        chain_job_id=bytes.fromhex(job.chain_job_id[2:]),
        funded=job.budget,
        price_per_unit=GLB,
        fee_bps=200,
        items=[WorkItem("t", A, 1)],
    )
    report = build_report(plan, chain_id=31337, escrow=operator.escrow.address)
    result = audit_job(chain.client, operator.escrow, report, from_block=deployment.first_block)
    assert not result.ok and "not settled" in result.reason


def test_chain_audit_counts_donations(settled, chain, deployment, funder) -> None:  # type: ignore[no-untyped-def]
    """A plain transfer to the escrow or the vault (anyone can send GLB anywhere) is a donation: counted, reported,
    and the audit still passes (before, one wei failed `globai audit chain` forever)."""
    funder.give(deployment.escrow, 1)  # no JobFunded event accounts for it
    funder.give(deployment.vault, 2)
    out = globai("audit", "chain", "--rpc", chain.url, "--deployment", str(settled["deployment"]))
    assert out.returncode == 0, out.stderr
    assert "donations (plain transfers in, counted above): JobEscrow 1 wei, StakingVault 2 wei" in out.stdout


def test_chain_audit_catches_balances_the_events_do_not_explain(settled, chain, deployment) -> None:  # type: ignore[no-untyped-def]
    from market.audit.chain import audit_chain, first_mismatch

    result = audit_chain(chain.client, deployment)
    assert result.ok and first_mismatch(result) is None
    result.escrow_expected += 1  # what a missed or forged event would look like
    assert not result.ok and first_mismatch(result).startswith("JobEscrow holds")  # type: ignore[union-attr]

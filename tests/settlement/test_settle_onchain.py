"""Settlement on the real Anvil: amounts credited, the report published, idempotent after a crash, batched."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from globai.chain.deploy import GLB
from market.api import create_app
from market.audit.job import audit_job
from market.db import Job, Settlement, SettlementReport, VerificationRun, WorkPart
from market.services.settlement import ready_jobs, settle_jobs
from market.settlement.payout import UNPAID_SLASHED
from tests.market.conftest import make_settings
from tests.settlement.support import PAYEES, credited, iter_events

A, B, C = (p.address for p in PAYEES)
NOW = datetime.now(UTC)


def add_parts(session: Session, job: Job, parts: list[tuple[str, int, str]]) -> None:
    for i, (worker, units, status) in enumerate(parts):
        session.add(
            WorkPart(job_id=job.id, work_key=f"{job.id[:8]}-part-{i}", worker=worker, units=units, status=status)
        )
    session.add(VerificationRun(job_id=job.id, status="settling", secret="0x" + "11" * 32, beacon="0x" + "22" * 32))
    session.commit()


def test_settle_credits_payees_and_publishes_report(db, funder, operator, chain, deployment) -> None:  # type: ignore[no-untyped-def]
    with Session(db) as s:
        job = funder.job(s, budget=100 * GLB, price=GLB)
        add_parts(s, job, [(A, 30, "paid"), (B, 20, "paid"), (C, 25, UNPAID_SLASHED)])
        (out,) = settle_jobs(s, operator, job_ids=[job.id], now=NOW)
        assert out.status == "settled"
        report = s.get(SettlementReport, job.id).report  # type: ignore[union-attr]
        assert s.get(Job, job.id).status == "settled"  # type: ignore[union-attr]
        settlement = s.query(Settlement).filter_by(job_id=job.id).one()
        assert settlement.status == "confirmed" and settlement.tx_hash == out.tx_hash
    assert credited(chain.client, deployment, A) == 30 * GLB
    assert credited(chain.client, deployment, B) == 20 * GLB
    assert credited(chain.client, deployment, C) == 0
    assert credited(chain.client, deployment, funder.requester.address) == 100 * GLB - 50 * GLB - GLB  # fee 2 %
    result = audit_job(chain.client, operator.escrow, report, from_block=deployment.first_block)
    assert result.ok, result.reason

    app = create_app(make_settings(str(db.url)), engine=db, chain=None)
    with TestClient(app) as client:
        got = client.get(f"/v1/audit/jobs/{job.id}/report")
        assert got.status_code == 200 and got.json() == report
        task = report["records"][0]["task"]
        proof = client.get(f"/v1/audit/jobs/{job.id}/proofs/{task}").json()
        assert proof["record"]["proof"] == report["records"][0]["proof"]
        assert client.get(f"/v1/audit/jobs/{NOW.timestamp():.0f}/report").status_code == 404


def test_retry_after_crash_never_settles_twice(db, funder, operator, chain, deployment) -> None:  # type: ignore[no-untyped-def]
    with Session(db) as s:
        job = funder.job(s)
        add_parts(s, job, [(A, 10, "paid")])
        (first,) = settle_jobs(s, operator, job_ids=[job.id], now=NOW)
        # A crash between the transaction and the DB commit: the DB still says "pending".
        s.query(Settlement).filter_by(job_id=job.id).update({"status": "pending", "tx_hash": None})
        s.get(Job, job.id).status = "completed"  # type: ignore[union-attr]
        s.commit()
        (again,) = settle_jobs(s, operator, job_ids=[job.id], now=NOW)
        assert again.status == "already_settled" and again.tx_hash == first.tx_hash
        assert s.query(Settlement).filter_by(job_id=job.id).one().status == "confirmed"
    settled = [e for e in iter_events(chain.client, deployment, "JobSettled")]
    assert len(settled) == 1
    assert credited(chain.client, deployment, A) == 10 * GLB


def test_report_is_built_once(db, funder, operator) -> None:  # type: ignore[no-untyped-def]
    with Session(db) as s:
        job = funder.job(s)
        add_parts(s, job, [(A, 10, "paid")])
        from market.services.settlement import prepare_report

        first = prepare_report(s, operator, job_id=job.id, now=NOW).report_root
        s.query(WorkPart).filter_by(job_id=job.id).update({"units": 11})  # later changes can't alter the root
        s.commit()
        assert prepare_report(s, operator, job_id=job.id, now=NOW).report_root == first


def test_ready_jobs_settle_in_one_batch(db, funder, operator, chain, deployment) -> None:  # type: ignore[no-untyped-def]
    with Session(db) as s:
        jobs = [funder.job(s) for _ in range(4)]
        for i, job in enumerate(jobs):
            add_parts(s, job, [(A, 5 + i, "paid"), (B, 3, "paid")])
        ids = ready_jobs(s)
        assert sorted(ids) == sorted(j.id for j in jobs)
        outcomes = settle_jobs(s, operator, job_ids=ids, now=NOW)
        assert {o.status for o in outcomes} == {"settled"}
        assert len({o.tx_hash for o in outcomes}) == 1  # one settleBatch transaction
        reports = [s.get(SettlementReport, j.id).report for j in jobs]  # type: ignore[union-attr]
        assert ready_jobs(s) == []
    for report in reports:
        assert audit_job(chain.client, operator.escrow, report, from_block=deployment.first_block).ok
    assert credited(chain.client, deployment, A) == (5 + 6 + 7 + 8) * GLB

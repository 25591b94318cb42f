"""Settling verified jobs on chain: plan from the DB, publish the report, send `settle`/`settleBatch` once.

Idempotent, keyed by job id: the report is built once and stored (a retry re-sends the same root); before
sending, the escrow's own status of each job is read, and a job the chain already settled is only recorded
(its JobSettled event gives the transaction); the contract rejects a second settlement anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from market.chain.client import ContractReverted
from market.db import Job, Settlement, SettlementReport, Task, VerificationRun, Worker, WorkPart
from market.domain_errors import Conflict, NotFound
from market.services.operator import ChainOperator
from market.settlement.payout import PAID, WorkItem, plan_settlement
from market.settlement.report import build_report

log = logging.getLogger(__name__)

FUNDED, SETTLED = 1, 2


@dataclass(frozen=True)
class SettleOutcome:
    job_id: str
    status: str  # settled | already_settled | not_ready | not_funded
    tx_hash: str | None = None
    report_root: str | None = None


def work_items(session: Session, job: Job) -> list[WorkItem]:
    """What verification left for the job: its work parts, or (training jobs) its verified tasks."""
    parts = session.scalars(select(WorkPart).where(WorkPart.job_id == job.id)).all()
    if parts:
        if any(p.status == "pending" for p in parts):
            raise Conflict(f"job {job.id} still has unverified work")
        return [WorkItem(p.work_key, p.worker, p.units, p.status) for p in parts]
    rows = session.execute(
        select(Task, Worker.address)
        .join(Worker, Worker.id == Task.submitted_by)
        .where(Task.job_id == job.id, Task.status.in_(("verified", "failed")))
    ).all()
    return [
        WorkItem(t.id, address, t.units, PAID if t.status == "verified" else "unpaid_faulty") for t, address in rows
    ]


def prepare_report(session: Session, op: ChainOperator, *, job_id: str, now: datetime) -> SettlementReport:
    """Build and store the job's report once; later calls return the stored one (the root never changes)."""
    existing = session.get(SettlementReport, job_id)
    if existing is not None:
        return existing
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("job", job_id)
    if job.funded_amount is None:
        raise Conflict(f"job {job_id} is not funded")
    plan = plan_settlement(
        job_key=job.id,
        chain_job_id=bytes.fromhex(job.chain_job_id.removeprefix("0x")),
        funded=job.funded_amount,
        price_per_unit=job.price_per_unit,
        fee_bps=op.fee_bps(),
        items=work_items(session, job),
    )
    report = build_report(plan, chain_id=op.chain_id, escrow=op.escrow.address)
    row = SettlementReport(job_id=job.id, report_root=report["report_root"], report=report, created_at=now)
    session.add(row)
    settlement = session.scalar(select(Settlement).where(Settlement.job_id == job.id))
    if settlement is None:
        settlement = Settlement(job_id=job.id, kind="settle", status="pending", created_at=now)
        session.add(settlement)
    settlement.report_root = report["report_root"]
    session.commit()
    return row


def _record(session: Session, job_id: str, tx_hash: str | None, now: datetime) -> None:
    job = session.get(Job, job_id)
    settlement = session.scalar(select(Settlement).where(Settlement.job_id == job_id))
    if settlement is not None:
        settlement.status = "confirmed"
        settlement.tx_hash = tx_hash
        settlement.confirmed_at = now
    if job is not None:
        job.status = "settled"
        job.updated_at = now
    run = session.get(VerificationRun, job_id)
    if run is not None:
        run.status = "done"


def _settled_tx(op: ChainOperator, chain_job_id: bytes, from_block: int) -> str | None:
    for ev in op.client.get_logs([op.escrow], from_block):
        if ev.name == "JobSettled" and ev.args["jobId"] == chain_job_id:
            return ev.tx_hash
    return None


def settle_jobs(
    session: Session, op: ChainOperator, *, job_ids: Sequence[str], now: datetime, _retried: bool = False
) -> list[SettleOutcome]:
    """Settle every job in `job_ids` that is verified and funded: one `settle`, or one `settleBatch` for many."""
    outcomes: list[SettleOutcome] = []
    batch: list[tuple[Job, SettlementReport]] = []
    for job_id in job_ids:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound("job", job_id)
        report = prepare_report(session, op, job_id=job_id, now=now)
        chain_job_id = bytes.fromhex(job.chain_job_id.removeprefix("0x"))
        onchain = op.escrow_job(chain_job_id)
        if int(onchain["status"]) == SETTLED:
            # A crash after sending and before recording lands here: record what the chain says.
            if "0x" + bytes(onchain["reportRoot"]).hex() != report.report_root:
                log.error("job %s settled on chain with another report root", job_id)
            tx = _settled_tx(op, chain_job_id, job.funded_block or job.created_block)
            _record(session, job_id, tx, now)
            session.commit()
            outcomes.append(SettleOutcome(job_id, "already_settled", tx, report.report_root))
        elif int(onchain["status"]) != FUNDED:
            outcomes.append(SettleOutcome(job_id, "not_funded", None, report.report_root))
        else:
            batch.append((job, report))
    if not batch:
        return outcomes
    # Ordered by requester: the contract credits each requester once per consecutive run (cheaper batches).
    batch.sort(key=lambda item: (item[0].requester.lower(), item[0].id))
    entries = []
    for job, report in batch:
        body = report.report
        entries.append(
            (
                bytes.fromhex(job.chain_job_id.removeprefix("0x")),
                [p["payee"] for p in body["payees"]],
                [int(p["amount"]) for p in body["payees"]],
                bytes.fromhex(report.report_root.removeprefix("0x")),
            )
        )
    fn = op.escrow.functions.settle(*entries[0]) if len(entries) == 1 else op.escrow.functions.settleBatch(entries)
    try:
        receipt = op.client.transact(fn, op.account)
    except ContractReverted as exc:
        if exc.error != "JobEscrowNotFunded" or _retried:
            raise
        # Someone settled one of them meanwhile: go one by one (each re-checks the chain first).
        for job, _ in batch:
            outcomes.extend(settle_jobs(session, op, job_ids=[job.id], now=now, _retried=True))
        return outcomes
    tx = "0x" + bytes(receipt["transactionHash"]).hex()
    for job, report in batch:
        _record(session, job.id, tx, now)
        outcomes.append(SettleOutcome(job.id, "settled", tx, report.report_root))
    session.commit()
    log.info("settled %d job(s) in %s (gas %s)", len(batch), tx, receipt.get("gasUsed"))
    return outcomes


def ready_jobs(session: Session, *, limit: int = 50) -> list[str]:
    """Jobs whose verification finished and that wait for settlement."""
    rows = session.scalars(
        select(VerificationRun.job_id).where(VerificationRun.status == "settling").limit(limit)
    ).all()
    return list(rows)

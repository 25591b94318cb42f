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

from globai.chain.ports import Escrow, EscrowJobNotFunded, SettleEntry
from market.db import Job, Settlement, SettlementReport, Task, VerificationRun, Worker, WorkPart
from market.domain_errors import Conflict, NotFound
from market.settlement.payout import PAID, REFUNDED_ITEM, WorkItem, plan_settlement
from market.settlement.report import build_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettleOutcome:
    job_id: str
    status: str  # settled | sent | already_settled | refunded | not_ready | not_funded
    tx_hash: str | None = None
    report_root: str | None = None


def work_items(session: Session, job: Job) -> list[WorkItem]:
    """What verification left for the job: its work parts, or (training jobs) its verified tasks."""
    parts = session.scalars(select(WorkPart).where(WorkPart.job_id == job.id)).all()
    if parts:
        if any(p.status == "pending" for p in parts):
            raise Conflict(f"job {job.id} still has unverified work")
        if job.kind == "credit":  # API usage: each request's charge goes to the workers of its run
            from market.services.credits import credit_work_items

            return credit_work_items(session, job, list(parts))
        return [WorkItem(p.work_key, p.worker, p.units, p.status) for p in parts]
    rows = session.execute(
        select(Task, Worker.address)
        .join(Worker, Worker.id == Task.submitted_by)
        .where(Task.job_id == job.id, Task.status.in_(("verified", "failed")))
    ).all()
    items = [
        WorkItem(t.id, address, t.units, PAID if t.status == "verified" else "unpaid_faulty") for t, address in rows
    ]
    if not items and job.status == "cancelled":
        # Nothing was done: one zero record for the requester, so the report (and its root) still exist.
        items = [WorkItem(f"refund:{job.id}", job.requester, 0, REFUNDED_ITEM)]
    return items


def prepare_report(session: Session, op: Escrow, *, job_id: str, now: datetime) -> SettlementReport:
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
    report = build_report(plan, chain_id=op.chain_id, escrow=op.escrow_address)
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
    """The chain's settlement of the job is confirmed: settlement, job and verification run are done."""
    job = session.get(Job, job_id)
    settlement = session.scalar(select(Settlement).where(Settlement.job_id == job_id))
    if settlement is not None:
        settlement.status = "confirmed"
        settlement.tx_hash = tx_hash or settlement.tx_hash
        settlement.confirmed_at = now
    if job is not None:
        # A cancelled job is settled on chain as a refund (verified work so far paid, the rest back).
        job.status = "refunded" if job.status in ("cancelled", "refunded") else "settled"
        job.updated_at = now
    run = session.get(VerificationRun, job_id)
    if run is not None:
        run.status = "done"


def _mark_sent(session: Session, job_id: str, tx_hash: str, now: datetime) -> None:
    settlement = session.scalar(select(Settlement).where(Settlement.job_id == job_id))
    if settlement is not None and settlement.status != "confirmed":
        settlement.status, settlement.tx_hash = "sent", tx_hash
    job = session.get(Job, job_id)
    if job is not None:
        job.updated_at = now


def settle_jobs(
    session: Session, op: Escrow, *, job_ids: Sequence[str], now: datetime, _retried: bool = False
) -> list[SettleOutcome]:
    """Settle every job in `job_ids` that is verified (or cancelled) and funded: one `settle`, or one
    `settleBatch` for many. A job is only `sent` until its JobSettled event is `op.confirmations` blocks deep
    (then `confirmed`); a sent job the chain shows funded again (its transaction was lost) is sent again."""
    outcomes: list[SettleOutcome] = []
    batch: list[tuple[Job, SettlementReport]] = []
    for job_id in job_ids:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound("job", job_id)
        report = prepare_report(session, op, job_id=job_id, now=now)
        chain_job_id = bytes.fromhex(job.chain_job_id.removeprefix("0x"))
        onchain = op.job(chain_job_id)
        if onchain.status == "settled":
            # Sent by us earlier (maybe by a process that crashed before recording it): confirm it once deep enough.
            if onchain.report_root != report.report_root:
                log.error("job %s settled on chain with another report root", job_id)
            event = op.settled(chain_job_id, job.funded_block or job.created_block)
            if event is not None and op.confirmed(event.block_number):
                _record(session, job_id, event.tx_hash, now)
                session.commit()
                outcomes.append(SettleOutcome(job_id, "already_settled", event.tx_hash, report.report_root))
            else:
                if event is not None:
                    _mark_sent(session, job_id, event.tx_hash, now)
                    session.commit()
                outcomes.append(SettleOutcome(job_id, "sent", event.tx_hash if event else None, report.report_root))
        elif onchain.status == "refunded":
            # The requester took the money back after the deadline: nothing left to settle.
            _record(session, job_id, None, now)
            job.status = "refunded"
            session.commit()
            outcomes.append(SettleOutcome(job_id, "refunded", None, report.report_root))
        elif onchain.status != "funded":
            outcomes.append(SettleOutcome(job_id, "not_funded", None, report.report_root))
        else:
            settlement = session.scalar(select(Settlement).where(Settlement.job_id == job_id))
            if settlement is not None and settlement.status == "sent":
                # Mined once, gone now (a reorg, a node restarted without its state): the nonce state is stale too.
                log.warning("job %s: settlement %s is no longer on chain; sending it again", job_id, settlement.tx_hash)
                op.resync()
            batch.append((job, report))
    if not batch:
        return outcomes
    # Ordered by requester: the contract credits each requester once per consecutive run (cheaper batches).
    batch.sort(key=lambda item: (item[0].requester.lower(), item[0].id))
    entries = [
        SettleEntry(
            chain_job_id=bytes.fromhex(job.chain_job_id.removeprefix("0x")),
            payees=[p["payee"] for p in report.report["payees"]],
            amounts=[int(p["amount"]) for p in report.report["payees"]],
            report_root=bytes.fromhex(report.report_root.removeprefix("0x")),
        )
        for job, report in batch
    ]
    try:
        sent = op.settle(entries)
    except EscrowJobNotFunded:
        if _retried:
            raise
        # Someone settled one of them meanwhile: go one by one (each re-checks the chain first).
        for job, _ in batch:
            outcomes.extend(settle_jobs(session, op, job_ids=[job.id], now=now, _retried=True))
        return outcomes
    tx = sent.tx_hash
    deep = op.confirmed(sent.block_number)
    for job, report in batch:
        if deep:
            _record(session, job.id, tx, now)
        else:
            _mark_sent(session, job.id, tx, now)
        outcomes.append(SettleOutcome(job.id, "settled" if deep else "sent", tx, report.report_root))
    session.commit()
    log.info("settled %d job(s) in %s (gas %s)", len(batch), tx, sent.gas_used)
    return outcomes


def ready_jobs(session: Session, *, limit: int = 50) -> list[str]:
    """Jobs waiting for settlement (or for its confirmation): verification finished, or cancelled after funding
    (a refund: verified work so far is paid, the rest goes back to the requester)."""
    verified = session.scalars(
        select(VerificationRun.job_id).where(VerificationRun.status == "settling").limit(limit)
    ).all()
    refunds = session.scalars(
        select(Settlement.job_id)
        .join(Job, Job.id == Settlement.job_id)
        .where(Settlement.kind == "refund", Settlement.status.in_(("pending", "sent")), Job.status == "cancelled")
        .limit(limit)
    ).all()
    return list(dict.fromkeys([*verified, *refunds]))

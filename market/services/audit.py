"""What an auditor reads from the market's DB: settlement reports and their records, verification checks, slashes,
and the chain events the indexer recorded. Data access only (keyword arguments, domain errors, no HTTP)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from market.db import ChainEvent, Job, SettlementReport, SlashRecord, VerificationCheck, VerificationRun
from market.domain_errors import NotFound


def settlement_report_or_none(session: Session, *, job_id: str) -> SettlementReport | None:
    return session.get(SettlementReport, job_id)


def settlement_report(session: Session, *, job_id: str) -> SettlementReport:
    row = settlement_report_or_none(session, job_id=job_id)
    if row is None:
        raise NotFound("settlement report", job_id)
    return row


def verification_run(session: Session, *, job_id: str) -> VerificationRun | None:
    return session.get(VerificationRun, job_id)


def settlement_record(session: Session, *, job_id: str, task: str) -> tuple[str, dict[str, Any]]:
    """(report root, record) of one task of the job's report, by task key or task id."""
    row = settlement_report(session, job_id=job_id)
    for record in row.report["records"]:
        if record["task"] == task or record["task_id"] == task.lower():
            return row.report_root, record
    raise NotFound("settlement record", f"{job_id}/{task}")


def verification_checks(session: Session, *, job_id: str) -> list[VerificationCheck]:
    """Every sampled segment's replay checks, round 0 first, then the dispute rounds."""
    if session.get(Job, job_id) is None:
        raise NotFound("job", job_id)
    return list(
        session.scalars(
            select(VerificationCheck)
            .where(VerificationCheck.job_id == job_id)
            .order_by(VerificationCheck.work_key, VerificationCheck.chunk_index, VerificationCheck.round)
        ).all()
    )


def slashes(session: Session, *, job_id: str) -> list[SlashRecord]:
    return list(session.scalars(select(SlashRecord).where(SlashRecord.job_id == job_id)).all())


def chain_events(
    session: Session, *, event: str | None, contract: str | None, from_block: int, limit: int, offset: int
) -> tuple[list[ChainEvent], int]:
    """Indexed contract events in chain order, filtered; (page, total)."""
    query = select(ChainEvent).where(ChainEvent.block_number >= from_block)
    if event is not None:
        query = query.where(ChainEvent.event == event)
    if contract is not None:
        query = query.where(func.lower(ChainEvent.contract) == contract.lower())
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = session.scalars(
        query.order_by(ChainEvent.block_number, ChainEvent.log_index).limit(limit).offset(offset)
    ).all()
    return list(rows), total

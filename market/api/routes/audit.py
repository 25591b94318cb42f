"""Read-only audit API: settlement reports and proofs (public: anyone may check a payout), verification checks,
slashes and indexed chain events (auditors and admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel
from sqlalchemy import func, select

from market.api.deps import AuditorDep, SessionDep
from market.api.schemas.common import Page
from market.db import ChainEvent, Job, SettlementReport, SlashRecord, VerificationCheck
from market.domain_errors import Forbidden, NotFound

router = APIRouter(prefix="/v1/audit", tags=["audit"])

JobId = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")]


class ProofOut(BaseModel):
    job_id: str
    report_root: str
    record: dict[str, Any]


class CheckOut(BaseModel):
    id: str
    work_key: str
    worker: str
    stage: int
    chunk_index: int
    round: int
    replica: str | None
    status: str
    reason: str
    evidence: str
    metrics: dict[str, Any]
    decided_at: datetime | None


class SlashOut(BaseModel):
    worker: str
    amount: str
    slashed: str | None
    evidence: str
    finder: str
    status: str
    tx_hash: str | None


class EventOut(BaseModel):
    chain_id: int
    contract: str
    event: str
    block_number: int
    tx_hash: str
    log_index: int
    args: dict[str, Any]


def _report(session: SessionDep, job_id: str) -> SettlementReport:
    row = session.get(SettlementReport, job_id)
    if row is None:
        raise NotFound("settlement report", job_id)
    return row


@router.get("/jobs/{job_id}/report")
def job_report(job_id: JobId, session: SessionDep) -> dict[str, Any]:
    """The job's settlement report (format in docs/settlement.md); check it with `globai audit job`."""
    return dict(_report(session, job_id).report)


@router.get("/jobs/{job_id}/proofs/{task}", response_model=ProofOut)
def job_proof(job_id: JobId, task: Annotated[str, Path(max_length=64)], session: SessionDep) -> ProofOut:
    """One task's record with its Merkle proof against the job's on-chain report root."""
    row = _report(session, job_id)
    for record in row.report["records"]:
        if record["task"] == task or record["task_id"] == task.lower():
            return ProofOut(job_id=job_id, report_root=row.report_root, record=record)
    raise NotFound("settlement record", f"{job_id}/{task}")


@router.get("/jobs/{job_id}/checks", response_model=list[CheckOut])
def job_checks(job_id: JobId, _auditor: AuditorDep, session: SessionDep) -> list[CheckOut]:
    """Every sampled segment's replay checks (round 0, then the 2-of-3 dispute rounds)."""
    if session.get(Job, job_id) is None:
        raise NotFound("job", job_id)
    rows = session.scalars(
        select(VerificationCheck)
        .where(VerificationCheck.job_id == job_id)
        .order_by(VerificationCheck.work_key, VerificationCheck.chunk_index, VerificationCheck.round)
    ).all()
    return [
        CheckOut(id=r.id, work_key=r.work_key, worker=r.worker, stage=r.stage, chunk_index=r.chunk_index,
                 round=r.round, replica=r.replica, status=r.status, reason=r.reason, evidence=r.evidence,
                 metrics=r.metrics, decided_at=r.decided_at)
        for r in rows
    ]


@router.get("/jobs/{job_id}/slashes", response_model=list[SlashOut])
def job_slashes(job_id: JobId, _auditor: AuditorDep, session: SessionDep) -> list[SlashOut]:
    rows = session.scalars(select(SlashRecord).where(SlashRecord.job_id == job_id)).all()
    return [
        SlashOut(worker=r.worker, amount=str(r.amount), slashed=None if r.slashed is None else str(r.slashed),
                 evidence=r.evidence, finder=r.finder, status=r.status, tx_hash=r.tx_hash)
        for r in rows
    ]


@router.get("/events", response_model=Page[EventOut])
def chain_events(
    principal: AuditorDep,
    session: SessionDep,
    event: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z]+$")] = None,
    contract: Annotated[str | None, Query(pattern=r"^0x[0-9a-fA-F]{40}$")] = None,
    from_block: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # a block number fits a signed 64-bit column
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Page[EventOut]:
    """Contract events as the indexer recorded them, in chain order."""
    if "auditor" not in principal.roles and "admin" not in principal.roles:  # pragma: no cover - AuditorDep
        raise Forbidden("this needs the auditor role")
    query = select(ChainEvent).where(ChainEvent.block_number >= from_block)
    if event is not None:
        query = query.where(ChainEvent.event == event)
    if contract is not None:
        query = query.where(func.lower(ChainEvent.contract) == contract.lower())
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = session.scalars(
        query.order_by(ChainEvent.block_number, ChainEvent.log_index).limit(limit).offset(offset)
    ).all()
    return Page[EventOut](
        items=[EventOut(chain_id=r.chain_id, contract=r.contract, event=r.event, block_number=r.block_number,
                        tx_hash=r.tx_hash, log_index=r.log_index, args=r.args) for r in rows],
        total=total, limit=limit, offset=offset,
    )

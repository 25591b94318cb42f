"""Read-only audit API: settlement reports and proofs (public: anyone may check a payout), verification checks,
slashes and indexed chain events (auditors and admins)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from market.api.deps import AuditorDep, SessionDep
from market.api.schemas.audit import CheckOut, EventOut, ProofOut, SlashOut
from market.api.schemas.common import Page
from market.domain_errors import Forbidden
from market.services import audit

router = APIRouter(prefix="/v1/audit", tags=["audit"])

JobId = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")]


@router.get("/jobs/{job_id}/report")
def job_report(job_id: JobId, session: SessionDep) -> dict[str, Any]:
    """The job's settlement report (format in docs/settlement.md); check it with `globai audit job`."""
    return dict(audit.settlement_report(session, job_id=job_id).report)


@router.get("/jobs/{job_id}/proofs/{task}", response_model=ProofOut)
def job_proof(job_id: JobId, task: Annotated[str, Path(max_length=200)], session: SessionDep) -> ProofOut:
    """One task's record with its Merkle proof against the job's on-chain report root."""
    root, record = audit.settlement_record(session, job_id=job_id, task=task)
    return ProofOut(job_id=job_id, report_root=root, record=record)


@router.get("/jobs/{job_id}/checks", response_model=list[CheckOut])
def job_checks(job_id: JobId, _auditor: AuditorDep, session: SessionDep) -> list[CheckOut]:
    """Every sampled segment's replay checks (round 0, then the 2-of-3 dispute rounds)."""
    return [
        CheckOut(
            id=r.id,
            work_key=r.work_key,
            worker=r.worker,
            stage=r.stage,
            chunk_index=r.chunk_index,
            round=r.round,
            replica=r.replica,
            status=r.status,
            reason=r.reason,
            evidence=r.evidence,
            metrics=r.metrics,
            decided_at=r.decided_at,
        )
        for r in audit.verification_checks(session, job_id=job_id)
    ]


@router.get("/jobs/{job_id}/slashes", response_model=list[SlashOut])
def job_slashes(job_id: JobId, _auditor: AuditorDep, session: SessionDep) -> list[SlashOut]:
    return [
        SlashOut(
            worker=r.worker,
            amount=str(r.amount),
            slashed=None if r.slashed is None else str(r.slashed),
            evidence=r.evidence,
            finder=r.finder,
            status=r.status,
            tx_hash=r.tx_hash,
        )
        for r in audit.slashes(session, job_id=job_id)
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
    rows, total = audit.chain_events(
        session, event=event, contract=contract, from_block=from_block, limit=limit, offset=offset
    )
    return Page[EventOut](
        items=[
            EventOut(
                chain_id=r.chain_id,
                contract=r.contract,
                event=r.event,
                block_number=r.block_number,
                tx_hash=r.tx_hash,
                log_index=r.log_index,
                args=r.args,
            )
            for r in rows
        ],
        total=total,
        limit=limit,
        offset=offset,
    )

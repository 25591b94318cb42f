"""`GET /v1/workers/me/summary`: what `globai worker status` shows (stake, reputation, work done, GLB earned)."""

from __future__ import annotations

from fastapi import APIRouter

from market.api.deps import CoordinatorDep, NowDep, SessionDep, WorkerDep
from market.api.schemas.workers import EarningRow, Earnings, WorkerSummary
from market.services import workers

router = APIRouter(prefix="/v1/workers", tags=["workers"])


def earnings_rows(session: SessionDep, address: str) -> list[EarningRow]:
    """Per job, what confirmed settlements credited `address` (from the published reports' payee lists)."""
    return [
        EarningRow(
            job_id=job.id,
            chain_job_id=job.chain_job_id,
            kind=job.kind,
            model=job.model,
            amount=str(amount),
            settlement_tx=settlement.tx_hash,
            settled_at=settlement.confirmed_at.isoformat() if settlement.confirmed_at else None,
        )
        for job, settlement, amount in workers.settlement_credits(session, address=address)
    ]


@router.get("/me/earnings", response_model=Earnings)
def earnings(principal: WorkerDep, session: SessionDep) -> Earnings:
    """Per-job GLB credited to this worker by settlements; `globai worker earnings` checks them against the chain."""
    rows = earnings_rows(session, principal.address)
    return Earnings(address=principal.address, total=str(sum(int(r.amount) for r in rows)), jobs=rows)


@router.get("/me/summary", response_model=WorkerSummary)
def summary(coordinator: CoordinatorDep, principal: WorkerDep, session: SessionDep, now: NowDep) -> WorkerSummary:
    worker = workers.get_worker(session, address=principal.address)
    rep = workers.worker_reputation(session, worker_id=worker.id, now=now)
    tasks_done, calls = workers.work_counts(session, worker=worker)
    earned = sum(int(row.amount) for row in earnings_rows(session, worker.address))
    connected = [
        f"{lnk.model} [{lnk.layer_start}, {lnk.layer_end})"
        for lnk in coordinator.links.live()
        if lnk.address == worker.address
    ]
    return WorkerSummary(
        address=worker.address,
        status=worker.status,
        eligible=worker.eligible,
        stake=str(worker.stake),
        unbonding=str(worker.unbonding),
        reputation_mean=rep.mean,
        tasks_done=int(tasks_done),
        stage_calls=int(calls),
        earned=str(earned),
        connected=connected,
    )

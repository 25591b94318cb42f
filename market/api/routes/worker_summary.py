"""`GET /v1/workers/me/summary`: what `globai worker status` shows (stake, reputation, work done, GLB earned)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import func, select

from market.api.deps import NowDep, SessionDep, WorkerDep
from market.api.schemas.common import WeiStr
from market.coordinator.service import Coordinator
from market.db import SettlementItem, Task
from market.db.inference import StageRecord
from market.services import workers

router = APIRouter(prefix="/v1/workers", tags=["workers"])


class WorkerSummary(BaseModel):
    address: str
    status: str
    eligible: bool
    stake: WeiStr
    unbonding: WeiStr
    reputation_mean: float
    tasks_done: int  # tasks submitted (training/forward) through leases
    stage_calls: int  # pipeline forward calls recorded for verification
    earned: WeiStr  # GLB wei credited by settlements
    connected: list[str]  # "model [a, b)" per open WebSocket


@router.get("/me/summary", response_model=WorkerSummary)
def summary(request: Request, principal: WorkerDep, session: SessionDep, now: NowDep) -> WorkerSummary:
    worker = workers.get_worker(session, address=principal.address)
    rep = workers.worker_reputation(session, worker_id=worker.id, now=now)
    tasks_done = session.scalar(select(func.count()).select_from(Task).where(Task.submitted_by == worker.id)) or 0
    calls = session.scalar(
        select(func.count()).select_from(StageRecord).where(StageRecord.worker_address == worker.address)) or 0
    earned = sum(session.scalars(select(SettlementItem.amount).where(SettlementItem.payee == worker.address)).all())
    coordinator: Coordinator = request.app.state.coordinator
    connected = [f"{lnk.model} [{lnk.layer_start}, {lnk.layer_end})" for lnk in coordinator.links.live()
                 if lnk.address == worker.address]
    return WorkerSummary(
        address=worker.address, status=worker.status, eligible=worker.eligible, stake=str(worker.stake),
        unbonding=str(worker.unbonding), reputation_mean=rep.mean, tasks_done=int(tasks_done),
        stage_calls=int(calls), earned=str(earned), connected=connected,
    )

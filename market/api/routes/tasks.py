"""Task leasing for workers: claim, heartbeat the lease, submit the result."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Path, Response, status
from starlette.exceptions import HTTPException as StarletteHTTPException

from market.api.deps import CtxDep, NowDep, PrincipalDep, SessionDep, WorkerDep, can_see_everything
from market.api.schemas.tasks import (
    ClaimIn,
    ClaimManyIn,
    HeartbeatOut,
    LeaseOut,
    LeaseRefIn,
    LeasesOut,
    ResultIn,
    ResultItemOut,
    ResultOut,
    ResultsIn,
    ResultsOut,
    TaskOut,
)
from market.db import Job, Task
from market.domain_errors import Conflict, Forbidden, LeaseLost, NotFound
from market.services import leasing, workers

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

TaskId = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")]


def task_out(task: Task) -> TaskOut:
    return TaskOut(
        id=task.id,
        job_id=task.job_id,
        index=task.index,
        kind=task.kind,
        model=task.model,
        layer_start=task.layer_start,
        layer_end=task.layer_end,
        memory_bytes=task.memory_bytes,
        units=task.units,
        status=task.status,
        attempts=task.attempts,
        payload=task.payload,
        deadline=task.deadline,
        result_hash=task.result_hash,
        submitted_at=task.submitted_at,
    )


def _wanted(body: ClaimIn) -> leasing.ClaimFilter:
    return leasing.ClaimFilter(
        kinds=body.kinds,
        models=body.models,
        memory_bytes=body.memory_bytes,
        layer_ranges=[(r.start, r.end) for r in body.layer_ranges],
    )


@router.post(
    "/claim",
    response_model=LeaseOut,
    responses={204: {"description": "no task matches this worker's capabilities right now"}},
)
def claim(body: ClaimIn, principal: WorkerDep, ctx: CtxDep, now: NowDep) -> LeaseOut | Response:
    """Lease the best-paying queued task this worker can run. Keep the lease alive with heartbeats."""
    wanted = _wanted(body)
    # The hot path opens its session here rather than through SessionDep: a generator dependency costs FastAPI an
    # exit stack and a cancel scope per request, which showed up as a large share of the claim's CPU.
    with ctx.session_factory() as session:
        worker = ctx.workers.get(
            session, address=principal.address, min_stake=ctx.settings.min_stake_wei, clock_s=time.monotonic()
        )
        claimed = leasing.claim_task(
            session, worker=worker, wanted=wanted, lease_ttl_s=ctx.settings.lease_ttl_s, now=now
        )
    if claimed is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return LeaseOut(task=task_out(claimed.task), lease_id=claimed.lease_id, lease_expires_at=claimed.expires_at)


@router.post("/claims", response_model=LeasesOut)
async def claim_many(body: ClaimManyIn, principal: WorkerDep, ctx: CtxDep, now: NowDep) -> LeasesOut:
    """Lease up to `max_tasks` queued tasks this worker can run in one request, best first (a batched claim; on
    Postgres one statement). Each lease is kept alive and submitted on its own, or all at once with /results."""
    wanted = _wanted(body)

    def work() -> list[leasing.Claimed]:
        with ctx.session_factory() as session:
            worker = ctx.workers.get(
                session, address=principal.address, min_stake=ctx.settings.min_stake_wei, clock_s=time.monotonic()
            )
            return leasing.claim_tasks(
                session,
                worker=worker,
                wanted=wanted,
                lease_ttl_s=ctx.settings.lease_ttl_s,
                now=now,
                limit=body.max_tasks,
            )

    claimed = await asyncio.to_thread(work)  # one hand-off to a DB thread for the whole batch
    return LeasesOut(
        leases=[LeaseOut(task=task_out(c.task), lease_id=c.lease_id, lease_expires_at=c.expires_at) for c in claimed]
    )


@router.post("/results", response_model=ResultsOut)
async def submit_many(body: ResultsIn, principal: WorkerDep, ctx: CtxDep, now: NowDep) -> ResultsOut:
    """Submit several results in one request; each is judged as `POST /v1/tasks/{id}/result` would (a refused one
    says why and does not stop the others)."""

    def work() -> list[ResultItemOut]:
        out: list[ResultItemOut] = []
        with ctx.session_factory() as session:
            worker = ctx.workers.get(
                session, address=principal.address, min_stake=ctx.settings.min_stake_wei, clock_s=time.monotonic()
            )
            for item in body.results:
                try:
                    _task, created = leasing.submit_result(
                        session,
                        task_id=item.task_id,
                        worker_id=worker.id,
                        lease_id=item.lease_id,
                        result_hash=item.result_hash.lower(),
                        result=item.result,
                        now=now,
                    )
                    out.append(ResultItemOut(task_id=item.task_id, accepted=created))
                except (LeaseLost, Conflict, NotFound) as exc:
                    out.append(ResultItemOut(task_id=item.task_id, accepted=False, error=str(exc)))
        return out

    return ResultsOut(results=await asyncio.to_thread(work))


@router.post("/{task_id}/heartbeat", response_model=HeartbeatOut)
def heartbeat(
    task_id: TaskId, body: LeaseRefIn, principal: WorkerDep, session: SessionDep, ctx: CtxDep, now: NowDep
) -> HeartbeatOut:
    worker = workers.get_worker(session, address=principal.address)
    expires = leasing.heartbeat_lease(
        session,
        task_id=task_id,
        worker_id=worker.id,
        lease_id=body.lease_id,
        lease_ttl_s=ctx.settings.lease_ttl_s,
        now=now,
    )
    return HeartbeatOut(task_id=task_id, lease_id=body.lease_id, lease_expires_at=expires)


@router.post("/{task_id}/result", response_model=ResultOut)
def submit(task_id: TaskId, body: ResultIn, principal: WorkerDep, ctx: CtxDep, now: NowDep) -> ResultOut:
    """Submit the lease holder's result; the same result again is accepted=false, a different one 409."""
    with ctx.session_factory() as session:  # hot path: see claim()
        worker = ctx.workers.get(
            session, address=principal.address, min_stake=ctx.settings.min_stake_wei, clock_s=time.monotonic()
        )
        task, created = leasing.submit_result(
            session,
            task_id=task_id,
            worker_id=worker.id,
            lease_id=body.lease_id,
            result_hash=body.result_hash.lower(),
            result=body.result,
            now=now,
        )
        return ResultOut(task=task_out(task), accepted=created)


@router.api_route("/claim", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def claim_wrong_method() -> None:
    """`/claim` is POST only: answer 405 rather than reading "claim" as a task id (422)."""
    raise StarletteHTTPException(405, "use POST /v1/tasks/claim", headers={"Allow": "POST"})


@router.get("/{task_id}", response_model=TaskOut)
def get_task(task_id: TaskId, principal: PrincipalDep, session: SessionDep) -> TaskOut:
    """Visible to the job's requester, the worker that leased or submitted it, auditors and admins."""
    task = leasing.get_task(session, task_id=task_id)
    if not can_see_everything(principal):
        job = session.get(Job, task.job_id)
        worker = session.scalar(workers.select_worker_id(principal.address))
        is_owner = job is not None and job.requester == principal.address
        is_worker = worker is not None and worker in (task.leased_by, task.submitted_by)
        if not (is_owner or is_worker):
            raise Forbidden("not your task")
    return task_out(task)

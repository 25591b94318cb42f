"""Jobs: creation with escrow parameters, listing, task queueing, cancellation (funding: `market.services.funding`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from globai.chain.ids import chain_job_id
from market.db import Job, Lease, Settlement, Task, new_id
from market.domain_errors import Conflict, Forbidden, InvalidRequest, NotFound
from market.services.job_specs import LONG_JOB_ROUNDS, CreditSpec, InferenceSpec, TrainingSpec, spec_dict, spec_hash

log = logging.getLogger(__name__)

MIN_DEADLINE = timedelta(minutes=5)
MAX_DEADLINE = timedelta(days=365)


@dataclass(frozen=True)
class TaskSpec:
    """A claimable unit of work; the aggregator and verifier add these to a job (next round, replays)."""

    kind: str  # train | forward
    model: str
    layer_start: int
    layer_end: int
    memory_bytes: int
    units: int
    payload: dict[str, Any] = field(default_factory=dict)
    exclude_operator: str | None = None


def create_job(
    session: Session,
    *,
    requester: str,
    spec: InferenceSpec | TrainingSpec | CreditSpec,
    budget: int,
    price_per_unit: int,
    deadline: datetime,
    replicas: int,
    chain_id: int | None,
    created_block: int,
    now: datetime,
    served_models: Callable[[], list[str]] | None = None,
) -> Job:
    """A new job. With `served_models`, an inference job for a model not in it is refused (before any funding:
    no worker could ever run it)."""
    if deadline < now + MIN_DEADLINE or deadline > now + MAX_DEADLINE:
        raise InvalidRequest("deadline must be between 5 minutes and 365 days from now")
    units = spec.units()
    if price_per_unit <= 0:
        raise InvalidRequest("price_per_unit must be positive")
    if budget < price_per_unit * units:
        raise InvalidRequest(f"budget {budget} is below price_per_unit x units = {price_per_unit * units}")
    if budget >= 2**256:
        raise InvalidRequest("budget does not fit in uint256")
    if served_models is not None and isinstance(spec, InferenceSpec):
        served = served_models()
        if spec.model not in served:
            raise InvalidRequest(
                f"model {spec.model!r} is not served by this market (served: {', '.join(sorted(served)) or 'none'})"
            )
    job_uuid = new_id()
    body = spec_dict(spec)
    job = Job(
        id=job_uuid,
        chain_job_id=chain_job_id(job_uuid, requester),
        chain_id=chain_id,
        requester=requester,
        kind=spec.kind,
        model=spec.model,
        spec=body,
        spec_hash=spec_hash(body),
        budget=budget,
        price_per_unit=price_per_unit,
        max_units=units,
        # The escrow stores whole seconds; keep the DB value identical so the funding check is exact.
        deadline=deadline.replace(microsecond=0),
        replicas=replicas,
        long_running=isinstance(spec, TrainingSpec) and spec.rounds >= LONG_JOB_ROUNDS,
        status="created",
        created_block=created_block,
        created_at=now,
        updated_at=now,
    )
    session.add(job)
    session.commit()
    return job


def get_job(session: Session, *, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("job", job_id)
    return job


def list_jobs(
    session: Session,
    *,
    requester: str | None,
    status: str | None,
    kind: str | None,
    limit: int,
    offset: int,
) -> tuple[list[Job], int]:
    query = select(Job)
    if requester is not None:
        query = query.where(Job.requester == requester)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    return list(rows), total


def enqueue_tasks(session: Session, *, job: Job, tasks: list[TaskSpec], now: datetime) -> list[Task]:
    """Add claimable tasks to a funded job (caller commits)."""
    if job.status not in ("funded", "running"):
        raise Conflict(f"job {job.id} is {job.status}; tasks are only queued for funded jobs")
    start = int(session.scalar(select(func.coalesce(func.max(Task.index) + 1, 0)).where(Task.job_id == job.id)) or 0)
    rows = [
        Task(
            job_id=job.id,
            index=start + i,
            kind=t.kind,
            model=t.model,
            layer_start=t.layer_start,
            layer_end=t.layer_end,
            memory_bytes=t.memory_bytes,
            units=t.units,
            priority=job.price_per_unit,
            deadline=job.deadline,
            status="queued",
            attempts=0,
            payload=t.payload,
            exclude_operator=t.exclude_operator,
            created_at=now,
        )
        for i, t in enumerate(tasks)
    ]
    session.add_all(rows)
    session.flush()
    return rows


def cancel_job(session: Session, *, job_id: str, caller: str, is_admin: bool, now: datetime) -> Job:
    """Cancel a job that is not finished. Funded jobs get a pending refund settlement (the refund hook)."""
    job = get_job(session, job_id=job_id)
    if job.requester != caller and not is_admin:
        raise Forbidden("only the job's requester or an admin may cancel it")
    if job.status == "cancelled":
        return job
    if job.status not in ("created", "funded", "running"):
        raise Conflict(f"job {job.id} is {job.status} and cannot be cancelled")
    was_funded = job.status != "created"
    job.status = "cancelled"
    job.cancelled_at = now
    job.updated_at = now
    open_tasks = select(Task.id).where(Task.job_id == job.id, Task.status.in_(("pending", "queued", "leased")))
    session.execute(
        update(Lease)
        .where(Lease.task_id.in_(open_tasks), Lease.status == "active")
        .values(status="released", ended_at=now)
    )
    session.execute(
        update(Task)
        .where(Task.job_id == job.id, Task.status.in_(("pending", "queued", "leased")))
        .values(status="cancelled", lease_id=None, leased_by=None, lease_expires_at=None)
    )
    if was_funded:
        # Refund hook: settlement code picks up pending settlements; it pays verified work done so far and
        # refunds the rest (or calls `refund` after the deadline). The unique job_id keeps it to one.
        existing = session.scalar(select(Settlement).where(Settlement.job_id == job.id))
        if existing is None:
            session.add(Settlement(job_id=job.id, kind="refund", status="pending", created_at=now))
    session.commit()
    return job

"""Capacity reservation for long jobs: apply `market.scheduler.priority.reserve_capacity` to the worker table.

A reserved worker's claims return its long job's tasks first (see `market.services.leasing`); the beat task
`market.tasks.leases.apply_capacity_reservations` recomputes the reservations periodically.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from market.db import Job, Worker
from market.scheduler.capability import Capability, Requirement
from market.scheduler.priority import LongJobDemand, WorkerCapacity, reserve_capacity

# Workers don't register the layer ranges they serve (they send them with each claim), so a reservation is made
# on model and memory; the claim's own filter still checks the range.
_ANY_RANGE = ((0, 1 << 30),)


def apply_reservations(session: Session, *, now: datetime, max_fraction: float = 0.5) -> dict[str, str]:
    """Recompute which eligible workers are reserved for which running long job; returns worker id -> job id."""
    jobs = session.scalars(
        select(Job).where(Job.long_running.is_(True), Job.status.in_(("funded", "running")), Job.deadline > now)
    ).all()
    workers = session.scalars(select(Worker).where(Worker.eligible.is_(True), Worker.status == "active")).all()
    demands = [
        LongJobDemand(
            job_id=job.id,
            requirement=Requirement(
                kind="train",
                model=job.model,
                layer_start=int(job.spec.get("layer_start", 0)),
                layer_end=int(job.spec.get("layer_end", 1)),
                memory_bytes=int(job.spec.get("memory_bytes", 0)),
            ),
            workers_wanted=int(job.spec.get("tasks_per_round", 1)),
            price_per_unit=job.price_per_unit,
            deadline=job.deadline,
        )
        for job in jobs
    ]
    capacities = [
        WorkerCapacity(
            worker_id=w.id,
            operator_id=w.operator_id,
            capability=Capability(frozenset({"train", "forward"}), frozenset(w.models), _ANY_RANGE, w.memory_bytes),
            stake=w.stake,
        )
        for w in workers
    ]
    reserved = reserve_capacity(capacities, demands, max_fraction=max_fraction)
    for worker in session.scalars(select(Worker).where(Worker.reserved_job_id.is_not(None))).all():
        if worker.id not in reserved:
            worker.reserved_job_id = None
    for worker in workers:
        worker.reserved_job_id = reserved.get(worker.id)
    session.commit()
    return reserved

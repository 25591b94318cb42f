"""Queue order by price and deadline, and capacity reservation for long jobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from market.scheduler.capability import Capability, Requirement, is_capable


@dataclass(frozen=True)
class QueuedWork:
    key: str
    price_per_unit: int
    deadline: datetime
    created_at: datetime


def priority_key(work: QueuedWork) -> tuple[int, datetime, datetime, str]:
    """Sort key: best-paying first, then the earliest deadline, then first come; the key breaks the last tie."""
    return (-work.price_per_unit, work.deadline, work.created_at, work.key)


def order_queue(items: Sequence[QueuedWork]) -> list[QueuedWork]:
    return sorted(items, key=priority_key)


@dataclass(frozen=True)
class LongJobDemand:
    job_id: str
    requirement: Requirement
    workers_wanted: int
    price_per_unit: int
    deadline: datetime


@dataclass(frozen=True)
class WorkerCapacity:
    worker_id: str
    operator_id: str
    capability: Capability
    stake: int


def reserve_capacity(
    workers: Sequence[WorkerCapacity],
    demands: Sequence[LongJobDemand],
    *,
    max_fraction: float = 0.5,
) -> dict[str, str]:
    """Map worker id -> long job id it is reserved for.

    A long job (many rounds) that has to re-find workers every round is easily crowded out by a stream of short
    jobs; reserving capable workers keeps its rounds on time. At most `max_fraction` of the workers are reserved
    so short jobs are never starved; better-paying long jobs reserve first, and the smallest capable machines are
    taken first so big ones stay free for work only they can do.
    """
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError("max_fraction must be within [0, 1]")
    budget = int(len(workers) * max_fraction)
    free = sorted(workers, key=lambda w: (w.capability.memory_bytes, w.worker_id))
    reserved: dict[str, str] = {}
    for demand in sorted(demands, key=lambda d: (-d.price_per_unit, d.deadline, d.job_id)):
        taken = 0
        for worker in free:
            if budget <= 0 or taken >= demand.workers_wanted:
                break
            if worker.worker_id in reserved:
                continue
            if is_capable(worker.capability, demand.requirement, stake=worker.stake):
                reserved[worker.worker_id] = demand.job_id
                taken += 1
                budget -= 1
    return reserved

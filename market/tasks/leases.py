"""Periodic market upkeep: requeue tasks whose lease expired; reserve capacity for long jobs.

Thin tasks: they open a session and call the logic in `market.services`; both are idempotent, so a duplicate or
late run does no harm.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from celery import Task, shared_task

from market.services.leasing import requeue_expired
from market.services.reservations import apply_reservations
from market.tasks.celery_app import runtime

log = logging.getLogger(__name__)


@shared_task(bind=True, name="market.tasks.leases.requeue_expired_leases", acks_late=True)
def requeue_expired_leases(self: Task) -> int:
    rt = runtime(self.app)
    with rt.session() as session:
        count = requeue_expired(session, now=datetime.now(UTC), max_attempts=rt.settings.max_task_attempts)
    if count:
        log.info("requeued %d tasks with expired leases", count)
    return count


@shared_task(bind=True, name="market.tasks.leases.apply_capacity_reservations", acks_late=True)
def apply_capacity_reservations(self: Task) -> int:
    """Reserve capable workers for long jobs (at most half the fleet); idempotent recomputation."""
    rt = runtime(self.app)
    with rt.session() as session:
        return len(apply_reservations(session, now=datetime.now(UTC)))

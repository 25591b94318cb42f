"""Periodic market upkeep: requeue tasks whose lease expired; pick up stake and funding changes from the chain.

Thin tasks: they open a session and call the logic in `market.services`; both are idempotent, so a duplicate or
late run does no harm.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from celery import Task, shared_task

from market.errors import RpcUnavailable
from market.services.chain_sync import sync_escrow, sync_stakes
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


@shared_task(
    bind=True,
    name="market.tasks.leases.sync_chain",
    acks_late=True,
    autoretry_for=(RpcUnavailable,),
    retry_backoff=True,
    max_retries=3,
)
def sync_chain(self: Task) -> dict[str, Any]:
    """Apply new StakingVault and JobEscrow events (resumes from the DB cursors)."""
    rt = runtime(self.app)
    chain = rt.chain()
    if chain is None:
        return {"skipped": "no chain configured"}
    s = rt.settings
    with rt.session() as session:
        now = datetime.now(UTC)
        stakes = sync_stakes(
            session,
            chain,
            now=now,
            page=s.log_page_blocks,
            confirmations=s.confirmations,
            start_block=s.chain_start_block,
        )
        escrow = sync_escrow(
            session,
            chain,
            now=now,
            page=s.log_page_blocks,
            confirmations=s.confirmations,
            start_block=s.chain_start_block,
        )
    return {"stake_events": stakes.events, "escrow_events": escrow.events, "to_block": stakes.to_block}


@shared_task(bind=True, name="market.tasks.leases.apply_capacity_reservations", acks_late=True)
def apply_capacity_reservations(self: Task) -> int:
    """Reserve capable workers for long jobs (at most half the fleet); idempotent recomputation."""
    rt = runtime(self.app)
    with rt.session() as session:
        return len(apply_reservations(session, now=datetime.now(UTC)))

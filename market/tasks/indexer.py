"""Celery beat task: index contract events into `chain_events` (resumes from `chain_cursors`)."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from globai.errors import RpcUnavailable
from market.indexer import index_chain
from market.tasks.celery_app import runtime


@shared_task(
    bind=True,
    name="market.indexer.index_chain",
    acks_late=True,
    autoretry_for=(RpcUnavailable,),
    retry_backoff=True,
    max_retries=3,
)
def index_chain_task(self: Task, start_block: int | None = None) -> dict[str, Any]:
    """Apply new StakingVault and JobEscrow events: stakes, funding, and the `chain_events` index."""
    rt = runtime(self.app)
    chain = rt.chain()
    if chain is None:
        return {"skipped": "no chain configured"}
    s = rt.settings
    with rt.session() as session:
        first = s.chain_start_block if start_block is None else start_block
        report = index_chain(session, chain, start_block=first, page=s.log_page_blocks, confirmations=s.confirmations)
    return {"events": report.events, "to_block": report.escrow.to_block}

"""Celery settlement tasks: settle one job, or every ready job in one batched transaction (beat)."""

from __future__ import annotations

from datetime import UTC, datetime

from celery import Task, shared_task

from globai.errors import RpcUnavailable
from market.services.settlement import ready_jobs, settle_jobs
from market.tasks.celery_app import runtime
from market.tasks.verifier_runtime import chain_operator

RETRY = {
    "acks_late": True,
    "autoretry_for": (RpcUnavailable, ConnectionError, TimeoutError),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "max_retries": 5,
}


@shared_task(bind=True, name="market.settlement.settle_job", **RETRY)
def settle_job(self: Task, job_id: str) -> dict[str, str | None]:
    """Idempotent: the escrow's job status is read before sending; a settled job is only recorded."""
    with runtime(self.app).session() as session:
        (outcome,) = settle_jobs(session, chain_operator(self.app), job_ids=[job_id], now=datetime.now(UTC))
    return {"status": outcome.status, "tx": outcome.tx_hash, "root": outcome.report_root}


@shared_task(bind=True, name="market.settlement.settle_ready", **RETRY)
def settle_ready(self: Task, limit: int = 50) -> int:
    """Beat: settle every verified job waiting for it, several at once through `settleBatch`."""
    with runtime(self.app).session() as session:
        ids = ready_jobs(session, limit=limit)
        if not ids:
            return 0
        outcomes = settle_jobs(session, chain_operator(self.app), job_ids=ids, now=datetime.now(UTC))
    return sum(o.status == "settled" for o in outcomes)

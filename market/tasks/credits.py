"""Celery beat: close prepaid API credits near their escrow deadline (they then verify and settle like jobs)."""

from __future__ import annotations

from datetime import UTC, datetime

from celery import Task, shared_task

from market.services.credits import close_due
from market.tasks.celery_app import runtime


@shared_task(bind=True, name="market.credits.close_due", acks_late=True)
def close_due_credits(self: Task) -> int:
    rt = runtime(self.app)
    with rt.session() as session:
        return len(close_due(session, close_margin_s=rt.settings.credit_close_margin_s, now=datetime.now(UTC)))

"""Celery app factory for the market's background work (lease requeue, chain indexing, verification, settlement,
training rounds).

Built by the entry point (`globai market celery-worker` / `celery-beat`) from Settings; tasks reach the DB and
chain through `runtime(app)`, created lazily once per worker process (never at import time, never pickled).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from market.config import Settings
from market.db.engine import make_engine, make_session_factory

TASK_MODULES = (
    "market.tasks.leases",
    "market.tasks.verification",
    "market.tasks.settlement",
    "market.tasks.indexer",
    "market.tasks.training",
    "market.tasks.credits",
)


@dataclass
class Runtime:
    """Per-process resources for tasks."""

    settings: Settings
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _engine: Engine | None = None
    _sessions: sessionmaker[Session] | None = None
    _chain: Any = None
    _chain_built: bool = False

    def session(self) -> Session:
        with self._lock:
            if self._sessions is None:
                self._engine = make_engine(self.settings.database_url, pool_size=2)
                self._sessions = make_session_factory(self._engine)
        return self._sessions()

    def chain(self) -> Any:
        """The ChainView, or None when no contracts are configured."""
        with self._lock:
            if not self._chain_built:
                from market.services.chain_view import chain_view_from_settings

                self._chain = chain_view_from_settings(self.settings)
                self._chain_built = True
        return self._chain

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def create_celery(settings: Settings, *, include: Iterable[str] = ()) -> Celery:
    app = Celery("globai", broker=settings.redis_url, backend=settings.redis_url, include=[*TASK_MODULES, *include])
    app.conf.update(
        # JSON only: nothing received from the broker is ever unpickled.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        # At-least-once delivery: a task is acknowledged after it ran (every task is idempotent), a task whose worker
        # died (kill -9, lost connection) goes back to the queue, and Redis redelivers an unacknowledged message
        # after `visibility_timeout` - longer than the longest task (a replay of a long job's part, a settlement
        # waiting for its receipt), or a slow task would run twice at once. Messages lost with Redis itself are
        # found again by the recovery beat (market.services.recovery).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": settings.task_visibility_timeout_s},
        task_time_limit=settings.task_visibility_timeout_s * 0.8,
        beat_schedule={
            "requeue-expired-leases": {
                "task": "market.tasks.leases.requeue_expired_leases",
                "schedule": settings.requeue_interval_s,
                # A missed run is harmless (the next one catches up), so don't let stale runs pile up.
                "options": {"expires": settings.requeue_interval_s},
            },
            "capacity-reservations": {
                "task": "market.tasks.leases.apply_capacity_reservations",
                "schedule": 60.0,
                "options": {"expires": 60.0},
            },
            "index-chain": {
                "task": "market.indexer.index_chain",
                "schedule": settings.index_interval_s,
                "options": {"expires": settings.index_interval_s},
            },
            "recover-verifications": {
                "task": "market.verification.recover",
                "schedule": settings.verify_interval_s,
                "options": {"expires": settings.verify_interval_s},
            },
            "close-due-credits": {
                "task": "market.credits.close_due",
                "schedule": settings.verify_interval_s,
                "options": {"expires": settings.verify_interval_s},
            },
            "settle-ready-jobs": {
                "task": "market.settlement.settle_ready",
                "schedule": settings.settle_interval_s,
                "options": {"expires": settings.settle_interval_s},
            },
            "tick-training-jobs": {
                "task": "market.tasks.training.tick_training_jobs",
                "schedule": settings.training_tick_s,
                "options": {"expires": settings.training_tick_s},
            },
        },
    )
    app.globai_runtime = Runtime(settings)  # type: ignore[attr-defined]
    return app


def runtime(app: Celery) -> Runtime:
    rt: Runtime | None = getattr(app, "globai_runtime", None)
    if rt is None:
        raise RuntimeError("Celery app was not built by market.tasks.celery_app.create_celery")
    return rt

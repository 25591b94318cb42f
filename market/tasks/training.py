"""Celery tasks that drive DiLoCo training jobs: close rounds at quorum or deadline, judge replays, aggregate.

Thin: the logic is `market.training.jobs.advance`, which is idempotent and crash-safe (conditional state
transitions; a round's inputs are persisted before the checkpoint store applies it exactly once), so the task is
`acks_late`: a worker killed mid-aggregation leaves the message to be redelivered, and the beat tick re-drives
every running job anyway. The API enqueues `advance_training_job` after each accepted update; beat runs
`tick_training_jobs` every `training_tick_s` for deadlines.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from market.tasks.celery_app import runtime
from market.training.jobs import advance, running_jobs
from market.training.storage import master_key, storage_at
from market.training.verify import pending_slashes

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


@shared_task(
    bind=True,
    name="market.tasks.training.advance_training_job",
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=5,
)
def advance_training_job(self: Task, job_id: str) -> str:
    rt = runtime(self.app)
    state = advance(
        rt.session,
        storage_at(rt.settings.training_dir, master_key(rt.settings)),
        job_id,
        now=_now,
        slash_amount=rt.settings.slash_amount_wei,
    )
    log.debug("training job %s: %s", job_id, state)
    if state == "completed" and rt.settings.training_keep_versions:
        dropped, deleted = storage_at(rt.settings.training_dir).checkpoints.prune(
            job_id, rt.settings.training_keep_versions
        )
        log.info("training job %s: retention dropped versions %s, %d tensor files", job_id, dropped, deleted)
    if state == "completed":  # handed over: slash the cheats on chain (recovery re-drives this if it is lost)
        from market.tasks.verification import slash_worker

        with rt.session() as session:
            for slash_id in pending_slashes(session, job_id):
                slash_worker.apply_async((slash_id,))
    return state


@shared_task(bind=True, name="market.tasks.training.tick_training_jobs", acks_late=True)
def tick_training_jobs(self: Task) -> int:
    """Beat: re-drive every running training job (round deadlines, replays that never came, restarts)."""
    rt = runtime(self.app)
    with rt.session() as session:
        ids = running_jobs(session)
    for job_id in ids:
        # A stale duplicate is useless (the next tick re-drives the job): don't let them pile up behind a long one.
        advance_training_job.apply_async((job_id,), expires=max(2.0 * rt.settings.training_tick_s, 5.0))
    return len(ids)

"""Celery verification tasks: sample -> replay on replicas -> compare -> (2-of-3 dispute) -> (a losing chain:
re-run each hop) -> slash -> settle.

Thin and idempotent (ids in, state in the DB, `acks_late`): a redelivered or duplicated task finds its work done
and only re-enqueues what is still pending. Each step enqueues the next after its own commit; a step whose
message was lost (Redis restart, worker killed) is found again by the `recover` beat by its state and age.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from celery import Task, shared_task

from globai.errors import RpcUnavailable
from market.db import VerificationRun
from market.services import verification as svc
from market.services.recovery import RecoveryPolicy
from market.services.recovery import recover as recover_states
from market.tasks.celery_app import runtime
from market.tasks.verifier_runtime import chain_operator, verifier_config, work_source

log = logging.getLogger(__name__)

TRANSIENT = (RpcUnavailable, svc.ReplicaUnavailable, ConnectionError, TimeoutError)
RETRY = {
    "acks_late": True,
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "max_retries": 5,
}


def _now() -> datetime:
    return datetime.now(UTC)


@shared_task(bind=True, name="market.verification.verify_job", **RETRY)
def verify_job(self: Task, job_id: str) -> int:
    """Sample the job's segments (after every signed root is in) and enqueue their replays."""
    rt = runtime(self.app)
    with rt.session() as session:
        ids = svc.start_verification(
            session, work_source(self.app), verifier_config(self.app), job_id=job_id, now=_now()
        )
    for check_id in ids:
        replay_check.apply_async((check_id,))
    finish_job.apply_async((job_id,))
    return len(ids)


@shared_task(bind=True, name="market.verification.replay_check", **RETRY)
def replay_check(self: Task, check_id: str) -> str:
    """Replay one sampled segment on its replica and compare; a mismatch opens two dispute replays."""
    rt = runtime(self.app)
    with rt.session() as session:
        try:
            job_id, opened = svc.run_check(
                session, work_source(self.app), verifier_config(self.app), check_id=check_id, now=_now()
            )
        except svc.ReplicaUnavailable as exc:
            if self.request.retries < RETRY["max_retries"]:
                raise
            # The replica stayed away: its vote is void (an unverified segment), the job goes on.
            void_job = svc.void_check(session, check_id=check_id, reason=f"replica unavailable: {exc}", now=_now())
            if void_job is not None:
                finish_job.apply_async((void_job,))
            return void_job or ""
    for dispute_id in opened:
        replay_check.apply_async((dispute_id,))
    finish_job.apply_async((job_id,))
    return job_id


@shared_task(bind=True, name="market.verification.finish_job", **RETRY)
def finish_job(self: Task, job_id: str) -> str:
    """Decide the job once no replay is pending (a chain replica that lost is first localised hop by hop:
    `open_localisations`); slash the guilty, then settle."""
    rt = runtime(self.app)
    with rt.session() as session:
        opened = svc.open_localisations(session, work_source(self.app), job_id=job_id, now=_now())
        for check_id in opened:
            replay_check.apply_async((check_id,))
        decision = svc.decide_job(session, verifier_config(self.app), job_id=job_id, now=_now())
        if decision is None:
            run = session.get(VerificationRun, job_id)
            return run.status if run is not None else "unknown"
    for slash_id in decision.slash_ids:
        slash_worker.apply_async((slash_id,))
    if not decision.slash_ids:
        _settle_next(job_id)
    return f"decided: {len(decision.guilty)} guilty"


@shared_task(bind=True, name="market.verification.slash_worker", **RETRY)
def slash_worker(self: Task, slash_id: str) -> str:
    rt = runtime(self.app)
    with rt.session() as session:
        row = svc.execute_slash(session, chain_operator(self.app), slash_id=slash_id, now=_now())
        job_id, status = row.job_id, row.status
        run = session.get(VerificationRun, job_id)
        ready = run is not None and run.status == "settling"
    if ready:
        _settle_next(job_id)
    return status


def _settle_next(job_id: str) -> None:
    from market.tasks.settlement import settle_job

    settle_job.apply_async((job_id,))


@shared_task(bind=True, name="market.verification.recover", acks_late=True)
def recover(self: Task, limit: int = 200) -> dict[str, int]:
    """Beat: start verification of completed jobs and re-drive every step whose message was lost
    (`market.services.recovery`: replays, decisions, slashes; settlement has its own beat)."""
    rt = runtime(self.app)
    s = rt.settings
    policy = RecoveryPolicy(stale_s=s.recovery_stale_s, check_max_age_s=s.check_max_age_s)
    with rt.session() as session:
        plan = recover_states(session, now=_now(), policy=policy, limit=limit)
    # Stale duplicates are harmless (every step is idempotent) but useless after the next sweep.
    expires = max(4 * s.verify_interval_s, 30.0)
    for job_id in plan.verify:
        verify_job.apply_async((job_id,), expires=expires)
    for check_id in plan.replay:
        replay_check.apply_async((check_id,))
    for job_id in plan.finish:
        finish_job.apply_async((job_id,), expires=expires)
    for slash_id in plan.slash:
        slash_worker.apply_async((slash_id,), expires=expires)
    return {
        "verify": len(plan.verify),
        "replay": len(plan.replay),
        "finish": len(plan.finish),
        "slash": len(plan.slash),
        "voided": plan.voided,
    }

"""The owner of every non-terminal verification state after a crash: what the beat re-drives, and when.

Each step of the pipeline is idempotent (state in the DB, compare-and-set transitions) and enqueues the next one
after its own commit, so a step is lost only with its Celery message (a Redis restart without persistence, a
message past its visibility timeout). `recover` finds such steps by state and age and says what to enqueue again:

    run open, job completed          -> verify_job (sampling)                  every sweep (cheap, idempotent)
    run replaying                    -> replay_check for each pending check,   when the run made no progress for
                                        finish_job                             `stale_s` (then touched)
    check pending > check_max_age_s  -> void ("timed out"): the vote is missing, the job goes on
    run deciding (an older version)  -> finish_job (decides it again: one transaction now)
    run slashing, slash pending|sent -> slash_worker                           when stale (then touched)
    run slashing, nothing pending    -> settling (a crash between a slash's two commits)
    slash sent (any run state)       -> slash_worker (confirm it, or re-send if the chain lost it)
    run settling / refund pending    -> the settle beat (`settle_ready`: sends, confirms, re-sends)

Pure selection plus small writes (voids, touches); the Celery task `market.verification.recover` enqueues.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from market.db import Job, SlashRecord, VerificationCheck, VerificationRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoveryPolicy:
    stale_s: float = 120.0  # a run with no progress for this long has its pending steps enqueued again
    check_max_age_s: float = 1800.0  # a replay still pending after this long is void (its replica never answered)


@dataclass
class RecoveryPlan:
    verify: list[str] = field(default_factory=list)  # job ids
    replay: list[str] = field(default_factory=list)  # check ids
    finish: list[str] = field(default_factory=list)  # job ids
    slash: list[str] = field(default_factory=list)  # slash record ids
    voided: int = 0

    @property
    def empty(self) -> bool:
        return not (self.verify or self.replay or self.finish or self.slash or self.voided)


def recover(
    session: Session, *, now: datetime, policy: RecoveryPolicy = RecoveryPolicy(), limit: int = 200
) -> RecoveryPlan:
    plan = RecoveryPlan()
    stale = now - timedelta(seconds=policy.stale_s)
    plan.verify = list(
        session.scalars(
            select(Job.id)
            .join(VerificationRun, VerificationRun.job_id == Job.id)
            .where(Job.status == "completed", VerificationRun.status == "open")
            .limit(limit)
        )
    )

    too_old = now - timedelta(seconds=policy.check_max_age_s)
    old_checks = session.scalars(
        select(VerificationCheck)
        .where(VerificationCheck.status == "pending", VerificationCheck.created_at < too_old)
        .limit(limit)
    ).all()
    for check in old_checks:
        check.status, check.reason, check.decided_at = "void", "timed out", now
        plan.voided += 1
        plan.finish.append(check.job_id)

    for run in session.scalars(select(VerificationRun).where(VerificationRun.status == "replaying").limit(limit)):
        pending = list(
            session.scalars(
                select(VerificationCheck.id).where(
                    VerificationCheck.job_id == run.job_id, VerificationCheck.status == "pending"
                )
            )
        )
        if not pending:
            plan.finish.append(run.job_id)  # every check decided, but the decision was lost
        elif run.updated_at < stale:
            plan.replay += pending
            plan.finish.append(run.job_id)
            run.updated_at = now  # at most one re-drive per run per stale_s
    plan.finish += list(
        session.scalars(select(VerificationRun.job_id).where(VerificationRun.status == "deciding").limit(limit))
    )

    for run in session.scalars(select(VerificationRun).where(VerificationRun.status == "slashing").limit(limit)):
        open_slashes = list(
            session.scalars(
                select(SlashRecord.id).where(SlashRecord.job_id == run.job_id, SlashRecord.status == "pending")
            )
        )
        if not open_slashes:
            session.execute(
                update(VerificationRun)
                .where(VerificationRun.job_id == run.job_id, VerificationRun.status == "slashing")
                .values(status="settling", updated_at=now)
            )
        elif run.updated_at < stale:
            plan.slash += open_slashes
            run.updated_at = now
    # Sent slashes wait for their confirmations (or for being re-sent) whatever the run does meanwhile.
    plan.slash += [
        sid
        for sid in session.scalars(select(SlashRecord.id).where(SlashRecord.status == "sent").limit(limit))
        if sid not in plan.slash
    ]
    session.commit()
    plan.finish = list(dict.fromkeys(plan.finish))
    if plan.voided or plan.replay or plan.slash:
        log.info(
            "recovery: %d checks re-driven, %d voided (timed out), %d slashes, %d runs to decide",
            len(plan.replay),
            plan.voided,
            len(plan.slash),
            len(plan.finish),
        )
    return plan

"""Funding: a job becomes funded when its JobFunded event matches it (amount, spec hash, deadline, requester);
then its first work is queued (training tasks, or the first DiLoCo round).

Above both `market.services.jobs` and `market.training.jobs`, so neither imports the other in a circle.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from globai.chain.ports import ChainLog, ChainView
from market.db import Job
from market.domain_errors import Conflict, FundingNotFound
from market.services.job_specs import TrainingSpec
from market.services.jobs import TaskSpec, enqueue_tasks, get_job
from market.training.jobs import open_first_round  # DiLoCo rounds are run by the training module

log = logging.getLogger(__name__)


def funding_mismatch(job: Job, args: dict[str, Any]) -> str | None:
    """Why a JobFunded event does not fund `job` (None when it does)."""
    if int(args.get("amount", -1)) != job.budget:
        return f"amount {args.get('amount')} != budget {job.budget}"
    if str(args.get("specHash", "")).lower() != job.spec_hash.lower():
        return "spec hash differs"
    if int(args.get("deadline", -1)) != int(job.deadline.timestamp()):
        return "deadline differs"
    if str(args.get("requester", "")).lower() != job.requester.lower():
        return "funded by another address than the job's requester"
    return None


def apply_job_funded(session: Session, *, job: Job, event: ChainLog, now: datetime) -> bool:
    """Mark `job` funded by `event` if it matches; returns whether it did. Idempotent for the same event."""
    if job.status != "created":
        return job.funded_tx == event.tx_hash
    reason = funding_mismatch(job, event.args)
    if reason is not None:
        log.warning("JobFunded %s for job %s ignored: %s", event.tx_hash, job.id, reason)
        return False
    job.status = "funded"
    job.funded_amount = int(event.args["amount"])
    job.funded_tx = event.tx_hash
    job.funded_block = event.block_number
    job.updated_at = now
    _enqueue_first_round(session, job=job, now=now)
    return True


def confirm_funding(session: Session, *, job_id: str, chain: ChainView, now: datetime) -> Job:
    """Look for the job's JobFunded event on chain (from the block the job was created at) and apply it."""
    job = get_job(session, job_id=job_id)
    if job.chain_id is not None and job.chain_id != chain.chain_id:
        raise Conflict(f"job {job.id} is escrowed on chain {job.chain_id}; this market reads chain {chain.chain_id}")
    if job.status != "created":
        if job.funded_tx is not None:
            return job  # already funded: confirming again is a no-op
        raise Conflict(f"job {job.id} is {job.status}")
    latest = chain.latest_block()
    reasons: list[str] = []
    for event in chain.escrow_logs(job.created_block, latest):
        if event.name != "JobFunded" or str(event.args.get("jobId", "")).lower() != job.chain_job_id:
            continue
        if apply_job_funded(session, job=job, event=event, now=now):
            session.commit()
            return job
        reasons.append(funding_mismatch(job, event.args) or "not applicable")
    raise FundingNotFound(job.id, "; ".join(reasons) or "no JobFunded event for this job yet")


def _enqueue_first_round(session: Session, *, job: Job, now: datetime) -> None:
    if job.kind != "training":
        return  # inference is driven by the coordinator's pipeline sessions, not claimed
    spec = TrainingSpec.model_validate(job.spec)
    if spec.diloco is not None:
        open_first_round(session, job=job, now=now)
        return
    tasks = [
        TaskSpec(
            kind="train",
            model=spec.model,
            layer_start=spec.layer_start,
            layer_end=spec.layer_end,
            memory_bytes=spec.memory_bytes,
            units=spec.local_steps,
            payload={"round": 0, "shard": shard, "dataset": spec.dataset, "seed": spec.seed + shard},
        )
        for shard in range(spec.tasks_per_round)
    ]
    enqueue_tasks(session, job=job, tasks=tasks, now=now)

"""DiLoCo training jobs: per-job state, per-round close decisions, and every received pseudo-gradient.

The round row is the persisted close decision: which submitted updates a round aggregates is written here
*before* the checkpoint store applies the round, so an aggregator that dies anywhere re-applies exactly the
same inputs (the store then recognises the round as done) instead of picking a different set.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from market.db.base import Base, UtcDateTime, new_id, utcnow

#: waiting (not funded) -> running -> completed (all rounds applied) | failed | cancelled
TRAINING_JOB_STATUSES = ("waiting", "running", "completed", "failed", "cancelled")
#: pending (job not funded yet) -> open -> verifying (closed; sampled replays running) -> aggregating -> applied
ROUND_STATUSES = ("pending", "open", "verifying", "aggregating", "applied")


class TrainingJob(Base):
    __tablename__ = "training_jobs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # market.training.spec.TrainingJobSpec, as JSON
    spec_sha256: Mapped[str] = mapped_column(String(64))
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    # Random bytes32 inside every signed update scope: signatures can't be replayed into another job.
    job_nonce: Mapped[str] = mapped_column(String(66))
    chain_id: Mapped[int] = mapped_column(BigInteger)  # inside every signed update scope
    # Verification sampling secret (revealed after the job) and its published hash.
    sample_secret: Mapped[str] = mapped_column(String(66))
    beacon: Mapped[str] = mapped_column(String(66))
    verify_rate: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16), default="waiting", index=True)
    round: Mapped[int] = mapped_column(Integer, default=0)  # the round being worked on (== rounds when done)
    version: Mapped[int] = mapped_column(Integer, default=0)  # latest committed checkpoint version
    initial_eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class TrainingRound(Base):
    __tablename__ = "training_rounds"
    __table_args__ = (UniqueConstraint("job_id", "round", name="uq_training_rounds_job_round"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="open")
    base_manifest: Mapped[str] = mapped_column(String(64))  # sha256 of checkpoint `round`'s manifest
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    deadline_at: Mapped[datetime] = mapped_column(UtcDateTime)
    reopened: Mapped[int] = mapped_column(Integer, default=0)  # deadline extensions after a stall
    close_state: Mapped[str | None] = mapped_column(String(24), nullable=True)  # closed_quorum | closed_deadline
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    accepted: Mapped[list[str]] = mapped_column(JSON, default=list)  # task ids that made the close, by slot
    aggregated: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # accepted minus caught cheats
    verify_deadline_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    applied_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of checkpoint round+1
    eval_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    worker_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)


class TrainingUpdate(Base):
    """One valid pseudo-gradient a worker submitted for a task (a round slot, or a verification replay)."""

    __tablename__ = "training_updates"

    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    slot: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(42))
    operator_id: Mapped[str] = mapped_column(String(64), default="")
    payload_sha256: Mapped[str] = mapped_column(String(64))  # the blob in the update store
    size: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(66))  # signed scope digest: the evidence hash
    signature: Mapped[str] = mapped_column(String(132))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    loss_start: Mapped[float] = mapped_column(Float)
    loss_end: Mapped[float] = mapped_column(Float)
    replay_of: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    # Verification of this update: unchecked | pending (replay queued) | pass | fail | void (no replica in time)
    check: Mapped[str] = mapped_column(String(16), default="unchecked")
    check_task_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    check_reason: Mapped[str] = mapped_column(String(160), default="")
    check_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    aggregated: Mapped[bool] = mapped_column(Boolean, default=False)

"""Verification and settlement state: per-job runs, sampled checks, work parts, slashes, published reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from market.db.base import Base, UtcDateTime, Wei, new_id, utcnow


class VerificationRun(Base):
    """One per job. The sampling secret is drawn before the work (only its hash, `beacon`, is published) and
    revealed once every signed root is in; the seed then fixes which segments are replayed."""

    __tablename__ = "verification_runs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    # open -> replaying -> (deciding, inside one transaction) -> slashing -> settling -> done; each state has an
    # owner that resumes it after a crash (market.services.recovery, the settle beat)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    secret: Mapped[str] = mapped_column(String(66))
    beacon: Mapped[str] = mapped_column(String(66))
    seed: Mapped[str | None] = mapped_column(String(66), nullable=True)
    sampled: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class WorkPart(Base):
    """A worker's share of a job (a task, or one stage of an inference session) as verification sees it."""

    __tablename__ = "work_parts"
    __table_args__ = (UniqueConstraint("job_id", "work_key", name="uq_work_parts_job_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    work_key: Mapped[str] = mapped_column(String(128))  # task / session-stage UUID; bytes32 = keccak256 of it
    worker: Mapped[str] = mapped_column(String(42), index=True)
    operator_id: Mapped[str] = mapped_column(String(64), default="")
    stage: Mapped[int] = mapped_column(Integer, default=0)
    layer_start: Mapped[int] = mapped_column(Integer, default=0)
    layer_end: Mapped[int] = mapped_column(Integer, default=0)
    units: Mapped[int] = mapped_column(BigInteger, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    root: Mapped[str] = mapped_column(String(66), default="")
    rate: Mapped[float] = mapped_column(Float, default=0.0)  # the sampling rate the policy chose for this part
    # pending | paid (accepted) | unpaid_slashed | unpaid_faulty | unpaid_unchecked
    status: Mapped[str] = mapped_column(String(16), default="pending")


class VerificationCheck(Base):
    """One replay of one sampled (part, chunk) on one replica; round 0 is the first check, 1-2 the dispute."""

    __tablename__ = "verification_checks"
    __table_args__ = (
        UniqueConstraint("job_id", "work_key", "chunk_index", "round", name="uq_verification_checks_segment"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    work_key: Mapped[str] = mapped_column(String(128))
    worker: Mapped[str] = mapped_column(String(42))  # whose claim is checked
    stage: Mapped[int] = mapped_column(Integer)
    chunk_index: Mapped[int] = mapped_column(BigInteger)
    round: Mapped[int] = mapped_column(Integer, default=0)
    replica: Mapped[str | None] = mapped_column(String(42), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending|pass|fail|void
    reason: Mapped[str] = mapped_column(String(128), default="")
    evidence: Mapped[str] = mapped_column(String(66), default="")  # the signed commitment's digest
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class SlashRecord(Base):
    """At most one slash per (job, worker): the retry after a crash finds this row (and the chain's event)."""

    __tablename__ = "slash_records"
    __table_args__ = (UniqueConstraint("job_id", "worker", name="uq_slash_records_job_worker"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    worker: Mapped[str] = mapped_column(String(42))
    amount: Mapped[int] = mapped_column(Wei)
    evidence: Mapped[str] = mapped_column(String(66))
    # The worker's EIP-191 signature over `evidence` (0x-hex, 65 bytes): StakingVault.slash checks it on chain.
    signature: Mapped[str | None] = mapped_column(String(132), nullable=True)
    finder: Mapped[str] = mapped_column(String(42))
    requester: Mapped[str] = mapped_column(String(42))
    # pending | sent (mined, not yet `confirmations` deep) | confirmed | nothing_staked | rejected (the vault
    # refused the evidence: no signature of the worker over it)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    slashed: Mapped[int | None] = mapped_column(Wei, nullable=True)  # what the vault actually took
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class SettlementReport(Base):
    """The published report JSON of a job's settlement (`GET /v1/audit/jobs/{id}/report`)."""

    __tablename__ = "settlement_reports"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    report_root: Mapped[str] = mapped_column(String(66))
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class JobRun(Base):
    """Inference runs (coordinator generations) done for an escrowed job: verification and pay span all of them."""

    __tablename__ = "job_runs"

    run_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

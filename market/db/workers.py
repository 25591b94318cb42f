"""Workers, their measured profiles, inference sessions and reputation history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from market.db.base import Base, UtcDateTime, Wei, new_id, utcnow


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    address: Mapped[str] = mapped_column(String(42), unique=True)  # EIP-55 checksummed
    # Several machines of one operator must never act as each other's replica.
    operator_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | offline | banned
    # Latest measured profile, denormalised from worker_profiles so a claim filters without a join.
    device: Mapped[str] = mapped_column(String(64))
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    throughput_tokens_s: Mapped[float] = mapped_column(Float)
    bandwidth_bytes_s: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    reference_layer: Mapped[str] = mapped_column(String(128))
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Stake as last seen on chain (StakingVault events); `eligible` = stake >= minimum at that time.
    stake: Mapped[int] = mapped_column(Wei, default=0)
    unbonding: Mapped[int] = mapped_column(Wei, default=0)
    eligible: Mapped[bool] = mapped_column(Boolean, default=False)
    stake_block: Mapped[int] = mapped_column(BigInteger, default=0)
    last_slash_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Capacity reservation: a worker reserved for a long job gets that job's tasks first.
    reserved_job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    registered_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class WorkerProfile(Base):
    """Every measurement a worker reported, kept so a suspicious jump in claimed throughput can be audited."""

    __tablename__ = "worker_profiles"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id", ondelete="CASCADE"), index=True)
    measured_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    device: Mapped[str] = mapped_column(String(64))
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    throughput_tokens_s: Mapped[float] = mapped_column(Float)
    bandwidth_bytes_s: Mapped[float] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    reference_layer: Mapped[str] = mapped_column(String(128))
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class InferenceSession(Base):
    """One worker's part (a layer range) of a coordinator-driven inference pipeline session."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id"), index=True)
    stage: Mapped[int] = mapped_column(Integer)
    layer_start: Mapped[int] = mapped_column(Integer)
    layer_end: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16), default="primary")  # primary | standby
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | closed | failed
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ReputationEvent(Base):
    """Verification outcomes per worker; the scheduler folds them into a time-decayed Beta posterior."""

    __tablename__ = "reputation_events"
    __table_args__ = (Index("ix_reputation_events_worker_time", "worker_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # pass | fail | slash
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    detail: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

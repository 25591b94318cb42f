"""Jobs, their tasks and the leases that hand tasks to workers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from market.db.base import Base, UtcDateTime, Wei, new_id, utcnow

JOB_STATUSES = ("created", "funded", "running", "completed", "cancelled", "settled", "refunded")
TASK_STATUSES = ("pending", "queued", "leased", "submitted", "verified", "failed", "cancelled")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # JobEscrow's bytes32 id of the job as 0x-hex: keccak256(abi.encode(requester, keccak256(job uuid))).
    chain_job_id: Mapped[str] = mapped_column(String(66), unique=True)
    # The chain whose escrow holds the job (None: created before the market recorded it, migration 0006).
    chain_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    requester: Mapped[str] = mapped_column(String(42), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # inference | training
    model: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    spec_hash: Mapped[str] = mapped_column(String(66))
    budget: Mapped[int] = mapped_column(Wei)
    price_per_unit: Mapped[int] = mapped_column(Wei)
    max_units: Mapped[int] = mapped_column(BigInteger)
    deadline: Mapped[datetime] = mapped_column(UtcDateTime)
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    long_running: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="created", index=True)
    funded_amount: Mapped[int | None] = mapped_column(Wei, nullable=True)
    funded_tx: Mapped[str | None] = mapped_column(String(66), nullable=True)
    funded_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Chain head when the job was created: its JobFunded event can only be at or after this block.
    created_block: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_tasks_job_index"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # train | forward
    model: Mapped[str] = mapped_column(String(128))
    layer_start: Mapped[int] = mapped_column(Integer)
    layer_end: Mapped[int] = mapped_column(Integer)  # exclusive
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    units: Mapped[int] = mapped_column(BigInteger)
    priority: Mapped[int] = mapped_column(Wei)  # the job's price per unit: better-paying work first
    deadline: Mapped[datetime] = mapped_column(UtcDateTime)  # the job's: work past it is never handed out
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Replica tasks must go to another operator than the worker whose output they check.
    exclude_operator: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    leased_by: Mapped[str | None] = mapped_column(ForeignKey("workers.id"), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    result_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    submitted_by: Mapped[str | None] = mapped_column(ForeignKey("workers.id"), nullable=True)
    submitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


# The claim query walks queued tasks in exactly this order (best price, then earliest deadline, then oldest), so
# Postgres reads the first unlocked matching row from the index instead of sorting the whole queue per claim.
Index(
    "ix_tasks_claim_order",
    Task.status,
    Task.priority.desc(),
    Task.deadline,
    Task.created_at,
    Task.id,
)


class Lease(Base):
    __tablename__ = "leases"
    __table_args__ = (
        # The database itself refuses a second active lease on one task, whatever the claim path did.
        Index(
            "uq_leases_active_task",
            "task_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
        Index("ix_leases_status_expires", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id"), index=True)
    # active | expired | completed | released
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

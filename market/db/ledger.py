"""Money and evidence: verifications, settlements (paid at most once), chain events, auth nonces."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from market.db.base import Base, UtcDateTime, Wei, new_id, utcnow


class Verification(Base):
    __tablename__ = "verifications"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), nullable=True)
    worker_id: Mapped[str] = mapped_column(ForeignKey("workers.id"), index=True)  # whose work is checked
    replica_worker_id: Mapped[str | None] = mapped_column(ForeignKey("workers.id"), nullable=True)
    segment: Mapped[str] = mapped_column(String(128), default="")  # e.g. "stage=1,chunk=3"
    outcome: Mapped[str] = mapped_column(String(16), default="pending")  # pending | pass | fail
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Settlement(Base):
    """One on-chain settlement or refund per job (unique): settling twice is refused here and by the contract."""

    __tablename__ = "settlements"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # settle | refund
    # pending | sent (mined, not yet `confirmations` deep; re-sent if the chain loses it) | confirmed
    status: Mapped[str] = mapped_column(String(16), default="pending")
    report_root: Mapped[str | None] = mapped_column(String(66), nullable=True)
    tx_hash: Mapped[str | None] = mapped_column(String(66), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class SettlementItem(Base):
    """A payment for one task. `task_id` is unique: a task can appear in at most one settlement, once."""

    __tablename__ = "settlement_items"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    settlement_id: Mapped[str] = mapped_column(ForeignKey("settlements.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id"), unique=True)
    payee: Mapped[str] = mapped_column(String(42))
    units: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(Wei)


class ChainEvent(Base):
    __tablename__ = "chain_events"
    __table_args__ = (UniqueConstraint("chain_id", "tx_hash", "log_index", name="uq_chain_events_log"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    chain_id: Mapped[int] = mapped_column(BigInteger)
    contract: Mapped[str] = mapped_column(String(42))
    event: Mapped[str] = mapped_column(String(64), index=True)
    block_number: Mapped[int] = mapped_column(BigInteger, index=True)
    tx_hash: Mapped[str] = mapped_column(String(66))
    log_index: Mapped[int] = mapped_column(Integer)
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ChainCursor(Base):
    """Last fully processed block per (chain, contract, purpose): sync resumes here after a restart."""

    __tablename__ = "chain_cursors"

    name: Mapped[str] = mapped_column(String(160), primary_key=True)
    block: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class AuthNonce(Base):
    """Sign-in nonces live in the DB so any API process can check them, and `used_at` makes them single use."""

    __tablename__ = "auth_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(42))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

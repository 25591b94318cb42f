"""The paid OpenAI-compatible API: API keys (hashes only), prepaid credits (escrowed jobs) and per-request usage."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from market.db.base import Base, UtcDateTime, Wei, new_id, utcnow


class ApiKey(Base):
    """A requester's API key. The key itself is shown once; only its sha256 is kept (keys are 256-bit random)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    requester: Mapped[str] = mapped_column(String(42), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell keys apart in listings
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    spend_cap: Mapped[int | None] = mapped_column(Wei, nullable=True)  # GLB wei this key may spend in all
    rate_limit_per_min: Mapped[int] = mapped_column(Integer, default=60)
    spent: Mapped[int] = mapped_column(Wei, default=0)
    reserved: Mapped[int] = mapped_column(Wei, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Credit(Base):
    """A prepaid credit: an escrowed job of kind `credit` that API requests draw from until it is closed."""

    __tablename__ = "credits"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    requester: Mapped[str] = mapped_column(String(42), index=True)
    spent: Mapped[int] = mapped_column(Wei, default=0)  # charged usage (paid to workers at settlement)
    reserved: Mapped[int] = mapped_column(Wei, default=0)  # worst cases of requests in flight
    fee_bps: Mapped[int] = mapped_column(Integer)  # the escrow's fee, added on top of usage at settlement
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open | closed
    close_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)  # requester | deadline | spent
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ApiRequest(Base):
    """One API request: its reservation (worst case), then its charge (actual usage) when it ends."""

    __tablename__ = "api_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    credit_id: Mapped[str] = mapped_column(ForeignKey("credits.job_id", ondelete="CASCADE"), index=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    run_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    endpoint: Mapped[str] = mapped_column(String(32))  # chat.completions | completions
    model: Mapped[str] = mapped_column(String(128))
    n: Mapped[int] = mapped_column(Integer, default=1)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    max_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_price: Mapped[int] = mapped_column(Wei)  # per token, as listed when the request was reserved
    completion_price: Mapped[int] = mapped_column(Wei)
    reserved: Mapped[int] = mapped_column(Wei)
    charged: Mapped[int] = mapped_column(Wei, default=0)
    status: Mapped[str] = mapped_column(String(16), default="reserved")  # reserved | charged | released
    finish_reasons: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)

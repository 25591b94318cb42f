"""Pipeline inference runs, the stage inputs the coordinator recorded, and workers' signed chunk commitments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from market.db.base import Base, UtcDateTime, new_id, utcnow


class InferenceRun(Base):
    """One requester generation (a batch of prompts) driven through a route of workers."""

    __tablename__ = "inference_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    requester: Mapped[str] = mapped_column(String(42), index=True)
    model: Mapped[str] = mapped_column(String(128))
    model_digest: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # prompts, max_new_tokens, sampling
    job_nonce: Mapped[str] = mapped_column(String(66))  # bytes32 hex inside every commitment's scope
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | completed | failed
    tokens: Mapped[list[list[int]] | None] = mapped_column(JSON, nullable=True)
    route: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # final route, after failovers
    failovers: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class StageRecord(Base):
    """One forward call relayed to a stage: the exact request bytes are a blob (content-addressed)."""

    __tablename__ = "stage_records"
    __table_args__ = (Index("ix_stage_records_run_stage_step", "run_id", "layer_start", "step"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("inference_runs.id", ondelete="CASCADE"))
    layer_start: Mapped[int] = mapped_column(Integer)
    layer_end: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)  # 0 = prefill
    worker_address: Mapped[str] = mapped_column(String(42), index=True)
    input_blob: Mapped[str] = mapped_column(String(64))  # sha256 of the request message in the blob store
    output_sha256: Mapped[str] = mapped_column(String(64))
    # The worker's signature over `signing.sent_digest` of this answer (checked before it was relayed).
    sent_signature: Mapped[str | None] = mapped_column(String(132), nullable=True)
    # The answer's tensor as a blob (hidden-state stages): the whole claimed output verification compares.
    output_blob: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    retain_until: Mapped[datetime] = mapped_column(UtcDateTime, index=True)  # verification window end


class StageCommitment(Base):
    """A worker's signed commitment to one output chunk, or (chunk_index NULL) its signed Merkle root."""

    __tablename__ = "stage_commitments"
    __table_args__ = (Index("ix_stage_commitments_run_worker", "run_id", "worker_address"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("inference_runs.id", ondelete="CASCADE"))
    worker_address: Mapped[str] = mapped_column(String(42))
    stage: Mapped[int] = mapped_column(Integer)  # the scope's stage = first layer of the range
    chunk_index: Mapped[str | None] = mapped_column(String(20), nullable=True)  # uint64 as decimal; NULL = root
    digest: Mapped[str] = mapped_column(String(66))  # signed digest (commit or root), 0x-hex
    body: Mapped[dict[str, Any]] = mapped_column(JSON)  # SignedCommitment.to_json() or the root record
    signature: Mapped[str] = mapped_column(String(132))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class StageViolation(Base):
    """A chunk commitment whose `output_sha256` differs from the rows the worker sent with signed hashes.

    `evidence` holds the signed commitment and the signed sent-hashes of the answers that carried the chunk's
    rows (with the rows' own hashes): anyone can check that the worker signed both and that they disagree.
    """

    __tablename__ = "stage_violations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("inference_runs.id", ondelete="CASCADE"), index=True)
    worker_address: Mapped[str] = mapped_column(String(42))
    stage: Mapped[int] = mapped_column(Integer)
    layer_end: Mapped[int] = mapped_column(Integer)
    chunk_index: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(32))  # unbound
    digest: Mapped[str] = mapped_column(String(66))  # the signed commitment's digest: the slashing evidence hash
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

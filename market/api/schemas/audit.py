"""The audit API's answers: settlement proofs, verification checks, slashes, indexed chain events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class ProofOut(BaseModel):
    job_id: str
    report_root: str
    record: dict[str, Any]


class CheckOut(BaseModel):
    id: str
    work_key: str
    worker: str
    stage: int
    chunk_index: int
    round: int
    replica: str | None
    status: str
    reason: str
    evidence: str
    metrics: dict[str, Any]
    decided_at: datetime | None


class SlashOut(BaseModel):
    worker: str
    amount: str
    slashed: str | None
    evidence: str
    finder: str
    status: str
    tx_hash: str | None


class EventOut(BaseModel):
    chain_id: int
    contract: str
    event: str
    block_number: int
    tx_hash: str
    log_index: int
    args: dict[str, Any]

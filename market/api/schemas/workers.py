from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from market.api.schemas.common import Input, WeiStr
from market.services.job_specs import Name


class ProfileIn(Input):
    """Measured by the worker daemon on a reference layer, not declared."""

    device: str = Field(min_length=1, max_length=64)
    memory_bytes: int = Field(ge=0, le=2**50)
    throughput_tokens_s: float = Field(ge=0, le=1e9, description="tokens/s through the reference layer")
    bandwidth_bytes_s: float = Field(ge=0, le=1e13)
    latency_ms: float = Field(ge=0, le=1e6)
    reference_layer: str = Field(min_length=1, max_length=128)
    operator_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:@-]+$")
    models: list[Name] = Field(default_factory=list, max_length=64)


class WorkerOut(BaseModel):
    id: str
    address: str
    operator_id: str
    status: str
    device: str
    memory_bytes: int
    throughput_tokens_s: float
    bandwidth_bytes_s: float
    latency_ms: float
    reference_layer: str
    models: list[str]
    stake: WeiStr
    unbonding: WeiStr
    eligible: bool
    stake_block: int
    registered_at: datetime
    last_heartbeat_at: datetime
    reputation_mean: float | None = None


class HeartbeatOut(BaseModel):
    address: str
    status: str
    eligible: bool
    last_heartbeat_at: datetime


class WorkerSummary(BaseModel):
    address: str
    status: str
    eligible: bool
    stake: WeiStr
    unbonding: WeiStr
    reputation_mean: float
    tasks_done: int  # tasks submitted (training/forward) through leases
    stage_calls: int  # pipeline forward calls recorded for verification
    earned: WeiStr  # GLB wei credited to this worker by confirmed settlements (inference and training)
    connected: list[str]  # "model [a, b)" per open WebSocket


class EarningRow(BaseModel):
    job_id: str
    chain_job_id: str
    kind: str
    model: str
    amount: WeiStr  # credited to this worker in the escrow by the job's settlement
    settlement_tx: str | None
    settled_at: str | None


class Earnings(BaseModel):
    address: str
    total: WeiStr
    jobs: list[EarningRow]

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from market.api.schemas.common import Input
from market.services.job_specs import Name


class LayerRange(Input):
    start: int = Field(ge=0, le=1024)
    end: int = Field(ge=1, le=1024)

    @model_validator(mode="after")
    def _order(self) -> LayerRange:
        if self.end <= self.start:
            raise ValueError("end must be greater than start")
        return self


class ClaimIn(Input):
    kinds: list[Literal["train", "forward"]] = Field(min_length=1, max_length=2)
    models: list[Name] = Field(min_length=1, max_length=32)
    layer_ranges: list[LayerRange] = Field(min_length=1, max_length=32)
    memory_bytes: int = Field(ge=0, le=2**50)


class TaskOut(BaseModel):
    id: str
    job_id: str
    index: int
    kind: str
    model: str
    layer_start: int
    layer_end: int
    memory_bytes: int
    units: int
    status: str
    attempts: int
    payload: dict[str, Any]
    deadline: datetime
    result_hash: str | None
    submitted_at: datetime | None


class LeaseOut(BaseModel):
    task: TaskOut
    lease_id: str
    lease_expires_at: datetime


class LeaseRefIn(Input):
    lease_id: str = Field(min_length=1, max_length=36)


class HeartbeatOut(BaseModel):
    task_id: str
    lease_id: str
    lease_expires_at: datetime


class ResultIn(Input):
    lease_id: str = Field(min_length=1, max_length=36)
    result_hash: str = Field(pattern=r"^0x[0-9a-fA-F]{64}$", description="commitment (e.g. Merkle root) of the result")
    result: dict[str, Any] = Field(default_factory=dict, description="small metadata; bulk data goes to the blob store")


class ClaimManyIn(ClaimIn):
    max_tasks: int = Field(default=8, ge=1, le=64, description="lease up to this many tasks in one request")


class LeasesOut(BaseModel):
    leases: list[LeaseOut] = Field(description="best first; empty when no task matches right now")


class ResultItemIn(ResultIn):
    task_id: str = Field(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")


class ResultsIn(Input):
    results: list[ResultItemIn] = Field(min_length=1, max_length=64)


class ResultItemOut(BaseModel):
    task_id: str
    accepted: bool = Field(description="false: already accepted before, or refused (see error)")
    error: str | None = Field(default=None, description="why it was refused (lease lost, different result, ...)")


class ResultsOut(BaseModel):
    results: list[ResultItemOut]


class ResultOut(BaseModel):
    task: TaskOut
    accepted: bool = Field(description="false when this exact result had already been accepted (idempotent replay)")

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from market.api.schemas.common import Address, Bytes32, Input, WeiStr
from market.services.job_specs import JobSpec


class JobIn(Input):
    spec: JobSpec
    budget: WeiStr = Field(description="GLB wei escrowed for the job; at least price_per_unit x units")
    price_per_unit: WeiStr
    deadline: datetime = Field(description="after this the requester may refund on chain")
    replicas: int = Field(default=1, ge=1, le=5)


class EscrowParams(BaseModel):
    """Exactly what to pass to JobEscrow.fundJob / fundJobWithPermit."""

    escrow_address: Address | None
    chain_id: int
    job_key: Bytes32 = Field(description="what to pass to fundJob / fundJobWithPermit as `jobKey`")
    job_id: Bytes32 = Field(description="the escrow's id of the job: jobIdOf(requester, job_key)")
    amount: WeiStr
    spec_hash: Bytes32
    deadline: int


class JobOut(BaseModel):
    id: str
    chain_job_id: Bytes32
    chain_id: int | None = None  # the chain whose escrow holds the job
    requester: str
    kind: str
    model: str
    spec: dict[str, Any]
    spec_hash: Bytes32
    budget: WeiStr
    price_per_unit: WeiStr
    max_units: int
    deadline: datetime
    replicas: int
    long_running: bool
    status: str
    funded_amount: WeiStr | None
    funded_tx: str | None
    funded_block: int | None
    created_at: datetime
    cancelled_at: datetime | None


class JobCreatedOut(BaseModel):
    job: JobOut
    escrow: EscrowParams

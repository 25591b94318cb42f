"""Bodies of /v1/training: DiLoCo job posting, progress and loss per round, update receipts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from market.api.schemas.common import Input, WeiStr
from market.training.spec import TrainingJobSpec

Sha256 = str


class DatasetOut(BaseModel):
    sha256: str
    bytes: int


class TrainingJobIn(Input):
    spec: TrainingJobSpec
    dataset_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="from POST /v1/training/datasets")
    budget: WeiStr = Field(description="GLB wei escrowed; >= price_per_unit x R x W x H x (1 + verify_rate)")
    price_per_unit: WeiStr = Field(description="per inner optimizer step of one task")
    deadline: datetime = Field(description="after this the requester may refund on chain")
    verify_rate: float = Field(default=0.1, ge=0.0, le=1.0, description="fraction of tasks replayed on a replica")
    checkpoint_key: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="32-byte AES key (hex) the requester keeps: checkpoints are encrypted at rest with it and the "
        "downloaded weights arrive sealed with it (model.safetensors.enc)",
    )


class RoundOut(BaseModel):
    round: int
    status: str  # pending | open | verifying | aggregating | applied
    close_state: str | None
    opened_at: datetime
    deadline_at: datetime
    closed_at: datetime | None
    applied_at: datetime | None
    reopened: int
    updates: int  # aggregated (or accepted, before aggregation)
    excluded: int  # accepted but caught by a replay
    eval_loss: float | None
    worker_loss: float | None
    bytes_up: int
    manifest_sha256: str | None
    epsilon: float | None = Field(default=None, description="federated with noise: ε after this round (cumulative)")


class PrivacyOut(BaseModel):
    mode: str  # federated
    secure_aggregation: bool
    threshold: int
    clip_norm: float
    noise_multiplier: float
    delta: float
    epsilon: float | None = Field(description="(ε, δ)-DP per worker over the applied rounds; null without noise")
    rounds_accounted: int


class TrainingProgressOut(BaseModel):
    job_id: str
    status: str  # waiting | running | completed | failed | cancelled
    job_status: str
    round: int
    rounds: int
    workers_per_round: int
    version: int
    dataset_sha256: str
    spec_sha256: str
    beacon: str
    verify_rate: float
    eval_loss: list[float | None] = Field(description="held-out loss before training, then after each round")
    per_round: list[RoundOut]
    privacy: PrivacyOut | None = None


class ManifestOut(BaseModel):
    job_id: str
    version: int
    round: int | None
    sha256: str
    parent: str | None
    config: dict[str, Any]
    tensors: dict[str, str]
    shapes: dict[str, list[int]]
    metrics: dict[str, float]


class UpdateReceiptOut(BaseModel):
    task_id: str
    accepted: bool = Field(description="false when this exact update had already been received")
    update_sha256: str
    digest: str


class VerdictOut(BaseModel):
    task_id: str
    worker: str
    round: int
    slot: int
    verdict: str
    evidence_hash: str
    replica: str | None
    reason: str
    aggregated: bool


Hex = Annotated[str, Field(pattern=r"^[0-9a-f]*$", max_length=4096)]
Share = Annotated[list[int | str], Field(min_length=2, max_length=2)]


class SecAggMessageIn(Input):
    """keys: c_public, s_public (hex X25519) and signature; shares: {slot: sealed hex} for every participant."""

    c_public: Hex | None = None
    s_public: Hex | None = None
    signature: str | None = Field(default=None, pattern=r"^0x[0-9a-fA-F]{130}$")
    shares: dict[str, Hex] | None = Field(default=None, max_length=1024)


class UnmaskIn(Input):
    slot: int = Field(ge=0, le=1024)
    b: dict[str, Share] = Field(default_factory=dict, max_length=1024)
    s: dict[str, Share] = Field(default_factory=dict, max_length=1024)


class SecAggReceiptOut(BaseModel):
    stored: bool = Field(description="false when this exact message had already been received")


class RollbackIn(Input):
    version: int = Field(ge=0, le=1_000_000, description="the checkpoint the next round continues from")


class RollbackOut(BaseModel):
    job_id: str
    version: int
    round: int = Field(description="the round that now trains from `version`")
    base_manifest: str

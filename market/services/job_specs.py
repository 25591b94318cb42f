"""Job specifications (what a requester asks for), their canonical hash and the work units they imply.

Plain pydantic (no fastapi): the CLI builds the same objects, so the spec hash it funds with is the market's.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from eth_utils import keccak
from pydantic import BaseModel, ConfigDict, Field, model_validator

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._/:@+-]+$")]


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)


class InferenceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["inference"] = "inference"
    model: Name
    prompts: list[Annotated[str, Field(min_length=1, max_length=8192)]] = Field(min_length=1, max_length=64)
    max_new_tokens: int = Field(ge=1, le=4096)
    sampling: Sampling = Field(default_factory=Sampling)
    # Each prompt is one user message rendered with the model's chat template (models that have one).
    chat: bool = False
    # Stop strings; every sequence also stops at the model's end-of-sequence token.
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list, max_length=4)

    def messages(self, prompts: list[str]) -> list[list[dict[str, str]]] | None:
        """The conversations for `prompts` when the job is a chat job, else None."""
        return [[{"role": "user", "content": p}] for p in prompts] if self.chat else None

    def units(self) -> int:
        """At most this many units: one generated token of one sequence (a sequence may stop earlier)."""
        return len(self.prompts) * self.max_new_tokens


class TrainingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["training"] = "training"
    model: Name
    dataset: Name
    rounds: int = Field(ge=1, le=1000)
    tasks_per_round: int = Field(ge=1, le=1024)
    local_steps: int = Field(ge=1, le=10_000)
    layer_start: int = Field(default=0, ge=0, le=1024)
    layer_end: int = Field(ge=1, le=1024)  # exclusive
    memory_bytes: int = Field(default=0, ge=0, le=2**50)
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    # The full DiLoCo spec (`market.training.spec.TrainingJobSpec` as JSON) of jobs posted through
    # /v1/training/jobs; inside the spec hash, so escrow funds exactly these hyper-parameters.
    diloco: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _range(self) -> TrainingSpec:
        if self.layer_end <= self.layer_start:
            raise ValueError("layer_end must be greater than layer_start")
        if self.diloco is not None:
            from market.training.spec import TrainingJobSpec  # lazy: torch is only needed for DiLoCo jobs

            d = TrainingJobSpec.model_validate(self.diloco)
            if (d.rounds, d.workers_per_round, d.inner_steps) != (self.rounds, self.tasks_per_round, self.local_steps):
                raise ValueError("diloco rounds / workers_per_round / inner_steps differ from the job's")
        return self

    def units(self) -> int:
        """One unit = one local optimizer step on one data shard."""
        return self.rounds * self.tasks_per_round * self.local_steps


class CreditSpec(BaseModel):
    """A prepaid credit for the OpenAI-compatible API (docs/openai.md): `gwei` of token charges, any model.

    Not a `JobSpec` (it is posted through /v1/credits, never /v1/jobs); its job settles like any other."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["credit"] = "credit"
    model: Literal["*"] = "*"
    gwei: int = Field(ge=1, le=2**63 - 1)

    def units(self) -> int:
        """One unit = one gwei of token charges (the settlement unit of a credit)."""
        return self.gwei


JobSpec = Annotated[InferenceSpec | TrainingSpec, Field(discriminator="kind")]

# Jobs of at least this many rounds reserve capacity (see market.scheduler.priority.reserve_capacity).
LONG_JOB_ROUNDS = 10


def canonical_json(spec: dict[str, Any]) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same bytes on every machine for the same spec."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def spec_hash(spec: dict[str, Any]) -> str:
    return "0x" + keccak(canonical_json(spec)).hex()


def spec_dict(spec: InferenceSpec | TrainingSpec | CreditSpec) -> dict[str, Any]:
    # A job that leaves a later-added field at its default hashes exactly as before the field existed.
    if isinstance(spec, CreditSpec):
        return spec.model_dump(mode="json")
    if isinstance(spec, TrainingSpec):
        return spec.model_dump(mode="json", exclude={"diloco"} if spec.diloco is None else None)
    unset = {name for name in ("chat", "stop") if not getattr(spec, name)}
    return spec.model_dump(mode="json", exclude=unset or None)

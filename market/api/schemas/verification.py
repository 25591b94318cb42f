"""Verifier-facing requests (the market's own Celery verifiers, admin role)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]


class ReplayIn(BaseModel):
    run_id: str = Field(min_length=1, max_length=36)
    layer_start: int = Field(ge=0)
    worker: Address
    replica: Address
    chunk_index: int = Field(ge=0, lt=1 << 64)  # sequence << 32 | position chunk: the one chunk to reproduce
    # A chain replica: the hops' addresses in layer order (`replica` is the first); their ranges must tile the part's.
    chain: list[Address] | None = Field(default=None, min_length=2, max_length=16)


class RerunIn(BaseModel):
    """Re-run one hop of a chain replay alone (the chain lost its 2-of-3): `transcript` is the replay's transcript
    blob (its answer's `transcript` header), `hop` the hop's index in it."""

    transcript: str = Field(pattern=r"^[0-9a-f]{64}$")
    hop: int = Field(ge=0, lt=16)
    replica: Address
    chain: list[Address] | None = Field(default=None, min_length=2, max_length=16)

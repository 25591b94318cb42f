from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from market.api.schemas.common import Address, Input

Role = Literal["requester", "worker", "auditor", "admin"]


class NonceIn(Input):
    address: Address


class NonceOut(BaseModel):
    nonce: str
    address: str
    domain: str
    uri: str
    chain_id: int
    expires_at: datetime


class VerifyIn(Input):
    message: str = Field(min_length=1, max_length=2048, description="the EIP-4361 message text that was signed")
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$")
    roles: list[Role] | None = Field(default=None, max_length=4, description="default: requester + worker")


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    address: str
    roles: list[Role]
    expires_at: datetime


class WhoAmI(BaseModel):
    address: str
    roles: list[Role]
    expires_at: datetime

"""Liveness and the public facts a client needs before signing in."""

from __future__ import annotations

from pydantic import BaseModel


class Health(BaseModel):
    status: str


class Info(BaseModel):
    chain_id: int
    auth_domain: str
    auth_uri: str
    escrow_address: str | None
    staking_address: str | None
    lease_ttl_s: int
    max_body_bytes: int
    genesis_hash: str | None = None  # block 0 of the market's chain: clients refuse to mix chains

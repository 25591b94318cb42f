"""Liveness and the public facts a client needs before signing in (domain, chain, contracts)."""

from __future__ import annotations

from fastapi import APIRouter

from market.api.deps import CtxDep
from market.api.schemas.health import Health, Info

router = APIRouter(tags=["meta"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/v1/info", response_model=Info)
def info(ctx: CtxDep) -> Info:
    s = ctx.settings
    genesis = getattr(ctx.chain, "genesis_hash", None)
    try:
        genesis_hash = genesis() if callable(genesis) else None
    except Exception:  # the chain is down: the rest of the answer still helps
        genesis_hash = None
    return Info(
        chain_id=s.chain_id,
        auth_domain=s.auth_domain,
        auth_uri=s.auth_uri,
        escrow_address=ctx.chain.escrow_address if ctx.chain else (s.job_escrow_address or None),
        staking_address=ctx.chain.staking_address if ctx.chain else (s.staking_vault_address or None),
        lease_ttl_s=s.lease_ttl_s,
        max_body_bytes=s.max_body_bytes,
        genesis_hash=genesis_hash,
    )

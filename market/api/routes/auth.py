"""Sign-in with Ethereum: nonce, then a signed EIP-4361 message for a short-lived bearer token."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from market.api.deps import CtxDep, NowDep, PrincipalDep, SessionDep
from market.api.schemas.auth import NonceIn, NonceOut, TokenOut, VerifyIn, WhoAmI
from market.services import auth

router = APIRouter(prefix="/v1/auth", tags=["auth"])


@router.post("/nonce", response_model=NonceOut)
def create_nonce(body: NonceIn, session: SessionDep, ctx: CtxDep, now: NowDep) -> NonceOut:
    """A single-use nonce bound to `address`; put it in the message you sign."""
    nonce = auth.issue_nonce(session, address=body.address, policy=ctx.policy, now=now)
    return NonceOut(
        nonce=nonce.nonce,
        address=nonce.address,
        domain=ctx.settings.auth_domain,
        uri=ctx.settings.auth_uri,
        chain_id=ctx.settings.chain_id,
        expires_at=nonce.expires_at,
    )


@router.post("/verify", response_model=TokenOut)
def verify(body: VerifyIn, session: SessionDep, ctx: CtxDep, now: NowDep) -> TokenOut:
    """Exchange a signed sign-in message for a bearer token (nonce consumed; domain, chain and times checked)."""
    token, principal = auth.sign_in(
        session, message=body.message, signature=body.signature, roles=body.roles, policy=ctx.policy, now=now
    )
    return TokenOut(
        access_token=token,
        address=principal.address,
        roles=sorted(principal.roles),  # type: ignore[arg-type]
        expires_at=datetime.fromtimestamp(principal.expires_at, UTC),
    )


@router.get("/me", response_model=WhoAmI)
def whoami(principal: PrincipalDep) -> WhoAmI:
    return WhoAmI(
        address=principal.address,
        roles=sorted(principal.roles),  # type: ignore[arg-type]
        expires_at=datetime.fromtimestamp(principal.expires_at, UTC),
    )

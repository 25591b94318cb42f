"""Sign-in with Ethereum (nonce -> signed EIP-4361 message -> bearer token) and HMAC-signed bearer tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from eth_utils import is_hex_address, to_checksum_address
from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from globai.protocol.siwe import SiweFormatError, parse_message, recover_signer
from market.db import AuthNonce
from market.domain_errors import AuthError, Forbidden, InvalidRequest

ROLES = ("requester", "worker", "auditor", "admin")
DEFAULT_ROLES = ("requester", "worker")
_TOKEN_PREFIX = "glb1"


@dataclass(frozen=True)
class Principal:
    address: str  # checksummed
    roles: frozenset[str]
    expires_at: int  # unix seconds


@dataclass(frozen=True)
class AuthPolicy:
    """The parts of Settings sign-in needs, so this module never sees the whole Settings."""

    secret: bytes
    domain: str
    chain_id: int
    nonce_ttl_s: int
    token_ttl_s: int
    max_message_lifetime_s: int
    clock_skew_s: int
    admin_addresses: frozenset[str]  # lower-case
    auditor_addresses: frozenset[str]  # lower-case; only these (and admins) may audit


def checksum(address: str) -> str:
    if not is_hex_address(address):
        raise InvalidRequest(f"not an Ethereum address: {address!r}")
    return to_checksum_address(address)


def issue_nonce(session: Session, *, address: str, policy: AuthPolicy, now: datetime) -> AuthNonce:
    # Expired nonces are useless (sign-in refuses them): purge them here, so the table holds at most
    # nonce_ttl_s worth of requests (an indexed range delete).
    session.execute(delete(AuthNonce).where(AuthNonce.expires_at < now))
    nonce = AuthNonce(
        nonce=secrets.token_hex(16),
        address=checksum(address),
        created_at=now,
        expires_at=now + timedelta(seconds=policy.nonce_ttl_s),
    )
    session.add(nonce)
    session.commit()
    return nonce


def allowed_roles(address: str, policy: AuthPolicy) -> frozenset[str]:
    roles = {"requester", "worker"}
    # The auditor role reads every job's prompts and results: only by configuration (admins have it too).
    if address.lower() in policy.auditor_addresses or address.lower() in policy.admin_addresses:
        roles.add("auditor")
    if address.lower() in policy.admin_addresses:
        roles.add("admin")
    return frozenset(roles)


def sign_in(
    session: Session,
    *,
    message: str,
    signature: str,
    roles: Collection[str] | None,
    policy: AuthPolicy,
    now: datetime,
) -> tuple[str, Principal]:
    """Check a signed sign-in message and consume its nonce; return (token, principal)."""
    try:
        parsed = parse_message(message)
    except SiweFormatError as exc:
        raise AuthError(f"malformed sign-in message: {exc}") from exc
    if parsed.domain != policy.domain:
        raise AuthError("message is for another domain")
    if parsed.chain_id != policy.chain_id:
        raise AuthError("message is for another chain")
    skew = timedelta(seconds=policy.clock_skew_s)
    if parsed.issued_at > now + skew:
        raise AuthError("message issued in the future")
    if parsed.expiration_time <= now:
        raise AuthError("message expired")
    if parsed.expiration_time - parsed.issued_at > timedelta(seconds=policy.max_message_lifetime_s):
        raise AuthError("message lifetime too long")
    try:
        signer = recover_signer(message, signature)
    except Exception as exc:  # eth-account raises several types for malformed signatures
        raise AuthError("malformed signature") from exc
    if signer != parsed.address:
        raise AuthError("signature does not match the address")
    wanted = frozenset(roles) if roles else frozenset(DEFAULT_ROLES)
    unknown = wanted - set(ROLES)
    if unknown:
        raise InvalidRequest(f"unknown roles: {sorted(unknown)}")
    missing = wanted - allowed_roles(signer, policy)
    if missing:
        raise Forbidden(f"{signer} may not take roles {sorted(missing)}")
    # Consume the nonce with one conditional UPDATE: of two concurrent verifies of one message, exactly one wins.
    consumed = session.execute(
        update(AuthNonce)
        .where(
            AuthNonce.nonce == parsed.nonce,
            AuthNonce.address == signer,
            AuthNonce.used_at.is_(None),
            AuthNonce.expires_at > now,
        )
        .values(used_at=now)
    )
    if consumed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise AuthError("unknown, expired or already used nonce")
    session.commit()
    # The token's life is the market's choice (short), not the signed message's.
    expires = now + timedelta(seconds=policy.token_ttl_s)
    principal = Principal(address=signer, roles=wanted, expires_at=int(expires.timestamp()))
    return encode_token(principal, secret=policy.secret), principal


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_token(principal: Principal, *, secret: bytes) -> str:
    payload = json.dumps(
        {"sub": principal.address, "roles": sorted(principal.roles), "exp": principal.expires_at},
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    body = f"{_TOKEN_PREFIX}.{_b64(payload)}"
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def decode_token(token: str, *, secret: bytes, now: datetime) -> Principal:
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _TOKEN_PREFIX:
        raise AuthError("malformed token")
    body = f"{parts[0]}.{parts[1]}"
    try:
        mac = _unb64(parts[2])
        expected = hmac.new(secret, body.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise AuthError("bad token signature")
        claims = json.loads(_unb64(parts[1]))
        principal = Principal(
            address=str(claims["sub"]), roles=frozenset(claims["roles"]), expires_at=int(claims["exp"])
        )
    except AuthError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise AuthError("malformed token") from exc
    if principal.expires_at <= int(now.timestamp()):
        raise AuthError("token expired")
    return principal

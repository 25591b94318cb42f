"""API keys of the OpenAI-compatible API: created by a signed-in requester, shown once, stored as a hash.

A key is 256 random bits (`glb-` + 43 url-safe characters); only its sha256 is stored, so the database cannot give
a key back (a plain hash suffices for random secrets of this size; a slow KDF protects guessable passwords).
Each key has an optional spend cap (GLB wei over its lifetime) and its own rate limit (requests per minute).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from market.db import ApiKey
from market.domain_errors import AuthError, Forbidden, InvalidRequest, NotFound

KEY_PREFIX = "glb-"
MAX_KEYS_PER_REQUESTER = 100


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    row: ApiKey
    key: str  # the only time the key itself exists outside the client


def create_key(
    session: Session, *, requester: str, name: str, spend_cap: int | None, rate_limit_per_min: int, now: datetime
) -> CreatedKey:
    if spend_cap is not None and not 0 <= spend_cap < 2**256:
        raise InvalidRequest("spend_cap must be a uint256")
    count = len(
        session.scalars(select(ApiKey.id).where(ApiKey.requester == requester, ApiKey.revoked_at.is_(None))).all()
    )
    if count >= MAX_KEYS_PER_REQUESTER:
        raise InvalidRequest(f"at most {MAX_KEYS_PER_REQUESTER} active keys per requester; revoke one first")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        requester=requester,
        name=name,
        prefix=key[:10],
        key_hash=hash_key(key),
        spend_cap=spend_cap,
        rate_limit_per_min=rate_limit_per_min,
        spent=0,
        reserved=0,
        created_at=now,
    )
    session.add(row)
    session.commit()
    return CreatedKey(row, key)


def list_keys(session: Session, *, requester: str) -> list[ApiKey]:
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.requester == requester).order_by(ApiKey.created_at, ApiKey.id)
        ).all()
    )


def revoke_key(session: Session, *, requester: str, key_id: str, now: datetime) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound("api key", key_id)
    if row.requester != requester:
        raise Forbidden("not your api key")
    if row.revoked_at is None:
        row.revoked_at = now
        session.commit()
    return row


def authenticate(session: Session, *, key: str) -> ApiKey:
    """The live key row for a presented key; AuthError if unknown or revoked."""
    if not key.startswith(KEY_PREFIX) or len(key) > 128:
        raise AuthError("invalid api key")
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None:
        raise AuthError("invalid api key")
    if row.revoked_at is not None:
        raise AuthError("api key revoked")
    return row


class KeyRateLimiter:
    """A token bucket per key (capacity = the key's per-minute limit, refilled continuously); per process."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str, per_min: int, now: float | None = None) -> float:
        """0 when allowed, else seconds until the next request would be."""
        now = time.monotonic() if now is None else now
        rate = per_min / 60.0
        with self._lock:
            tokens, updated = self._buckets.get(key_id, (float(per_min), now))
            tokens = min(float(per_min), tokens + (now - updated) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate

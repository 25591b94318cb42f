"""Everything a request handler needs, built once per app by `create_app` (never at import time)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from market.config import Settings
from market.services.auth import AuthPolicy
from market.services.chain_view import ChainView
from market.services.workers import EligibleWorkerCache


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    chain: ChainView | None
    policy: AuthPolicy
    clock: Callable[[], datetime] = system_clock
    workers: EligibleWorkerCache = field(default_factory=EligibleWorkerCache)


def auth_policy(settings: Settings) -> AuthPolicy:
    return AuthPolicy(
        secret=settings.auth_secret.get_secret_value().encode(),
        domain=settings.auth_domain,
        chain_id=settings.chain_id,
        nonce_ttl_s=settings.nonce_ttl_s,
        token_ttl_s=settings.token_ttl_s,
        max_message_lifetime_s=settings.max_message_lifetime_s,
        clock_skew_s=settings.clock_skew_s,
        admin_addresses=frozenset(settings.admin_addresses),
        auditor_addresses=frozenset(settings.auditor_addresses),
    )

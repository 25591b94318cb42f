"""Everything a request handler needs, built once per app by `create_app` (never at import time).

Routes reach these through the typed dependencies in `market.api.deps`, never through `app.state`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from globai.chain.ports import ChainView
from market.config import Settings
from market.coordinator.peers import PeerConfig
from market.coordinator.service import Coordinator, CoordinatorConfig
from market.services.api_keys import KeyRateLimiter
from market.services.auth import AuthPolicy
from market.services.inference_jobs import InferenceJobRunner
from market.services.workers import EligibleWorkerCache
from market.tasks.producer import TaskProducer
from market.training.storage import TrainingStorage, master_key, storage_at


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    chain: ChainView | None
    policy: AuthPolicy
    coordinator: Coordinator  # holds the worker sockets: paid inference runs in this process
    job_runner: InferenceJobRunner  # started and stopped by the app's lifespan
    training_storage: TrainingStorage
    tasks: TaskProducer  # sends Celery tasks (training aggregation) from the API process
    key_limiter: KeyRateLimiter  # per-API-key request rate (OpenAI-compatible API), per process
    clock: Callable[[], datetime] = system_clock
    workers: EligibleWorkerCache = field(default_factory=EligibleWorkerCache)


def build_context(
    settings: Settings,
    *,
    engine: Engine,
    session_factory: sessionmaker[Session],
    chain: ChainView | None,
    clock: Callable[[], datetime],
) -> AppContext:
    """Build every long-lived service of one market API process from its settings."""
    coordinator = Coordinator(coordinator_config(settings), session_factory, clock)
    if settings.shared_coordinator:
        peers = PeerConfig(settings.redis_url, settings.coordinator_prefix, call_timeout_s=settings.stage_timeout_s)
        coordinator.share(peers)
    return AppContext(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        chain=chain,
        policy=auth_policy(settings),
        coordinator=coordinator,
        job_runner=InferenceJobRunner(coordinator, session_factory, clock),
        training_storage=storage_at(settings.training_dir, master_key(settings)),
        tasks=TaskProducer(settings.redis_url),
        key_limiter=KeyRateLimiter(),
        clock=clock,
        workers=EligibleWorkerCache(settings.worker_cache_ttl_s),
    )


def coordinator_config(settings: Settings) -> CoordinatorConfig:
    return CoordinatorConfig(
        models_dir=Path(settings.models_dir),
        blob_dir=Path(settings.blob_dir),
        chain_id=settings.chain_id,
        call_timeout_s=settings.stage_timeout_s,
        retention_s=settings.blob_retention_s,
        tolerances_path=settings.tolerances_path,
        join_challenge=settings.join_challenge,
    )


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

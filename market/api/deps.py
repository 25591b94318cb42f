"""FastAPI dependencies, as `Annotated` aliases used by every router."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from globai.chain.ports import ChainView
from market.api.context import AppContext
from market.config import Settings
from market.coordinator.service import Coordinator
from market.domain_errors import AuthError, ChainNotConfigured, Forbidden
from market.services.auth import Principal, decode_token
from market.services.inference_jobs import InferenceJobRunner
from market.training.storage import TrainingStorage

# Dependencies that do no blocking I/O are `async def`: FastAPI runs every sync dependency in the threadpool,
# and a thread hop per dependency per request is what dominated the claim path's CPU time.


def context_of(connection: HTTPConnection) -> AppContext:
    """The app's context (HTTP requests and WebSockets alike); the only place that reads `app.state`."""
    ctx: AppContext = connection.app.state.ctx
    return ctx


async def get_ctx(connection: HTTPConnection) -> AppContext:
    return context_of(connection)


CtxDep = Annotated[AppContext, Depends(get_ctx)]


async def get_coordinator(ctx: CtxDep) -> Coordinator:
    return ctx.coordinator


CoordinatorDep = Annotated[Coordinator, Depends(get_coordinator)]


async def get_job_runner(ctx: CtxDep) -> InferenceJobRunner:
    return ctx.job_runner


JobRunnerDep = Annotated[InferenceJobRunner, Depends(get_job_runner)]


async def get_training_storage(ctx: CtxDep) -> TrainingStorage:
    return ctx.training_storage


TrainingStorageDep = Annotated[TrainingStorage, Depends(get_training_storage)]


async def get_settings(ctx: CtxDep) -> Settings:
    return ctx.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(ctx: CtxDep) -> AsyncIterator[Session]:
    session = ctx.session_factory()  # no I/O until first use (in the sync route, on a worker thread)
    try:
        yield session
    finally:
        # Closing inline, not via another thread hop: writes have committed or rolled back already, so this only
        # returns the connection to the pool (after a read, a local ROLLBACK round trip of well under 1 ms).
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_now(ctx: CtxDep) -> datetime:
    return ctx.clock()


NowDep = Annotated[datetime, Depends(get_now)]


async def get_chain(ctx: CtxDep) -> ChainView:
    if ctx.chain is None:
        raise ChainNotConfigured()
    return ctx.chain


ChainDep = Annotated[ChainView, Depends(get_chain)]

_bearer = HTTPBearer(auto_error=False, description="token from POST /v1/auth/verify")


async def get_principal(
    ctx: CtxDep, now: NowDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    if credentials is None:
        raise AuthError("missing bearer token")
    return decode_token(credentials.credentials, secret=ctx.policy.secret, now=now)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_role(role: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def dependency(principal: PrincipalDep) -> Principal:
        if role not in principal.roles:
            raise Forbidden(f"this needs the {role} role")
        return principal

    return dependency


RequesterDep = Annotated[Principal, Depends(require_role("requester"))]
WorkerDep = Annotated[Principal, Depends(require_role("worker"))]
AuditorDep = Annotated[Principal, Depends(require_role("auditor"))]
AdminDep = Annotated[Principal, Depends(require_role("admin"))]


def can_see_everything(principal: Principal) -> bool:
    """Auditors and admins read every job and task; everyone else only their own."""
    return bool(principal.roles & {"auditor", "admin"})

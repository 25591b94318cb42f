"""`create_app(settings)`: the market's FastAPI application."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import cast

from fastapi import FastAPI
from sqlalchemy import Engine

from globai.chain.ports import ChainView
from market.api.context import build_context, system_clock
from market.api.docs import install_docs
from market.api.errors import install_error_handlers
from market.api.middleware import BodySizeLimit, RateLimit
from market.api.observability import Observability
from market.api.routes import (
    audit,
    auth,
    credits,
    dashboard,
    health,
    inference,
    job_results,
    jobs,
    metrics,
    models,
    openai_v1,
    tasks,
    verification,
    web,
    worker_summary,
    worker_ws,
    workers,
)
from market.api.routes import training as training_routes
from market.api.schemas.common import ErrorOut
from market.config import Settings
from market.db.engine import make_engine, make_session_factory
from market.oai.errors import RESPONSES as OPENAI_RESPONSES
from market.oai.errors import install as install_openai_errors
from market.services.chain_view import chain_view_from_settings

_UNSET = object()

# Documented on every operation so the OpenAPI schema lists every status a client can get.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "invalid request (domain rule)"),
        (401, "missing, malformed or expired bearer token / failed sign-in"),
        (403, "role, ownership or stake requirement not met"),
        (404, "not found"),
        (409, "state conflict (lease lost, not funded, already done)"),
        (405, "method not allowed on this path"),
        (413, "request body too large"),
        (422, "request does not match its schema (malformed JSON, missing or invalid fields)"),
        (429, "rate limited (see Retry-After)"),
        (503, "chain not configured or unreachable"),
    )
}


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    chain: ChainView | None | object = _UNSET,
    clock: Callable[[], datetime] = system_clock,
) -> FastAPI:
    """Build the app. `engine`, `chain` and `clock` are injectable for tests; by default they come from settings."""
    own_engine = engine is None
    db = (
        make_engine(settings.database_url, pool_size=settings.db_pool_size, async_commit=settings.db_async_commit)
        if engine is None
        else engine
    )
    view = chain_view_from_settings(settings) if chain is _UNSET else cast("ChainView | None", chain)
    ctx = build_context(
        settings,
        engine=db,
        session_factory=make_session_factory(db),
        chain=view,
        clock=clock,  # type: ignore[arg-type]
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        peers = ctx.coordinator.peers
        if peers is not None:  # the other market processes' workers and runs, through Redis
            await peers.start()
            watch = asyncio.create_task(ctx.coordinator.watch_peers())
        # Paid inference jobs run in this process: the coordinator holds the worker sockets.
        ctx.job_runner.start()
        # Slashes and bans reach live worker links at once (reputation, eligibility; banned links are closed).
        standing = asyncio.create_task(ctx.coordinator.watch_standing())
        yield
        standing.cancel()
        await ctx.job_runner.stop()
        if peers is not None:
            watch.cancel()
            await peers.stop()
        if own_engine:
            db.dispose()

    app = FastAPI(
        title="GlobAI market",
        version="1",
        description="Paid, verified LLM inference and training on idle machines: jobs, workers, task leases.",
        lifespan=lifespan,
        docs_url=None,  # served from local assets below (no CDN)
        redoc_url=None,
    )
    install_docs(app)
    app.state.ctx = ctx
    install_error_handlers(app)
    # Registration order is matching order: fixed paths (/v1/jobs/{id}/result, /v1/workers/me/summary) before
    # the routers whose path parameters would swallow them.
    for module in (
        health,
        auth,
        workers,
        job_results,
        jobs,
        tasks,
        audit,
        models,
        worker_ws,
        worker_summary,
        inference,
        verification,
        training_routes,
    ):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    app.include_router(
        credits.router, responses={**ERROR_RESPONSES, 402: {"model": ErrorOut, "description": "insufficient quota"}}
    )
    app.include_router(openai_v1.router, responses=OPENAI_RESPONSES)  # OpenAI's error shape (market/oai/)
    install_openai_errors(app)
    app.include_router(dashboard.router, responses=ERROR_RESPONSES)  # public: the dashboard's data
    app.include_router(metrics.router)
    web.install(app)  # /dashboard: page + static ES modules
    # Outermost first: oversized bodies are refused before they count against anyone's rate limit.
    app.add_middleware(
        RateLimit,
        rate_per_s=settings.rate_limit_per_s,
        burst=settings.rate_limit_burst,
        secret=ctx.policy.secret,
        redis_url=settings.redis_url if settings.rate_limit_shared else None,
    )
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        path_limits=training_routes.upload_limits(settings),
        secret=ctx.policy.secret,
    )
    app.add_middleware(Observability)  # outermost: request id, request metrics and access log for every answer
    return app

"""`GET /metrics`: Prometheus text format (metric names in docs/observability.md)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from market.api.deps import CtxDep
from market.domain_errors import AuthError
from market.metrics import LedgerCollector, exposition

router = APIRouter(tags=["meta"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request, ctx: CtxDep) -> Response:
    """Live metrics of every market process (multi-process mode) and ledger counts read from the database."""
    expected = ctx.settings.metrics_token
    if expected is not None and expected.get_secret_value():
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected.get_secret_value()}".encode()):
            raise AuthError("GET /metrics needs the metrics bearer token")
    body = await asyncio.to_thread(exposition, ledger_collector(ctx))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def ledger_collector(ctx: Any) -> LedgerCollector:
    """Reads the app's database, the Celery broker and the chain head when a scrape collects it."""
    chain = ctx.chain
    return LedgerCollector(
        ctx.session_factory,
        redis_url=ctx.settings.redis_url,
        chain_head=chain.latest_block if chain is not None else None,
    )

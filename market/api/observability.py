"""Per-request observability as plain ASGI middleware: a request id (X-Request-ID, bound for every log line of the
request), request count and latency by route template for Prometheus, and one access-log event per request."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from globai.logs import REQUEST_ID
from market.api.middleware import ASGIApp, Message, Receive, Scope, Send
from market.metrics import HTTP_LATENCY, HTTP_REQUESTS

access = logging.getLogger("market.access")
UNMATCHED = "<unmatched>"  # 404s and the like: never a raw path as a label (unbounded cardinality)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")[:64]
            if text and all(c.isalnum() or c in "-_." for c in text):
                return text
    return secrets.token_hex(8)


class Observability:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        token = REQUEST_ID.set(rid)
        started = time.perf_counter()
        status = [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status[0] = 500
            raise
        finally:
            REQUEST_ID.reset(token)
            if scope["type"] == "http":
                self._observe(scope, status[0], time.perf_counter() - started, rid)

    def _observe(self, scope: Scope, status: int, elapsed: float, rid: str) -> None:
        route: Any = scope.get("route")
        template = getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED
        if template == UNMATCHED and scope.get("path", "").startswith("/dashboard"):
            template = "/dashboard"  # the static mount
        method = scope.get("method", "")
        HTTP_REQUESTS.labels(method, template, str(status)).inc()
        HTTP_LATENCY.labels(method, template).observe(elapsed)
        if access.isEnabledFor(logging.INFO):
            access.info(
                "%s %s %d %.1f ms",
                method,
                scope.get("path", ""),
                status,
                elapsed * 1000,
                extra={"request_id": rid, "route": template, "status": status, "ms": round(elapsed * 1000, 2)},
            )

"""Body size limit (413) and per-address / per-IP rate limits (429), as plain ASGI middleware.

Plain ASGI rather than BaseHTTPMiddleware: these run on every request, and the claim path is latency-bound.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from market.domain_errors import AuthError
from market.services.auth import decode_token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)


async def _send_json(send: Send, status: int, body: dict[str, str], headers: list[tuple[bytes, bytes]]) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), *headers],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class BodySizeLimit:
    """Refuse bodies over `max_bytes`: by Content-Length up front, and by counting when it is absent or lies."""

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, path_limits: dict[str, int] | None = None, secret: bytes | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Bulk uploads need a valid token before a byte of their body is read (an anonymous 200 MiB upload must
        # not be buffered just to be answered 401); the route still checks roles and ownership.
        self.secret = secret
        # Path prefix -> limit, for the few uploads that are bulk data (training datasets and updates).
        self.path_limits = sorted((path_limits or {}).items(), key=lambda item: -len(item[0]))

    def _limit(self, path: str) -> int:
        return next((limit for prefix, limit in self.path_limits if path.startswith(prefix)), self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope.get("path", ""))
        if limit != self.max_bytes and self.secret is not None and not self._signed_in(scope):
            await _send_json(
                send,
                401,
                {"error": "AuthError", "detail": "bulk uploads need a bearer token"},
                [(b"www-authenticate", b"Bearer")],
            )
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = limit + 1
                if declared > limit:
                    await self._too_large(send, limit)
                    return
        # Buffer the (bounded) body so an oversized chunked upload is refused before the app sees any of it.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                await self._too_large(send, limit)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        await self.app(
            scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive), send
        )

    def _signed_in(self, scope: Scope) -> bool:
        assert self.secret is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                try:
                    decode_token(value[7:].decode("latin-1").strip(), secret=self.secret, now=datetime.now(UTC))
                    return True
                except AuthError:
                    return False
        return False

    async def _too_large(self, send: Send, limit: int) -> None:
        await _send_json(send, 413, {"error": "PayloadTooLarge", "detail": f"body over {limit} bytes"}, [])


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()  # e.g. http.disconnect after the body
        return {"type": "http.disconnect"}

    return receive


@dataclass
class _Bucket:
    tokens: float
    updated: float


# KEYS[1] bucket; ARGV rate/s, burst. Refill by Redis' own clock, take one token; returns the wait in seconds.
_BUCKET_LUA = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local b = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(b[1]) or burst
local updated = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return tostring(wait)
"""


class RateLimit:
    """Token buckets per client IP and per signed-in address, for HTTP requests and WebSocket handshakes.

    A signed-in request takes one token from its address's bucket and one from its IP's (IP_FACTOR times larger,
    so a few clients behind one NAT are not starved, while many addresses from one IP cannot multiply their
    bursts); an anonymous request or a handshake takes from its IP's anonymous bucket. Per process by default
    (with several API processes the effective limit is multiplied by their number); with
    `GLOBAI_RATE_LIMIT_SHARED=true` the buckets live in Redis, shared by every process.
    """

    MAX_KEYS = 100_000
    IP_FACTOR = 4

    def __init__(
        self,
        app: ASGIApp,
        *,
        rate_per_s: float,
        burst: int,
        secret: bytes,
        redis_url: str | None = None,
        prefix: str = "globai:rl:",
    ) -> None:
        self.app = app
        self.rate = rate_per_s
        self.burst = float(burst)
        self.secret = secret
        self.buckets: dict[str, _Bucket] = {}
        # Shared buckets: one Lua token bucket per key in Redis (its clock), so every API process draws from the
        # same budget. If Redis fails, the process falls back to its own buckets (fail open, logged once).
        self.prefix = prefix
        self.redis: Any = None
        if redis_url is not None:
            import redis.asyncio as aioredis

            self.redis = aioredis.Redis.from_url(redis_url)
        self._redis_failed = False

    def _keys(self, scope: Scope) -> list[tuple[str, float]]:
        """(bucket key, size factor) to take a token from, all of them."""
        client = scope.get("client") or ("unknown", 0)
        for name, value in scope.get("headers", []):
            if scope["type"] == "http" and name == b"authorization" and value[:7].lower() == b"bearer ":
                try:
                    token = value[7:].decode("latin-1").strip()
                    principal = decode_token(token, secret=self.secret, now=datetime.now(UTC))
                    return [("addr:" + principal.address, 1.0), (f"ip:{client[0]}", float(self.IP_FACTOR))]
                except AuthError:
                    break  # a bad token is limited by IP (and refused by the route)
        return [(f"anon:{client[0]}", 1.0)]

    def _take(self, key: str, now: float, factor: float = 1.0) -> float:
        """Take one token; return 0 when allowed, else seconds until one is available."""
        bucket = self.buckets.get(key)
        burst, rate = self.burst * factor, self.rate * factor
        if bucket is None:
            if len(self.buckets) >= self.MAX_KEYS:
                self.buckets.clear()  # crude but bounded: forgetting buckets only ever lets requests through
            bucket = self.buckets[key] = _Bucket(tokens=burst, updated=now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    async def _take_shared(self, key: str, factor: float) -> float:
        wait = await self.redis.eval(_BUCKET_LUA, 1, self.prefix + key, self.rate * factor, self.burst * factor)
        return float(wait)

    async def _wait(self, scope: Scope) -> float:
        keys = self._keys(scope)
        if self.redis is not None:
            try:
                return max([await self._take_shared(key, factor) for key, factor in keys])
            except Exception as exc:  # noqa: BLE001 - Redis down: limit per process rather than refuse everything
                if not self._redis_failed:
                    log.warning("shared rate limit unavailable (%s); limiting per process", type(exc).__name__)
                    self._redis_failed = True
        now = time.monotonic()
        return max(self._take(key, now, factor) for key, factor in keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        wait = await self._wait(scope)
        if wait > 0:
            retry = str(max(1, round(wait)))
            if scope["type"] == "websocket":  # refused before the upgrade (the client sees HTTP 403)
                await send({"type": "websocket.close", "code": 1008, "reason": f"rate limited, retry after {retry}s"})
                return
            await _send_json(
                send,
                429,
                {"error": "RateLimited", "detail": f"retry after {retry}s"},
                [(b"retry-after", retry.encode())],
            )
            return
        await self.app(scope, receive, send)

"""Connected workers as the coordinator sees them: one `WorkerLink` per open WebSocket, in a `LinkRegistry`.

A link matches answers to requests by request id (`rid`); when the socket goes, every pending request fails
with `WorkerGone`, which the pipeline driver turns into a failover.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from globai.errors import GlobaiError
from globai.protocol.tensors import Message
from market import metrics
from market.coordinator.routing import RouteCandidate
from market.scheduler.reputation import Reputation

log = logging.getLogger(__name__)


class WorkerGone(GlobaiError):
    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"worker {address} is gone: {reason}")
        self.address = address
        self.reason = reason


class StageFailed(GlobaiError):
    """The worker answered with an error (`code` from worker.models.errors or the frame codec)."""

    def __init__(self, address: str, code: str, message: str) -> None:
        super().__init__(f"worker {address} refused: {code}: {message}")
        self.address = address
        self.code = code


@dataclass
class WorkerLink:
    link_id: str
    address: str
    worker_id: str
    operator_id: str
    model: str
    digest: str
    layer_start: int
    layer_end: int
    max_batch: int
    max_tokens: int
    throughput_tokens_s: float
    latency_ms: float
    reputation: Reputation
    send: Callable[[bytes], Awaitable[None]]
    alive: bool = True
    # None: this process holds the worker's socket; else the id of the market process that does (`peers.py`).
    owner: str | None = None
    closed_reason: str = ""  # why the coordinator dropped it
    # Close the worker's socket too (a ban, a lost stake: it could not reconnect). Other drops (a provable fault,
    # a newer connection) leave the socket open and unrouted until its token expires, so it cannot just reconnect.
    disconnect: bool = False
    calls: int = 0
    # What the coordinator measured itself (EWMA over forward calls): declared figures are capped by these.
    observed_tokens_s: float | None = None  # in the routing cost model's units (reference tokens/s)
    observed_latency_ms: float | None = None
    pending: dict[int, asyncio.Future[Message]] = field(default_factory=dict)
    # Requests another market process relays through this (local) link: answered with the worker's raw bytes.
    relayed: dict[int, asyncio.Future[bytes]] = field(default_factory=dict)
    _rids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def observe(self, positions: int, wall_ms: float, compute_ms: float | None) -> None:
        """One forward call as the coordinator timed it: `positions` rows through this link's layers."""
        layers = max(self.layer_end - self.layer_start, 1)
        # routing.hop_cost charges layers * 1000 / throughput ms per position: invert it on the wall time.
        tokens_s = layers * 1000.0 * max(positions, 1) / max(wall_ms, 1e-3)
        overhead = max(wall_ms - (compute_ms if compute_ms is not None and 0 <= compute_ms <= wall_ms else 0.0), 0.0)
        a = 0.2
        self.observed_tokens_s = (
            tokens_s if self.observed_tokens_s is None else ((1 - a) * self.observed_tokens_s + a * tokens_s)
        )
        self.observed_latency_ms = (
            overhead if self.observed_latency_ms is None else ((1 - a) * self.observed_latency_ms + a * overhead)
        )

    @property
    def effective_tokens_s(self) -> float:
        """The declared throughput, capped by what was observed (a worker can't buy routes by overclaiming)."""
        if self.observed_tokens_s is None:
            return self.throughput_tokens_s
        return min(self.throughput_tokens_s, self.observed_tokens_s)

    @property
    def effective_latency_ms(self) -> float:
        if self.observed_latency_ms is None:
            return self.latency_ms
        return max(self.latency_ms, self.observed_latency_ms)

    def candidate(self) -> RouteCandidate:
        """This link as the route planner sees it (measured figures capping declared ones)."""
        return RouteCandidate(
            self.link_id,
            self.operator_id,
            self.layer_start,
            self.layer_end,
            self.effective_tokens_s,
            self.effective_latency_ms,
            self.reputation,
        )

    @property
    def local(self) -> bool:
        return self.owner is None

    def next_rid(self) -> int:
        # A link held by another process serves requests from every process: ids drawn at random do not collide.
        return next(self._rids) if self.owner is None else secrets.randbits(52)

    async def transmit(self, rid: int, raw: bytes) -> None:
        """Put one encoded request on its way to the worker (the socket here; `peers.py` relays remote links)."""
        await self.send(raw)

    async def call(self, rid: int, raw: bytes, timeout: float) -> Message:
        """Send a request (already encoded with `rid`) and wait for its answer."""
        if not self.alive:
            raise WorkerGone(self.address, "disconnected")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        try:
            try:
                await self.transmit(rid, raw)
            except WorkerGone:
                raise
            except Exception as exc:  # the socket died under us
                self.close(f"send failed: {type(exc).__name__}")
                raise WorkerGone(self.address, "send failed") from None
            try:
                reply = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise WorkerGone(self.address, f"no answer within {timeout:.0f}s") from None
        finally:
            self.pending.pop(rid, None)
        self.calls += 1
        if reply.header.get("op") == "error":
            raise StageFailed(self.address, str(reply.header.get("code")), str(reply.header.get("message")))
        return reply

    def deliver(self, message: Message, raw: bytes | None = None) -> bool:
        """Hand an answer to its waiting request (a relayed one gets `raw`); False if nobody waits for that rid."""
        rid = message.header.get("rid")
        relay = self.relayed.get(rid)  # type: ignore[arg-type]
        if relay is not None and raw is not None:
            if relay.done():
                return False
            relay.set_result(raw)
            return True
        future = self.pending.get(rid)  # type: ignore[arg-type]
        if future is None or future.done():
            return False
        future.set_result(message)
        return True

    def fail(self, rid: int, reason: str) -> None:
        """The request `rid` will get no answer (its relay lost the worker)."""
        future = self.pending.get(rid)
        if future is not None and not future.done():
            future.set_exception(WorkerGone(self.address, reason))

    def close(self, reason: str) -> None:
        self.alive = False
        self.closed_reason = self.closed_reason or reason
        futures: list[asyncio.Future[Any]] = [*self.pending.values(), *self.relayed.values()]
        for future in futures:
            if not future.done():
                future.set_exception(WorkerGone(self.address, reason))
        self.pending.clear()
        self.relayed.clear()


class LinkRegistry:
    """Every live link this process can route through: its own sockets and, with `peers.py`, other processes'.

    `on_local(event, link)` ("up" | "down") hears about this process's own links (peers announce them)."""

    def __init__(self) -> None:
        self._links: dict[str, WorkerLink] = {}
        self.on_local: Callable[[str, WorkerLink], None] | None = None

    def add(self, link: WorkerLink) -> None:
        same = [lnk for lnk in self._links.values() if lnk.address == link.address]
        if not link.local and any(lnk.local for lnk in same):
            return  # this process holds the worker's newest socket: an older announcement from elsewhere is stale
        # A worker that reconnects replaces its old link (which is failed over by whoever used it).
        for old in same:
            self.remove(old.link_id, "replaced by a new connection")
        self._links[link.link_id] = link
        if link.local:
            metrics.CONNECTED_WORKERS.labels(link.model, metrics.layers_label(link.layer_start, link.layer_end)).inc()
            if self.on_local is not None:
                self.on_local("up", link)

    def remove(self, link_id: str, reason: str) -> None:
        link = self._links.pop(link_id, None)
        if link is not None:
            link.close(reason)
            if link.local:
                labels = (link.model, metrics.layers_label(link.layer_start, link.layer_end))
                metrics.CONNECTED_WORKERS.labels(*labels).dec()
                if self.on_local is not None:
                    self.on_local("down", link)

    def get(self, link_id: str) -> WorkerLink | None:
        return self._links.get(link_id)

    def live(self, model: str | None = None) -> list[WorkerLink]:
        return [lnk for lnk in self._links.values() if lnk.alive and (model is None or lnk.model == model)]

    def coverage(self, model: str, num_layers: int) -> list[int]:
        counts = [0] * num_layers
        for link in self.live(model):
            for i in range(link.layer_start, min(link.layer_end, num_layers)):
                counts[i] += 1
        return counts

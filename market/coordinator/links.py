"""Connected workers as the coordinator sees them: one `WorkerLink` per open WebSocket, in a `LinkRegistry`.

A link matches answers to requests by request id (`rid`); when the socket goes, every pending request fails
with `WorkerGone`, which the pipeline driver turns into a failover.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from globai.errors import GlobaiError
from globai.protocol.tensors import Message
from market import metrics
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
    calls: int = 0
    # What the coordinator measured itself (EWMA over forward calls): declared figures are capped by these.
    observed_tokens_s: float | None = None  # in the routing cost model's units (reference tokens/s)
    observed_latency_ms: float | None = None
    pending: dict[int, asyncio.Future[Message]] = field(default_factory=dict)
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

    def next_rid(self) -> int:
        return next(self._rids)

    async def call(self, rid: int, raw: bytes, timeout: float) -> Message:
        """Send a request (already encoded with `rid`) and wait for its answer."""
        if not self.alive:
            raise WorkerGone(self.address, "disconnected")
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.pending[rid] = future
        try:
            try:
                await self.send(raw)
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

    def deliver(self, message: Message) -> bool:
        """Hand an answer to its waiting request; False if nobody waits for that rid."""
        future = self.pending.get(message.header.get("rid"))  # type: ignore[arg-type]
        if future is None or future.done():
            return False
        future.set_result(message)
        return True

    def close(self, reason: str) -> None:
        self.alive = False
        for future in self.pending.values():
            if not future.done():
                future.set_exception(WorkerGone(self.address, reason))
        self.pending.clear()


class LinkRegistry:
    def __init__(self) -> None:
        self._links: dict[str, WorkerLink] = {}

    def add(self, link: WorkerLink) -> None:
        # A worker that reconnects replaces its old link (which is failed over by whoever used it).
        for old in [lnk for lnk in self._links.values() if lnk.address == link.address]:
            self.remove(old.link_id, "replaced by a new connection")
        self._links[link.link_id] = link
        metrics.CONNECTED_WORKERS.labels(link.model, metrics.layers_label(link.layer_start, link.layer_end)).inc()

    def remove(self, link_id: str, reason: str) -> None:
        link = self._links.pop(link_id, None)
        if link is not None:
            link.close(reason)
            metrics.CONNECTED_WORKERS.labels(link.model, metrics.layers_label(link.layer_start, link.layer_end)).dec()

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

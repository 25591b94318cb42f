"""Per-session KV caches of one stage, with an idle TTL and a memory cap (least recently used goes first).

An evicted session is remembered (a bounded number of them), so a later request for it gets
`SessionEvictedError` — the coordinator's cue to replay the session's recorded inputs — not a confusing
"unknown session".
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from worker.models.errors import (
    CacheCapacityError,
    SessionEvictedError,
    SessionExistsError,
    UnknownSessionError,
)


@dataclass
class Session:
    session_id: str
    created_at: float
    last_used: float
    cache: DynamicCache | None = field(default_factory=DynamicCache)  # None for encoders
    mask: torch.Tensor | None = None  # [batch, tokens seen] of 0/1: padding of everything cached so far
    steps: int = 0

    @property
    def batch(self) -> int | None:
        return None if self.mask is None else int(self.mask.shape[0])

    @property
    def seen_tokens(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def cache_bytes(self) -> int:
        total = 0
        for layer in self.cache.layers if self.cache is not None else ():
            for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
        return total


class SessionStore:
    """Sessions of one stage. Not thread-safe by itself: `Stage` serialises access."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
        remember_evicted: int = 4096,
        new_cache: Callable[[], DynamicCache | None] = DynamicCache,
    ) -> None:
        self.ttl_s = ttl_s
        self._new_cache = new_cache  # the model family's cache (sliding-window layers where the config has them)
        self.max_bytes = max_bytes
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._evicted: OrderedDict[str, str] = OrderedDict()  # session id -> reason
        self._remember = remember_evicted

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, session_id: str) -> Session:
        self.purge_expired()
        if session_id in self._sessions:
            raise SessionExistsError(session_id)
        self._evicted.pop(session_id, None)
        now = self._clock()
        session = Session(session_id=session_id, created_at=now, last_used=now, cache=self._new_cache())
        self._sessions[session_id] = session
        return session

    def throwaway(self) -> Session:
        """A session outside the store, for one stateless call (verification of a whole sequence, tests)."""
        return Session(session_id="", created_at=0.0, last_used=0.0, cache=self._new_cache())

    def get(self, session_id: str) -> Session:
        """The open session, marked most recently used."""
        self.purge_expired()
        session = self._sessions.get(session_id)
        if session is None:
            reason = self._evicted.get(session_id)
            if reason is not None:
                raise SessionEvictedError(session_id, reason)
            raise UnknownSessionError(session_id)
        session.last_used = self._clock()
        self._sessions.move_to_end(session_id)
        return session

    def close(self, session_id: str) -> bool:
        """Drop a session on purpose (not remembered as evicted). Returns whether it was open."""
        self._evicted.pop(session_id, None)
        return self._sessions.pop(session_id, None) is not None

    def evict(self, session_id: str, reason: str) -> None:
        if self._sessions.pop(session_id, None) is not None:
            self._evicted[session_id] = reason
            while len(self._evicted) > self._remember:
                self._evicted.popitem(last=False)

    def purge_expired(self) -> list[str]:
        deadline = self._clock() - self.ttl_s
        expired = [sid for sid, s in self._sessions.items() if s.last_used < deadline]
        for sid in expired:
            self.evict(sid, "ttl")
        return expired

    def total_bytes(self) -> int:
        return sum(s.cache_bytes() for s in self._sessions.values())

    def reserve(self, session: Session, extra_bytes: int) -> list[str]:
        """Make room for `extra_bytes` more cache in `session`, evicting other sessions LRU-first.

        Raises `CacheCapacityError` (leaving the session untouched) if the session alone would exceed the cap.
        """
        own = session.cache_bytes() + extra_bytes
        if own > self.max_bytes:
            raise CacheCapacityError(session.session_id, own, self.max_bytes)
        evicted = []
        others = self.total_bytes() - session.cache_bytes()
        for sid in list(self._sessions):
            if others + own <= self.max_bytes:
                break
            if sid == session.session_id:
                continue
            others -= self._sessions[sid].cache_bytes()
            self.evict(sid, "memory")
            evicted.append(sid)
        return evicted

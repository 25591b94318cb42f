"""Errors a stage raises on purpose; each has a stable `code` the worker daemon sends to the coordinator."""

from __future__ import annotations

from globai.errors import GlobaiError


class StageError(GlobaiError):
    code = "stage_error"


class StageInputError(StageError):
    """The request does not fit this stage (wrong dtype/shape, token id out of range, batch changed...)."""

    code = "bad_input"


class UnknownSessionError(StageError):
    code = "unknown_session"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} is not open on this stage")
        self.session_id = session_id


class SessionExistsError(StageError):
    code = "session_exists"

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} is already open on this stage")
        self.session_id = session_id


class SessionEvictedError(StageError):
    """The session's KV cache was dropped (TTL or memory cap): the coordinator must replay its inputs."""

    code = "session_evicted"

    def __init__(self, session_id: str, reason: str) -> None:
        super().__init__(f"session {session_id!r} was evicted ({reason}); replay its inputs to rebuild it")
        self.session_id = session_id
        self.reason = reason


class CacheCapacityError(StageError):
    """One session alone needs more KV-cache memory than this stage may hold."""

    code = "cache_capacity"

    def __init__(self, session_id: str, needed_bytes: int, cap_bytes: int) -> None:
        super().__init__(f"session {session_id!r} needs {needed_bytes} bytes of KV cache, cap is {cap_bytes}")
        self.session_id = session_id
        self.needed_bytes = needed_bytes
        self.cap_bytes = cap_bytes

"""Market domain errors with typed fields. Only `market.api.errors` maps them to HTTP status codes."""

from __future__ import annotations

from globai.errors import GlobaiError


class MarketError(GlobaiError):
    """Base of the market's own domain errors."""


class NotFound(MarketError):
    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key} not found")
        self.kind = kind
        self.key = key


class AuthError(MarketError):
    """Sign-in failed: bad signature, unknown/used/expired nonce, wrong domain or chain, bad token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Forbidden(MarketError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidRequest(MarketError):
    """Semantically invalid input that passed schema validation (e.g. budget below price x units)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Conflict(MarketError):
    """The resource is not in a state that allows the operation."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotEligible(Forbidden):
    def __init__(self, address: str, stake: int, min_stake: int) -> None:
        super().__init__(f"worker {address} has stake {stake} < minimum {min_stake}")
        self.address = address
        self.stake = stake
        self.min_stake = min_stake


class LeaseLost(Conflict):
    """The caller does not hold the task's active lease (expired, requeued, or someone else's)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no active lease on task {task_id} for this worker")
        self.task_id = task_id


class FundingNotFound(Conflict):
    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} is not funded on chain: {reason}")
        self.job_id = job_id


class RateLimited(MarketError):
    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"rate limit exceeded; retry after {retry_after_s:.1f}s")
        self.retry_after_s = retry_after_s


class ChainNotConfigured(MarketError):
    """This market process has no chain configured (contract addresses missing)."""

    def __init__(self) -> None:
        super().__init__("no chain configured for this market (set GLOBAI_STAKING_VAULT_ADDRESS etc.)")


class InsufficientQuota(MarketError):
    """An API request's worst case is not covered (no open credit with enough left, or the key's spend cap)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

"""Domain errors with typed fields. HTTP mapping lives only in `market.api`; the CLI prints them as one line."""

from __future__ import annotations


class GlobaiError(Exception):
    """Base of every error GlobAI raises on purpose."""


class ConfigError(GlobaiError):
    """Bad or missing configuration (unknown chain, missing deployment file, ...)."""


class ChainError(GlobaiError):
    """The chain could not do what was asked."""


class RpcUnavailable(ChainError):
    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"RPC at {url} is not reachable ({reason})")
        self.url = url
        self.reason = reason


class TransactionReverted(ChainError):
    def __init__(self, tx_hash: str, error: str) -> None:
        super().__init__(f"transaction {tx_hash} reverted: {error}")
        self.tx_hash = tx_hash
        self.error = error


class EventDecodeError(ChainError):
    """A log from a contract we watch could not be decoded: we never drop logs silently."""

"""The market's chain reads, from its Settings: a `ChainView` (`globai.chain.ports`) over web3, or None.

The services take the `ChainView` protocol; the process entry point builds the web3 implementation here, and
tests use the real Anvil (or, for pure service tests, a small in-memory view in tests/market/conftest.py).
"""

from __future__ import annotations

from typing import Any

from globai.chain.web3_market import Web3ChainView


def chain_view_from_settings(settings: Any) -> Web3ChainView | None:
    """Build the chain view for a process, or None when no contracts are configured (chain features answer 503)."""
    if not (settings.staking_vault_address and settings.job_escrow_address):
        return None
    from globai.chain.client import ChainClient

    return Web3ChainView(
        ChainClient(settings.rpc_url),
        staking_address=settings.staking_vault_address,
        escrow_address=settings.job_escrow_address,
        page=settings.log_page_blocks,
    )

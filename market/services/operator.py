"""The market's own chain identity from its Settings: the key that settles jobs (SETTLER_ROLE) and slashes
cheaters (SLASHER_ROLE), as `Escrow` and `Slasher` (`globai.chain.ports`) over web3."""

from __future__ import annotations

from typing import Any

from eth_account import Account

from globai.chain.client import ChainClient, redis_tx_lock
from globai.chain.web3_market import Web3Operator
from globai.errors import ConfigError


def operator_from_settings(settings: Any, client: ChainClient | None = None) -> Web3Operator | None:
    """None when no contracts or no operator key are configured (verification then stops before the chain)."""
    key = settings.operator_private_key
    if key is None or not (settings.staking_vault_address and settings.job_escrow_address):
        return None
    # Settlement and slashing run in several processes (Celery workers) with this one key: one nonce manager.
    client = client or ChainClient(settings.rpc_url, tx_lock=redis_tx_lock(settings.redis_url))
    try:
        account = Account.from_key(key.get_secret_value())
    except Exception as exc:  # a malformed key must not print itself
        raise ConfigError(f"GLOBAI_OPERATOR_PRIVATE_KEY is not a valid private key ({type(exc).__name__})") from None
    return Web3Operator(
        client=client,
        escrow=client.contract("JobEscrow", settings.job_escrow_address),
        vault=client.contract("StakingVault", settings.staking_vault_address),
        account=account,
        confirmations=int(getattr(settings, "confirmations", 0)),
    )

"""The market's own chain identity: the key that settles jobs (SETTLER_ROLE) and slashes cheaters (SLASHER_ROLE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from globai.chain.client import ChainClient, redis_tx_lock
from globai.errors import ConfigError


@dataclass
class ChainOperator:
    client: ChainClient
    escrow: Any  # web3 Contract (JobEscrow)
    vault: Any  # web3 Contract (StakingVault)
    account: LocalAccount
    # A transaction's effect counts once its event is this many blocks deep (0: at its receipt); until then it is
    # only "sent", and re-checked (re-sent if the chain lost it: a reorg, a node restarted without its state).
    confirmations: int = 0

    def confirmed(self, block_number: int) -> bool:
        return block_number <= self.client.block_number() - self.confirmations

    @property
    def chain_id(self) -> int:
        return self.client.chain_id

    def escrow_job(self, chain_job_id: bytes) -> dict[str, Any]:
        """`getJob` decoded by output names (status: 0 none, 1 funded, 2 settled, 3 refunded)."""
        fn = self.escrow.functions.getJob(chain_job_id)
        raw = self.client.call(fn)
        names = [o["name"] for o in fn.abi["outputs"]]
        return dict(zip(names, raw, strict=True))

    def fee_bps(self) -> int:
        return int(self.client.call(self.escrow.functions.feeBps()))


def operator_from_settings(settings: Any, client: ChainClient | None = None) -> ChainOperator | None:
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
    return ChainOperator(
        client=client,
        escrow=client.contract("JobEscrow", settings.job_escrow_address),
        vault=client.contract("StakingVault", settings.staking_vault_address),
        account=account,
        confirmations=int(getattr(settings, "confirmations", 0)),
    )

"""Audit the whole chain: every escrow and vault balance (and every credited account) reproduced from events."""

from __future__ import annotations

from globai.chain.client import ChainClient
from globai.chain.deploy import Deployment
from market.audit.reconcile import Reconciliation, reconcile


def audit_chain(client: ChainClient, deployment: Deployment) -> Reconciliation:
    c = deployment.bind(client)
    return reconcile(client, c.token, c.escrow, c.vault, from_block=deployment.first_block)


def first_mismatch(result: Reconciliation) -> str | None:
    """One-line reason, or None when everything reconciles."""
    if result.escrow_expected != result.escrow_actual:
        return f"JobEscrow holds {result.escrow_actual} but events imply {result.escrow_expected}"
    if result.vault_expected != result.vault_actual:
        return f"StakingVault holds {result.vault_actual} but events imply {result.vault_expected}"
    for account, (expected, actual) in sorted(result.credit_mismatches.items()):
        return f"credited balance of {account} is {actual} but events imply {expected}"
    if result.escrow_donations < 0 or result.vault_donations < 0:
        return (
            f"the contracts' events claim more tokens in than the token's transfers show "
            f"(escrow {result.escrow_donations}, vault {result.vault_donations})"
        )
    return None

"""The money walk-through of the demo, and the reconciliation catching an unexplained token movement."""

from __future__ import annotations

from dataclasses import replace

from market.audit.reconcile import reconcile
from market.demo.chain_walkthrough import GLB, Walkthrough


def test_walkthrough_reconciles(chain, deployment) -> None:
    lines: list[str] = []
    walk = Walkthrough(chain.client, deployment, say=lines.append)
    before = walk.glb(walk.worker_b.address)  # the session's contract tests may have funded this account already
    assert walk.run(), "\n".join(lines)
    names = [s.what for s in walk.steps]
    assert any("refunds job 2" in n for n in names) and any("slashes" in n for n in names)
    assert all(s.gas > 21_000 for s in walk.steps)
    # worker B: 500 faucet − 200 staked + 30 paid; stake 200 − 100 slashed
    assert walk.glb(walk.worker_b.address) - before == 330 * GLB
    assert chain.client.call(walk.c.vault.functions.stakeOf(walk.worker_b.address)) == 100 * GLB


def test_reconciliation_counts_a_donation_and_flags_what_no_event_explains(chain, deployment) -> None:
    contracts = deployment.bind(chain.client)
    admin = chain.accounts[0]
    assert reconcile(chain.client, contracts.token, contracts.escrow, contracts.vault).ok
    # A plain transfer in is explained by the token's own Transfer event: a donation, counted (issue 14).
    chain.client.transact(contracts.token.functions.transfer(deployment.escrow, 1), admin)
    result = reconcile(chain.client, contracts.token, contracts.escrow, contracts.vault)
    assert result.ok and result.escrow_donations == 1
    assert result.escrow_actual == result.escrow_expected
    # Tokens that neither the contracts' events nor transfers explain still fail the audit.
    assert not replace(result, escrow_actual=result.escrow_actual + 1).ok
    assert not replace(result, vault_actual=result.vault_actual - 1).ok

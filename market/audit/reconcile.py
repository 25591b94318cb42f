"""Balances reproduced from contract events alone, compared with the token's own balances.

escrow balance = Σ JobFunded.amount − Σ Withdrawn.amount − Σ JobRefunded.amount + donations
vault balance  = Σ Staked.amount − Σ Withdrawn.amount − Σ Slashed.amount + donations

Donations are plain token transfers to a contract (anyone can send GLB to any address): the token's Transfer
events into the contract minus what its own events pulled in (JobFunded, Staked). They stay in the contract,
owned by nobody, and are counted rather than failing the audit forever; transfers in that the contract's
events over-explain (a negative donation) are a mismatch.

Per account, the escrow's credited balances are reproduced as well (payments credited, settlement remainders
credited back to the requester, fees credited to the fee recipient, minus withdrawals) and compared with
the escrow's `balanceOf`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from web3.contract import Contract

from globai.chain.client import ChainClient
from globai.chain.ports import ChainLog


@dataclass
class Reconciliation:
    escrow_expected: int
    escrow_actual: int
    vault_expected: int
    vault_actual: int
    credit_mismatches: dict[str, tuple[int, int]] = field(default_factory=dict)  # account -> (events, contract)
    events: int = 0
    escrow_donations: int = 0
    vault_donations: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.escrow_expected == self.escrow_actual
            and self.vault_expected == self.vault_actual
            and not self.credit_mismatches
            and self.escrow_donations >= 0
            and self.vault_donations >= 0
        )

    def lines(self) -> list[str]:
        def row(name: str, expected: int, actual: int) -> str:
            mark = "ok" if expected == actual else "MISMATCH"
            return f"{name:13s} from events {expected / 1e18:>16,.6f} GLB  on chain {actual / 1e18:>16,.6f} GLB  {mark}"

        out = [
            f"events read: {self.events}",
            row("JobEscrow", self.escrow_expected, self.escrow_actual),
            row("StakingVault", self.vault_expected, self.vault_actual),
        ]
        if self.escrow_donations or self.vault_donations:
            out.append(
                f"donations (plain transfers in, counted above): JobEscrow {self.escrow_donations} wei, "
                f"StakingVault {self.vault_donations} wei"
            )
        for account, (expected, actual) in sorted(self.credit_mismatches.items()):
            out.append(f"credited balance of {account}: events {expected}, contract {actual}  MISMATCH")
        return out


def expected_balances(
    escrow_events: Iterable[ChainLog], vault_events: Iterable[ChainLog], fee_recipient: str
) -> tuple[int, int, dict[str, int]]:
    """(escrow balance, vault balance, escrow credit per account) implied by the events alone."""
    escrow = 0
    credits: dict[str, int] = defaultdict(int)
    requester_of: dict[bytes, str] = {}
    for ev in escrow_events:
        if ev.name == "JobFunded":
            escrow += ev.args["amount"]
            requester_of[ev.args["jobId"]] = ev.args["requester"]
        elif ev.name == "JobSettled":
            credits[requester_of[ev.args["jobId"]]] += ev.args["refunded"]
            credits[fee_recipient] += ev.args["fee"]
        elif ev.name == "Withdrawn":
            escrow -= ev.args["amount"]
            credits[ev.args["account"]] -= ev.args["amount"]
        elif ev.name == "JobRefunded":
            escrow -= ev.args["amount"]
        elif ev.name == "PaymentCredited":
            credits[ev.args["payee"]] += ev.args["amount"]
    vault = 0
    for ev in vault_events:
        if ev.name == "Staked":
            vault += ev.args["amount"]
        elif ev.name in ("Withdrawn", "Slashed"):
            vault -= ev.args["amount"]
    return escrow, vault, dict(credits)


def reconcile(
    client: ChainClient, token: Contract, escrow: Contract, vault: Contract, *, from_block: int = 0
) -> Reconciliation:
    """Read every escrow and vault event since `from_block` and check the balances they imply."""
    escrow_events = client.get_logs([escrow], from_block)
    vault_events = client.get_logs([vault], from_block)
    fee_recipient = client.call(escrow.functions.feeRecipient())
    expected_escrow, expected_vault, credits = expected_balances(escrow_events, vault_events, fee_recipient)
    transfers_in = {escrow.address.lower(): 0, vault.address.lower(): 0}
    for ev in client.get_logs([token], from_block):
        if ev.name == "Transfer" and str(ev.args["to"]).lower() in transfers_in:
            transfers_in[str(ev.args["to"]).lower()] += ev.args["value"]
    escrow_donations = transfers_in[escrow.address.lower()] - sum(
        ev.args["amount"] for ev in escrow_events if ev.name == "JobFunded"
    )
    vault_donations = transfers_in[vault.address.lower()] - sum(
        ev.args["amount"] for ev in vault_events if ev.name == "Staked"
    )
    result = Reconciliation(
        escrow_expected=expected_escrow + max(escrow_donations, 0),
        escrow_actual=client.call(token.functions.balanceOf(escrow.address)),
        vault_expected=expected_vault + max(vault_donations, 0),
        vault_actual=client.call(token.functions.balanceOf(vault.address)),
        events=len(escrow_events) + len(vault_events),
        escrow_donations=escrow_donations,
        vault_donations=vault_donations,
    )
    for account, expected in credits.items():
        actual = client.call(escrow.functions.balanceOf(account))
        if actual != expected:
            result.credit_mismatches[account] = (expected, actual)
    return result

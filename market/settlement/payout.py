"""Payees and amounts from a job's work units (pure).

Rule: each worker task/session is paid `price_per_unit x units` when its work is accepted (its sampled chunks
passed verification, or none were sampled); a task of a worker found cheating in the job is paid nothing, and
neither is work declared faulty. The contract adds the protocol fee on top of what workers are paid
(fee = paid x feeBps / 10000) and credits the rest of the funded amount back to the requester.

A job's budget covers `price x max_units`, but not necessarily the fee on top. When paid + fee would exceed what
the job holds, every payment is scaled down by the same factor (rounded down) so the job still settles: the
requester is never charged more than funded, and the cut falls evenly on the workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_utils import keccak, to_checksum_address

from globai.errors import GlobaiError
from globai.protocol.merkle import MerkleTree, SettlementRecord, settlement_leaf

BPS = 10_000
# JobEscrow refuses a report root below 2^65 (that range of its storage slot encodes the job status).
MIN_REPORT_ROOT = 1 << 65

PAID, UNPAID_SLASHED, UNPAID_FAULTY = "paid", "unpaid_slashed", "unpaid_faulty"
# No replica could check it (none of another operator served its layers, or every one failed): refunded, never
# paid as verified.
UNPAID_UNCHECKED = "unpaid_unchecked"
REFUNDED_ITEM = "refunded"  # the zero record of a cancelled job with no work: everything goes back


class SettlementError(GlobaiError):
    """A job's work cannot be settled as given (inconsistent inputs)."""


def task_id_bytes(task_key: str) -> bytes:
    """bytes32 id of a market task or inference session in reports: keccak256 of its UUID string."""
    return keccak(text=task_key)


@dataclass(frozen=True)
class WorkItem:
    """One worker task (or inference session part) of a job, as verification left it."""

    task_key: str  # the market's task/session UUID
    payee: str
    units: int
    status: str = PAID  # paid | unpaid_slashed | unpaid_faulty | unpaid_unchecked


@dataclass(frozen=True)
class PlannedRecord:
    task_key: str
    status: str
    record: SettlementRecord


@dataclass(frozen=True)
class SettlementPlan:
    job_key: str
    chain_job_id: bytes
    funded: int
    price_per_unit: int
    fee_bps: int
    records: tuple[PlannedRecord, ...]
    payees: tuple[str, ...]  # checksummed, sorted; only those with a positive amount (the contract skips zeros)
    amounts: tuple[int, ...]
    paid: int
    fee: int
    refunded: int
    scale_num: int  # payments were multiplied by scale_num / scale_den (1/1 unless the budget was short)
    scale_den: int

    @property
    def tree(self) -> MerkleTree:
        return MerkleTree([settlement_leaf(r.record) for r in self.records])

    @property
    def report_root(self) -> bytes:
        return self.tree.root


def fee_of(paid: int, fee_bps: int) -> int:
    """The escrow's fee for `paid` (integer division, as the contract computes it)."""
    return paid * fee_bps // BPS


def plan_settlement(
    *,
    job_key: str,
    chain_job_id: bytes,
    funded: int,
    price_per_unit: int,
    fee_bps: int,
    items: Sequence[WorkItem],
) -> SettlementPlan:
    """Records, payee totals, fee and refund for one job (see the module docstring for the rule)."""
    if not items:
        raise SettlementError(f"job {job_key}: nothing to settle (no work items)")
    if len({i.task_key for i in items}) != len(items):
        raise SettlementError(f"job {job_key}: a task appears twice")
    if funded <= 0 or price_per_unit < 0 or not 0 <= fee_bps <= BPS:
        raise SettlementError(f"job {job_key}: invalid funded amount, price or fee")
    if any(i.units < 0 for i in items):
        raise SettlementError(f"job {job_key}: negative units")
    face = {i.task_key: price_per_unit * i.units if i.status == PAID else 0 for i in items}
    total = sum(face.values())
    num, den = 1, 1
    if total + fee_of(total, fee_bps) > funded:
        # Largest total T with T + T*fee/BPS <= funded, then scale every payment by T/total.
        num, den = funded * BPS // (BPS + fee_bps), total
    records = []
    for item in sorted(items, key=lambda i: i.task_key):
        amount = face[item.task_key] * num // den
        paid_units = item.units if item.status == PAID else 0
        record = SettlementRecord(chain_job_id, task_id_bytes(item.task_key), item.payee, paid_units, amount)
        records.append(PlannedRecord(item.task_key, item.status, record))
    per_payee: dict[str, int] = {}
    for r in records:
        payee = to_checksum_address(r.record.payee)
        per_payee[payee] = per_payee.get(payee, 0) + r.record.amount
    payees = tuple(sorted(p for p, a in per_payee.items() if a > 0))
    amounts = tuple(per_payee[p] for p in payees)
    paid = sum(amounts)
    fee = fee_of(paid, fee_bps)
    if paid + fee > funded:  # cannot happen after scaling; a plan the contract would reject is a bug
        raise SettlementError(f"job {job_key}: paid {paid} + fee {fee} exceeds funded {funded}")
    plan = SettlementPlan(
        job_key=job_key,
        chain_job_id=chain_job_id,
        funded=funded,
        price_per_unit=price_per_unit,
        fee_bps=fee_bps,
        records=tuple(records),
        payees=payees,
        amounts=amounts,
        paid=paid,
        fee=fee,
        refunded=funded - paid - fee,
        scale_num=num,
        scale_den=den,
    )
    if int.from_bytes(plan.report_root, "big") < MIN_REPORT_ROOT:
        raise SettlementError(f"job {job_key}: report root below 2^65 (probability 2^-191)")
    return plan

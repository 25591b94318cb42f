"""Payout rule and report format (pure): price x units, slashed/faulty unpaid, the contract's fee, proofs."""

from __future__ import annotations

import copy
import json

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from globai.chain.ids import job_id_bytes
from globai.protocol.merkle import MerkleTree, settlement_leaf
from market.settlement.payout import (
    PAID,
    UNPAID_FAULTY,
    UNPAID_SLASHED,
    SettlementError,
    WorkItem,
    fee_of,
    plan_settlement,
)
from market.settlement.report import MalformedReport, build_report, parse_report, record_proves

A, B, C = (Account.create().address for _ in range(3))
JOB = "5b0c2f5e-2f0e-4a0e-8d6e-1d1a2a3b4c5d"
ESCROW = "0x" + "e5" * 20


def plan(items, funded=10**21, price=10**18, fee_bps=200):  # type: ignore[no-untyped-def]
    return plan_settlement(
        job_key=JOB,
        chain_job_id=job_id_bytes(JOB, A),
        funded=funded,
        price_per_unit=price,
        fee_bps=fee_bps,
        items=items,
    )


def test_price_times_units_and_slashed_unpaid() -> None:
    p = plan(
        [
            WorkItem("t1", A, 10),
            WorkItem("t2", B, 5),
            WorkItem("t3", A, 3),
            WorkItem("t4", C, 7, UNPAID_SLASHED),
            WorkItem("t5", B, 2, UNPAID_FAULTY),
        ]
    )
    amounts = dict(zip(p.payees, p.amounts, strict=True))
    assert amounts == {A: 13 * 10**18, B: 5 * 10**18}  # C slashed: not a payee; B's faulty task unpaid
    assert p.paid == 18 * 10**18 and p.fee == fee_of(p.paid, 200) == 18 * 10**18 * 2 // 100
    assert p.paid + p.fee + p.refunded == p.funded
    by_task = {r.task_key: r for r in p.records}
    t4 = by_task["t4"]
    assert t4.record.amount == 0 and t4.record.units == 0 and t4.status == UNPAID_SLASHED
    assert by_task["t1"].record.units == 10 and by_task["t1"].status == PAID


def test_budget_short_of_fee_scales_payments_down() -> None:
    p = plan([WorkItem("t1", A, 60), WorkItem("t2", B, 40)], funded=100 * 10**18)  # fee not budgeted
    assert p.paid + p.fee <= p.funded and p.refunded >= 0
    assert p.scale_num < p.scale_den
    amounts = dict(zip(p.payees, p.amounts, strict=True))
    a, b = amounts[A], amounts[B]
    assert abs(a * 40 - b * 60) <= 100  # the same factor for everyone (up to rounding)


def test_refuses_inconsistent_input() -> None:
    with pytest.raises(SettlementError):
        plan([])
    with pytest.raises(SettlementError):
        plan([WorkItem("t1", A, 1), WorkItem("t1", B, 1)])


def test_report_round_trip_and_every_proof() -> None:
    p = plan([WorkItem(f"t{i}", (A, B, C)[i % 3], i + 1) for i in range(11)])
    report = build_report(p, chain_id=31337, escrow=ESCROW)
    parsed = parse_report(json.loads(json.dumps(report)))
    assert parsed.report_root == p.report_root
    assert MerkleTree([settlement_leaf(r.record) for r in parsed.records]).root == p.report_root
    assert all(record_proves(r, p.report_root) for r in parsed.records)
    assert sum(parsed.payees.values()) == parsed.paid


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.pop("fee"),
        lambda r: r.update(version=2),
        lambda r: r["records"][0].update(amount="-1"),
        lambda r: r["records"][0].update(task_id="0x" + "00" * 32),
        lambda r: r["records"][0].update(payee="0x123"),
        lambda r: r["records"][0].update(status="bogus"),
        lambda r: r["records"][0]["proof"].append("0xzz"),
        lambda r: r["payees"].append(dict(r["payees"][0])),
        lambda r: r.update(records=[]),
    ],
)
def test_malformed_reports_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    report = build_report(plan([WorkItem("t1", A, 1), WorkItem("t2", B, 2)]), chain_id=1, escrow=ESCROW)
    bad = copy.deepcopy(report)
    mutate(bad)
    with pytest.raises(MalformedReport):
        parse_report(bad)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 10_000), st.sampled_from([PAID, UNPAID_SLASHED])),
        min_size=1,
        max_size=20,
    ),
    st.integers(0, 10_000),
    st.integers(1, 10**24),
)
def test_never_pays_more_than_funded(rows, fee_bps, funded) -> None:  # type: ignore[no-untyped-def]
    items = [WorkItem(f"t{i}", (A, B, C)[w], u, s) for i, (w, u, s) in enumerate(rows)]
    p = plan(items, funded=funded, fee_bps=fee_bps)
    assert p.paid + p.fee + p.refunded == funded and p.refunded >= 0
    assert all(r.record.amount <= p.price_per_unit * r.record.units for r in p.records)

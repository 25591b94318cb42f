"""Audit one job from the chain and its published settlement report.

Checks, in order (the first failure is the one-line reason):
1. the report is well formed and names this chain and this escrow;
2. the escrow has the job as settled, with exactly the report's root;
3. the root recomputed from the records' own fields (every leaf recomputed) equals it, and every record's
   Merkle proof verifies against the on-chain root;
4. Σ record amounts per payee equals the report's payee list and the chain's PaymentCredited events for the job,
   payee by payee (no payee missing, none extra), and no record pays more than price x units;
5. JobSettled says paid = Σ payments, fee = paid x feeBps / 10000 with the escrow's feeBps, and
   paid + fee + refunded = the JobFunded amount.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address

from globai.chain.client import ChainClient
from globai.chain.ids import job_id_bytes
from globai.chain.ports import ChainLog
from globai.protocol.merkle import MerkleError, MerkleTree, settlement_leaf
from market.settlement.payout import fee_of
from market.settlement.report import MalformedReport, Report, parse_report, record_proves

STATUS_NAMES = {0: "none", 1: "funded", 2: "settled", 3: "refunded"}


class AuditMismatch(Exception):
    """One check failed; the message is the one-line reason."""


@dataclass
class AuditResult:
    ok: bool
    reason: str
    lines: list[str] = field(default_factory=list)


def _glb(wei: int) -> str:
    return f"{wei / 1e18:,.6f} GLB"


def _job_events(client: ChainClient, escrow: Any, chain_job_id: bytes, from_block: int) -> list[ChainLog]:
    return [e for e in client.get_logs([escrow], from_block) if e.args.get("jobId") == chain_job_id]


def check_job(client: ChainClient, escrow: Any, report: Report, *, from_block: int = 0) -> list[str]:
    """Run every check; returns the lines of a passing audit, raises `AuditMismatch` on the first failure."""
    lines: list[str] = []
    if report.chain_id != client.chain_id:
        raise AuditMismatch(f"report is for chain {report.chain_id}, RPC serves chain {client.chain_id}")
    if to_checksum_address(report.escrow) != to_checksum_address(escrow.address):
        raise AuditMismatch(f"report names escrow {report.escrow}, auditing {escrow.address}")
    fn = escrow.functions.getJob(report.chain_job_id)
    onchain = dict(zip([o["name"] for o in fn.abi["outputs"]], client.call(fn), strict=True))
    status = int(onchain["status"])
    if status != 2:
        raise AuditMismatch(f"job is {STATUS_NAMES.get(status, status)} on chain, not settled")
    chain_root = bytes(onchain["reportRoot"])
    if chain_root != report.report_root:
        raise AuditMismatch(f"report root 0x{report.report_root.hex()} != on-chain reportRoot 0x{chain_root.hex()}")
    lines.append(f"job {report.job_key} settled on chain with reportRoot 0x{chain_root.hex()}")

    try:
        recomputed = MerkleTree([settlement_leaf(r.record) for r in report.records]).root
    except MerkleError as exc:
        raise AuditMismatch(f"records do not form a Merkle tree: {exc}") from None
    if recomputed != chain_root:
        raise AuditMismatch(f"root recomputed from the records 0x{recomputed.hex()} != on-chain reportRoot")
    for r in report.records:
        if not record_proves(r, chain_root):
            raise AuditMismatch(f"record for task {r.task} does not prove against the on-chain root")
        if r.record.amount > report.price_per_unit * r.record.units:
            raise AuditMismatch(f"record for task {r.task} pays more than price x units")
    lines.append(f"{len(report.records)} records: root recomputed, every proof verifies")

    per_payee: dict[str, int] = defaultdict(int)
    for r in report.records:
        per_payee[to_checksum_address(r.record.payee)] += r.record.amount
    records_paid = {p: a for p, a in per_payee.items() if a > 0}
    if records_paid != {p: a for p, a in report.payees.items() if a > 0}:
        raise AuditMismatch("payee totals in the report differ from the sum of its records")

    events = _job_events(client, escrow, report.chain_job_id, from_block)
    credited: dict[str, int] = defaultdict(int)
    funded = settled = None
    for ev in events:
        if ev.name == "PaymentCredited":
            credited[to_checksum_address(ev.args["payee"])] += int(ev.args["amount"])
        elif ev.name == "JobFunded":
            funded = ev
        elif ev.name == "JobSettled":
            settled = ev
    if funded is None or settled is None:
        raise AuditMismatch("JobFunded or JobSettled event not found (wrong --from-block?)")
    if job_id_bytes(report.job_key, funded.args["requester"]) != report.chain_job_id:
        raise AuditMismatch("report's chain_job_id is not the escrow's id of this job for its funding requester")
    for payee in sorted(set(credited) | set(records_paid)):
        if credited.get(payee, 0) != records_paid.get(payee, 0):
            raise AuditMismatch(
                f"payee {payee}: report pays {records_paid.get(payee, 0)}, PaymentCredited "
                f"events credit {credited.get(payee, 0)}"
            )
    lines.append(f"{len(records_paid)} payees: report sums equal PaymentCredited events")

    paid, fee, refunded = (int(settled.args[k]) for k in ("paid", "fee", "refunded"))
    amount = int(funded.args["amount"])
    fee_bps = int(client.call(escrow.functions.feeBps()))
    if paid != sum(records_paid.values()) or paid != report.paid:
        raise AuditMismatch(f"JobSettled.paid {paid} != Σ report payments {sum(records_paid.values())}")
    if fee != fee_of(paid, fee_bps) or fee != report.fee:
        raise AuditMismatch(f"JobSettled.fee {fee} != paid x {fee_bps} bps = {fee_of(paid, fee_bps)}")
    if paid + fee + refunded != amount or amount != report.funded or refunded != report.refunded:
        raise AuditMismatch(f"paid {paid} + fee {fee} + refunded {refunded} != funded {amount}")
    lines.append(f"funded {_glb(amount)} = paid {_glb(paid)} + fee {_glb(fee)} + refunded {_glb(refunded)}")
    return lines


def audit_job(client: ChainClient, escrow: Any, report_json: Any, *, from_block: int = 0) -> AuditResult:
    """`check_job` on a report given as parsed JSON; never raises on a mismatch or a malformed report."""
    try:
        report = parse_report(report_json)
        return AuditResult(True, "ok", check_job(client, escrow, report, from_block=from_block))
    except (AuditMismatch, MalformedReport) as exc:
        return AuditResult(False, str(exc))

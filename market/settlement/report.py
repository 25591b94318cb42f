"""The settlement report: the JSON the market publishes per settled job, and its strict parser (pure).

Format (version 1; amounts are decimal strings of GLB wei, hashes and ids 0x-hex)::

    {
      "version": 1,
      "chain_id": 31337,
      "escrow": "0x…",                        JobEscrow address
      "job": {"id": "<uuid>", "chain_job_id": "0x…", "funded": "…", "price_per_unit": "…", "fee_bps": 200},
      "records": [                            one per task / session part, sorted by task key
        {"task": "<uuid>", "task_id": "0x…", "payee": "0x…", "units": 12, "amount": "…",
         "status": "paid" | "unpaid_slashed" | "unpaid_faulty" | "unpaid_unchecked", "leaf": "0x…", "proof": ["0x…", …]}
      ],
      "payees": [{"payee": "0x…", "amount": "…"}],   Σ records per payee with amount > 0, sorted by address
      "paid": "…", "fee": "…", "refunded": "…",
      "report_root": "0x…"
    }

Each record's leaf is `merkle.settlement_leaf(jobId, taskId, payee, units, amount)` (OpenZeppelin standard tree,
so `MerkleProof.verify(proof, reportRoot, leaf)` accepts it on chain too). An auditor recomputes every leaf from
the record's fields, never trusting `leaf`; `status` is informational (not in the leaf).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_utils import is_checksum_address, to_checksum_address

from globai.errors import GlobaiError
from globai.protocol.merkle import SettlementRecord, settlement_leaf, verify_proof
from market.settlement.payout import (
    PAID,
    REFUNDED_ITEM,
    UNPAID_FAULTY,
    UNPAID_SLASHED,
    UNPAID_UNCHECKED,
    SettlementPlan,
    task_id_bytes,
)

VERSION = 1
STATUSES = (PAID, UNPAID_SLASHED, UNPAID_FAULTY, UNPAID_UNCHECKED, REFUNDED_ITEM)


class MalformedReport(GlobaiError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed settlement report: {reason}")
        self.reason = reason


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def build_report(plan: SettlementPlan, *, chain_id: int, escrow: str) -> dict[str, Any]:
    tree = plan.tree
    records = []
    for r in plan.records:
        leaf = settlement_leaf(r.record)
        records.append(
            {
                "task": r.task_key,
                "task_id": _hex(r.record.task_id),
                "payee": to_checksum_address(r.record.payee),
                "units": r.record.units,
                "amount": str(r.record.amount),
                "status": r.status,
                "leaf": _hex(leaf),
                "proof": [_hex(n) for n in tree.proof(leaf)],
            }
        )
    return {
        "version": VERSION,
        "chain_id": chain_id,
        "escrow": to_checksum_address(escrow),
        "job": {
            "id": plan.job_key,
            "chain_job_id": _hex(plan.chain_job_id),
            "funded": str(plan.funded),
            "price_per_unit": str(plan.price_per_unit),
            "fee_bps": plan.fee_bps,
        },
        "records": records,
        "payees": [{"payee": p, "amount": str(a)} for p, a in zip(plan.payees, plan.amounts, strict=True)],
        "paid": str(plan.paid),
        "fee": str(plan.fee),
        "refunded": str(plan.refunded),
        "report_root": _hex(tree.root),
    }


@dataclass(frozen=True)
class ReportRecord:
    task: str
    record: SettlementRecord
    status: str
    leaf: bytes  # as claimed in the report (the auditor recomputes it)
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class Report:
    chain_id: int
    escrow: str
    job_key: str
    chain_job_id: bytes
    funded: int
    price_per_unit: int
    fee_bps: int
    records: tuple[ReportRecord, ...]
    payees: dict[str, int]
    paid: int
    fee: int
    refunded: int
    report_root: bytes


def _b32(v: Any, what: str) -> bytes:
    if not isinstance(v, str) or not v.startswith("0x") or len(v) != 66:
        raise MalformedReport(f"{what} is not a 0x-hex bytes32")
    try:
        return bytes.fromhex(v[2:])
    except ValueError:
        raise MalformedReport(f"{what} is not hex") from None


def _uint(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise MalformedReport(f"{what} is not an unsigned integer")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str) and v.isdigit():
        n = int(v)
    else:
        raise MalformedReport(f"{what} is not an unsigned integer")
    if n >= 2**256:
        raise MalformedReport(f"{what} exceeds uint256")
    return n


def _address(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v.startswith("0x") or len(v) != 42:
        raise MalformedReport(f"{what} is not an address")
    try:
        int(v[2:], 16)
    except ValueError:
        raise MalformedReport(f"{what} is not an address") from None
    if v != v.lower() and not is_checksum_address(v):
        raise MalformedReport(f"{what} has a wrong EIP-55 checksum")
    return to_checksum_address(v)


def _obj(v: Any, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(v, dict) or set(v) != keys:
        raise MalformedReport(f"{what} must have exactly the fields {sorted(keys)}")
    return v


def parse_report(data: Any) -> Report:
    """Strict parse; raises `MalformedReport` only."""
    top = _obj(
        data,
        {"version", "chain_id", "escrow", "job", "records", "payees", "paid", "fee", "refunded", "report_root"},
        "report",
    )
    if top["version"] != VERSION:
        raise MalformedReport(f"unsupported version {top['version']!r}")
    job = _obj(top["job"], {"id", "chain_job_id", "funded", "price_per_unit", "fee_bps"}, "job")
    if not isinstance(job["id"], str) or not job["id"]:
        raise MalformedReport("job.id must be a string")
    chain_job_id = _b32(job["chain_job_id"], "job.chain_job_id")
    if not isinstance(top["records"], list) or not top["records"]:
        raise MalformedReport("records must be a non-empty list")
    records = []
    for n, raw in enumerate(top["records"]):
        r = _obj(raw, {"task", "task_id", "payee", "units", "amount", "status", "leaf", "proof"}, f"records[{n}]")
        if not isinstance(r["task"], str) or r["status"] not in STATUSES:
            raise MalformedReport(f"records[{n}] has a bad task or status")
        task_id = _b32(r["task_id"], f"records[{n}].task_id")
        if task_id != task_id_bytes(r["task"]):
            raise MalformedReport(f"records[{n}].task_id is not keccak256 of its task")
        if not isinstance(r["proof"], list):
            raise MalformedReport(f"records[{n}].proof must be a list")
        record = SettlementRecord(
            chain_job_id,
            task_id,
            _address(r["payee"], f"records[{n}].payee"),
            _uint(r["units"], f"records[{n}].units"),
            _uint(r["amount"], f"records[{n}].amount"),
        )
        records.append(
            ReportRecord(
                task=r["task"],
                record=record,
                status=r["status"],
                leaf=_b32(r["leaf"], f"records[{n}].leaf"),
                proof=tuple(_b32(p, f"records[{n}].proof") for p in r["proof"]),
            )
        )
    if not isinstance(top["payees"], list):
        raise MalformedReport("payees must be a list")
    payees: dict[str, int] = {}
    for n, raw in enumerate(top["payees"]):
        p = _obj(raw, {"payee", "amount"}, f"payees[{n}]")
        address = _address(p["payee"], f"payees[{n}].payee")
        if address in payees:
            raise MalformedReport(f"payee {address} listed twice")
        payees[address] = _uint(p["amount"], f"payees[{n}].amount")
    if not isinstance(top["chain_id"], int) or isinstance(top["chain_id"], bool):
        raise MalformedReport("chain_id must be an integer")
    fee_bps = job["fee_bps"]
    if not isinstance(fee_bps, int) or isinstance(fee_bps, bool) or not 0 <= fee_bps <= 10_000:
        raise MalformedReport("job.fee_bps must be an integer in [0, 10000]")
    return Report(
        chain_id=top["chain_id"],
        escrow=_address(top["escrow"], "escrow"),
        job_key=job["id"],
        chain_job_id=chain_job_id,
        funded=_uint(job["funded"], "job.funded"),
        price_per_unit=_uint(job["price_per_unit"], "job.price_per_unit"),
        fee_bps=fee_bps,
        records=tuple(records),
        payees=payees,
        paid=_uint(top["paid"], "paid"),
        fee=_uint(top["fee"], "fee"),
        refunded=_uint(top["refunded"], "refunded"),
        report_root=_b32(top["report_root"], "report_root"),
    )


def record_proves(r: ReportRecord, root: bytes) -> bool:
    """The record's leaf, recomputed from its fields, is under `root` by its proof."""
    return verify_proof(settlement_leaf(r.record), list(r.proof), root)

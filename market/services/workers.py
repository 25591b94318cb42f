"""Worker registry: registration with a measured profile, heartbeats, stake-based eligibility, reputation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from globai.chain.ports import ChainView
from market.db import Job, ReputationEvent, Settlement, SettlementReport, Task, Worker, WorkerProfile
from market.db.inference import StageRecord
from market.domain_errors import NotEligible, NotFound
from market.scheduler.reputation import DEFAULT_PARAMS, Outcome, Reputation, ReputationParams, reputation


@dataclass(frozen=True)
class MeasuredProfile:
    """A worker's own measurement (the worker daemon runs the reference layer and reports what it saw)."""

    device: str
    memory_bytes: int
    throughput_tokens_s: float
    bandwidth_bytes_s: float
    latency_ms: float
    reference_layer: str
    operator_id: str
    models: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def get_worker(session: Session, *, address: str) -> Worker:
    worker = session.scalar(select(Worker).where(Worker.address == address))
    if worker is None:
        raise NotFound("worker", address)
    return worker


def register_worker(
    session: Session,
    *,
    address: str,
    profile: MeasuredProfile,
    chain: ChainView | None,
    fallback_min_stake: int,
    now: datetime,
) -> Worker:
    """Create or update the caller's worker record and append the measurement to its profile history.

    Stake is read from the vault now (so a freshly staked worker is eligible at once); later changes arrive
    through `sync_stakes`.
    """
    worker = session.scalar(select(Worker).where(Worker.address == address))
    if worker is None:
        worker = Worker(address=address, registered_at=now, stake=0, unbonding=0, eligible=False, stake_block=0)
        session.add(worker)
    worker.operator_id = profile.operator_id
    worker.device = profile.device
    worker.memory_bytes = profile.memory_bytes
    worker.throughput_tokens_s = profile.throughput_tokens_s
    worker.bandwidth_bytes_s = profile.bandwidth_bytes_s
    worker.latency_ms = profile.latency_ms
    worker.reference_layer = profile.reference_layer
    worker.models = list(profile.models)
    worker.last_heartbeat_at = now
    if worker.status == "offline":
        worker.status = "active"
    session.flush()
    session.add(
        WorkerProfile(
            worker_id=worker.id,
            measured_at=now,
            device=profile.device,
            memory_bytes=profile.memory_bytes,
            throughput_tokens_s=profile.throughput_tokens_s,
            bandwidth_bytes_s=profile.bandwidth_bytes_s,
            latency_ms=profile.latency_ms,
            reference_layer=profile.reference_layer,
            extra=dict(profile.extra),
        )
    )
    if chain is not None:
        block = chain.latest_block()
        stake, unbonding = chain.stake_of(address, block=block)
        apply_stake(session, worker=worker, stake=stake, unbonding=unbonding, block=block, min_stake=chain.min_stake())
    else:
        worker.eligible = worker.stake >= fallback_min_stake and fallback_min_stake > 0
    session.commit()
    return worker


def apply_stake(session: Session, *, worker: Worker, stake: int, unbonding: int, block: int, min_stake: int) -> None:
    """Record stake as of `block`; an older reading never overwrites a newer one."""
    if block < worker.stake_block:
        return
    worker.stake = stake
    worker.unbonding = unbonding
    worker.stake_block = block
    # A zero minimum would let anyone in: eligibility needs a positive stake whatever the vault says.
    worker.eligible = stake >= max(min_stake, 1)


def heartbeat(session: Session, *, address: str, now: datetime) -> Worker:
    worker = get_worker(session, address=address)
    worker.last_heartbeat_at = now
    if worker.status == "offline":
        worker.status = "active"
    session.commit()
    return worker


def require_eligible(session: Session, *, address: str, min_stake: int) -> Worker:
    """The caller's worker record, if it may take work now (registered, not banned, staked)."""
    worker = get_worker(session, address=address)
    if worker.status == "banned" or not worker.eligible:
        raise NotEligible(address, worker.stake, min_stake)
    return worker


def list_workers(
    session: Session, *, eligible: bool | None, operator_id: str | None, limit: int, offset: int
) -> tuple[list[Worker], int]:
    query = select(Worker)
    if eligible is not None:
        query = query.where(Worker.eligible.is_(eligible))
    if operator_id is not None:
        query = query.where(Worker.operator_id == operator_id)
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = session.scalars(query.order_by(Worker.registered_at, Worker.id).limit(limit).offset(offset)).all()
    return list(rows), total


def record_outcome(
    session: Session, *, worker_id: str, kind: str, now: datetime, job_id: str | None = None, detail: str = ""
) -> None:
    """Append a verification outcome (pass/fail) or a slash; the verifier and the stake sync call this."""
    session.add(ReputationEvent(worker_id=worker_id, kind=kind, job_id=job_id, detail=detail[:256], created_at=now))


def worker_reputation(
    session: Session, *, worker_id: str, now: datetime, params: ReputationParams = DEFAULT_PARAMS
) -> Reputation:
    rows = session.execute(
        select(ReputationEvent.kind, ReputationEvent.created_at, ReputationEvent.weight).where(
            ReputationEvent.worker_id == worker_id
        )
    ).all()
    return reputation((Outcome(kind=k, at=at, weight=w) for k, at, w in rows), now=now, params=params)


def select_worker_id(address: str) -> Any:
    return select(Worker.id).where(Worker.address == address)


class EligibleWorkerCache:
    """Per-process cache of eligible workers for the claim/submit hot path (one SELECT saved per request).

    Entries live `ttl_s` seconds, so a lost stake, a slash or a ban takes effect in this process within that
    time; the lease and submit statements themselves still check the task state in the database.
    """

    def __init__(self, ttl_s: float = 2.0, max_entries: int = 50_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Worker]] = {}

    def get(self, session: Session, *, address: str, min_stake: int, clock_s: float) -> Worker:
        hit = self._entries.get(address)
        if hit is not None and hit[0] > clock_s:
            return hit[1]
        worker = require_eligible(session, address=address, min_stake=min_stake)
        session.expunge(worker)  # detached, read-only snapshot shared by this process's requests
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[address] = (clock_s + self.ttl_s, worker)
        return worker


def settlement_credits(session: Session, *, address: str) -> list[tuple[Job, Settlement, int]]:
    """Per job, what confirmed settlements credited `address` (from the published reports' payee lists)."""
    rows = session.execute(
        select(Job, Settlement, SettlementReport)
        .join(Settlement, Settlement.job_id == Job.id)
        .join(SettlementReport, SettlementReport.job_id == Job.id)
        .where(Settlement.status == "confirmed")
        .order_by(Settlement.confirmed_at)
    ).all()
    out = []
    for job, settlement, report in rows:
        amount = sum(
            int(p["amount"]) for p in report.report.get("payees", []) if str(p["payee"]).lower() == address.lower()
        )
        if amount:
            out.append((job, settlement, amount))
    return out


def stakes(session: Session, *, addresses: list[str]) -> dict[str, int]:
    """The synced stake of each registered address (unregistered ones are absent)."""
    rows = session.scalars(select(Worker).where(Worker.address.in_(addresses)))
    return {w.address: int(w.stake) for w in rows}


def work_counts(session: Session, *, worker: Worker) -> tuple[int, int]:
    """(tasks submitted through leases, pipeline forward calls recorded for verification) of `worker`."""
    tasks = session.scalar(select(func.count()).select_from(Task).where(Task.submitted_by == worker.id)) or 0
    calls = (
        session.scalar(
            select(func.count()).select_from(StageRecord).where(StageRecord.worker_address == worker.address)
        )
        or 0
    )
    return int(tasks), int(calls)

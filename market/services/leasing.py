"""Task leasing: claim (never two holders), heartbeat, submit (holder only, idempotent), requeue expired.

Postgres: `SELECT ... FOR UPDATE SKIP LOCKED` lets many claimers walk the queue without waiting on each other.
SQLite: transactions start with BEGIN IMMEDIATE (see market.db.engine), so claims are serialised by the database
write lock. On both, every state change is a conditional UPDATE checked by rowcount, and a partial unique index
allows at most one active lease per task, so a bug in one layer still cannot hand a task out twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, case, cast, false, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value

from market.db import Lease, Task, UtcDateTime, Worker, new_id
from market.domain_errors import Conflict, LeaseLost, NotFound

_RETRIES = 5


@dataclass(frozen=True)
class ClaimFilter:
    kinds: Sequence[str]
    models: Sequence[str]
    layer_ranges: Sequence[tuple[int, int]]  # half-open, as served by the worker
    memory_bytes: int


@dataclass(frozen=True)
class Claimed:
    task: Task
    lease_id: str
    expires_at: datetime


def _candidates(worker: Worker, wanted: ClaimFilter, now: datetime) -> Any:
    ranges = [and_(Task.layer_start >= lo, Task.layer_end <= hi) for lo, hi in wanted.layer_ranges]
    query = select(Task).where(
        Task.status == "queued",
        Task.kind.in_(list(wanted.kinds)),
        Task.model.in_(list(wanted.models)),
        Task.memory_bytes <= min(wanted.memory_bytes, worker.memory_bytes),
        Task.deadline > now,
        or_(*ranges) if ranges else false(),
        or_(Task.exclude_operator.is_(None), Task.exclude_operator != worker.operator_id),
    )
    if worker.reserved_job_id is not None:  # capacity reservation: the reserved long job's tasks come first
        query = query.order_by(case((Task.job_id == worker.reserved_job_id, 0), else_=1))
    return query.order_by(Task.priority.desc(), Task.deadline, Task.created_at, Task.id)  # = ix_tasks_claim_order


def claim_tasks(
    session: Session, *, worker: Worker, wanted: ClaimFilter, lease_ttl_s: int, now: datetime, limit: int
) -> list[Claimed]:
    """Lease up to `limit` of the best-paying queued tasks this worker can run, best first (a batched claim: on
    Postgres one statement for all of them; on SQLite one claim after the other)."""
    if session.get_bind().dialect.name == "postgresql":
        expires = now + timedelta(seconds=lease_ttl_s)
        return _claim_postgres(session, worker=worker, wanted=wanted, expires=expires, now=now, limit=limit)
    claimed: list[Claimed] = []
    while len(claimed) < limit:
        one = claim_task(session, worker=worker, wanted=wanted, lease_ttl_s=lease_ttl_s, now=now)
        if one is None:
            break
        session.expunge(one.task)  # loaded and committed: a later rollback in this session must not expire it
        claimed.append(one)
    return claimed


def claim_task(
    session: Session, *, worker: Worker, wanted: ClaimFilter, lease_ttl_s: int, now: datetime
) -> Claimed | None:
    """Lease the best-paying queued task this worker can run, or None when there is none."""
    postgres = session.get_bind().dialect.name == "postgresql"
    expires = now + timedelta(seconds=lease_ttl_s)
    if postgres:
        got = _claim_postgres(session, worker=worker, wanted=wanted, expires=expires, now=now, limit=1)
        return got[0] if got else None
    for _ in range(_RETRIES):
        query = _candidates(worker, wanted, now).limit(1)
        if postgres:
            query = query.with_for_update(skip_locked=True, of=Task)
        task = session.scalars(query).first()
        if task is None:
            session.rollback()
            return None
        lease_id = new_id()
        taken = session.execute(
            update(Task)
            .where(Task.id == task.id, Task.status == "queued")
            .values(
                status="leased",
                lease_id=lease_id,
                leased_by=worker.id,
                lease_expires_at=expires,
                attempts=Task.attempts + 1,
            )
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()  # someone else got it between our read and write: try the next one
            continue
        session.add(
            Lease(
                id=lease_id,
                task_id=task.id,
                worker_id=worker.id,
                status="active",
                created_at=now,
                expires_at=expires,
                heartbeat_at=now,
            )
        )
        session.commit()
        # We know what the UPDATE wrote; record it on the loaded object without another SELECT (hot path).
        for key, value in (
            ("status", "leased"),
            ("lease_id", lease_id),
            ("leased_by", worker.id),
            ("lease_expires_at", expires),
            ("attempts", task.attempts + 1),
        ):
            set_committed_value(task, key, value)
        return Claimed(task=task, lease_id=lease_id, expires_at=expires)
    session.rollback()
    return None


@lru_cache(maxsize=64)
def _claim_statement(n_ranges: int, reserved: bool) -> Any:
    """The Postgres claim statement for one query shape, built once: constructing this CTE (every Task column
    proxied twice) cost more CPU than running it. Values are bind parameters (see `_claim_postgres`).

    WITH picked AS (SELECT id ... ORDER BY priority DESC ... LIMIT :p_limit FOR UPDATE SKIP LOCKED),
         upd AS (UPDATE tasks SET lease_id = gen_random_uuid() ... FROM picked
                 WHERE id = picked.id AND status = 'queued' RETURNING tasks.*),
         ins AS (INSERT INTO leases SELECT ... FROM upd)
    SELECT * FROM upd
    """
    now = bindparam("p_now", type_=UtcDateTime())
    expires = bindparam("p_expires", type_=UtcDateTime())
    ranges = [
        and_(Task.layer_start >= bindparam(f"p_lo{i}"), Task.layer_end <= bindparam(f"p_hi{i}"))
        for i in range(n_ranges)
    ]
    picked = select(Task.id).where(
        Task.status == "queued",
        Task.kind.in_(bindparam("p_kinds", expanding=True)),
        Task.model.in_(bindparam("p_models", expanding=True)),
        Task.memory_bytes <= bindparam("p_memory"),
        Task.deadline > now,
        or_(*ranges) if ranges else false(),
        or_(Task.exclude_operator.is_(None), Task.exclude_operator != bindparam("p_operator")),
    )
    if reserved:
        picked = picked.order_by(case((Task.job_id == bindparam("p_reserved"), 0), else_=1))
    picked_cte = (
        picked.order_by(Task.priority.desc(), Task.deadline, Task.created_at, Task.id)
        .limit(bindparam("p_limit", type_=Integer()))
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    upd = (
        update(Task)
        .where(Task.id == picked_cte.c.id, Task.status == "queued")
        .values(
            status="leased",
            lease_id=cast(func.gen_random_uuid(), String(36)),  # one per row (a batch leases several)
            leased_by=bindparam("p_worker_id"),
            lease_expires_at=expires,
            attempts=Task.attempts + 1,
        )
        .returning(*Task.__table__.columns)
        .cte("upd")
    )
    ins = (
        insert(Lease)
        .from_select(
            ["id", "task_id", "worker_id", "status", "created_at", "expires_at", "heartbeat_at"],
            select(upd.c.lease_id, upd.c.id, bindparam("p_worker_id"), literal("active"), now, expires, now),
        )
        .cte("ins")
    )
    return select(aliased(Task, upd)).add_cte(ins)


def _claim_postgres(
    session: Session, *, worker: Worker, wanted: ClaimFilter, expires: datetime, now: datetime, limit: int
) -> list[Claimed]:
    """Pick, lease and record the leases in one statement (one round trip on the hot path)."""
    params: dict[str, Any] = {
        "p_limit": limit,
        "p_now": now,
        "p_expires": expires,
        "p_kinds": list(wanted.kinds),
        "p_models": list(wanted.models),
        "p_memory": min(wanted.memory_bytes, worker.memory_bytes),
        "p_operator": worker.operator_id,
        "p_worker_id": worker.id,
        "p_reserved": worker.reserved_job_id,
    }
    for i, (lo, hi) in enumerate(wanted.layer_ranges):
        params[f"p_lo{i}"], params[f"p_hi{i}"] = lo, hi
    statement = _claim_statement(len(wanted.layer_ranges), worker.reserved_job_id is not None)
    tasks = list(session.scalars(statement, params))
    if not tasks:
        session.rollback()
        return []
    session.commit()
    # RETURNING keeps no order: best first again (priority is a zero-padded amount: string order is numeric)
    tasks.sort(key=lambda t: (t.deadline, t.created_at, t.id))
    tasks.sort(key=lambda t: t.priority, reverse=True)
    return [Claimed(task=t, lease_id=str(t.lease_id), expires_at=expires) for t in tasks]


def get_task(session: Session, *, task_id: str) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound("task", task_id)
    return task


def _holds(task_id: str, worker_id: str, lease_id: str, now: datetime) -> Any:
    return and_(
        Task.id == task_id,
        Task.status == "leased",
        Task.lease_id == lease_id,
        Task.leased_by == worker_id,
        Task.lease_expires_at > now,
    )


def heartbeat_lease(
    session: Session, *, task_id: str, worker_id: str, lease_id: str, lease_ttl_s: int, now: datetime
) -> datetime:
    """Extend the caller's live lease; a lease that already expired cannot be revived (it may be requeued)."""
    expires = now + timedelta(seconds=lease_ttl_s)
    extended = session.execute(
        update(Task).where(_holds(task_id, worker_id, lease_id, now)).values(lease_expires_at=expires)
    )
    if extended.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        get_task(session, task_id=task_id)
        raise LeaseLost(task_id)
    session.execute(update(Lease).where(Lease.id == lease_id).values(expires_at=expires, heartbeat_at=now))
    session.commit()
    return expires


def submit_result(
    session: Session,
    *,
    task_id: str,
    worker_id: str,
    lease_id: str,
    result_hash: str,
    result: dict[str, Any],
    now: datetime,
) -> tuple[Task, bool]:
    """Record the lease holder's result; returns (task, created). Resubmitting the same result is a no-op."""
    done = session.scalars(
        update(Task)
        .where(_holds(task_id, worker_id, lease_id, now))
        .values(
            status="submitted",
            result_hash=result_hash,
            result=result,
            submitted_by=worker_id,
            submitted_at=now,
            lease_expires_at=None,
        )
        .returning(Task)  # the updated row comes back with the UPDATE: no second SELECT on the hot path
        .execution_options(synchronize_session=False)
    ).first()
    if done is not None:
        session.execute(update(Lease).where(Lease.id == lease_id).values(status="completed", ended_at=now))
        session.commit()
        return done, True
    session.rollback()
    task = get_task(session, task_id=task_id)
    if task.submitted_by == worker_id and task.lease_id == lease_id and task.status in ("submitted", "verified"):
        if task.result_hash != result_hash:
            raise Conflict(f"task {task_id} already has a different result from this worker")
        return task, False
    raise LeaseLost(task_id)


def requeue_expired(session: Session, *, now: datetime, max_attempts: int) -> int:
    """Put tasks whose lease ran out back in the queue (or fail them after too many attempts)."""
    session.execute(
        update(Lease)
        .where(Lease.status == "active", Lease.expires_at <= now)
        .values(status="expired", ended_at=now)
        .execution_options(synchronize_session=False)
    )
    requeued = session.execute(
        update(Task)
        .where(Task.status == "leased", Task.lease_expires_at <= now)
        .values(
            status=case((Task.attempts >= max_attempts, "failed"), else_="queued"),
            lease_id=None,
            leased_by=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(requeued.rowcount)  # type: ignore[attr-defined]

"""Chain event sync: StakingVault stake changes and JobEscrow funding/settlement, resumable from a DB cursor.

Events are read page by page from the block after the cursor up to head - confirmations; each page is committed
together with the cursor, so a crash repeats at most one page and every handler is idempotent (events are keyed
by (chain, tx, log index)).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from globai.chain.ports import ChainLog, ChainView
from market.db import ChainCursor, ChainEvent, Job, Settlement, SlashRecord, VerificationRun, Worker, new_id
from market.services.funding import apply_job_funded
from market.services.workers import apply_stake, record_outcome

log = logging.getLogger(__name__)

STAKE_EVENTS = frozenset({"Staked", "UnstakeRequested", "Withdrawn", "Slashed"})


@dataclass(frozen=True)
class SyncReport:
    from_block: int
    to_block: int
    events: int
    pages: int


def _cursor(session: Session, name: str) -> ChainCursor | None:
    return session.get(ChainCursor, name)


def _store_event(session: Session, chain_id: int, event: ChainLog) -> bool:
    """Insert the event unless already recorded; True when it is new."""
    values = {
        "id": new_id(),
        "chain_id": chain_id,
        "contract": event.address,
        "event": event.name,
        "block_number": event.block_number,
        "tx_hash": event.tx_hash,
        "log_index": event.log_index,
        # uint256 values exceed JSON number precision in most readers: store them as decimal strings.
        "args": {k: str(v) if isinstance(v, int) else v for k, v in event.args.items()},
    }
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        insert(ChainEvent).values(**values).on_conflict_do_nothing(index_elements=["chain_id", "tx_hash", "log_index"])
    )
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def _sync(
    session: Session,
    *,
    chain: ChainView,
    cursor_name: str,
    fetch: Callable[[int, int], list[ChainLog]],
    handle: Callable[[list[ChainLog], int], None],
    start_block: int,
    page: int,
    confirmations: int,
    max_pages: int | None,
) -> SyncReport:
    cursor = _cursor(session, cursor_name)
    first = cursor.block + 1 if cursor is not None else start_block
    head = chain.latest_block() - confirmations
    start, pages, count = first, 0, 0
    while start <= head and (max_pages is None or pages < max_pages):
        end = min(start + page - 1, head)
        events = fetch(start, end)
        new = [e for e in events if _store_event(session, chain.chain_id, e)]
        handle(new, end)
        if cursor is None:
            cursor = ChainCursor(name=cursor_name, block=end)
            session.add(cursor)
        else:
            cursor.block = end
        session.commit()
        count += len(new)
        pages += 1
        start = end + 1
    return SyncReport(from_block=first, to_block=start - 1, events=count, pages=pages)


def _confirm_slash(session: Session, event: ChainLog, now: datetime) -> None:
    """A Slashed event `confirmations` deep confirms the market's slash record for (job, worker)."""
    job = session.scalar(select(Job).where(Job.chain_job_id == str(event.args.get("jobId", "")).lower()))
    if job is None:
        return
    worker = str(event.args.get("worker", "")).lower()
    row = next(
        (
            r
            for r in session.scalars(select(SlashRecord).where(SlashRecord.job_id == job.id))
            if r.worker.lower() == worker
        ),
        None,
    )
    if row is not None and row.status in ("pending", "sent"):
        row.status, row.tx_hash, row.slashed, row.confirmed_at = (
            "confirmed",
            event.tx_hash,
            int(event.args["amount"]),
            now,
        )


def sync_stakes(
    session: Session,
    chain: ChainView,
    *,
    now: datetime,
    start_block: int = 0,
    page: int = 2000,
    confirmations: int = 0,
    max_pages: int | None = None,
) -> SyncReport:
    """Apply StakingVault events to registered workers (stake, unbonding, eligibility, slash reputation)."""
    min_stake = chain.min_stake()

    def handle(events: list[ChainLog], end_block: int) -> None:
        touched: set[str] = set()
        for event in events:
            if event.name not in STAKE_EVENTS:
                continue
            address = str(event.args.get("worker", ""))
            worker = session.scalar(select(Worker).where(Worker.address == address))
            if worker is None:
                continue  # not registered yet; registration reads the stake itself
            touched.add(worker.id)
            if event.name == "Slashed":
                _confirm_slash(session, event, now)
                worker.last_slash_at = now
                record_outcome(
                    session,
                    worker_id=worker.id,
                    kind="slash",
                    now=now,
                    job_id=None,
                    detail=f"slashed {event.args.get('amount')} in {event.tx_hash}",
                )
        for worker_id in touched:
            worker = session.get(Worker, worker_id)
            if worker is None:
                continue
            # Read the authoritative stake at the page's last block rather than replaying deltas: a worker that
            # registered mid-page already holds a newer reading, and `apply_stake` keeps the newest.
            stake, unbonding = chain.stake_of(worker.address, block=end_block)
            apply_stake(session, worker=worker, stake=stake, unbonding=unbonding, block=end_block, min_stake=min_stake)

    return _sync(
        session,
        chain=chain,
        cursor_name=f"stakes:{chain.chain_id}:{chain.staking_address.lower()}",
        fetch=chain.staking_logs,
        handle=handle,
        start_block=start_block,
        page=page,
        confirmations=confirmations,
        max_pages=max_pages,
    )


def sync_escrow(
    session: Session,
    chain: ChainView,
    *,
    now: datetime,
    start_block: int = 0,
    page: int = 2000,
    confirmations: int = 0,
    max_pages: int | None = None,
) -> SyncReport:
    """Apply JobEscrow events: JobFunded funds matching jobs; JobSettled/JobRefunded close them."""

    def handle(events: list[ChainLog], _end_block: int) -> None:
        for event in events:
            job_key = str(event.args.get("jobId", "")).lower()
            job = session.scalar(select(Job).where(Job.chain_job_id == job_key)) if job_key else None
            if job is None:
                continue
            if event.name == "JobFunded":
                apply_job_funded(session, job=job, event=event, now=now)
            elif event.name in ("JobSettled", "JobRefunded"):
                # Read `confirmations` blocks behind the head: what the market sent is now confirmed.
                cancelled = job.status in ("cancelled", "refunded") or event.name == "JobRefunded"
                job.status = "refunded" if cancelled else "settled"
                job.updated_at = now
                settlement = session.scalar(select(Settlement).where(Settlement.job_id == job.id))
                if settlement is not None and settlement.status != "confirmed":
                    settlement.status, settlement.tx_hash, settlement.confirmed_at = "confirmed", event.tx_hash, now
                run = session.get(VerificationRun, job.id)
                if run is not None and run.status == "settling":
                    run.status = "done"

    return _sync(
        session,
        chain=chain,
        cursor_name=f"escrow:{chain.chain_id}:{chain.escrow_address.lower()}",
        fetch=chain.escrow_logs,
        handle=handle,
        start_block=start_block,
        page=page,
        confirmations=confirmations,
        max_pages=max_pages,
    )

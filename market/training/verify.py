"""Verification of training tasks in the market: which updates are replayed, the verdicts, the settlement hand-off.

- `sampled`: whether an accepted update is re-run on a replica. Decided from the job's secret (drawn at job
  creation, published only as its hash `beacon`), so a worker can't know while working whether it will be checked.
- `judge_replay`: decodes the claim and the replica's replay of the same task (same checkpoint, shard and seed)
  and compares them with the core's `compare_updates`.
- `training_verdicts`: (task, verdict, evidence hash) for every update of a job: the function the verification /
  settlement pipeline calls. The evidence hash is the digest the worker signed over its exact update bytes.
- `hand_over_for_settlement`: when a job's last round is applied, writes what `market.services.settlement` settles
  from (work parts, one `VerificationRun` in state "settling") and a pending `SlashRecord` per caught cheater.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from eth_utils import keccak
from sqlalchemy import select
from sqlalchemy.orm import Session

from globai.protocol.compression import decode_update
from globai.protocol.training import task_key_bytes
from market.db import Job, SlashRecord, Task, VerificationRun, WorkPart
from market.db.training import TrainingJob, TrainingUpdate
from market.settlement.payout import PAID, UNPAID_SLASHED
from market.training.storage import TrainingStorage
from market.training.verification import UpdateTolerance, UpdateVerdict, compare_updates

SAMPLE_TAG = b"GLOBAI-TRAIN-SAMPLE-V1"


def sampled(secret_hex: str, task_id: str, rate: float) -> bool:
    """Replay this task? keccak256(tag || secret || taskId) / 2^256 < rate (auditable once the secret is out)."""
    if rate <= 0:
        return False
    if rate >= 1:
        return True
    h = keccak(SAMPLE_TAG + bytes.fromhex(secret_hex.removeprefix("0x")) + task_key_bytes(task_id))
    return int.from_bytes(h, "big") < int(rate * 2**256)


def judge_replay(
    storage: TrainingStorage,
    shapes: Mapping[str, tuple[int, ...]],
    claimed: TrainingUpdate,
    replay: TrainingUpdate,
    tolerance: UpdateTolerance | None = None,
) -> UpdateVerdict:
    """Compare a claimed update with a replica's replay; both were decoded and validated when received."""
    tolerance = tolerance or UpdateTolerance()
    a = decode_update(storage.updates.get(claimed.payload_sha256), shapes)
    b = decode_update(storage.updates.get(replay.payload_sha256), shapes)
    return compare_updates(a, b, tolerance)


@dataclass(frozen=True)
class TaskVerdict:
    task_id: str
    worker: str
    round: int
    slot: int
    verdict: str  # pass | fail | void (no replica in time) | pending | unchecked (not sampled)
    evidence_hash: str  # the signed update digest (0x-hex)
    replica: str | None  # address of the worker whose replay decided it
    reason: str
    aggregated: bool


def training_verdicts(session: Session, job_id: str) -> list[TaskVerdict]:
    """Every slot update of a training job with its verification verdict, by round and slot."""
    rows = session.scalars(
        select(TrainingUpdate)
        .where(TrainingUpdate.job_id == job_id, TrainingUpdate.replay_of.is_(None))
        .order_by(TrainingUpdate.round, TrainingUpdate.slot, TrainingUpdate.received_at)
    ).all()
    replicas = {
        u.task_id: u.worker
        for u in session.scalars(
            select(TrainingUpdate).where(TrainingUpdate.job_id == job_id, TrainingUpdate.replay_of.is_not(None))
        )
    }
    return [
        TaskVerdict(
            task_id=u.task_id,
            worker=u.worker,
            round=u.round,
            slot=u.slot,
            verdict=u.check,
            evidence_hash=u.digest,
            replica=replicas.get(u.check_task_id or ""),
            reason=u.check_reason,
            aggregated=u.aggregated,
        )
        for u in rows
    ]


def hand_over_for_settlement(session: Session, *, job: Job, tj: TrainingJob, now: datetime, slash_amount: int) -> None:
    """Record the job's verified work for `market.services.settlement` (idempotent; caller commits).

    Every received update is a work part worth its task's units (replays too: the replica did the work). A worker
    caught cheating anywhere in the job is paid for none of its parts and gets one pending slash, with its signed
    update digest as evidence and the replica that caught it as finder; the run then waits in `slashing` until
    the slashes are sent (the caller enqueues them; recovery re-drives them), else goes straight to `settling`.
    """
    if session.get(VerificationRun, job.id) is not None:
        return
    updates = session.scalars(select(TrainingUpdate).where(TrainingUpdate.job_id == job.id)).all()
    units = {t.id: t.units for t in session.scalars(select(Task).where(Task.job_id == job.id))}
    by_task = {u.task_id: u for u in updates}
    cheats: dict[str, TrainingUpdate] = {}
    for u in updates:
        if u.check == "fail" and u.worker not in cheats:
            cheats[u.worker] = u
    for u in updates:
        session.add(
            WorkPart(
                job_id=job.id,
                work_key=u.task_id,
                worker=u.worker,
                operator_id=u.operator_id,
                stage=0,
                layer_start=0,
                layer_end=0,
                units=units.get(u.task_id, 0),
                chunk_count=0,
                root=u.digest,
                status=UNPAID_SLASHED if u.worker in cheats else PAID,
            )
        )
    for worker, u in cheats.items():
        replay = by_task.get(u.check_task_id or "")
        session.add(
            SlashRecord(
                job_id=job.id,
                worker=worker,
                amount=slash_amount,
                evidence=u.digest,
                signature=u.signature,
                finder=replay.worker if replay is not None else job.requester,
                requester=job.requester,
                status="pending",
                created_at=now,
            )
        )
    for task in session.scalars(select(Task).where(Task.job_id == job.id, Task.status == "submitted")):
        cheat = task.id in by_task and by_task[task.id].worker in cheats
        task.status = "failed" if cheat else "verified"
    session.add(
        VerificationRun(
            job_id=job.id,
            # Cheats are slashed on chain first (`market.verification.slash_worker`), then the run settles.
            status="slashing" if cheats else "settling",
            secret=tj.sample_secret,
            beacon=tj.beacon,
            seed=None,
            sampled=sum(1 for u in updates if u.check not in ("unchecked",) and u.replay_of is None),
            detail="training job: replayed sampled tasks",
            created_at=now,
            updated_at=now,
        )
    )


def pending_slashes(session: Session, job_id: str) -> list[str]:
    """Ids of the job's slashes not yet sent to the chain."""
    return list(
        session.scalars(select(SlashRecord.id).where(SlashRecord.job_id == job_id, SlashRecord.status == "pending"))
    )

"""DiLoCo training jobs in the market: creation, rounds of leased tasks, received updates, round close,
verification replays, aggregation into exactly-once checkpoints, completion and the settlement hand-off.

State lives in the DB (`market.db.training`) and the `TrainingStorage` directory; `advance` moves one job as far
as it can and is safe to run any number of times, concurrently, or after a crash anywhere:

    pending --funded--> open --quorum/deadline--> verifying --replays judged--> aggregating --apply_round--> applied
                         ^  \\--deadline, < min_updates: stalled, deadline extended, missing slots re-leased
                         \\-- next round opened (or the job completes)

Every transition is a conditional UPDATE on the round's status, and the updates a round aggregates are written
to the round row before the checkpoint store applies them, so a second aggregator (or a restarted one) either
finds nothing to do or re-applies exactly the same inputs, which the store recognises (`applied=False`).
DB transactions are kept short and never span model compute (SQLite holds its write lock per transaction).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from eth_utils import keccak
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from globai.protocol import secagg
from globai.protocol.compression import CompressionError, decode_update, payload_digest
from globai.protocol.signing import BadSignature
from globai.protocol.training import FEDERATED_MODEL, PAYLOAD_KIND, TRAINING_MODEL, UpdateScope, update_signer
from market.db import Job, Lease, Task, Worker
from market.db.training import TrainingJob, TrainingRound, TrainingUpdate
from market.domain_errors import Conflict, Forbidden, InvalidRequest, LeaseLost, NotFound
from market.services import jobs as job_service
from market.services import leasing
from market.services.job_specs import TrainingSpec
from market.training import federated, verify
from market.training.checkpoints import CheckpointError, apply_round
from market.training.data import DatasetError
from market.training.model import evaluate_loss, initial_checkpoint
from market.training.rounds import RoundState, Submission, decide_round
from market.training.spec import ConfigModelRef, TrainingJobSpec, task_seed
from market.training.storage import TrainingStorage, estimate_memory_bytes, parameter_shapes
from market.training.verification import decide_update
from market.verifier.disputes import GUILTY, Vote

log = logging.getLogger(__name__)

DEFAULT_VERIFY_RATE = 0.1
_LIVE = ("pending", "queued", "leased")


def job_spec(tj: TrainingJob) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(tj.spec)


def replay_budget(price_per_unit: int, units: int, verify_rate: float) -> int:
    """Least budget for a job: price x units, plus the expected replays (exact integer arithmetic on wei)."""
    return math.ceil(Fraction(price_per_unit * units) * (1 + Fraction(str(verify_rate))))


# -- creation and round opening ------------------------------------------------------------------------------------


def create_training_job(
    session: Session,
    *,
    storage: TrainingStorage,
    requester: str,
    spec: TrainingJobSpec,
    dataset_sha256: str,
    budget: int,
    price_per_unit: int,
    deadline: datetime,
    verify_rate: float,
    chain_id: int,
    created_block: int,
    now: datetime,
    checkpoint_key: bytes | None = None,
) -> Job:
    """Create the market job (escrow parameters as for any job), its checkpoint 0 and its training state."""
    if not isinstance(spec.model, ConfigModelRef):
        raise InvalidRequest("over the API a model is a config + init seed (a server path is not accepted)")
    if not storage.datasets.has(dataset_sha256):
        raise NotFound("dataset", dataset_sha256)
    if spec.dataset.sha256 not in (None, dataset_sha256):
        raise InvalidRequest("spec.dataset.sha256 differs from the dataset given")
    if not 0.0 <= verify_rate <= 1.0:
        raise InvalidRequest("verify_rate must be within [0, 1]")
    if spec.federated is not None:
        verify_rate = 0.0  # a replay needs the worker's data, which never leaves it (docs/training.md)
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"sha256": dataset_sha256})})
    try:
        data = storage.prepared(spec, dataset_sha256)
    except DatasetError as exc:
        raise InvalidRequest(exc.reason) from exc
    config, params0 = initial_checkpoint(spec)
    try:
        generic = TrainingSpec(
            model=FEDERATED_MODEL if spec.federated is not None else TRAINING_MODEL,
            dataset=dataset_sha256,
            rounds=spec.rounds,
            tasks_per_round=spec.workers_per_round,
            local_steps=spec.inner_steps,
            layer_start=0,
            layer_end=int(config["num_hidden_layers"]),
            memory_bytes=estimate_memory_bytes(config, spec),
            seed=spec.seed,
            diloco=spec.model_dump(mode="json"),
        )
    except ValidationError as exc:
        raise InvalidRequest(f"spec out of the market's limits: {exc.errors()[0]['msg']}") from exc
    # Replays are paid from the same budget: make room for the expected share of re-run tasks.
    needed = replay_budget(price_per_unit, generic.units(), verify_rate)
    if budget < needed:
        raise InvalidRequest(f"budget {budget} is below price_per_unit x units x (1 + verify_rate) = {needed}")
    initial_loss = evaluate_loss(config, params0, data.eval) if len(data.eval) else None
    job = job_service.create_job(
        session,
        requester=requester,
        spec=generic,
        budget=budget,
        price_per_unit=price_per_unit,
        deadline=deadline,
        replicas=1,
        chain_id=chain_id,
        created_block=created_block,
        now=now,
    )
    try:
        manifest0 = storage.checkpoints.init_job(job.id, config, params0, key=checkpoint_key)
    except CheckpointError as exc:
        raise InvalidRequest(str(exc)) from exc
    secret = secrets.token_bytes(32)
    session.add(
        TrainingJob(
            job_id=job.id,
            spec=spec.model_dump(mode="json"),
            spec_sha256=spec.spec_hash(),
            dataset_sha256=dataset_sha256,
            job_nonce="0x" + secrets.token_hex(32),
            chain_id=chain_id,
            sample_secret="0x" + secret.hex(),
            beacon="0x" + keccak(b"GLOBAI-BEACON-V1" + secret).hex(),
            verify_rate=verify_rate,
            status="waiting",
            round=0,
            version=0,
            initial_eval_loss=initial_loss,
            detail="",
            created_at=now,
            updated_at=now,
        )
    )
    session.add(
        TrainingRound(
            job_id=job.id,
            round=0,
            status="pending",
            base_manifest=manifest0.sha256,
            opened_at=now,
            deadline_at=now,
            reopened=0,
            accepted=[],
            bytes_up=0,
        )
    )
    session.commit()
    return job


def task_payload(
    job: Job, tj: TrainingJob, spec: TrainingJobSpec, rnd: TrainingRound, slot: int, replay_of: str | None = None
) -> dict[str, Any]:
    """Everything a worker needs to run task (round, slot) besides the checkpoint and shard bytes."""
    fed: dict[str, Any] | None = None
    if spec.federated is not None:
        from market.training.privacy import worker_noise_std

        bound, scale = federated.fixed_point(spec)
        f = spec.federated
        fed = {
            "threshold": spec.secagg_threshold,
            "phase_timeout_s": f.phase_timeout_s,
            "clip_norm": f.clip_norm,
            "noise_std": worker_noise_std(f.clip_norm, f.noise_multiplier, spec.secagg_threshold),
            "bound": bound,
            "scale": scale,
        }
    return {
        "kind": PAYLOAD_KIND,
        "round": rnd.round,
        "slot": slot,
        "version": tj.version,  # the base checkpoint: the previous round's result, or a rolled-back-to version
        "base_manifest": rnd.base_manifest,
        "seed": task_seed(spec, rnd.round, slot),
        "inner_steps": spec.inner_steps,
        "seq_len": spec.seq_len,
        "inner_lr": spec.inner_lr,
        "batch_size": spec.batch_size,
        "weight_decay": spec.inner_weight_decay,
        "grad_clip": spec.grad_clip,
        "compression": spec.compression,
        "chain_id": tj.chain_id,
        "chain_job_id": job.chain_job_id,
        "job_nonce": tj.job_nonce,
        "replay_of": replay_of,
        "federated": fed,
    }


def _task_spec(job: Job, payload: dict[str, Any], exclude_operator: str | None = None) -> job_service.TaskSpec:
    return job_service.TaskSpec(
        kind="train",
        model=str(job.spec["model"]),
        layer_start=0,
        layer_end=int(job.spec["layer_end"]),
        memory_bytes=int(job.spec.get("memory_bytes", 0)),
        units=int(job.spec["local_steps"]),
        payload=payload,
        exclude_operator=exclude_operator,
    )


def _enqueue_slots(
    session: Session, job: Job, tj: TrainingJob, rnd: TrainingRound, slots: list[int], now: datetime
) -> list[Task]:
    spec = job_spec(tj)
    specs = [_task_spec(job, task_payload(job, tj, spec, rnd, s)) for s in slots]
    return job_service.enqueue_tasks(session, job=job, tasks=specs, now=now)


def _open_round(session: Session, job: Job, tj: TrainingJob, rnd: TrainingRound, now: datetime) -> None:
    spec = job_spec(tj)
    rnd.status = "open"
    rnd.opened_at = now
    rnd.deadline_at = now + timedelta(seconds=spec.round_timeout_s)
    _enqueue_slots(session, job, tj, rnd, list(range(spec.workers_per_round)), now)


def open_first_round(session: Session, *, job: Job, now: datetime) -> None:
    """Called when the job's funding is confirmed (caller commits): queue round 0's W tasks."""
    tj = session.get(TrainingJob, job.id)
    rnd = session.scalar(select(TrainingRound).where(TrainingRound.job_id == job.id, TrainingRound.round == 0))
    if tj is None or rnd is None:
        raise Conflict(f"job {job.id} has no training state")
    if rnd.status != "pending":
        return
    _open_round(session, job, tj, rnd, now)
    tj.status = "running"
    tj.updated_at = now
    job.status = "running"


# -- receiving updates ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    update: TrainingUpdate
    created: bool


def submit_update(
    session: Session,
    *,
    storage: TrainingStorage,
    task_id: str,
    worker_address: str,
    lease_id: str,
    payload: bytes,
    signature: str,
    loss_start: float,
    loss_end: float,
    now: datetime,
) -> Received:
    """Accept the lease holder's pseudo-gradient for a task: decoded against the checkpoint's shapes and the job's
    codec, signature over the scoped digest checked, bytes stored, task submitted (all or nothing)."""
    task = leasing.get_task(session, task_id=task_id)
    if task.payload.get("kind") != PAYLOAD_KIND:
        raise InvalidRequest(f"task {task_id} is not a DiLoCo training task")
    worker = session.scalar(select(Worker).where(Worker.address == worker_address))
    if worker is None:
        raise NotFound("worker", worker_address)
    sha = payload_digest(payload)
    existing = session.get(TrainingUpdate, task_id)
    if existing is not None:
        if existing.worker == worker.address and existing.payload_sha256 == sha:
            session.expunge(existing)  # keeps its loaded attributes through the rollback
            session.rollback()
            return Received(existing, False)
        session.rollback()
        raise Conflict(f"task {task_id} already has a different update")
    if not (task.status == "leased" and task.lease_id == lease_id and task.leased_by == worker.id):
        session.rollback()
        raise LeaseLost(task_id)
    tj = session.get(TrainingJob, task.job_id)
    job = session.get(Job, task.job_id)
    assert tj is not None and job is not None
    # Copy what is needed, then end the read transaction (SQLite: its write lock) while decoding.
    p, job_id, chain_job_id = dict(task.payload), job.id, job.chain_job_id
    spec, chain_id, job_nonce = job_spec(tj), tj.chain_id, tj.job_nonce
    worker_id, address, operator_id = worker.id, worker.address, worker.operator_id
    session.rollback()
    config = storage.checkpoints.manifest(job_id, int(p["version"])).config
    shapes = parameter_shapes(config)
    try:
        if spec.federated is not None:
            federated.check_masked_input(
                storage.root, job_id, int(p["round"]), str(p["base_manifest"]), int(p["slot"]), payload, shapes
            )
        else:
            decode_update(payload, shapes, spec.codec)
    except (CompressionError, secagg.SecAggError) as exc:
        raise InvalidRequest(exc.reason if isinstance(exc, CompressionError) else str(exc)) from exc
    scope = UpdateScope(
        chain_id=chain_id,
        chain_job_id=chain_job_id,
        task_id=task_id,
        round=int(p["round"]),
        slot=int(p["slot"]),
        job_nonce=job_nonce,
        base_checkpoint=str(p["base_manifest"]),
    )
    try:
        signer = update_signer(scope, sha, signature)
    except (BadSignature, ValueError) as exc:
        raise InvalidRequest(f"bad update signature: {exc}") from exc
    if signer != address:
        raise Forbidden("the update is not signed by the lease holder")
    storage.updates.put(payload)
    row = TrainingUpdate(
        task_id=task_id,
        job_id=job_id,
        round=int(p["round"]),
        slot=int(p["slot"]),
        worker=address,
        operator_id=operator_id,
        payload_sha256=sha,
        size=len(payload),
        digest="0x" + scope.digest(sha).hex(),
        signature=signature,
        received_at=now,
        loss_start=float(loss_start),
        loss_end=float(loss_end),
        replay_of=p.get("replay_of"),
        check="unchecked",
        check_reason="",
        check_metrics={},
        aggregated=False,
    )
    session.add(row)
    # submit_result commits the row with the task's state change, or rolls both back (lease lost meanwhile).
    _, created = leasing.submit_result(
        session,
        task_id=task_id,
        worker_id=worker_id,
        lease_id=lease_id,
        result_hash="0x" + sha,
        result={
            "update_sha256": sha,
            "digest": row.digest,
            "signature": signature,
            "loss_end": row.loss_end,
            "size": len(payload),
        },
        now=now,
    )
    return Received(row, created)


# -- advancing a job -----------------------------------------------------------------------------------------------

Sessions = sessionmaker[Session] | Callable[[], Session]


def _load(s: Session, job_id: str) -> tuple[Job, TrainingJob, TrainingRound | None]:
    job, tj = s.get(Job, job_id), s.get(TrainingJob, job_id)
    if job is None or tj is None:
        raise NotFound("training job", job_id)
    rnd = s.scalar(select(TrainingRound).where(TrainingRound.job_id == job_id, TrainingRound.round == tj.round))
    return job, tj, rnd


def _transition(s: Session, rnd: TrainingRound, old: str, new: str) -> bool:
    """Claim a round's state change; False when another aggregator got there first."""
    done = s.execute(
        update(TrainingRound)
        .where(TrainingRound.id == rnd.id, TrainingRound.status == old)
        .values(status=new)
        .execution_options(synchronize_session=False)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        s.rollback()
        return False
    rnd.status = new
    return True


def _round_tasks(s: Session, job_id: str, round_index: int, statuses: tuple[str, ...]) -> list[Task]:
    rows = s.scalars(select(Task).where(Task.job_id == job_id, Task.status.in_(statuses))).all()
    return [t for t in rows if t.payload.get("kind") == PAYLOAD_KIND and t.payload.get("round") == round_index]


def _cancel(s: Session, tasks: list[Task], now: datetime) -> None:
    ids = [t.id for t in tasks]
    if not ids:
        return
    s.execute(
        update(Lease)
        .where(Lease.task_id.in_(ids), Lease.status == "active")
        .values(status="released", ended_at=now)
        .execution_options(synchronize_session=False)
    )
    s.execute(
        update(Task)
        .where(Task.id.in_(ids), Task.status.in_(_LIVE))
        .values(status="cancelled", lease_id=None, leased_by=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


def _step_open(
    s: Session, storage: TrainingStorage, job: Job, tj: TrainingJob, rnd: TrainingRound, now: datetime
) -> str:
    spec = job_spec(tj)
    updates = s.scalars(
        select(TrainingUpdate).where(
            TrainingUpdate.job_id == job.id,
            TrainingUpdate.round == rnd.round,
            TrainingUpdate.replay_of.is_(None),
        )
    ).all()
    updates = [u for u in updates if _base_of(s, u.task_id) == rnd.base_manifest]  # not from before a rollback
    if spec.federated is not None:
        return _step_open_federated(s, storage, job, tj, rnd, list(updates), now)
    subs = [Submission(u.slot, u.task_id, u.received_at.timestamp(), valid=u.check != "fail") for u in updates]
    decision = decide_round(
        subs,
        workers=spec.workers_per_round,
        quorum=spec.effective_quorum,
        min_updates=spec.min_updates,
        deadline=rnd.deadline_at.timestamp(),
        now=now.timestamp(),
    )
    if decision.state == RoundState.OPEN:
        s.rollback()
        return "open"
    if decision.state == RoundState.STALLED:
        # Nobody (valid) answered in time: extend the deadline and make sure every missing slot can be claimed.
        live = {t.payload["slot"] for t in _round_tasks(s, job.id, rnd.round, ("queued", "leased"))}
        rnd.deadline_at = now + timedelta(seconds=spec.round_timeout_s)
        rnd.reopened += 1
        _enqueue_slots(s, job, tj, rnd, [i for i in decision.missing_slots if i not in live], now)
        s.commit()
        log.info("job %s round %d stalled; deadline extended", job.id, rnd.round)
        return "stalled"
    if not _transition(s, rnd, "open", "verifying"):
        return "raced"
    rnd.close_state = decision.state.value
    rnd.closed_at = now
    late = _late_updates(s, job.id, rnd.round, spec.max_staleness)
    rnd.accepted = [sub.submission_id for sub in decision.accepted] + [u.task_id for u in late]
    if spec.max_staleness and rnd.round + 1 < spec.rounds:
        # Asynchronous rounds: stragglers keep their leases; what they send is applied to a later round. Queued
        # tasks of this and earlier rounds (an expired straggler's lease requeues its task) are not wanted.
        for r in range(max(0, rnd.round - spec.max_staleness), rnd.round + 1):
            _cancel(s, _round_tasks(s, job.id, r, ("pending", "queued")), now)
    else:
        _cancel(s, _round_tasks(s, job.id, rnd.round, _LIVE), now)  # stragglers' work is no longer wanted
    by_id = {u.task_id: u for u in [*updates, *late]}
    for task_id in rnd.accepted:
        u = by_id[task_id]
        if verify.sampled(tj.sample_secret, task_id, tj.verify_rate):
            original = s.get(Task, task_id)  # a late update is replayed from its own round's base and seed
            assert original is not None
            payload = {**original.payload, "replay_of": task_id}
            (replay,) = job_service.enqueue_tasks(s, job=job, tasks=[_task_spec(job, payload, u.operator_id)], now=now)
            u.check, u.check_task_id = "pending", replay.id
    rnd.verify_deadline_at = now + timedelta(seconds=spec.round_timeout_s)
    s.commit()
    log.info("job %s round %d %s with %d updates", job.id, rnd.round, rnd.close_state, len(rnd.accepted))
    return "closed"


def _late_updates(s: Session, job_id: str, round_index: int, max_staleness: int) -> list[TrainingUpdate]:
    """Updates of rounds up to `max_staleness` before this one that arrived after their round closed and were
    not aggregated yet (asynchronous rounds)."""
    if max_staleness <= 0:
        return []
    rows = s.scalars(
        select(TrainingUpdate).where(
            TrainingUpdate.job_id == job_id,
            TrainingUpdate.round < round_index,
            TrainingUpdate.round >= round_index - max_staleness,
            TrainingUpdate.replay_of.is_(None),
            TrainingUpdate.aggregated.is_(False),
        )
    ).all()
    taken: set[str] = set()
    for earlier in s.scalars(
        select(TrainingRound).where(TrainingRound.job_id == job_id, TrainingRound.round < round_index)
    ):
        taken.update(earlier.accepted or [])
    return sorted((u for u in rows if u.task_id not in taken and u.check != "fail"), key=lambda u: u.task_id)


def staleness_weight(staleness: int) -> float:
    """How much a late update counts: 1 / (1 + rounds late) (FedAsync's polynomial weight, a = 1)."""
    return 1.0 / (1.0 + staleness)


def _base_of(s: Session, task_id: str) -> str | None:
    task = s.get(Task, task_id)
    return None if task is None else task.payload.get("base_manifest")


def _step_open_federated(
    s: Session,
    storage: TrainingStorage,
    job: Job,
    tj: TrainingJob,
    rnd: TrainingRound,
    updates: list[TrainingUpdate],
    now: datetime,
) -> str:
    """Secure-aggregation phases first (keys, shares); the round closes with the masked input of every slot that
    shared, or with ≥ t of them once the masked phase times out. Nothing to replay: no verification step."""
    spec = job_spec(tj)
    assert spec.federated is not None
    relay = federated.SecAggRound(storage.root, job.id, rnd.round, rnd.base_manifest)
    shares = federated.advance_phases(relay, spec, rnd.opened_at, now).get("shares")
    deadline = federated.masked_deadline(relay, spec)
    if shares is None or deadline is None:
        s.rollback()
        return "open"
    mine = sorted((u for u in updates if u.slot in shares.slots), key=lambda u: u.slot)
    if len(mine) >= len(shares.slots):
        state = RoundState.CLOSED_QUORUM.value
    elif len(mine) >= spec.secagg_threshold and now >= deadline:
        state = RoundState.CLOSED_DEADLINE.value
    else:
        s.rollback()
        return "open"
    if not _transition(s, rnd, "open", "verifying"):
        return "raced"
    rnd.close_state, rnd.closed_at = state, now
    rnd.accepted = [u.task_id for u in mine]
    _cancel(s, _round_tasks(s, job.id, rnd.round, _LIVE), now)
    rnd.verify_deadline_at = now + timedelta(seconds=spec.federated.phase_timeout_s)  # the unmask phase
    s.commit()
    log.info("job %s federated round %d %s with %d masked inputs", job.id, rnd.round, state, len(mine))
    return "closed"


def _step_unmask(
    s: Session, storage: TrainingStorage, job: Job, tj: TrainingJob, rnd: TrainingRound, now: datetime
) -> str:
    """Federated: wait for the survivors' unmask shares (all, or ≥ t once the phase times out)."""
    spec = job_spec(tj)
    survivors = {u.slot for u in (s.get(TrainingUpdate, t) for t in rnd.accepted) if u is not None}
    relay = federated.SecAggRound(storage.root, job.id, rnd.round, rnd.base_manifest)
    have = [v for v in relay.messages("unmask") if v in survivors]
    timed_out = rnd.verify_deadline_at is not None and now >= rnd.verify_deadline_at
    if not (len(have) >= len(survivors) or (len(have) >= spec.secagg_threshold and timed_out)):
        s.rollback()
        return "verifying"
    if not _transition(s, rnd, "verifying", "aggregating"):
        return "raced"
    rnd.aggregated = list(rnd.accepted)
    s.commit()
    return "verified"


def _step_verifying(
    s: Session, storage: TrainingStorage, job: Job, tj: TrainingJob, rnd: TrainingRound, now: datetime
) -> str:
    if job_spec(tj).federated is not None:
        return _step_unmask(s, storage, job, tj, rnd, now)
    accepted = [s.get(TrainingUpdate, t) for t in rnd.accepted]
    shapes = parameter_shapes(storage.checkpoints.manifest(job.id, rnd.round).config)
    waiting = False
    for u in accepted:
        assert u is not None
        if u.check == "disputed":
            waiting = not _decide_dispute(s, storage, shapes, job, rnd, u, now) or waiting
            continue
        if u.check != "pending":
            continue
        replay = s.get(TrainingUpdate, u.check_task_id)
        if replay is not None:
            verdict = verify.judge_replay(storage, shapes, u, replay)
            u.check = "pass" if verdict.ok else "fail"
            u.check_reason = verdict.reason[:160]
            u.check_metrics = dict(verdict.metrics.__dict__) if verdict.metrics else {}
            if not verdict.ok:
                log.warning(
                    "job %s round %d: update of %s failed its replay (%s): disputed",
                    job.id,
                    rnd.round,
                    u.worker,
                    verdict.reason,
                )
                _open_disputes(s, job, tj, rnd, u, now)
                waiting = True
        elif rnd.verify_deadline_at is not None and now >= rnd.verify_deadline_at:
            u.check, u.check_reason = "void", "no replica replayed it in time"
            _cancel(s, [t for t in [s.get(Task, u.check_task_id)] if t is not None], now)
        else:
            waiting = True
    if waiting:
        s.commit()
        return "verifying"
    keep = [u.task_id for u in accepted if u is not None and u.check != "fail"]
    if not keep:
        # Every accepted update was caught cheating: run the round again with fresh tasks.
        if not _transition(s, rnd, "verifying", "open"):
            return "raced"
        rnd.accepted, rnd.close_state, rnd.closed_at = [], None, None
        rnd.deadline_at = now + timedelta(seconds=job_spec(tj).round_timeout_s)
        rnd.reopened += 1
        _enqueue_slots(s, job, tj, rnd, list(range(job_spec(tj).workers_per_round)), now)
        s.commit()
        return "reopened"
    if not _transition(s, rnd, "verifying", "aggregating"):
        return "raced"
    rnd.aggregated = keep  # the round's inputs are fixed from here on
    s.commit()
    return "verified"


DISPUTE_ROUNDS = (1, 2)


def _dispute_task(s: Session, job: Job, u: TrainingUpdate, r: int, now: datetime) -> Task:
    """A replay of `u`'s task for dispute round `r`, never claimed by `u`'s operator."""
    original = s.get(Task, u.task_id)
    assert original is not None
    payload = {**original.payload, "replay_of": u.task_id, "dispute": r}
    (task,) = job_service.enqueue_tasks(s, job=job, tasks=[_task_spec(job, payload, u.operator_id)], now=now)
    return task


def _open_disputes(s: Session, job: Job, tj: TrainingJob, rnd: TrainingRound, u: TrainingUpdate, now: datetime) -> None:
    """A first replay disagreed with `u`: two more replicas of other operators replay the same task; the round
    waits for them (its verification deadline moves on by a round timeout)."""
    tasks = [_dispute_task(s, job, u, r, now) for r in DISPUTE_ROUNDS]
    u.check = "disputed"
    u.check_metrics = {**(u.check_metrics or {}), "disputes": [t.id for t in tasks]}
    timeout = timedelta(seconds=job_spec(tj).round_timeout_s)
    rnd.verify_deadline_at = max(rnd.verify_deadline_at or now, now + timeout)


def _decide_dispute(
    s: Session,
    storage: TrainingStorage,
    shapes: dict[str, tuple[int, ...]],
    job: Job,
    rnd: TrainingRound,
    u: TrainingUpdate,
    now: datetime,
) -> bool:
    """Decide a disputed update 2-of-3 (`verification.decide_update`) as soon as the independent votes settle it
    (the worker is guilty once one dispute replay agrees with the first; cleared once both disagree with it), or
    at the round's verification deadline (a missing vote is void). A replay by an operator that already voted (the
    first replica's, the other dispute's) is void, and its slot is queued again for another operator while there
    is time. The loser's signed update fails: the worker's if guilty, else an outvoted replica's (its replay is
    then unpaid and slashed, `verify.hand_over_for_settlement`). False: still waiting."""
    first = s.get(TrainingUpdate, u.check_task_id)
    assert first is not None  # a dispute is opened only on a received first replay
    timed_out = rnd.verify_deadline_at is not None and now >= rnd.verify_deadline_at
    involved = {u.operator_id, first.operator_id}
    slots = list((u.check_metrics or {}).get("disputes", []))
    votes = [Vote(0, "fail", u.check_reason)]
    replays: dict[int, TrainingUpdate] = {0: first}
    waiting: list[str] = []
    for index, (r, task_id) in enumerate(zip(DISPUTE_ROUNDS, slots, strict=False)):
        replay = s.get(TrainingUpdate, task_id)
        if replay is None:
            votes.append(Vote(r, "void", "not replayed"))
            waiting.append(task_id)
        elif replay.operator_id in involved:
            votes.append(Vote(r, "void", f"operator {replay.operator_id} already voted"))
            if not timed_out:
                slots[index] = _dispute_task(s, job, u, r, now).id
                waiting.append(slots[index])
        else:
            involved.add(replay.operator_id)
            verdict = verify.judge_replay(storage, shapes, u, replay)
            votes.append(Vote(r, "pass" if verdict.ok else "fail", verdict.reason[:160]))
            replays[r] = replay
    outcome, losers = decide_update(votes)
    settled = outcome == GUILTY or sum(v.status == "pass" for v in votes) == len(DISPUTE_ROUNDS)
    if not (settled or timed_out or not waiting):
        u.check_metrics = {**(u.check_metrics or {}), "disputes": slots}
        return False
    _cancel(s, [t for t in (s.get(Task, tid) for tid in waiting) if t is not None], now)
    u.check = "fail" if outcome == GUILTY else "pass"
    u.check_metrics = {
        **(u.check_metrics or {}),
        "disputes": slots,
        "outcome": outcome,
        "votes": [[v.round, v.status, v.reason] for v in votes],
    }
    winners = [r for r in replays if r not in losers]
    for r in losers:
        loser = replays[r]
        loser.check, loser.check_reason = "fail", f"outvoted 2-of-3 on the replay of {u.task_id}"[:160]
        loser.check_task_id = replays[winners[0]].task_id if winners else None  # the finder
    log.warning(
        "job %s round %d: update of %s %s 2-of-3 (%s)",
        job.id,
        rnd.round,
        u.worker,
        outcome,
        ", ".join(f"{v.round}:{v.status}" for v in votes),
    )
    return True


@dataclass(frozen=True)
class _Applied:
    round_index: int
    manifest_sha256: str
    eval_loss: float | None
    worker_loss: float
    bytes_up: int
    applied: bool


def _aggregate(
    storage: TrainingStorage,
    job_id: str,
    tj_spec: TrainingJobSpec,
    dataset_sha256: str,
    round_index: int,
    inputs: list[tuple[str, float, int, int, int]],
    context: bytes,
    base_version: int,
    base_manifest: str,
) -> _Applied:
    """Decode the fixed inputs (payload sha, loss, size, slot, round), apply the round exactly once, evaluate v+1.
    A late update (its round < this one) is scaled by `staleness_weight`.

    Federated: the inputs are masked; what is applied is the mean of the survivors' updates, unmasked as a sum."""
    config = storage.checkpoints.manifest(job_id, round_index).config
    shapes = parameter_shapes(config)
    worker_loss = sum(loss for _, loss, _, _, _ in inputs) / len(inputs)
    metrics = {"worker_loss_end": worker_loss}
    fed = tj_spec.federated
    if fed is not None:
        from market.training.privacy import epsilon

        relay = federated.SecAggRound(storage.root, job_id, round_index, base_manifest)
        masked = {slot: storage.updates.get(sha) for sha, _, _, slot, _ in inputs}
        updates = [federated.unmasked_mean(relay, tj_spec, masked, shapes, context)]
        if fed.noise_multiplier > 0:
            metrics["epsilon"] = epsilon(fed.noise_multiplier, round_index + 1, fed.delta)
    else:
        updates = []
        for sha, _, _, _, r in inputs:
            update = decode_update(storage.updates.get(sha), shapes, tj_spec.codec)
            if r != round_index:
                w = staleness_weight(round_index - r)
                update = {n: t * w for n, t in update.items()}
            updates.append(update)
        late = sum(r != round_index for *_, r in inputs)
        if late:
            metrics["late_updates"] = float(late)
    result = apply_round(
        storage.checkpoints, job_id, round_index, updates, spec=tj_spec, metrics=metrics, base_version=base_version
    )
    data = storage.prepared(tj_spec, dataset_sha256)
    params = storage.checkpoints.load(job_id, round_index + 1).params
    eval_loss = evaluate_loss(config, params, data.eval) if len(data.eval) else None
    return _Applied(
        round_index,
        result.manifest.sha256,
        eval_loss,
        worker_loss,
        sum(n for _, _, n, _, _ in inputs),
        result.applied,
    )


def _record_applied(
    s: Session, job: Job, tj: TrainingJob, rnd: TrainingRound, done: _Applied, now: datetime, slash_amount: int
) -> str:
    if not _transition(s, rnd, "aggregating", "applied"):
        return "raced"
    rnd.manifest_sha256, rnd.eval_loss, rnd.worker_loss = done.manifest_sha256, done.eval_loss, done.worker_loss
    rnd.bytes_up, rnd.applied_at = done.bytes_up, now
    for task_id in rnd.aggregated or []:
        u = s.get(TrainingUpdate, task_id)
        if u is not None:
            u.aggregated = True
    tj.version, tj.round, tj.updated_at = rnd.round + 1, rnd.round + 1, now
    spec = job_spec(tj)
    if tj.round >= spec.rounds:
        tj.status = "completed"
        job.status, job.updated_at = "completed", now
        verify.hand_over_for_settlement(s, job=job, tj=tj, now=now, slash_amount=slash_amount)
        s.commit()
        log.info("training job %s completed after %d rounds", job.id, spec.rounds)
        return "completed"
    nxt = TrainingRound(
        job_id=job.id,
        round=tj.round,
        status="pending",
        base_manifest=done.manifest_sha256,
        opened_at=now,
        deadline_at=now,
        reopened=0,
        accepted=[],
        bytes_up=0,
    )
    s.add(nxt)
    s.flush()
    _open_round(s, job, tj, nxt, now)
    s.commit()
    return "applied"


def advance(
    sessions: Sessions,
    storage: TrainingStorage,
    job_id: str,
    *,
    now: Callable[[], datetime],
    slash_amount: int = 0,
    max_steps: int = 64,
) -> str:
    """Move a training job forward as far as it can go now; returns where it stopped (idempotent, crash-safe)."""
    state = "idle"
    for _ in range(max_steps):
        with sessions() as s:
            job, tj, rnd = _load(s, job_id)
            if tj.status != "running":
                return tj.status
            if job.status in ("cancelled", "refunded"):
                tj.status, tj.updated_at = "cancelled", now()
                s.commit()
                return "cancelled"
            if rnd is None:
                return "missing round"
            if now() >= job.deadline and rnd.status == "open":
                # No task can be claimed past the job's deadline: stop; the escrow refunds after it.
                tj.status, tj.detail, tj.updated_at = "failed", "job deadline passed before the last round", now()
                _cancel(s, _round_tasks(s, job.id, rnd.round, _LIVE), now())
                s.commit()
                return "failed"
            if rnd.status == "open":
                state = _step_open(s, storage, job, tj, rnd, now())
                if state in ("open", "stalled"):
                    return state
                continue
            if rnd.status == "verifying":
                state = _step_verifying(s, storage, job, tj, rnd, now())
                if state == "verifying":
                    return state
                continue
            if rnd.status != "aggregating":
                return rnd.status
            spec, dataset, r = job_spec(tj), tj.dataset_sha256, rnd.round
            rows = [s.get(TrainingUpdate, t) for t in rnd.aggregated or []]
            inputs = [(u.payload_sha256, u.loss_end, u.size, u.slot, u.round) for u in rows if u is not None]
            context = secagg.round_context(tj.chain_id, job.chain_job_id, r, rnd.base_manifest)
            base_version, base = tj.version, rnd.base_manifest
            s.rollback()
        # No transaction is open while aggregating (seconds for big models).
        done = _aggregate(storage, job_id, spec, dataset, r, inputs, context, base_version, base)
        with sessions() as s:
            job, tj, rnd = _load(s, job_id)
            if rnd is None or rnd.round != r or rnd.status != "aggregating":
                continue  # another aggregator recorded it
            state = _record_applied(s, job, tj, rnd, done, now(), slash_amount)
            if state == "completed":
                return state
    return state


def rollback(
    session: Session, *, storage: TrainingStorage, job_id: str, requester: str, version: int, now: datetime
) -> TrainingRound:
    """The requester rolls the job back to checkpoint `version`: the open round is restarted from it (its tasks
    cancelled and queued again with that base; updates computed from the old base are ignored). Later versions
    stay in the store as history; the next version's parent is `version`. Only while a round is open."""
    job, tj, rnd = _load(session, job_id)
    if job.requester != requester:
        raise Forbidden("only the requester may roll a job back")
    if tj.status != "running" or rnd is None:
        raise Conflict(f"job {job_id} is {tj.status}: nothing to continue from a rollback")
    if not 0 <= version <= max(storage.checkpoints.versions(job_id)):
        raise InvalidRequest(f"job {job_id} has no version {version}")
    if rnd.status != "open":
        session.rollback()
        raise Conflict(f"round {rnd.round} is {rnd.status}; retry the rollback in a moment")
    base = storage.checkpoints.manifest(job_id, version)
    spec = job_spec(tj)
    moved = session.execute(
        update(TrainingRound)
        .where(TrainingRound.id == rnd.id, TrainingRound.status == "open")
        .values(
            base_manifest=base.sha256,
            opened_at=now,
            deadline_at=now + timedelta(seconds=spec.round_timeout_s),
            reopened=rnd.reopened + 1,
        )
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise Conflict(f"round {rnd.round} closed meanwhile; retry the rollback")
    _cancel(session, _round_tasks(session, job.id, rnd.round, _LIVE), now)
    session.refresh(rnd)
    tj.version, tj.updated_at = version, now
    _enqueue_slots(session, job, tj, rnd, list(range(spec.workers_per_round)), now)
    session.commit()
    log.info("job %s rolled back to version %d; round %d restarts from it", job_id, version, rnd.round)
    return rnd


def running_jobs(session: Session) -> list[str]:
    return list(session.scalars(select(TrainingJob.job_id).where(TrainingJob.status == "running")).all())


# -- requester views -----------------------------------------------------------------------------------------------


def progress(session: Session, job_id: str) -> tuple[Job, TrainingJob, list[TrainingRound]]:
    job, tj, _ = _load(session, job_id)
    rounds = session.scalars(
        select(TrainingRound).where(TrainingRound.job_id == job_id).order_by(TrainingRound.round)
    ).all()
    return job, tj, list(rounds)

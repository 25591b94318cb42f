"""The verification pipeline's logic (the Celery tasks in `market.tasks.verification` are thin wrappers).

    open_run            before the work: draw the job's sampling secret, publish only its hash (beacon)
    start_verification  after every signed root is in: reveal the seed, sample sequences per worker at the
                        policy's rate (a check per committed chunk of each), pick a replica of another operator
                        per sequence -> one check id per sequence to replay
    run_check           replay one sequence on its replica, compare each of its sampled chunks with the claim; a
                        tolerance mismatch opens two dispute checks on two more replicas -> new check ids
    open_localisations  once no check is pending: a chain replica that lost its 2-of-3 gets each hop re-run alone
                        on two independent replicas (`LOCALISE_ROUND` checks, run by `run_check`) -> new check ids
    decide_job          once no check is pending: 2-of-3 per segment, work parts paid / unpaid, reputation,
                        slash records for the guilty
    execute_slash       `StakingVault.slash` once per (job, worker), evidence = the signed commitment's digest,
                        finder = the replica that caught it; then the job moves on to settlement

Where the work itself lives (commitments, recorded stage inputs, replicas) is behind `WorkSource`: the inference
coordinator provides one over its tables and blob store; tests provide an in-process one. Every step is
idempotent (state in the DB, compare-and-set on the run's status) so at-least-once task delivery is safe.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import torch
from eth_utils import keccak, to_checksum_address
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from globai.chain.ports import EvidenceRejected, NothingToSlash, Slasher
from globai.errors import GlobaiError
from globai.protocol.commitments import CHUNK_TOKENS, SignedCommitment, SignedRoot
from globai.protocol.signing import ChunkScope
from market.db import Job, ReputationEvent, SlashRecord, VerificationCheck, VerificationRun, Worker, WorkPart
from market.domain_errors import Conflict, NotFound
from market.scheduler.reputation import reputation
from market.services.workers import record_outcome, worker_reputation
from market.settlement.payout import PAID, UNPAID_FAULTY, UNPAID_SLASHED, UNPAID_UNCHECKED
from market.verifier import sampling
from market.verifier.compare import (
    DEFAULT_TOLERANCES,
    Tolerance,
    Verdict,
    compare_hidden_states,
    shipped_model_tolerances,
)
from market.verifier.disputes import (
    FAULTY,
    GUILTY,
    UNVERIFIED,
    ProjectedRows,
    Vote,
    check_claim,
    check_structure,
    decide_segment,
    localise_chain,
)

log = logging.getLogger(__name__)

DISPUTE_ROUNDS = (1, 2)
# A chain replica that lost its 2-of-3 is localised: re-run j of its hop i is the check of round
# LOCALISE_ROUND + LOCALISE_RERUNS * i + j (`open_localisations`), not a vote on the audited claim.
LOCALISE_ROUND = 10
LOCALISE_RERUNS = 2


class ReplicaUnavailable(GlobaiError):
    """A replica could not run a replay now (offline, timed out): transient, the task retries."""


@dataclass(frozen=True)
class ClaimedPart:
    """A worker's share of a job as the coordinator recorded it."""

    work_key: str
    worker: str
    operator_id: str
    stage: int
    layer_start: int
    layer_end: int
    units: int
    dtype: str  # the job's dtype name: picks the tolerance
    scope: ChunkScope  # what this part's commitments must be scoped to
    signed_root: SignedRoot
    chunk_indices: tuple[int, ...]
    model: str = ""  # the model's name: a real model may ship its own calibrated tolerances


@dataclass(frozen=True)
class Replica:
    address: str
    operator_id: str
    # Drawn with probability proportional to this (reputation mean x stake in GLB, `replica_weight`): a sybil
    # "operator" costs stake, and a replica with a poor record is rarely asked.
    weight: float = 1.0
    # A chain of workers whose ranges together cover the part's layers (none serves them all): every hop as
    # (address, operator id, layer start, layer end), in layer order; `address`/`operator_id` are the first hop's.
    chain: tuple[tuple[str, str, int, int], ...] = ()

    @property
    def ident(self) -> str:
        """What a check names as its replica for the source: the address, or the hops' addresses joined by "+"."""
        return "+".join(h[0] for h in self.chain) if self.chain else self.address

    @property
    def addresses(self) -> set[str]:
        return {h[0] for h in self.chain} | {self.address}

    @property
    def operators(self) -> set[str]:
        return {h[1] for h in self.chain} | {self.operator_id}


def chain_hops(metrics: dict[str, Any] | None) -> list[tuple[str, int, int]]:
    """The (address, layer start, layer end) hops a check's chain replay ran on ([] for a single replica)."""
    return [(str(a), int(lo), int(hi)) for a, lo, hi in (metrics or {}).get("chain") or []]


def replica_weight(reputation_mean: float, stake_wei: int) -> float:
    return max(reputation_mean, 1e-3) * max(stake_wei / 10**18, 1e-9)


@dataclass(frozen=True)
class ReplayReceipt:
    """What a replica's replay left: the digest it signed over the answer holding the chunk (`signing.sent_digest`,
    0x-hex) and its signature - the evidence that slashes it when it loses a 2-of-3 - and the work it did (token
    positions through the stage, the unit inference work is paid in). Empty when the replica carried none."""

    digest: str = ""
    signature: str = ""
    units: int = 0
    replay_id: str = ""  # one id per replay the replica ran (checks that share a replay's rows share it: paid once)
    # A chain replay's record of every hop's input and signed answer (what `WorkSource.rerun_hop` re-runs a hop
    # from when the chain loses); "" for a single replica.
    transcript: str = ""


@dataclass(frozen=True)
class HopRerun:
    """One hop of a chain replay re-run alone on an independent replica with exactly the input it received."""

    claimed: torch.Tensor  # the rows of the hop's signed answers [n, width], as it sent them
    rerun: torch.Tensor  # the independent replica's rows for the same input [n, width]
    input_bound: bool  # its input was byte for byte the previous hop's signed output (hop 0: the audited input)
    digest: str  # the hop's signed `signing.sent_digest` over one of those answers (0x-hex): the evidence
    signature: str  # the hop's signature over `digest`
    units: int = 0  # token positions the re-running replica ran (paid as its replay work)
    replay_id: str = ""


# A replay used in a check is paid like work: a work part of the replica keyed "<audited part>/r/<replay id>".
REPLAY_KEY = "/r/"  # work keys are at most 128 characters: "<run>/<stage>/<worker>/r/<uuid>/<hop>" fits


def replay_key(work_key: str, replay_id: str) -> str:
    return f"{work_key}{REPLAY_KEY}{replay_id}"


def is_replay(work_key: str) -> bool:
    return REPLAY_KEY in work_key


@dataclass(frozen=True)
class BindingFault:
    """A signed chunk commitment the coordinator found not to match the rows the worker sent (signed too)."""

    work_key: str
    worker: str
    operator_id: str
    stage: int
    layer_start: int
    layer_end: int
    chunk_index: int
    evidence: str  # the signed commitment's digest
    detail: str
    signature: str = ""  # the worker's signature over `evidence` (0x-hex): what the vault checks to slash


class WorkSource(Protocol):
    def parts(self, job_id: str) -> list[ClaimedPart]: ...

    def commitment(self, job_id: str, work_key: str, chunk_index: int) -> tuple[SignedCommitment, list[bytes]]:
        """The signed chunk commitment and its Merkle proof under the part's signed root."""
        ...

    def replicas(self, job_id: str, part: ClaimedPart) -> list[Replica]:
        """Workers that can replay this part (same layers, same model), any operator; the caller filters."""
        ...

    def replay(self, job_id: str, part: ClaimedPart, chunk_index: int, replica: str) -> torch.Tensor:
        """Have `replica` run the part's recorded stage input (an ordinary forward task) and return its output
        for the chunk, [tokens, hidden]. Raises `ReplicaUnavailable` when it can't now."""
        ...

    def replay_evidence(self, job_id: str, part: ClaimedPart, chunk_index: int, replica: str) -> ReplayReceipt:
        """The replica's signed evidence and work units for its replay of the chunk (after `replay`)."""
        ...

    def rerun_hop(self, job_id: str, part: ClaimedPart, transcript: str, hop: int, replica: str) -> HopRerun:
        """Re-run hop `hop` of the chain replay recorded as `transcript` (`ReplayReceipt.transcript`) alone on
        `replica` (an address, or a chain's addresses joined by "+") with exactly the input that hop received.
        Raises `ReplicaUnavailable` when it can't now."""
        ...

    def held(self, job_id: str, part: ClaimedPart, chunk_index: int) -> torch.Tensor | ProjectedRows | None:
        """The rows the worker actually sent for the chunk, [tokens, hidden], where the market keeps them whole
        (hidden-state stages); the market's seeded projections of them where the rows are too wide to keep
        (last-token logits); None where nothing but the commitment is kept."""
        ...

    def violations(self, job_id: str) -> list[BindingFault]:
        """Commitments the coordinator caught contradicting what the same worker sent (provable, no replay)."""
        ...


@dataclass(frozen=True)
class VerifierConfig:
    policy: sampling.SamplingPolicy = sampling.DEFAULT_POLICY
    economics: sampling.Economics = sampling.DEFAULT_ECONOMICS
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    # Per model name, per dtype: calibrated on that model (shipped in market/verifier/tolerances/); they win over
    # `tolerances`, which were calibrated on a tiny model.
    model_tolerances: dict[str, dict[str, Tolerance]] = field(default_factory=shipped_model_tolerances)
    sketch_k: int | None = None  # None: accept the k the sketch declares (the job spec pins it in production)
    slash_amount: int = 0  # 0: the vault's minStake
    ban_after_slashes: int = 2  # guilty in this many jobs: the address is banned and its links closed

    def tolerance(self, model: str, dtype: str) -> Tolerance:
        return self.model_tolerances.get(model, {}).get(dtype) or self.tolerances[dtype]


# --- before the work -------------------------------------------------------------------------------------------


def open_run(session: Session, *, job_id: str, now: datetime, secret: bytes | None = None) -> VerificationRun:
    """Create the job's run with a fresh secret (idempotent); the beacon may be published with the job."""
    run = session.get(VerificationRun, job_id)
    if run is None:
        raw = secret if secret is not None else os.urandom(32)
        run = VerificationRun(
            job_id=job_id,
            status="open",
            secret="0x" + raw.hex(),
            beacon="0x" + sampling.beacon_commitment(raw).hex(),
            created_at=now,
            updated_at=now,
        )
        session.add(run)
        session.commit()
    return run


def work_id(work_key: str) -> bytes:
    """bytes32 of a work part (the task id of its settlement record): keccak256 of its key."""
    return keccak(text=work_key)


def _history(session: Session, worker: str, now: datetime) -> sampling.WorkerHistory:
    row = session.scalar(select(Worker).where(Worker.address == worker))
    if row is None:
        return sampling.WorkerHistory()
    rep = worker_reputation(session, worker_id=row.id, now=now)
    base = reputation([], now=now)
    return sampling.WorkerHistory(verified=rep.alpha - base.alpha, failed=rep.beta - base.beta)


def _pick(rng: random.Random, pool: Sequence[Replica], exclude_ops: set[str], exclude: set[str]) -> Replica | None:
    candidates = [r for r in pool if not r.operators & exclude_ops and not r.addresses & exclude]
    if not candidates:
        return None
    return rng.choices(candidates, weights=[max(r.weight, 1e-12) for r in candidates])[0]


def _chain_metrics(replica: Replica | None) -> dict[str, Any]:
    """A check's metrics start with the chain its replay runs on (a chain replica only)."""
    if replica is None or not replica.chain:
        return {}
    return {"chain": [[a, lo, hi] for a, _, lo, hi in replica.chain]}


def _pending_ids(session: Session, job_id: str) -> list[str]:
    return list(
        session.scalars(
            select(VerificationCheck.id).where(
                VerificationCheck.job_id == job_id, VerificationCheck.status == "pending"
            )
        ).all()
    )


def _group(check: VerificationCheck) -> tuple[object, ...]:
    """Round-0 checks of one part's sequence on one replica are answered by one replay (`run_check`)."""
    if check.round != 0:
        return (check.id,)
    return (check.work_key, check.chunk_index >> 32, check.replica)


def _siblings(session: Session, check: VerificationCheck) -> list[VerificationCheck]:
    """The pending checks of `check`'s group (itself included), by chunk."""
    if check.round != 0:
        return [check]
    rows = session.scalars(
        select(VerificationCheck).where(
            VerificationCheck.job_id == check.job_id,
            VerificationCheck.work_key == check.work_key,
            VerificationCheck.round == 0,
            VerificationCheck.status == "pending",
        )
    ).all()
    return sorted((c for c in rows if _group(c) == _group(check)), key=lambda c: c.chunk_index)


def _replay_ids(session: Session, job_id: str) -> list[str]:
    """One pending check id per replay to run (`run_check` on it decides its whole group)."""
    rows = session.scalars(
        select(VerificationCheck)
        .where(VerificationCheck.job_id == job_id, VerificationCheck.status == "pending")
        .order_by(VerificationCheck.work_key, VerificationCheck.chunk_index, VerificationCheck.round)
    ).all()
    lead: dict[tuple[object, ...], str] = {}
    for c in rows:
        lead.setdefault(_group(c), c.id)
    return list(lead.values())


# --- sampling --------------------------------------------------------------------------------------------------


def start_verification(
    session: Session,
    source: WorkSource,
    cfg: VerifierConfig,
    *,
    job_id: str,
    now: datetime,
    rng: random.Random | None = None,
) -> list[str]:
    """Sample the job's segments and create round-0 checks; returns the ids of checks to replay.

    No DB transaction is held while the source is asked (its replicas and replays may need the market's own DB,
    and on SQLite every transaction holds the write lock).
    """
    rng = rng or random.SystemRandom()
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("job", job_id)
    run = session.get(VerificationRun, job_id)
    if run is None:
        log.warning("job %s had no verification run before its work; drawing the secret now", job_id)
        run = open_run(session, job_id=job_id, now=now)
    if run.status != "open":
        return _replay_ids(session, job_id)  # a redelivered task: the replays still pending
    chain_job_id, secret, beacon = job.chain_job_id, bytes.fromhex(run.secret[2:]), bytes.fromhex(run.beacon[2:])
    session.commit()

    parts = source.parts(job_id)
    faults = source.violations(job_id)
    if not parts and not faults:
        raise Conflict(f"job {job_id} has no work to verify")
    # Keyed by the work key's hash, not the scope's task id: after a failover two workers share one stage scope.
    roots = {work_id(part.work_key): part.signed_root.root for part in parts}
    seed = sampling.sampling_seed(bytes.fromhex(chain_job_id[2:]), roots, secret, beacon)
    by_task = {work_id(part.work_key): part for part in parts}
    # The unit is a sequence; the economics take the worker's longest sequence in the job (in chunks).
    per_worker: dict[str, int] = defaultdict(int)
    for part in parts:
        per_worker[part.worker] = max(per_worker[part.worker], sampling.chunks_per_sequence(part.chunk_indices))
    histories = {worker: _history(session, worker, now) for worker in per_worker}
    tasks = [
        sampling.TaskChunks(
            task_id=work_id(part.work_key),
            stage=part.stage,
            chunk_indices=part.chunk_indices,
            rate=sampling.sampling_rate(cfg.economics, histories[part.worker], per_worker[part.worker], cfg.policy),
        )
        for part in parts
    ]
    session.commit()
    faulted = {(f.work_key, f.chunk_index) for f in faults}
    segments = [
        seg
        for seg in sampling.sample_segments(seed, tasks)
        if (by_task[seg.task_id].work_key, seg.chunk_index) not in faulted
    ]
    # Every part's replicas: a part no replica of another operator can replay is never paid as verified.
    pools = {part.work_key: source.replicas(job_id, part) for part in parts}
    sampled = {by_task[seg.task_id].work_key for seg in segments}
    for part, task in zip(parts, tasks, strict=True):
        alone = not any(
            part.operator_id not in r.operators and part.worker not in r.addresses for r in pools[part.work_key]
        )
        if alone and part.work_key not in sampled and part.chunk_indices:  # record why it is not paid
            segments.append(sampling.Segment(task.task_id, part.stage, part.chunk_indices[0]))

    run = session.get(VerificationRun, job_id)
    if run is None or run.status != "open":  # another delivery of this task got here first
        session.commit()
        return _replay_ids(session, job_id)
    existing = {p.work_key: p for p in session.scalars(select(WorkPart).where(WorkPart.job_id == job_id))}
    for part, task in zip(parts, tasks, strict=True):
        row = existing.get(part.work_key)
        if row is None:
            row = WorkPart(job_id=job_id, work_key=part.work_key)
            session.add(row)
        row.worker, row.operator_id, row.stage = to_checksum_address(part.worker), part.operator_id, part.stage
        row.layer_start, row.layer_end, row.units = part.layer_start, part.layer_end, part.units
        row.chunk_count, row.root, row.status = len(part.chunk_indices), "0x" + part.signed_root.root.hex(), "pending"
        row.rate = task.rate
    for fault in faults:  # decided by the signed data alone: no replica needed
        if fault.work_key not in existing and fault.work_key not in {p.work_key for p in parts}:
            existing[fault.work_key] = WorkPart(
                job_id=job_id,
                work_key=fault.work_key,
                worker=to_checksum_address(fault.worker),
                operator_id=fault.operator_id,
                stage=fault.stage,
                layer_start=fault.layer_start,
                layer_end=fault.layer_end,
                units=0,
                chunk_count=0,
                root="",
                status="pending",
                rate=1.0,
            )
            session.add(existing[fault.work_key])
        session.add(
            VerificationCheck(
                job_id=job_id,
                work_key=fault.work_key,
                worker=to_checksum_address(fault.worker),
                stage=fault.stage,
                chunk_index=fault.chunk_index,
                round=0,
                replica=None,
                status="fail",
                reason="unbound",
                evidence=fault.evidence,
                metrics={"detail": fault.detail[:120], "evidence_signature": fault.signature},
                created_at=now,
                decided_at=now,
            )
        )
    picked: dict[tuple[str, int], Replica | None] = {}  # one replica per sequence: one replay checks all its chunks
    for seg in segments:
        part = by_task[seg.task_id]
        key = (part.work_key, seg.chunk_index >> 32)
        if key not in picked:
            picked[key] = _pick(rng, pools[part.work_key], {part.operator_id}, {part.worker})
        replica = picked[key]
        session.add(
            VerificationCheck(
                job_id=job_id,
                work_key=part.work_key,
                worker=part.worker,
                stage=part.stage,
                chunk_index=seg.chunk_index,
                round=0,
                replica=None if replica is None else replica.address,
                status="pending" if replica is not None else "void",
                reason="" if replica else "no_replica",
                metrics=_chain_metrics(replica),
                created_at=now,
                decided_at=None if replica else now,
            )
        )
    run.status, run.seed, run.sampled, run.updated_at = "replaying", "0x" + seed.hex(), len(segments), now
    session.commit()
    log.info("job %s: %d of %d chunks sampled", job_id, len(segments), sum(len(p.chunk_indices) for p in parts))
    ids = _replay_ids(session, job_id)
    session.commit()
    return ids


# --- replay and compare ----------------------------------------------------------------------------------------


def run_check(
    session: Session,
    source: WorkSource,
    cfg: VerifierConfig,
    *,
    check_id: str,
    now: datetime,
    rng: random.Random | None = None,
) -> tuple[str, list[str]]:
    """Replay one check's sequence and decide every pending round-0 check of it on the same replica (one replay
    answers them all); a dispute check is decided alone. Returns (job id, ids of dispute checks it opened).

    The replay runs outside any DB transaction (see `start_verification`).
    """
    rng = rng or random.SystemRandom()
    check = session.get(VerificationCheck, check_id)
    if check is None:
        raise NotFound("verification check", check_id)
    job_id, work_key, replica, rnd = check.job_id, check.work_key, check.replica, check.round
    hops = chain_hops(check.metrics)
    replica_id = "+".join(a for a, _, _ in hops) if hops else replica  # what the source replays on
    if check.status != "pending":
        session.commit()
        return job_id, []
    if rnd >= LOCALISE_ROUND:
        _rerun_hop(session, source, cfg, check, replica_id or "", now=now)
        return job_id, []
    todo = [(c.id, c.chunk_index) for c in _siblings(session, check)]
    session.commit()
    part = next((p for p in source.parts(job_id) if p.work_key == work_key), None)
    if part is None:
        raise NotFound("work part", work_key)
    judged = []
    for cid, chunk in todo:
        signed, proof = source.commitment(job_id, work_key, chunk)
        verdict = check_structure(
            signed,
            proof,
            expected_scope=part.scope,
            chunk_index=chunk,
            worker=part.worker,
            signed_root=part.signed_root,
        )
        receipt: ReplayReceipt | None = None
        if verdict is None:
            assert replica_id is not None  # pending checks always have one
            replayed = source.replay(job_id, part, chunk, replica_id)
            receipt = source.replay_evidence(job_id, part, chunk, replica_id)
            verdict = check_claim(
                signed,
                proof,
                replayed,
                cfg.tolerance(part.model, part.dtype),
                k=cfg.sketch_k,
                expected_scope=part.scope,
                chunk_index=chunk,
                worker=part.worker,
                signed_root=part.signed_root,
                held=source.held(job_id, part, chunk),
            )
        judged.append((cid, chunk, signed, verdict, receipt))
    disputed = rnd == 0 and any(v.needs_replay_vote for _, _, _, v, _ in judged)
    pool = source.replicas(job_id, part) if disputed else []

    opened: list[str] = []
    for cid, chunk, signed, verdict, receipt in judged:
        check = session.get(VerificationCheck, cid)
        if check is None or check.status != "pending":  # decided meanwhile by a duplicate delivery
            continue
        check.status = "pass" if verdict.ok else "fail"
        check.reason = verdict.reason[:128]
        check.metrics = {k: v for k, v in verdict.metrics.items() if v == v}  # drop NaN (not JSON)
        if hops:
            check.metrics["chain"] = [[a, lo, hi] for a, lo, hi in hops]
        if receipt is not None:
            check.metrics["replay_units"] = receipt.units  # the replica's work: paid as a work part (`decide_job`)
            check.metrics["replay_id"] = receipt.replay_id or check.id
            if receipt.digest:
                check.metrics["replica_evidence"] = receipt.digest
                check.metrics["replica_signature"] = receipt.signature
            if receipt.transcript:
                check.metrics["transcript"] = receipt.transcript
        check.evidence = "0x" + signed.commitment.digest.hex()
        check.metrics["evidence_signature"] = "0x" + signed.signature.hex()
        check.decided_at = now
        if rnd == 0 and verdict.needs_replay_vote:
            used_ops = {part.operator_id}
            used = {part.worker, replica or "", *(a for a, _, _ in hops)}
            first = next((r for r in pool if r.ident == replica_id), None)
            if first is not None:
                used_ops |= first.operators
                used |= first.addresses
            for dispute_round in DISPUTE_ROUNDS:
                pick = _pick(rng, pool, used_ops, used)
                row = VerificationCheck(
                    job_id=job_id,
                    work_key=work_key,
                    worker=check.worker,
                    stage=check.stage,
                    chunk_index=chunk,
                    round=dispute_round,
                    replica=None if pick is None else pick.address,
                    status="pending" if pick else "void",
                    reason="" if pick else "no_replica",
                    metrics=_chain_metrics(pick),
                    created_at=now,
                    decided_at=None if pick else now,
                )
                session.add(row)
                session.flush()
                if pick is not None:
                    used |= pick.addresses
                    used_ops |= pick.operators
                    opened.append(row.id)
    session.commit()
    return job_id, opened


def judge_rerun(rerun: HopRerun, tol: Tolerance) -> Verdict | None:
    """The hop's signed answer against the independent re-run of its input, chunk by chunk as every claim is
    compared (the first chunk that disagrees decides); None when there are no matching rows to compare."""
    if rerun.claimed.shape != rerun.rerun.shape or not rerun.claimed.shape[0]:
        return None
    verdicts = [
        compare_hidden_states(rerun.claimed[at : at + CHUNK_TOKENS], rerun.rerun[at : at + CHUNK_TOKENS], tol)
        for at in range(0, rerun.claimed.shape[0], CHUNK_TOKENS)
    ]
    return next((v for v in verdicts if not v.ok), verdicts[-1])


def _rerun_hop(
    session: Session, source: WorkSource, cfg: VerifierConfig, check: VerificationCheck, replica: str, *, now: datetime
) -> None:
    """Decide one re-run of a losing chain's hop: `fail` when the independent replica's rows for exactly the hop's
    input contradict the hop's signed answer beyond the calibrated tolerance (the check's evidence is then that
    signed answer), `pass` when they reproduce it, `void` when the hop's input was not the previous hop's signed
    output (nothing to hold the hop to)."""
    check_id, job_id, work_key, chunk = check.id, check.job_id, check.work_key, check.chunk_index
    metrics = dict(check.metrics or {})
    session.commit()
    part = next((p for p in source.parts(job_id) if p.work_key == work_key), None)
    if part is None:
        raise NotFound("work part", work_key)
    rerun = source.rerun_hop(job_id, part, str(metrics["transcript"]), int(metrics["hop_index"]), replica)
    verdict = judge_rerun(rerun, cfg.tolerance(part.model, part.dtype))
    check = session.get(VerificationCheck, check_id)  # type: ignore[assignment]
    if check is None or check.status != "pending":
        session.commit()
        return
    if not rerun.input_bound:
        check.status, check.reason = "void", "input_not_bound"
    elif verdict is None:
        check.status, check.reason = "void", "rerun_shape"  # no rows to hold the hop to
    else:
        check.status, check.reason = ("pass" if verdict.ok else "fail"), verdict.reason[:128]
        metrics.update({k: v for k, v in verdict.metrics.to_json().items() if v == v})
    metrics.update(evidence_signature=rerun.signature, replay_units=rerun.units, replay_id=rerun.replay_id or check_id)
    check.metrics, check.evidence, check.decided_at = metrics, rerun.digest, now
    log.info("job %s: hop %s of a losing chain on %s#%d: %s", job_id, check.worker, work_key, chunk, check.status)
    session.commit()


def _lost_chains(checks: Sequence[VerificationCheck]) -> list[tuple[VerificationCheck, list[VerificationCheck]]]:
    """Per sampled segment whose round-0 replica was a chain that lost its 2-of-3: (its round-0 check, the
    segment's localisation checks so far)."""
    segments: dict[tuple[str, int], list[VerificationCheck]] = defaultdict(list)
    for c in checks:
        segments[(c.work_key, c.chunk_index)].append(c)
    out = []
    for rows in segments.values():
        votes = sorted((r for r in rows if r.round < LOCALISE_ROUND), key=lambda r: r.round)
        if not votes or votes[0].round != 0 or not chain_hops(votes[0].metrics):
            continue
        _, first_lost = decide_segment([Vote(r.round, r.status, r.reason) for r in votes])
        if first_lost:
            out.append((votes[0], sorted((r for r in rows if r.round >= LOCALISE_ROUND), key=lambda r: r.round)))
    return out


def _job_checks(session: Session, job_id: str) -> Sequence[VerificationCheck]:
    return session.scalars(select(VerificationCheck).where(VerificationCheck.job_id == job_id)).all()


def _unlocalised(checks: Sequence[VerificationCheck]) -> list[VerificationCheck]:
    """Round-0 chain checks that lost, carry a transcript to re-run from, and have no localisation checks yet."""
    return [first for first, reruns in _lost_chains(checks) if not reruns and (first.metrics or {}).get("transcript")]


def open_localisations(
    session: Session,
    source: WorkSource,
    *,
    job_id: str,
    now: datetime,
    rng: random.Random | None = None,
) -> list[str]:
    """Once no check is pending: for every chain replica that lost its 2-of-3, re-run each hop alone on
    `LOCALISE_RERUNS` replicas of operators outside the chain and the audited worker's (each re-run a pending
    check of the hop's address, decided by `run_check`). Returns the ids to run ([] when there is nothing to
    localise, or another delivery opened them first: the segment's rounds are unique)."""
    rng = rng or random.SystemRandom()
    if _pending_ids(session, job_id):
        session.commit()
        return []
    todo = [
        (c.work_key, c.chunk_index, c.replica or "", chain_hops(c.metrics), str(c.metrics["transcript"]))
        for c in _unlocalised(_job_checks(session, job_id))
    ]
    session.commit()
    if not todo:
        return []
    parts = {p.work_key: p for p in source.parts(job_id)}
    rows: list[VerificationCheck] = []
    for work_key, chunk, replica, hops, transcript in todo:
        part = parts[work_key]
        chain = next((r for r in source.replicas(job_id, part) if r.ident == "+".join(a for a, _, _ in hops)), None)
        used_ops = {part.operator_id} | (chain.operators if chain is not None else set())
        used = {part.worker, replica} | {a for a, _, _ in hops}
        for i, (address, lo, hi) in enumerate(hops):
            hop = dataclasses.replace(part, worker=address, layer_start=lo, layer_end=hi, stage=lo)
            pool = source.replicas(job_id, hop)
            picked: set[str] = set()
            for j in range(LOCALISE_RERUNS):
                pick = _pick(rng, pool, used_ops | picked, used)
                if pick is not None:
                    picked |= pick.operators
                rows.append(
                    VerificationCheck(
                        job_id=job_id,
                        work_key=work_key,
                        worker=address,
                        stage=lo,
                        chunk_index=chunk,
                        round=LOCALISE_ROUND + LOCALISE_RERUNS * i + j,
                        replica=None if pick is None else pick.address,
                        status="pending" if pick else "void",
                        reason="" if pick else "no_replica",
                        metrics={
                            **_chain_metrics(pick),
                            "hop": [address, lo, hi],
                            "hop_index": i,
                            "transcript": transcript,
                        },
                        created_at=now,
                        decided_at=None if pick else now,
                    )
                )
    session.add_all(rows)
    try:
        session.commit()
    except IntegrityError:  # a concurrent delivery opened them: it runs them
        session.rollback()
        return []
    log.info("job %s: %d losing chain(s) localised hop by hop", job_id, len(todo))
    return [r.id for r in rows if r.status == "pending"]


def void_check(session: Session, *, check_id: str, reason: str, now: datetime) -> str | None:
    """Give up on a check whose replica stayed unavailable: it no longer blocks the job (its vote is void), nor do
    the other checks its replay would have answered (`_group`)."""
    check = session.get(VerificationCheck, check_id)
    if check is None or check.status != "pending":
        session.commit()
        return None if check is None else check.job_id
    for row in _siblings(session, check):
        row.status, row.reason, row.decided_at = "void", reason[:128], now
    session.commit()
    return check.job_id


# --- decision --------------------------------------------------------------------------------------------------


def losing_replays(rows: Sequence[VerificationCheck], outcome: str) -> set[str]:
    """Ids of a segment's checks whose replica answered against its 2-of-3 decision (only where disputes voted)."""
    if not any(r.round > 0 and r.status in ("pass", "fail") for r in rows):
        return set()
    if outcome == GUILTY:
        return {r.id for r in rows if r.status == "pass"}
    if outcome == "cleared":
        return {r.id for r in rows if r.status == "fail"}
    return set()


@dataclass(frozen=True)
class JobDecision:
    job_id: str
    guilty: dict[str, str]  # worker -> evidence digest
    slash_ids: list[str]


def decide_job(session: Session, cfg: VerifierConfig, *, job_id: str, now: datetime) -> JobDecision | None:
    """Decide every sampled segment once nothing is pending (None while replays are still running).

    One transaction: the compare-and-set that claims the decision (of several concurrent deciders exactly one
    moves the run on; the others wait on its row lock and then find it moved) commits together with everything
    decided, so a crash leaves the run `replaying` (decided again by the next delivery or the sweeper) or fully
    decided, never half-way. `deciding` is accepted as a start state for runs an older version left there.
    """
    pending = bool(_pending_ids(session, job_id))
    if not pending:  # a losing chain still to localise (`open_localisations`) holds the decision too
        pending = bool(_unlocalised(_job_checks(session, job_id)))
    session.commit()  # end the read transaction (SQLite cannot upgrade a stale read to a write)
    if pending:
        return None
    moved = session.execute(
        update(VerificationRun)
        .where(VerificationRun.job_id == job_id, VerificationRun.status.in_(("replaying", "deciding")))
        .values(status="deciding", updated_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if not moved:
        session.rollback()
        return None
    job = session.get(Job, job_id)
    assert job is not None
    checks = _job_checks(session, job_id)
    segments: dict[tuple[str, int], list[VerificationCheck]] = defaultdict(list)
    for c in checks:
        if c.round < LOCALISE_ROUND:  # the votes on the audited claim; re-runs of a losing chain's hops below
            segments[(c.work_key, c.chunk_index)].append(c)
    guilty: dict[str, tuple[str, str, str]] = {}  # worker -> (evidence, finder, the worker's signature over it)
    outvoted: set[str] = set()  # checks whose replica's answer lost its segment's 2-of-3: that replay is not paid
    proved_honest: dict[str, set[str]] = {}  # per losing chain check: hops whose re-runs reproduced their answers
    faulty_parts: set[str] = set()
    unchecked_parts: set[str] = set()  # a sampled segment no replica could check
    workers = {w.address: w for w in session.scalars(select(Worker)).all()} if checks else {}
    for (work_key, _chunk), rows in sorted(segments.items()):
        rows.sort(key=lambda r: r.round)
        outcome, first_lost = decide_segment([Vote(r.round, r.status, r.reason) for r in rows])
        first = rows[0]
        accused = workers.get(first.worker)
        if outcome == GUILTY:
            signature = str((first.metrics or {}).get("evidence_signature", ""))
            guilty.setdefault(first.worker, (first.evidence, first.replica or "", signature))
        elif outcome == FAULTY:
            faulty_parts.add(work_key)
        elif outcome == UNVERIFIED:
            unchecked_parts.add(work_key)
        if accused is not None and outcome in ("cleared", GUILTY, FAULTY):
            record_outcome(
                session,
                worker_id=accused.id,
                kind="pass" if outcome == "cleared" else "fail",
                now=now,
                job_id=job_id,
                detail=f"{work_key}#{first.chunk_index}: {first.reason}",
            )
        outvoted.update(losing_replays(rows, outcome))
        # A single replica that lost takes a reputation hit and is slashed with its signed answer; a chain that
        # lost is localised below (the hop its own signed answer convicts), its other hops are unpaid unless their
        # re-runs proved them honest.
        liar = None if chain_hops(first.metrics) else workers.get(first.replica or "")
        if first_lost and liar is not None:
            record_outcome(
                session,
                worker_id=liar.id,
                kind="fail",
                now=now,
                job_id=job_id,
                detail=f"lost dispute on {work_key}#{first.chunk_index}",
            )
        evidence = (first.metrics or {}).get("replica_evidence")
        if first_lost and first.replica and isinstance(evidence, str) and evidence.startswith("0x"):
            # Its signed answer was outvoted by two replicas of other operators: provable, slashable; the
            # worker it accused is the finder.
            signature = str((first.metrics or {}).get("replica_signature", ""))
            guilty.setdefault(first.replica, (evidence, first.worker, signature))
    for first, reruns in _lost_chains(checks):
        hops = chain_hops(first.metrics)
        by_hop = [[r for r in reruns if r.metrics.get("hop_index") == i] for i in range(len(hops))]
        index, reason, honest = localise_chain([[Vote(r.round, r.status, r.reason) for r in v] for v in by_hop])
        if not reruns:
            reason = "not localised: the replay kept no per-hop transcript"
        first.metrics = {**(first.metrics or {}), "localised": reason}
        proved_honest[first.id] = {hops[i][0] for i in honest}
        if index is None:
            log.warning("job %s: losing chain on %s#%d: %s", job_id, first.work_key, first.chunk_index, reason)
            continue
        convicting = next(r for r in by_hop[index] if r.status == "fail")
        liar_row = workers.get(hops[index][0])
        if liar_row is not None:
            record_outcome(
                session,
                worker_id=liar_row.id,
                kind="fail",
                now=now,
                job_id=job_id,
                detail=f"lied as hop {index} of a chain replay of {first.work_key}#{first.chunk_index}",
            )
        # Its own signed answer, contradicted by two independent re-runs of its own input: provable, slashable;
        # the worker the chain accused is the finder.
        signature = str(convicting.metrics.get("evidence_signature", ""))
        guilty.setdefault(hops[index][0], (convicting.evidence, first.worker, signature))
    parts = {p.work_key: p for p in session.scalars(select(WorkPart).where(WorkPart.job_id == job_id))}
    for check in checks:  # every replay a check used is work of its replica (of each hop of a chain)
        units = (check.metrics or {}).get("replay_units")
        audited = parts.get(check.work_key)
        if check.replica is None or not isinstance(units, int) or audited is None:
            continue
        span = (check.metrics or {}).get("hop")  # a re-run of one hop of a losing chain runs that hop's layers
        lo, hi = (int(span[1]), int(span[2])) if span else (audited.layer_start, audited.layer_end)
        hops = chain_hops(check.metrics) or [(check.replica, lo, hi)]
        for i, (address, lo, hi) in enumerate(hops):
            replay_id = str((check.metrics or {}).get("replay_id") or check.id)
            key = replay_key(check.work_key, replay_id) + (f"/{i}" if len(hops) > 1 else "")
            if key not in parts:
                hop = workers.get(address)
                parts[key] = WorkPart(
                    job_id=job_id,
                    work_key=key,
                    worker=address,
                    operator_id=hop.operator_id if hop is not None else address.lower(),
                    stage=lo,
                    layer_start=lo,
                    layer_end=hi,
                    units=units,
                    chunk_count=0,
                    root="",
                    rate=0.0,
                )
                session.add(parts[key])
            if check.id in outvoted and address not in proved_honest.get(check.id, set()):
                faulty_parts.add(key)  # its answer lost the 2-of-3 (and slashes it where it signed it)
    for part in parts.values():
        if part.worker in guilty:
            part.status = UNPAID_SLASHED  # the cheater's whole share of the job: its unverified work is refunded
        elif part.work_key in faulty_parts:
            part.status = UNPAID_FAULTY
        elif part.work_key in unchecked_parts:
            part.status = UNPAID_UNCHECKED  # held back: refunded to the requester, never paid unchecked
        else:
            part.status = PAID
    slash_ids = []
    for worker, (evidence, finder, signature) in sorted(guilty.items()):
        existing = session.scalar(select(SlashRecord).where(SlashRecord.job_id == job_id, SlashRecord.worker == worker))
        if existing is None:
            # No replica found it (a fault in the signed data alone): the harmed requester takes the finder's share.
            existing = SlashRecord(
                job_id=job_id,
                worker=worker,
                amount=cfg.slash_amount,
                evidence=evidence,
                signature=signature or None,
                finder=finder or job.requester,
                requester=job.requester,
                status="pending",
                created_at=now,
            )
            session.add(existing)
            session.flush()
        slash_ids.append(existing.id)
        if worker in workers:
            record_outcome(
                session,
                worker_id=workers[worker].id,
                kind="slash",
                now=now,
                job_id=job_id,
                detail=f"guilty in job {job_id}",
            )
            workers[worker].last_slash_at = now
            guilty_jobs = session.scalar(
                select(func.count(func.distinct(ReputationEvent.job_id))).where(
                    ReputationEvent.worker_id == workers[worker].id, ReputationEvent.kind == "slash"
                )
            )
            if (guilty_jobs or 0) >= cfg.ban_after_slashes:
                # Repeated guilt: banned for good; the market closes its live links within a second.
                workers[worker].status, workers[worker].eligible = "banned", False
                log.warning("worker %s banned after %d slashed jobs", worker, guilty_jobs)
    run = session.get(VerificationRun, job_id)
    assert run is not None
    run.status = "slashing" if slash_ids else "settling"
    run.detail = f"{len(checks)} checks, {len(guilty)} guilty"
    run.updated_at = now
    session.commit()
    return JobDecision(job_id, {w: e for w, (e, _, _) in guilty.items()}, slash_ids)


# --- slashing --------------------------------------------------------------------------------------------------


def execute_slash(session: Session, op: Slasher, *, slash_id: str, now: datetime) -> SlashRecord:
    """Slash once per (job, worker): a retry after a crash finds the chain's Slashed event instead of resending.

    `pending` -> (sent) -> `sent` -> (event `op.confirmations` deep) -> `confirmed`; a `sent` slash whose event the
    chain no longer has (a reorg, a node restarted without its state) is pending again and sent again. The run
    moves on to settlement once no slash is pending (confirmation does not hold the requester's settlement up).
    """
    row = session.get(SlashRecord, slash_id)
    if row is None:
        raise NotFound("slash", slash_id)
    if row.status in ("pending", "sent"):
        job = session.get(Job, row.job_id)
        assert job is not None
        chain_job_id = bytes.fromhex(job.chain_job_id[2:])
        done = op.find_slash(worker=row.worker, chain_job_id=chain_job_id, from_block=job.created_block)
        if done is None and not row.signature:
            # Nothing the vault would accept (it checks the worker's signature over the evidence on chain).
            log.error("slash %s of %s: no signature of the worker over its evidence; not sent", row.id, row.worker)
            row.status, row.confirmed_at = "rejected", now
        elif done is None:
            if row.status == "sent":
                log.warning(
                    "slash %s: its transaction %s is gone from the chain; sending it again", row.id, row.tx_hash
                )
                op.resync()
            try:
                done = op.slash(
                    worker=row.worker,
                    amount=row.amount or op.min_stake(),
                    chain_job_id=chain_job_id,
                    evidence=bytes.fromhex(row.evidence[2:]),
                    signature=bytes.fromhex((row.signature or "").removeprefix("0x")),
                    requester=row.requester,
                    finder=row.finder,
                )
            except NothingToSlash:
                row.status = "nothing_staked"
                row.confirmed_at = now
            except EvidenceRejected as exc:
                log.error("slash %s of %s: the vault refused the evidence (%s)", row.id, row.worker, exc)
                row.status, row.confirmed_at = "rejected", now
        if done is not None:
            row.tx_hash, row.slashed = done.tx_hash, done.amount
            if op.confirmed(done.block_number):
                row.status, row.confirmed_at = "confirmed", now
            else:
                row.status = "sent"
        session.commit()
    moved = session.execute(
        update(VerificationRun)
        .where(VerificationRun.job_id == row.job_id, VerificationRun.status == "slashing")
        .values(status="settling", updated_at=now)
        .where(
            ~select(SlashRecord.id).where(SlashRecord.job_id == row.job_id, SlashRecord.status == "pending").exists()
        )
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if moved:
        log.info("job %s: slashes done, ready to settle", row.job_id)
    return row

"""Federated rounds in the market: the secure-aggregation relay (`globai.protocol.secagg`) and the masked sum.

The market never holds an individual update of a federated job. Per round it relays, under
``<training dir>/secagg/<job>/<round>/``, write-once JSON messages:

    keys/<slot>.json      the slot's two X25519 public keys, signed with the worker's eth key
    shares/<slot>.json    its Shamir shares sealed (AES-GCM) for every other participant: opaque to the market
    unmask/<slot>.json    after the round closed: the slot's shares of each survivor's self-mask seed and of each
                          dropped participant's mask key (never both for one participant)
    keys.closed, shares.closed   the phase's participants, fixed once (O_EXCL: the first decision wins)

Masked inputs arrive through the ordinary update endpoint (signed digest, stored in the update blob store) and
close the round like any update. Phases: **keys** (closes with all W slots, or with ≥ t after
``phase_timeout_s``), **shares** (all who sent keys, or ≥ t after the timeout), **masked** (the round: every slot
that shared, or ≥ t after the timeout), **unmask** (every survivor, or ≥ t after the timeout). A phase that
never reaches t keeps waiting (the job's deadline ends it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from globai.protocol import secagg
from globai.protocol.training import PAYLOAD_KIND
from market.db import Job, Task, Worker
from market.db.training import TrainingJob, TrainingRound, TrainingUpdate
from market.domain_errors import Conflict, Forbidden, InvalidRequest, LeaseLost, NotFound
from market.services import leasing
from market.training.spec import TrainingJobSpec

PHASES = ("keys", "shares")


@dataclass(frozen=True)
class Closed:
    slots: list[int]
    at: datetime


class SecAggRound:
    """The relay's files for one round of one job (several processes may share the directory)."""

    def __init__(self, root: Path, job_id: str, round_index: int, base_manifest: str) -> None:
        # One relay per (round, base checkpoint): a round restarted by a rollback starts the protocol afresh.
        self.dir = Path(root) / "secagg" / job_id / f"r{round_index:06d}-{base_manifest[:16]}"

    def _write_once(self, rel: str, record: dict[str, Any]) -> bool:
        """Create the file with `record`; False if it exists with the same content; Conflict if different."""
        path = self.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(record, sort_keys=True).encode()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(record)}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)  # atomic create-if-absent with complete content
        except FileExistsError:
            if path.read_bytes() != data:
                raise Conflict(f"{rel} was already sent with different content") from None
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _read_dir(self, sub: str) -> dict[int, dict[str, Any]]:
        d = self.dir / sub
        if not d.is_dir():
            return {}
        return {int(p.stem): json.loads(p.read_text()) for p in d.glob("*.json")}

    def put(self, phase: str, slot: int, record: dict[str, Any]) -> bool:
        return self._write_once(f"{phase}/{slot}.json", record)

    def messages(self, phase: str) -> dict[int, dict[str, Any]]:
        return self._read_dir(phase)

    def closed(self, phase: str) -> Closed | None:
        path = self.dir / f"{phase}.closed"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        return Closed(list(raw["slots"]), datetime.fromisoformat(raw["at"]))

    def close(self, phase: str, slots: list[int], now: datetime) -> Closed:
        self._write_once(f"{phase}.closed", {"slots": sorted(slots), "at": now.isoformat()})
        closed = self.closed(phase)
        assert closed is not None
        return closed


def _decide(have: list[int], expected: int, t: int, since: datetime, timeout_s: float, now: datetime) -> bool:
    return len(have) >= expected or (len(have) >= t and now >= since + timedelta(seconds=timeout_s))


def advance_phases(rnd: SecAggRound, spec: TrainingJobSpec, opened_at: datetime, now: datetime) -> dict[str, Closed]:
    """Close the keys and shares phases when their rule holds (idempotent); returns the closed ones."""
    fed = spec.federated
    assert fed is not None
    t, out = spec.secagg_threshold, dict[str, Closed]()
    keys = rnd.closed("keys")
    if keys is None:
        have = sorted(rnd.messages("keys"))
        if not _decide(have, spec.workers_per_round, t, opened_at, fed.phase_timeout_s, now):
            return out
        keys = rnd.close("keys", have, now)
    out["keys"] = keys
    shares = rnd.closed("shares")
    if shares is None:
        have = sorted(s for s in rnd.messages("shares") if s in keys.slots)
        if not _decide(have, len(keys.slots), t, keys.at, fed.phase_timeout_s, now):
            return out
        shares = rnd.close("shares", have, now)
    out["shares"] = shares
    return out


def masked_deadline(rnd: SecAggRound, spec: TrainingJobSpec) -> datetime | None:
    """When the round may close with ≥ t masked inputs (None: the shares phase is still open)."""
    shares = rnd.closed("shares")
    assert spec.federated is not None
    return None if shares is None else shares.at + timedelta(seconds=spec.federated.phase_timeout_s)


def check_keys(rnd: SecAggRound, context: bytes, slot: int, worker: str, body: dict[str, Any]) -> dict[str, Any]:
    """Validate a slot's keys message (signed by `worker`) and return the record to store."""
    try:
        c_pub, s_pub = bytes.fromhex(body["c_public"]), bytes.fromhex(body["s_public"])
        signer = secagg.keys_signer(context, slot, c_pub, s_pub, str(body["signature"]))
    except (KeyError, ValueError, secagg.SecAggError) as exc:
        raise InvalidRequest(f"bad secure-aggregation keys: {exc}") from None
    if len(c_pub) != 32 or len(s_pub) != 32:
        raise InvalidRequest("X25519 public keys are 32 bytes")
    if signer != worker:
        raise InvalidRequest("the keys are not signed by the lease holder")
    return {
        "slot": slot,
        "worker": worker,
        "c_public": c_pub.hex(),
        "s_public": s_pub.hex(),
        "signature": body["signature"],
    }


def unmasked_mean(
    rnd: SecAggRound,
    spec: TrainingJobSpec,
    masked: dict[int, bytes],
    shapes: dict[str, tuple[int, ...]],
    context: bytes,
) -> dict[str, torch.Tensor]:
    """The mean of the survivors' clipped (noised) updates from their masked inputs and the unmask shares."""
    fed = spec.federated
    assert fed is not None
    n = sum(int(torch.Size(s).numel()) for s in shapes.values())
    keys = rnd.messages("keys")
    shares = rnd.closed("shares")
    assert shares is not None
    survivors = sorted(masked)
    dropped = [u for u in shares.slots if u not in masked]
    posts = rnd.messages("unmask")
    b_seeds, s_keys = {}, {}
    for u in survivors:
        b_seeds[u] = secagg.combine([_share(p["b"][str(u)]) for p in posts.values() if str(u) in p["b"]])
    for u in dropped:
        s_keys[u] = secagg.combine([_share(p["s"][str(u)]) for p in posts.values() if str(u) in p["s"]])
        if secagg.KeyPair.from_private(s_keys[u]).public.hex() != keys[u]["s_public"]:
            raise secagg.SecAggError(f"the shares of slot {u}'s mask key do not match its public key")
    s_publics = {u: bytes.fromhex(keys[u]["s_public"]) for u in shares.slots}
    ys = {u: secagg.decode_masked(masked[u], n) for u in survivors}
    total = secagg.unmask_sum(ys, s_publics, b_seeds, s_keys, context)
    scale = fixed_point(spec)[1]
    return secagg.unflatten(secagg.decode_sum(total, scale) / len(survivors), shapes)


def _share(raw: list[Any]) -> tuple[int, bytes]:
    return int(raw[0]), bytes.fromhex(str(raw[1]))


def fixed_point(spec: TrainingJobSpec) -> tuple[float, float]:
    """(bound, scale) of the fixed-point encoding: coordinates are clamped to ±bound (the clip norm plus 8 noise
    standard deviations), and a sum of W of them fits the ring."""
    from market.training.privacy import worker_noise_std

    fed = spec.federated
    assert fed is not None
    noise = worker_noise_std(fed.clip_norm, fed.noise_multiplier, spec.secagg_threshold)
    bound = fed.clip_norm + 8 * noise
    return bound, secagg.fixed_point_scale(bound, spec.workers_per_round)


def check_masked_input(
    root: Path,
    job_id: str,
    round_index: int,
    base_manifest: str,
    slot: int,
    payload: bytes,
    shapes: dict[str, tuple[int, ...]],
) -> None:
    """A masked input is only taken from a slot whose shares everyone holds (else it could never be unmasked)."""
    shares = SecAggRound(root, job_id, round_index, base_manifest).closed("shares")
    if shares is None or slot not in shares.slots:
        raise Conflict(f"slot {slot} of round {round_index} is not in the secure-aggregation round (keys/shares)")
    secagg.decode_masked(payload, sum(int(torch.Size(s).numel()) for s in shapes.values()))


# -- the relay's service functions (routes call these) -------------------------------------------------------------


def _round_of(
    session: Session, job_id: str, round_index: int
) -> tuple[Job, TrainingJob, TrainingRound, TrainingJobSpec]:
    job, tj = session.get(Job, job_id), session.get(TrainingJob, job_id)
    rnd = session.scalar(
        select(TrainingRound).where(TrainingRound.job_id == job_id, TrainingRound.round == round_index)
    )
    if job is None or tj is None or rnd is None:
        raise NotFound("training round", f"{job_id}/{round_index}")
    spec = TrainingJobSpec.model_validate(tj.spec)
    if spec.federated is None:
        raise InvalidRequest(f"job {job_id} is not federated")
    return job, tj, rnd, spec


def context_of(job: Job, tj: TrainingJob, rnd: TrainingRound) -> bytes:
    return secagg.round_context(tj.chain_id, job.chain_job_id, rnd.round, rnd.base_manifest)


def post_phase_message(
    session: Session,
    *,
    root: Path,
    task_id: str,
    worker_address: str,
    lease_id: str,
    phase: str,
    body: dict[str, Any],
    now: datetime,
) -> bool:
    """The lease holder's keys or sealed shares for its slot; True when stored now, False when already stored."""
    task = leasing.get_task(session, task_id=task_id)
    worker_id = session.scalar(select(Worker.id).where(Worker.address == worker_address))
    if not (task.status == "leased" and task.lease_id == lease_id and task.leased_by == worker_id):
        raise LeaseLost(task_id)
    if task.payload.get("kind") != PAYLOAD_KIND or task.payload.get("replay_of") is not None:
        raise InvalidRequest(f"task {task_id} is not a training task")
    slot, round_index = int(task.payload["slot"]), int(task.payload["round"])
    job, tj, rnd, spec = _round_of(session, task.job_id, round_index)
    context, opened_at, base = context_of(job, tj, rnd), rnd.opened_at, rnd.base_manifest
    session.rollback()
    if task.payload.get("base_manifest") != base:
        raise Conflict(f"task {task_id} was for an earlier base checkpoint of round {round_index}")
    relay = SecAggRound(root, job.id, round_index, base)
    closed = advance_phases(relay, spec, opened_at, now)
    if phase == "keys":
        if "keys" in closed:
            raise Conflict(f"the keys phase of round {round_index} is closed")
        return relay.put("keys", slot, check_keys(relay, context, slot, worker_address, body))
    if phase != "shares":
        raise InvalidRequest(f"unknown secure-aggregation phase {phase!r}")
    keys = closed.get("keys")
    if keys is None or "shares" in closed:
        raise Conflict(f"the shares phase of round {round_index} is not open")
    if slot not in keys.slots:
        raise Conflict(f"slot {slot} sent no keys in time")
    sealed = body.get("shares")
    if not isinstance(sealed, dict) or sorted(int(k) for k in sealed) != keys.slots:
        raise InvalidRequest(f"shares must be sealed for exactly the slots {keys.slots}")
    try:
        record = {str(int(k)): bytes.fromhex(str(v)).hex() for k, v in sealed.items()}
    except ValueError:
        raise InvalidRequest("sealed shares must be hex") from None
    if any(len(v) > 2 * 1024 for v in record.values()):
        raise InvalidRequest("a sealed share is too long")
    return relay.put("shares", slot, {"slot": slot, "shares": record})


def round_state(
    session: Session, *, root: Path, job_id: str, round_index: int, address: str, now: datetime
) -> dict[str, Any]:
    """What a participant needs next: the phase, the keys of everyone, the shares sealed for it, who survived."""
    job, tj, rnd, spec = _round_of(session, job_id, round_index)
    status, opened_at, accepted, base = rnd.status, rnd.opened_at, list(rnd.accepted or []), rnd.base_manifest
    survivor_slots = (
        sorted(u.slot for u in (session.get(TrainingUpdate, t) for t in accepted) if u is not None)
        if status in ("verifying", "aggregating", "applied")
        else []
    )
    session.rollback()
    relay = SecAggRound(root, job_id, round_index, base)
    keys = relay.messages("keys")
    mine = [slot for slot, k in keys.items() if k["worker"] == address]
    if job.requester != address and not mine and not _leases_round(session, job_id, round_index, address):
        raise Forbidden("only a participant of this round may read its secure-aggregation state")
    closed = (
        advance_phases(relay, spec, opened_at, now)
        if status == "open"
        else {p: c for p in PHASES if (c := relay.closed(p)) is not None}
    )
    out: dict[str, Any] = {"round": round_index, "status": status, "threshold": spec.secagg_threshold}
    if "keys" not in closed:
        out["phase"] = "keys"
        return out
    out["keys"] = {str(s): keys[s] for s in closed["keys"].slots}
    if "shares" not in closed:
        out["phase"] = "shares"
        return out
    shared = closed["shares"].slots
    out["shared"] = shared
    sealed = relay.messages("shares")
    out["sealed_for_me"] = {
        str(me): {str(u): sealed[u]["shares"][str(me)] for u in shared} for me in mine if me in shared
    }
    if status == "open":
        out["phase"] = "masked"
        return out
    out["phase"] = "unmask" if status == "verifying" else "done"
    out["survivors"] = survivor_slots
    out["dropped"] = [u for u in shared if u not in survivor_slots]
    return out


def _leases_round(session: Session, job_id: str, round_index: int, address: str) -> bool:
    worker_id = session.scalar(select(Worker.id).where(Worker.address == address))
    if worker_id is None:
        return False
    tasks = session.scalars(
        select(Task).where(Task.job_id == job_id, Task.leased_by == worker_id, Task.status == "leased")
    ).all()
    return any(t.payload.get("round") == round_index for t in tasks)


def post_unmask(
    session: Session, *, root: Path, job_id: str, round_index: int, address: str, body: dict[str, Any]
) -> bool:
    """A survivor's shares: of each survivor's self-mask seed (``b``) and each dropped slot's mask key (``s``)."""
    job, tj, rnd, spec = _round_of(session, job_id, round_index)
    status, accepted, base = rnd.status, list(rnd.accepted or []), rnd.base_manifest
    survivors = sorted(u.slot for u in (session.get(TrainingUpdate, t) for t in accepted) if u is not None)
    session.rollback()
    if status != "verifying":
        raise Conflict(f"round {round_index} is not waiting for unmask shares")
    relay = SecAggRound(root, job_id, round_index, base)
    shares = relay.closed("shares")
    keys = relay.messages("keys")
    try:
        slot = int(body["slot"])
        b, s = dict(body.get("b") or {}), dict(body.get("s") or {})
    except (KeyError, TypeError, ValueError):
        raise InvalidRequest("unmask body: {slot, b: {slot: [x, hex]}, s: {slot: [x, hex]}}") from None
    if shares is None or slot not in survivors or keys.get(slot, {}).get("worker") != address:
        raise Forbidden(f"slot {slot} is not yours or did not survive round {round_index}")
    dropped = [u for u in shares.slots if u not in survivors]
    if sorted(int(k) for k in b) != survivors or sorted(int(k) for k in s) != dropped:
        raise InvalidRequest(f"unmask needs b shares for {survivors} and s shares for {dropped}")
    try:
        record = {
            "slot": slot,
            "b": {str(int(k)): [int(v[0]), bytes.fromhex(str(v[1])).hex()] for k, v in b.items()},
            "s": {str(int(k)): [int(v[0]), bytes.fromhex(str(v[1])).hex()] for k, v in s.items()},
        }
    except (TypeError, ValueError, IndexError):
        raise InvalidRequest("a share is [x, hex]") from None
    return relay.put("unmask", slot, record)

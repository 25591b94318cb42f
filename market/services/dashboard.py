"""What the public dashboard (`/dashboard`, `globai market status`) shows, as plain dicts.

Public by design: models, coverage, routes (which worker serves which layers), job status and progress,
verification counts, slashes, settlements with their per-payment records and proofs, worker earnings and
reputation. Never a prompt, a generated token or a training dataset: those stay behind the owner's (or an
auditor's) sign-in on `/v1/jobs/{id}/result` and `/v1/jobs/{id}/stream`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from market.coordinator.service import Coordinator
from market.db import (
    ChainEvent,
    Job,
    Settlement,
    SettlementItem,
    SettlementReport,
    SlashRecord,
    Task,
    VerificationCheck,
    VerificationRun,
    Worker,
)
from market.db.inference import InferenceRun
from market.db.training import TrainingJob, TrainingRound
from market.db.verification import JobRun, WorkPart
from market.db.workers import ReputationEvent
from market.domain_errors import NotFound
from market.scheduler.reputation import Outcome, reputation

MAX_REPUTATION_POINTS = 200


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


# --- swarm ---------------------------------------------------------------------------------------------------
def swarm(coordinator: Coordinator, session: Session) -> dict[str, Any]:
    """Per model: layers x connected workers (who serves what, replicas, measured speed, reputation, stake);
    and the routes of the generations running now."""
    links = coordinator.links.live()
    stakes = (
        {
            w.address: w
            for w in session.scalars(select(Worker).where(Worker.address.in_({lnk.address for lnk in links})))
        }
        if links
        else {}
    )
    models = []
    for served in coordinator.catalog.all():
        m = served.manifest
        mine = [lnk for lnk in links if lnk.model == m.name]
        models.append(
            {
                "name": m.name,
                "family": m.family,
                "task": m.task,
                "num_layers": m.num_layers,
                "hidden_size": m.hidden_size,
                "coverage": coordinator.links.coverage(m.name, m.num_layers),
                "workers": [
                    {
                        "address": lnk.address,
                        "operator": lnk.operator_id,
                        "layers": [lnk.layer_start, lnk.layer_end],
                        "throughput_tokens_s": round(lnk.throughput_tokens_s, 2),
                        "latency_ms": round(lnk.latency_ms, 2),
                        "reputation": round(lnk.reputation.mean, 4),
                        "calls": lnk.calls,
                        "stake": str(stakes[lnk.address].stake) if lnk.address in stakes else None,
                        "eligible": stakes[lnk.address].eligible if lnk.address in stakes else None,
                    }
                    for lnk in sorted(mine, key=lambda x: (x.layer_start, x.layer_end, x.address))
                ],
            }
        )
    routes = [
        {
            "run_id": run_id,
            "model": run.manifest.name,
            "route": run.route(),
            "step": len(run.tokens[0]) if run.tokens else 0,
            "max_new_tokens": run.max_new_tokens,
            "sequences": len(run.tokens),
            "failovers": run.failovers,
        }
        for run_id, run in list(coordinator.runs.items())
        if not run.done
    ]
    return {"models": models, "routes": routes}


# --- jobs ------------------------------------------------------------------------------------------------------
def _public_spec(job: Job) -> dict[str, Any]:
    spec = job.spec or {}
    if job.kind == "inference":
        return {
            "prompts": len(spec.get("prompts") or []),
            "max_new_tokens": spec.get("max_new_tokens"),
            "sampling": spec.get("sampling"),
        }
    return {
        k: spec.get(k)
        for k in ("rounds", "workers_per_round", "inner_steps", "seq_len", "batch_size", "compression", "aggregation")
    }


def list_jobs(session: Session, *, limit: int = 50, offset: int = 0, status: str | None = None) -> dict[str, Any]:
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    ids = [j.id for j in rows]
    verifications = {
        v.job_id: v for v in session.scalars(select(VerificationRun).where(VerificationRun.job_id.in_(ids)))
    }
    settlements = {s.job_id: s for s in session.scalars(select(Settlement).where(Settlement.job_id.in_(ids)))}
    items = []
    for j in rows:
        v, s = verifications.get(j.id), settlements.get(j.id)
        items.append(
            {
                "id": j.id,
                "kind": j.kind,
                "model": j.model,
                "status": j.status,
                "requester": j.requester,
                "created_at": _iso(j.created_at),
                "budget": str(j.budget),
                "price_per_unit": str(j.price_per_unit),
                "verification": v.status if v else None,
                "settlement": None if s is None else {"kind": s.kind, "status": s.status, "tx": s.tx_hash},
            }
        )
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def _check_counts(rows: Iterable[tuple[str, int, str, int]]) -> dict[str, Any]:
    """(worker, round, status, n) -> sampled / passed / failed / disputed / pending, overall and per worker."""
    total: Counter[str] = Counter()
    per_worker: dict[str, Counter[str]] = defaultdict(Counter)
    for worker, rnd, status, n in rows:
        keys = ["sampled"] if rnd == 0 else ["disputed"]
        keys.append({"pass": "passed", "fail": "failed"}.get(status, status))
        for key in keys:
            total[key] += n
            per_worker[worker][key] += n
    fields = ("sampled", "passed", "failed", "disputed", "pending", "void")
    return {
        **{k: total.get(k, 0) for k in fields},
        "by_worker": {w: {k: c.get(k, 0) for k in fields} for w, c in sorted(per_worker.items())},
    }


def job_detail(session: Session, job_id: str, *, coordinator: Coordinator, runner: Any | None) -> dict[str, Any]:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("job", job_id)
    out: dict[str, Any] = {
        "id": job.id,
        "kind": job.kind,
        "model": job.model,
        "status": job.status,
        "requester": job.requester,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "deadline": _iso(job.deadline),
        "budget": str(job.budget),
        "price_per_unit": str(job.price_per_unit),
        "max_units": job.max_units,
        "chain_job_id": job.chain_job_id,
        "funded_amount": None if job.funded_amount is None else str(job.funded_amount),
        "funding_tx": job.funded_tx,
        "spec": _public_spec(job),
    }
    if job.kind == "inference":
        out["progress"] = _inference_progress(session, job, coordinator=coordinator, runner=runner)
    else:
        out["training"] = _training(session, job.id)
    run = session.get(VerificationRun, job.id)
    counts = session.execute(
        select(VerificationCheck.worker, VerificationCheck.round, VerificationCheck.status, func.count())
        .where(VerificationCheck.job_id == job.id)
        .group_by(VerificationCheck.worker, VerificationCheck.round, VerificationCheck.status)
    ).all()
    out["verification"] = {
        "status": run.status if run else None,
        "sampled_segments": run.sampled if run else 0,
        "detail": run.detail if run else "",
        "beacon": run.beacon if run else None,
        "checks": _check_counts((w, int(r), s, int(n)) for w, r, s, n in counts),
    }
    out["slashes"] = [
        {
            "worker": r.worker,
            "amount": str(r.slashed if r.slashed is not None else r.amount),
            "status": r.status,
            "tx": r.tx_hash,
            "finder": r.finder,
            "evidence": r.evidence,
        }
        for r in session.scalars(select(SlashRecord).where(SlashRecord.job_id == job.id))
    ]
    out["settlement"] = _settlement(session, job.id)
    return out


def _inference_progress(session: Session, job: Job, *, coordinator: Coordinator, runner: Any | None) -> dict[str, Any]:
    prompts = len((job.spec or {}).get("prompts") or [])
    size = coordinator.config.max_batch
    batches = (prompts + size - 1) // size
    runs = session.execute(
        select(InferenceRun.id, InferenceRun.status, InferenceRun.tokens)
        .join(JobRun, JobRun.run_id == InferenceRun.id)
        .where(JobRun.job_id == job.id)
    ).all()
    done = sum(1 for _id, status, _t in runs if status == "completed")
    # Counts only (never the tokens themselves): completed runs from the database, live ones from the coordinator.
    generated = sum(len(seq) for _id, status, tokens in runs if status == "completed" for seq in tokens or [])
    live: list[dict[str, Any]] = []
    for run_id, _status, _tokens in runs:
        r = coordinator.runs.get(run_id)
        if r is not None and not r.done:
            generated += sum(len(seq) for seq in r.tokens)
            live.append(
                {
                    "run_id": run_id,
                    "step": len(r.tokens[0]) if r.tokens else 0,
                    "max_new_tokens": r.max_new_tokens,
                    "route": r.route(),
                }
            )
    tokens_per_seq = int((job.spec or {}).get("max_new_tokens") or 0)
    return {
        "prompts": prompts,
        "batches": batches,
        "batches_done": min(done, batches),
        "live": live,
        "tokens_generated": generated,
        "tokens_total": prompts * tokens_per_seq,
        "streaming": bool(runner is not None and job.id in getattr(runner, "progress", {})),
    }


def _training(session: Session, job_id: str) -> dict[str, Any]:
    tj = session.get(TrainingJob, job_id)
    if tj is None:
        return {}
    rounds = session.scalars(
        select(TrainingRound).where(TrainingRound.job_id == job_id).order_by(TrainingRound.round)
    ).all()
    spec = tj.spec or {}
    checkpoints: list[dict[str, Any]] = [
        {"version": 0, "round": None, "sha256": None, "eval_loss": tj.initial_eval_loss}
    ]
    checkpoints += [
        {"version": r.round + 1, "round": r.round, "sha256": r.manifest_sha256, "eval_loss": r.eval_loss}
        for r in rounds
        if r.status == "applied"
    ]
    return {
        "status": tj.status,
        "round": tj.round,
        "rounds": spec.get("rounds"),
        "version": tj.version,
        "initial_eval_loss": tj.initial_eval_loss,
        "per_round": [
            {
                "round": r.round,
                "status": r.status,
                "eval_loss": r.eval_loss,
                "worker_loss": r.worker_loss,
                "updates": len(r.accepted or []),
                "close_state": r.close_state,
                "applied_at": _iso(r.applied_at),
            }
            for r in rounds
        ],
        "loss": [
            {"version": c["version"], "eval_loss": c["eval_loss"]} for c in checkpoints if c["eval_loss"] is not None
        ],
        "checkpoints": checkpoints,
    }


def _settlement(session: Session, job_id: str) -> dict[str, Any] | None:
    s = session.scalar(select(Settlement).where(Settlement.job_id == job_id))
    report = session.get(SettlementReport, job_id)
    if s is None and report is None:
        return None
    data = report.report if report is not None else {}
    return {
        "kind": s.kind if s else "settle",
        "status": s.status if s else "pending",
        "tx": s.tx_hash if s else None,
        "confirmed_at": _iso(s.confirmed_at) if s else None,
        "report_root": report.report_root if report else None,
        "report_url": f"/v1/audit/jobs/{job_id}/report" if report else None,
        "paid": data.get("paid"),
        "fee": data.get("fee"),
        "refunded": data.get("refunded"),
        "payees": data.get("payees") or [],
        "records": [
            {
                "task": r["task"],
                "payee": r["payee"],
                "units": r["units"],
                "amount": r["amount"],
                "status": r["status"],
                "proof_url": f"/v1/audit/jobs/{job_id}/proofs/{r['task_id']}",
            }
            for r in data.get("records") or []
        ],
    }


def chain_tx(session: Session, tx_hash: str) -> dict[str, Any]:
    """Contract events the indexer recorded for one transaction (public chain data)."""
    rows = session.scalars(
        select(ChainEvent).where(func.lower(ChainEvent.tx_hash) == tx_hash.lower()).order_by(ChainEvent.log_index)
    ).all()
    return {
        "tx": tx_hash,
        "indexed": bool(rows),
        "events": [
            {
                "contract": r.contract,
                "event": r.event,
                "block": r.block_number,
                "log_index": r.log_index,
                "args": r.args,
            }
            for r in rows
        ],
    }


# --- workers ---------------------------------------------------------------------------------------------------
def earnings_by_job(session: Session, address: str) -> list[dict[str, Any]]:
    """Per job this worker did work in: units and GLB wei in the settlement report's records for it (paid,
    and what it was not paid for: slashed or faulty parts), with the settlement's status and transaction."""
    job_ids = set(session.scalars(select(WorkPart.job_id).where(WorkPart.worker == address)).all())
    job_ids |= set(
        session.scalars(
            select(Task.job_id)
            .join(SettlementItem, SettlementItem.task_id == Task.id)
            .where(SettlementItem.payee == address)
        ).all()
    )
    if not job_ids:
        return []
    reports = {
        r.job_id: r for r in session.scalars(select(SettlementReport).where(SettlementReport.job_id.in_(job_ids)))
    }
    settlements = {s.job_id: s for s in session.scalars(select(Settlement).where(Settlement.job_id.in_(job_ids)))}
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
    parts: dict[str, Counter[str]] = defaultdict(Counter)
    for job_id, status, units in session.execute(
        select(WorkPart.job_id, WorkPart.status, WorkPart.units).where(WorkPart.worker == address)
    ):
        parts[job_id][status] += int(units)
    out = []
    for job_id in sorted(job_ids, key=lambda j: jobs[j].created_at if j in jobs else datetime.min, reverse=True):
        report = reports.get(job_id)
        mine = [r for r in (report.report.get("records") or []) if r["payee"] == address] if report else []
        s = settlements.get(job_id)
        job = jobs.get(job_id)
        out.append(
            {
                "job_id": job_id,
                "kind": job.kind if job else None,
                "job_status": job.status if job else None,
                "units": sum(int(r["units"]) for r in mine) if mine else sum(parts[job_id].values()),
                "paid_units": sum(int(r["units"]) for r in mine if int(r["amount"]) > 0),
                "earned": str(sum(int(r["amount"]) for r in mine)),
                "unpaid_records": sum(1 for r in mine if int(r["amount"]) == 0),
                "settlement": None if s is None else {"status": s.status, "tx": s.tx_hash},
                "settled": report is not None,
            }
        )
    return out


def _reputation_history(session: Session, worker_id: str) -> list[dict[str, Any]]:
    rows = session.execute(
        select(ReputationEvent.kind, ReputationEvent.created_at, ReputationEvent.weight, ReputationEvent.job_id)
        .where(ReputationEvent.worker_id == worker_id)
        .order_by(ReputationEvent.created_at)
    ).all()[-MAX_REPUTATION_POINTS:]
    outcomes: list[Outcome] = []
    points = []
    for kind, at, weight, job_id in rows:
        outcomes.append(Outcome(kind=kind, at=at, weight=weight))
        points.append(
            {"at": _iso(at), "kind": kind, "job_id": job_id, "reputation": round(reputation(outcomes, now=at).mean, 4)}
        )
    return points


def _checks_of(session: Session, addresses: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"passed": 0, "failed": 0})
    if not addresses:
        return out
    for worker, status, n in session.execute(
        select(VerificationCheck.worker, VerificationCheck.status, func.count())
        .where(VerificationCheck.worker.in_(addresses), VerificationCheck.status.in_(("pass", "fail")))
        .group_by(VerificationCheck.worker, VerificationCheck.status)
    ):
        out[worker]["passed" if status == "pass" else "failed"] += int(n)
    return out


def list_workers(
    session: Session, coordinator: Coordinator, *, now: datetime, limit: int = 100, offset: int = 0
) -> dict[str, Any]:
    from market.services.workers import worker_reputation

    total = int(session.scalar(select(func.count()).select_from(Worker)) or 0)
    rows = session.scalars(
        select(Worker).order_by(Worker.registered_at, Worker.address).limit(limit).offset(offset)
    ).all()
    connected: dict[str, list[str]] = defaultdict(list)
    for lnk in coordinator.links.live():
        connected[lnk.address].append(f"{lnk.model} [{lnk.layer_start}, {lnk.layer_end})")
    checks = _checks_of(session, [w.address for w in rows])
    earned: Counter[str] = Counter()
    addresses = {w.address for w in rows}
    for report in session.scalars(select(SettlementReport.report)):
        for r in report.get("records") or []:
            if r["payee"] in addresses:
                earned[r["payee"]] += int(r["amount"])
    slashed = Counter(
        session.scalars(
            select(SlashRecord.worker).where(
                SlashRecord.worker.in_(addresses),
                or_(SlashRecord.status == "confirmed", SlashRecord.status == "pending"),
            )
        )
    )
    items = [
        {
            "address": w.address,
            "operator": w.operator_id,
            "status": w.status,
            "eligible": w.eligible,
            "stake": str(w.stake),
            "unbonding": str(w.unbonding),
            "device": w.device,
            "throughput_tokens_s": round(w.throughput_tokens_s, 2),
            "latency_ms": round(w.latency_ms, 2),
            "reputation": round(worker_reputation(session, worker_id=w.id, now=now).mean, 4),
            "connected": connected.get(w.address, []),
            "checks": checks[w.address],
            "earned": str(earned[w.address]),
            "slashes": slashed.get(w.address, 0),
            "last_heartbeat_at": _iso(w.last_heartbeat_at),
        }
        for w in rows
    ]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def worker_detail(session: Session, coordinator: Coordinator, address: str, *, now: datetime) -> dict[str, Any]:
    from market.services.workers import worker_reputation

    w = session.scalar(select(Worker).where(func.lower(Worker.address) == address.lower()))
    if w is None:
        raise NotFound("worker", address)
    jobs = earnings_by_job(session, w.address)
    return {
        "address": w.address,
        "operator": w.operator_id,
        "status": w.status,
        "eligible": w.eligible,
        "stake": str(w.stake),
        "unbonding": str(w.unbonding),
        "device": w.device,
        "throughput_tokens_s": round(w.throughput_tokens_s, 2),
        "latency_ms": round(w.latency_ms, 2),
        "reputation": round(worker_reputation(session, worker_id=w.id, now=now).mean, 4),
        "reputation_history": _reputation_history(session, w.id),
        "checks": _checks_of(session, [w.address])[w.address],
        "connected": [
            f"{lnk.model} [{lnk.layer_start}, {lnk.layer_end})"
            for lnk in coordinator.links.live()
            if lnk.address == w.address
        ],
        "earned": str(sum(int(j["earned"]) for j in jobs)),
        "jobs": jobs,
        "slashes": [
            {
                "job_id": r.job_id,
                "amount": str(r.slashed if r.slashed is not None else r.amount),
                "status": r.status,
                "tx": r.tx_hash,
            }
            for r in session.scalars(select(SlashRecord).where(SlashRecord.worker == w.address))
        ],
    }

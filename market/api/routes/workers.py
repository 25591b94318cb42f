"""Worker registry: register with a measured profile, heartbeat, read."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from market.api.deps import CtxDep, NowDep, PrincipalDep, SessionDep, WorkerDep
from market.api.schemas.common import Page
from market.api.schemas.workers import HeartbeatOut, ProfileIn, WorkerOut
from market.db import Worker
from market.services import workers

router = APIRouter(prefix="/v1/workers", tags=["workers"])


def worker_out(worker: Worker, reputation_mean: float | None = None) -> WorkerOut:
    return WorkerOut(
        id=worker.id,
        address=worker.address,
        operator_id=worker.operator_id,
        status=worker.status,
        device=worker.device,
        memory_bytes=worker.memory_bytes,
        throughput_tokens_s=worker.throughput_tokens_s,
        bandwidth_bytes_s=worker.bandwidth_bytes_s,
        latency_ms=worker.latency_ms,
        reference_layer=worker.reference_layer,
        models=list(worker.models),
        stake=str(worker.stake),
        unbonding=str(worker.unbonding),
        eligible=worker.eligible,
        stake_block=worker.stake_block,
        registered_at=worker.registered_at,
        last_heartbeat_at=worker.last_heartbeat_at,
        reputation_mean=reputation_mean,
    )


@router.post("", response_model=WorkerOut)
def register(body: ProfileIn, principal: WorkerDep, session: SessionDep, ctx: CtxDep, now: NowDep) -> WorkerOut:
    """Register (or re-register with a new measurement) the signed-in address as a worker.

    Eligibility for work requires stake >= the StakingVault minimum, read from the chain now and kept up to
    date from vault events.
    """
    profile = workers.MeasuredProfile(**body.model_dump())
    worker = workers.register_worker(
        session,
        address=principal.address,
        profile=profile,
        chain=ctx.chain,
        fallback_min_stake=ctx.settings.min_stake_wei,
        now=now,
    )
    return worker_out(worker)


@router.post("/me/heartbeat", response_model=HeartbeatOut)
def heartbeat(principal: WorkerDep, session: SessionDep, now: NowDep) -> HeartbeatOut:
    worker = workers.heartbeat(session, address=principal.address, now=now)
    return HeartbeatOut(
        address=worker.address,
        status=worker.status,
        eligible=worker.eligible,
        last_heartbeat_at=worker.last_heartbeat_at,
    )


@router.get("/me", response_model=WorkerOut)
def me(principal: WorkerDep, session: SessionDep, now: NowDep) -> WorkerOut:
    worker = workers.get_worker(session, address=principal.address)
    rep = workers.worker_reputation(session, worker_id=worker.id, now=now)
    return worker_out(worker, rep.mean)


@router.get("", response_model=Page[WorkerOut])
def list_workers(
    _principal: PrincipalDep,
    session: SessionDep,
    eligible: bool | None = None,
    operator_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Page[WorkerOut]:
    rows, total = workers.list_workers(session, eligible=eligible, operator_id=operator_id, limit=limit, offset=offset)
    return Page[WorkerOut](items=[worker_out(w) for w in rows], total=total, limit=limit, offset=offset)


@router.get("/{address}", response_model=WorkerOut)
def get_worker(
    address: Annotated[str, Path(pattern=r"^0x[0-9a-fA-F]{40}$")],
    _principal: PrincipalDep,
    session: SessionDep,
    now: NowDep,
) -> WorkerOut:
    from market.services.auth import checksum

    worker = workers.get_worker(session, address=checksum(address))
    rep = workers.worker_reputation(session, worker_id=worker.id, now=now)
    return worker_out(worker, rep.mean)

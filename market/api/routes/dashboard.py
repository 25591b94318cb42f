"""The public dashboard's data (`/v1/dashboard/...`): no sign-in, and nothing private (see
market/services/dashboard.py). Prompts and outputs stay on the owner's `/v1/jobs/{id}/result` and `/stream`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from market.api.deps import CoordinatorDep, JobRunnerDep, NowDep, SessionDep, SettingsDep
from market.services import dashboard

router = APIRouter(prefix="/v1/dashboard", tags=["dashboard"])
JobId = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")]
Address = Annotated[str, Path(pattern=r"^0x[0-9a-fA-F]{40}$")]
TxHash = Annotated[str, Path(pattern=r"^0x[0-9a-fA-F]{64}$")]


@router.get("/info")
def info(s: SettingsDep) -> dict[str, Any]:
    """What the page needs to draw links: chain id, contracts, the block explorer's transaction URL (if any)."""
    return {
        "chain_id": s.chain_id,
        "escrow": s.job_escrow_address or None,
        "vault": s.staking_vault_address or None,
        "token": s.token_address or None,
        "explorer_tx_url": s.explorer_tx_url or None,
        "openai_base": "/openai/v1",
    }


@router.get("/swarm")
def swarm(coordinator: CoordinatorDep, session: SessionDep) -> dict[str, Any]:
    """Per model: coverage of each layer, the connected workers (layers, speed, reputation, stake); live routes."""
    return dashboard.swarm(coordinator, session)


@router.get("/jobs")
def jobs(
    session: SessionDep,
    status: Annotated[str | None, Query(max_length=16, pattern=r"^[a-z_]+$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    return dashboard.list_jobs(session, limit=limit, offset=offset, status=status)


@router.get("/jobs/{job_id}")
def job(job_id: JobId, coordinator: CoordinatorDep, runner: JobRunnerDep, session: SessionDep) -> dict[str, Any]:
    """Status, progress, verification counts, slashes, settlement with a proof URL per payment; training: loss
    per round and checkpoint versions."""
    return dashboard.job_detail(session, job_id, coordinator=coordinator, runner=runner)


@router.get("/workers")
def workers(
    coordinator: CoordinatorDep,
    session: SessionDep,
    now: NowDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    return dashboard.list_workers(session, coordinator, now=now, limit=limit, offset=offset)


@router.get("/workers/{address}")
def worker(address: Address, coordinator: CoordinatorDep, session: SessionDep, now: NowDep) -> dict[str, Any]:
    """Earnings per job, checks passed/failed, reputation after each verification outcome, slashes."""
    return dashboard.worker_detail(session, coordinator, address, now=now)


@router.get("/tx/{tx_hash}")
def tx(tx_hash: TxHash, session: SessionDep) -> dict[str, Any]:
    """The contract events the indexer recorded for a transaction."""
    return dashboard.chain_tx(session, tx_hash)

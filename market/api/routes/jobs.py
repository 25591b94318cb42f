"""Jobs: post (returns escrow parameters), confirm funding from chain events, read, list, cancel."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, status

from globai.chain.ids import job_key
from market.api.deps import ChainDep, CtxDep, NowDep, PrincipalDep, RequesterDep, SessionDep, can_see_everything
from market.api.schemas.common import Page
from market.api.schemas.jobs import EscrowParams, JobCreatedOut, JobIn, JobOut
from market.db import Job
from market.domain_errors import Forbidden
from market.services import funding, jobs
from market.services.auth import Principal

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")]


def job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        chain_job_id=job.chain_job_id,
        chain_id=job.chain_id,
        requester=job.requester,
        kind=job.kind,
        model=job.model,
        spec=job.spec,
        spec_hash=job.spec_hash,
        budget=str(job.budget),
        price_per_unit=str(job.price_per_unit),
        max_units=job.max_units,
        deadline=job.deadline,
        replicas=job.replicas,
        long_running=job.long_running,
        status=job.status,
        funded_amount=None if job.funded_amount is None else str(job.funded_amount),
        funded_tx=job.funded_tx,
        funded_block=job.funded_block,
        created_at=job.created_at,
        cancelled_at=job.cancelled_at,
    )


def escrow_params(job: Job, ctx: CtxDep) -> EscrowParams:
    return EscrowParams(
        escrow_address=ctx.chain.escrow_address if ctx.chain is not None else (ctx.settings.job_escrow_address or None),
        chain_id=job.chain_id if job.chain_id is not None else ctx.settings.chain_id,
        job_key=job_key(job.id),
        job_id=job.chain_job_id,
        amount=str(job.budget),
        spec_hash=job.spec_hash,
        deadline=int(job.deadline.timestamp()),
    )


def _visible(job: Job, principal: Principal) -> Job:
    if job.requester != principal.address and not can_see_everything(principal):
        raise Forbidden("not your job")
    return job


@router.post("", response_model=JobCreatedOut, status_code=status.HTTP_201_CREATED)
def post_job(body: JobIn, principal: RequesterDep, session: SessionDep, ctx: CtxDep, now: NowDep) -> JobCreatedOut:
    """Create a job. Fund it on chain with the returned escrow parameters, then confirm funding.
    An inference job for a model this market does not serve is refused here, before any money moves."""
    catalog = ctx.coordinator.catalog
    created_block = ctx.chain.latest_block() if ctx.chain is not None else 0
    job = jobs.create_job(
        session,
        requester=principal.address,
        spec=body.spec,
        budget=int(body.budget),
        price_per_unit=int(body.price_per_unit),
        deadline=body.deadline,
        replicas=body.replicas,
        chain_id=ctx.settings.chain_id,
        created_block=created_block,
        now=now,
        served_models=lambda: [m.manifest.name for m in catalog.all()],
    )
    return JobCreatedOut(job=job_out(job), escrow=escrow_params(job, ctx))


@router.get("", response_model=Page[JobOut])
def list_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    status_: Annotated[
        Literal["created", "funded", "running", "completed", "cancelled", "settled", "refunded"] | None,
        Query(alias="status"),
    ] = None,
    kind: Literal["inference", "training"] | None = None,
    requester: Annotated[str | None, Query(pattern=r"^0x[0-9a-fA-F]{40}$")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Page[JobOut]:
    """Your jobs (auditors and admins: everyone's, optionally filtered by requester), newest first."""
    if can_see_everything(principal):
        from market.services.auth import checksum

        who = checksum(requester) if requester else None
    else:
        if requester is not None and requester.lower() != principal.address.lower():
            raise Forbidden("you may only list your own jobs")
        who = principal.address
    rows, total = jobs.list_jobs(session, requester=who, status=status_, kind=kind, limit=limit, offset=offset)
    return Page[JobOut](items=[job_out(j) for j in rows], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: JobId, principal: PrincipalDep, session: SessionDep) -> JobOut:
    return job_out(_visible(jobs.get_job(session, job_id=job_id), principal))


@router.get("/{job_id}/escrow", response_model=EscrowParams)
def get_escrow(job_id: JobId, principal: PrincipalDep, session: SessionDep, ctx: CtxDep) -> EscrowParams:
    return escrow_params(_visible(jobs.get_job(session, job_id=job_id), principal), ctx)


@router.post("/{job_id}/confirm-funding", response_model=JobOut)
def confirm_funding(
    job_id: JobId, principal: PrincipalDep, session: SessionDep, chain: ChainDep, now: NowDep
) -> JobOut:
    """Check the chain for this job's JobFunded event (right amount, spec hash, deadline, requester)."""
    _visible(jobs.get_job(session, job_id=job_id), principal)
    return job_out(funding.confirm_funding(session, job_id=job_id, chain=chain, now=now))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job_id: JobId, principal: PrincipalDep, session: SessionDep, now: NowDep) -> JobOut:
    """Cancel; a funded job gets a pending refund settlement (paid out on chain by the settlement task)."""
    job = jobs.cancel_job(
        session, job_id=job_id, caller=principal.address, is_admin="admin" in principal.roles, now=now
    )
    return job_out(job)

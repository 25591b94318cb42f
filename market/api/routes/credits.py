"""API keys and prepaid credits of the OpenAI-compatible API (signed-in requesters; docs/openai.md)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, Field

from market.api.deps import ChainDep, CtxDep, NowDep, RequesterDep, SessionDep
from market.api.routes.jobs import JobId, escrow_params, job_out
from market.api.schemas.common import Input, WeiStr
from market.api.schemas.jobs import EscrowParams, JobOut
from market.db import ApiKey, Credit, Job
from market.services import api_keys, credits
from market.settlement.payout import fee_of

router = APIRouter(prefix="/v1", tags=["api keys and credits"])
KeyId = Annotated[str, Path(pattern=r"^[0-9a-f-]{36}$")]


class KeyIn(Input):
    name: str = Field(default="", max_length=64)
    spend_cap: WeiStr | None = Field(default=None, description="GLB wei this key may spend in all (none: no cap)")
    rate_limit_per_min: int | None = Field(default=None, ge=1, le=1_000_000)


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    spend_cap: WeiStr | None
    rate_limit_per_min: int
    spent: WeiStr
    reserved: WeiStr
    created_at: datetime
    revoked_at: datetime | None


class KeyCreatedOut(KeyOut):
    key: str = Field(description="the API key: shown only now, stored only as a hash")


def key_out(row: ApiKey) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "spend_cap": None if row.spend_cap is None else str(row.spend_cap),
        "rate_limit_per_min": row.rate_limit_per_min,
        "spent": str(row.spent),
        "reserved": str(row.reserved),
        "created_at": row.created_at,
        "revoked_at": row.revoked_at,
    }


@router.post("/api-keys", response_model=KeyCreatedOut, status_code=status.HTTP_201_CREATED)
def create_key(body: KeyIn, principal: RequesterDep, session: SessionDep, ctx: CtxDep, now: NowDep) -> KeyCreatedOut:
    """A new API key for `Authorization: Bearer <key>` on /openai/v1; the answer is the only copy of the key."""
    made = api_keys.create_key(
        session,
        requester=principal.address,
        name=body.name,
        spend_cap=None if body.spend_cap is None else int(body.spend_cap),
        rate_limit_per_min=body.rate_limit_per_min or ctx.settings.api_key_rate_limit_per_min,
        now=now,
    )
    return KeyCreatedOut(**key_out(made.row), key=made.key)


@router.get("/api-keys", response_model=list[KeyOut])
def list_keys(principal: RequesterDep, session: SessionDep) -> list[KeyOut]:
    return [KeyOut(**key_out(k)) for k in api_keys.list_keys(session, requester=principal.address)]


@router.delete("/api-keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: KeyId, principal: RequesterDep, session: SessionDep, now: NowDep) -> KeyOut:
    """Revoke: the key answers 401 from now on (requests in flight finish and are charged)."""
    return KeyOut(**key_out(api_keys.revoke_key(session, requester=principal.address, key_id=key_id, now=now)))


class CreditIn(Input):
    amount: WeiStr = Field(description="GLB wei to escrow")
    days: float | None = Field(default=None, gt=0, le=365, description="escrow deadline (default: the market's)")


class KeySpend(BaseModel):
    key_id: str
    prefix: str
    name: str
    requests: int
    reserved: WeiStr
    spent: WeiStr


class CreditOut(BaseModel):
    id: str
    status: str = Field(description="open | closing | closed (then the job verifies and settles)")
    job_status: str
    close_reason: str | None
    funded: WeiStr | None
    spent: WeiStr
    reserved: WeiStr
    fee_bps: int
    fee_on_spent: WeiStr
    balance: WeiStr = Field(description="funded - spent - fee on spent (reserved is part of it)")
    available: WeiStr = Field(description="what new requests may still reserve, fee included")
    deadline: datetime
    keys: list[KeySpend]
    settlement: dict[str, Any] | None = None


class CreditCreatedOut(BaseModel):
    credit: CreditOut
    job: JobOut
    escrow: EscrowParams


def credit_out(session: SessionDep, credit: Credit, job: Job) -> CreditOut:
    funded = job.funded_amount
    fee = fee_of(credit.spent, credit.fee_bps)
    report = None
    if job.status == "settled":
        from market.db import SettlementReport

        row = session.get(SettlementReport, job.id)
        if row is not None:
            r = row.report
            report = {
                "paid": r["paid"],
                "fee": r["fee"],
                "refunded": r["refunded"],
                "report_root": r["report_root"],
                "payees": r["payees"],
            }
    return CreditOut(
        id=job.id,
        status=credit.status,
        job_status=job.status,
        close_reason=credit.close_reason,
        funded=None if funded is None else str(funded),
        spent=str(credit.spent),
        reserved=str(credit.reserved),
        fee_bps=credit.fee_bps,
        fee_on_spent=str(fee),
        balance=str(max(0, (funded or 0) - credit.spent - fee)),
        available=str(credits.available(credit, funded) if funded is not None and credit.status == "open" else 0),
        deadline=job.deadline,
        keys=[
            KeySpend(**{**e, "reserved": str(e["reserved"]), "spent": str(e["spent"])})
            for e in credits.spend_by_key(session, job_id=job.id)
        ],
        settlement=report,
    )


@router.post("/credits", response_model=CreditCreatedOut, status_code=status.HTTP_201_CREATED)
def create_credit(
    body: CreditIn, principal: RequesterDep, session: SessionDep, ctx: CtxDep, chain: ChainDep, now: NowDep
) -> CreditCreatedOut:
    """A credit to fund on chain (permit + fundJobWithPermit with the escrow parameters), then confirm funding
    with POST /v1/jobs/{id}/confirm-funding."""
    days = body.days or ctx.settings.credit_deadline_days
    job, credit = credits.create_credit(
        session,
        requester=principal.address,
        amount=int(body.amount),
        deadline=now + timedelta(days=days),
        fee_bps=chain.fee_bps(),
        created_block=chain.latest_block(),
        chain_id=chain.chain_id,
        now=now,
    )
    return CreditCreatedOut(credit=credit_out(session, credit, job), job=job_out(job), escrow=escrow_params(job, ctx))


@router.get("/credits", response_model=list[CreditOut])
def list_credits(principal: RequesterDep, session: SessionDep) -> list[CreditOut]:
    """Your credits: balance, reserved, spent (per key), and the settlement once settled."""
    return [credit_out(session, c, j) for c, j in credits.list_credits(session, requester=principal.address)]


@router.get("/credits/{job_id}", response_model=CreditOut)
def get_credit(job_id: JobId, principal: RequesterDep, session: SessionDep) -> CreditOut:
    credit, job = credits.get_credit(session, job_id=job_id, requester=principal.address)
    return credit_out(session, credit, job)


@router.post("/credits/{job_id}/close", response_model=CreditOut)
def close_credit(job_id: JobId, principal: RequesterDep, session: SessionDep, now: NowDep) -> CreditOut:
    """Stop drawing from the credit; once requests in flight end it is verified and settled on chain."""
    credits.close_credit(session, job_id=job_id, requester=principal.address, reason="requester", now=now)
    credit, job = credits.get_credit(session, job_id=job_id, requester=principal.address)
    return credit_out(session, credit, job)

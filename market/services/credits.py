"""Prepaid credits for the OpenAI-compatible API: funding, reservations, charges, closing, settlement items.

A credit is an escrowed job of kind `credit` (`JobEscrow.fundJobWithPermit`, confirmed like any job). Every API
request reserves its worst case before it runs (prompt tokens x prompt price + n x max tokens x completion price,
at the model's listed per-token prices) and is charged its actual usage when it ends; the rest of the reservation
is released. A request is refused (`InsufficientQuota`) unless the credit still covers, after everything spent and
reserved, the new worst case *plus the escrow's fee on all of it*, so the settlement never needs scaling:
usage + fee(usage) <= funded always holds.

Each request's generation is an inference run linked to the credit's job (`job_runs`), so it is committed,
sampled, replayed and slashable like a paid job's. Closing a credit (requester, deadline, or spent) marks its job
`completed` once nothing is in flight; verification then settles it with the usual report. The settlement items
(`credit_work_items`) pay each request's charge to the workers of its run, split by the work each part committed
(rows x layers), in units of `CREDIT_UNIT_WEI`: Σ paid = Σ charged (minus the parts of slashed or faulty work).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from market.db import ApiKey, ApiRequest, Credit, Job, JobRun, Settlement, WorkPart
from market.domain_errors import Conflict, Forbidden, InsufficientQuota, InvalidRequest, NotFound
from market.services.job_specs import CreditSpec
from market.services.jobs import create_job
from market.services.verification import open_run
from market.settlement.payout import WorkItem, fee_of

log = logging.getLogger(__name__)

CREDIT_UNIT_WEI = 10**9  # the settlement unit of a credit: one gwei of token charges


@dataclass(frozen=True)
class TokenPrice:
    """GLB wei per token, as the model catalog lists it."""

    prompt: int
    completion: int

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        return self.prompt * prompt_tokens + self.completion * completion_tokens


def price_for(settings: Any, model: str) -> TokenPrice:
    p = settings.model_prices.get(model)
    if p is not None:
        return TokenPrice(int(p["prompt"]), int(p["completion"]))
    return TokenPrice(settings.prompt_price_wei, settings.completion_price_wei)


def cheapest_request(settings: Any) -> int:
    """The cost of the smallest possible request (one prompt token, one completion token) at any listed price."""
    prices = [price_for(settings, m) for m in settings.model_prices] + [price_for(settings, "")]
    return min(p.cost(1, 1) for p in prices)


def _used_with_fee(used: int, fee_bps: int) -> int:
    return used + fee_of(used, fee_bps)


def available(credit: Credit, funded: int) -> int:
    """Largest further usage the credit covers with the fee on top (0 when none)."""
    used = credit.spent + credit.reserved
    room = funded - _used_with_fee(used, credit.fee_bps)
    if room <= 0:
        return 0
    # Largest total T with T + fee(T) <= funded: the real-valued bound, then adjusted for the fee's rounding down.
    total = funded * 10_000 // (10_000 + credit.fee_bps)
    while _used_with_fee(total + 1, credit.fee_bps) <= funded:
        total += 1
    while total > used and _used_with_fee(total, credit.fee_bps) > funded:
        total -= 1
    x = total - used
    return max(0, x)


# --- funding ---------------------------------------------------------------------------------------------------


def create_credit(
    session: Session,
    *,
    requester: str,
    amount: int,
    deadline: datetime,
    fee_bps: int,
    created_block: int,
    now: datetime,
    chain_id: int | None = None,
) -> tuple[Job, Credit]:
    if amount < CREDIT_UNIT_WEI:
        raise InvalidRequest(f"a credit holds at least {CREDIT_UNIT_WEI} wei")
    if amount >= 2**96 or amount // CREDIT_UNIT_WEI >= 2**63:  # the escrow's uint96 amount; units are int64
        raise InvalidRequest("a credit holds less than 2^63 gwei")
    job = create_job(
        session,
        requester=requester,
        spec=CreditSpec(gwei=amount // CREDIT_UNIT_WEI),
        budget=amount,
        price_per_unit=CREDIT_UNIT_WEI,
        deadline=deadline,
        replicas=1,
        chain_id=chain_id,
        created_block=created_block,
        now=now,
    )
    credit = Credit(
        job_id=job.id, requester=requester, spent=0, reserved=0, fee_bps=fee_bps, status="open", created_at=now
    )
    session.add(credit)
    session.commit()
    return job, credit


def get_credit(session: Session, *, job_id: str, requester: str | None) -> tuple[Credit, Job]:
    credit = session.get(Credit, job_id)
    job = session.get(Job, job_id)
    if credit is None or job is None:
        raise NotFound("credit", job_id)
    if requester is not None and credit.requester != requester:
        raise Forbidden("not your credit")
    return credit, job


def list_credits(session: Session, *, requester: str) -> list[tuple[Credit, Job]]:
    rows = session.execute(
        select(Credit, Job)
        .join(Job, Job.id == Credit.job_id)
        .where(Credit.requester == requester)
        .order_by(Credit.created_at, Credit.job_id)
    ).all()
    return [(c, j) for c, j in rows]


def spend_by_key(session: Session, *, job_id: str) -> list[dict[str, Any]]:
    """Per key: requests, reserved now and charged, for one credit."""
    rows = session.execute(
        select(
            ApiRequest.key_id, ApiKey.prefix, ApiKey.name, ApiRequest.status, ApiRequest.reserved, ApiRequest.charged
        )
        .join(ApiKey, ApiKey.id == ApiRequest.key_id)
        .where(ApiRequest.credit_id == job_id)
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for key_id, prefix, name, status, reserved, charged in rows:
        e = out.setdefault(
            key_id, {"key_id": key_id, "prefix": prefix, "name": name, "requests": 0, "reserved": 0, "spent": 0}
        )
        e["requests"] += 1
        e["reserved"] += reserved if status == "reserved" else 0
        e["spent"] += charged
    return sorted(out.values(), key=lambda e: e["key_id"])


# --- requests --------------------------------------------------------------------------------------------------


def reserve(
    session: Session,
    *,
    key_id: str,
    model: str,
    endpoint: str,
    n: int,
    prompt_tokens: int,
    max_tokens: int,
    price: TokenPrice,
    close_margin_s: float,
    now: datetime,
) -> ApiRequest:
    """Reserve the request's worst case on the requester's oldest open credit that covers it (and the key cap)."""
    worst = price.cost(prompt_tokens, n * max_tokens)
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound("api key", key_id)
    candidates = (
        session.execute(
            select(Credit.job_id)
            .join(Job, Job.id == Credit.job_id)
            .where(Credit.requester == key.requester, Credit.status == "open", Job.status == "funded")
            .order_by(Credit.created_at, Credit.job_id)
        )
        .scalars()
        .all()
    )
    for job_id in candidates:
        open_run(session, job_id=job_id, now=now)  # the sampling secret exists before any of the credit's work
    # Locks in one order (key, then credits oldest first), so concurrent reservations never deadlock (Postgres);
    # SQLite serialises every write transaction anyway.
    key = session.get(ApiKey, key_id, with_for_update=True, populate_existing=True)
    assert key is not None
    if key.revoked_at is not None:
        raise InsufficientQuota("api key revoked")
    if key.spend_cap is not None and key.spent + key.reserved + worst > key.spend_cap:
        left = max(0, key.spend_cap - key.spent - key.reserved)
        raise InsufficientQuota(f"this request may cost up to {worst} wei; the key's spend cap leaves {left} wei")
    best_left = 0
    for job_id in candidates:
        credit = session.get(Credit, job_id, with_for_update=True, populate_existing=True)
        job = session.get(Job, job_id)
        if credit is None or job is None or credit.status != "open" or job.funded_amount is None:
            continue
        if job.deadline - timedelta(seconds=close_margin_s) <= now:
            continue
        left = available(credit, job.funded_amount)
        best_left = max(best_left, left)
        if worst > left:
            continue
        credit.reserved += worst
        key.reserved += worst
        row = ApiRequest(
            credit_id=job_id,
            key_id=key.id,
            endpoint=endpoint,
            model=model,
            n=n,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            completion_tokens=0,
            prompt_price=price.prompt,
            completion_price=price.completion,
            reserved=worst,
            charged=0,
            status="reserved",
            created_at=now,
        )
        session.add(row)
        session.commit()
        return row
    session.rollback()
    if not candidates:
        raise InsufficientQuota("no funded credit: fund one with `globai credit fund AMOUNT_GLB`")
    raise InsufficientQuota(
        f"this request may cost up to {worst} wei (prompt + max tokens at the model's "
        f"prices, plus the fee); your open credits have {best_left} wei left"
    )


def attach_run(session: Session, *, request_id: str, run_id: str, now: datetime) -> None:
    """Link the request's generation to the credit's job: it is verified and settled with it."""
    req = session.get(ApiRequest, request_id)
    if req is None:
        raise NotFound("api request", request_id)
    req.run_id = run_id
    session.add(JobRun(run_id=run_id, job_id=req.credit_id, created_at=now))
    session.commit()


def _end(
    session: Session,
    *,
    request_id: str,
    charged_tokens: int | None,
    finish_reasons: list[Any] | None,
    min_request_cost: int,
    now: datetime,
) -> ApiRequest:
    req = session.get(ApiRequest, request_id)
    if req is None:
        raise NotFound("api request", request_id)
    key = session.get(ApiKey, req.key_id, with_for_update=True, populate_existing=True)
    credit = session.get(Credit, req.credit_id, with_for_update=True, populate_existing=True)
    req = session.get(ApiRequest, request_id, populate_existing=True)
    assert key is not None and credit is not None and req is not None
    if req.status != "reserved":
        session.rollback()
        return req  # ended already (idempotent)
    if charged_tokens is None:
        charged, req.status = 0, "released"
        if req.run_id is not None:  # an unfinished generation is neither paid nor verified
            session.execute(delete(JobRun).where(JobRun.run_id == req.run_id))
    else:
        charged = min(req.reserved, req.prompt_price * req.prompt_tokens + req.completion_price * charged_tokens)
        req.completion_tokens, req.status = charged_tokens, "charged"
    req.charged, req.finish_reasons, req.ended_at = charged, finish_reasons, now
    key.reserved -= req.reserved
    key.spent += charged
    credit.reserved -= req.reserved
    credit.spent += charged
    job = session.get(Job, credit.job_id)
    assert job is not None and job.funded_amount is not None
    if credit.status == "open" and credit.reserved == 0 and available(credit, job.funded_amount) < min_request_cost:
        credit.status, credit.close_reason, credit.closed_at = "closing", "spent", now
    _finish_if_idle(session, credit, job, now)
    session.commit()
    return req


def charge(
    session: Session,
    *,
    request_id: str,
    completion_tokens: int,
    finish_reasons: list[Any],
    min_request_cost: int,
    now: datetime,
) -> ApiRequest:
    """Charge actual usage (prompt tokens + generated tokens up to each choice's stop) and release the rest."""
    return _end(
        session,
        request_id=request_id,
        charged_tokens=completion_tokens,
        finish_reasons=finish_reasons,
        min_request_cost=min_request_cost,
        now=now,
    )


def release(session: Session, *, request_id: str, min_request_cost: int, now: datetime) -> ApiRequest:
    """The request produced nothing (no route, failed generation): nothing charged, its run is unlinked."""
    return _end(
        session,
        request_id=request_id,
        charged_tokens=None,
        finish_reasons=None,
        min_request_cost=min_request_cost,
        now=now,
    )


# --- closing ---------------------------------------------------------------------------------------------------


def close_credit(session: Session, *, job_id: str, requester: str | None, reason: str, now: datetime) -> Credit:
    """No new requests; once nothing is in flight the job is `completed` and verification settles it."""
    _, job = get_credit(session, job_id=job_id, requester=requester)
    credit = session.get(Credit, job_id, with_for_update=True, populate_existing=True)
    assert credit is not None
    if credit.status == "open":
        if job.status != "funded":
            raise Conflict(f"credit {job_id} is not funded yet (job {job.status}); nothing to close")
        credit.status, credit.close_reason, credit.closed_at = "closing", reason, now
    _finish_if_idle(session, credit, job, now)
    session.commit()
    return credit


def _finish_if_idle(session: Session, credit: Credit, job: Job, now: datetime) -> None:
    if credit.status != "closing" or credit.reserved != 0:
        return
    credit.status = "closed"
    runs = session.scalar(select(func.count()).select_from(JobRun).where(JobRun.job_id == job.id)) or 0
    job.updated_at = now
    if runs:
        job.status = "completed"  # the verification beat takes it from here (verify -> slash -> settle)
        return
    # Nothing was used: cancelled, and the settle beat refunds the whole escrow (a zero record for the requester).
    job.status, job.cancelled_at = "cancelled", now
    if session.scalar(select(Settlement).where(Settlement.job_id == job.id)) is None:
        session.add(Settlement(job_id=job.id, kind="refund", status="pending", created_at=now))


def close_due(session: Session, *, close_margin_s: float, now: datetime) -> list[str]:
    """Close every open credit whose escrow deadline is within the margin (beat)."""
    due = session.scalars(
        select(Credit.job_id)
        .join(Job, Job.id == Credit.job_id)
        .where(Credit.status == "open", Job.deadline <= now + timedelta(seconds=close_margin_s))
    ).all()
    closed = []
    for job_id in due:
        try:
            close_credit(session, job_id=job_id, requester=None, reason="deadline", now=now)
            closed.append(job_id)
        except Conflict:
            session.rollback()
    return closed


# --- settlement ------------------------------------------------------------------------------------------------


def split_units(total: int, weights: list[tuple[str, int]]) -> dict[str, int]:
    """`total` units split by weight, rounded down, the remainder to the heaviest part (ties: smallest key)."""
    if not weights:
        return {}
    whole = sum(w for _, w in weights)
    if whole <= 0:
        weights, whole = [(k, 1) for k, _ in weights], len(weights)
    out = {k: total * w // whole for k, w in weights}
    heaviest = min(weights, key=lambda kw: (-kw[1], kw[0]))[0]
    out[heaviest] += total - sum(out.values())
    return out


def credit_work_items(session: Session, job: Job, parts: list[WorkPart]) -> list[WorkItem]:
    """One item per verified work part: its run's charge (in gwei units) split over the run's parts by the work
    each committed (rows x layers). A slashed or faulty part keeps its units but is paid nothing (refunded)."""
    charged = dict(
        session.execute(
            select(ApiRequest.run_id, ApiRequest.charged).where(
                ApiRequest.credit_id == job.id, ApiRequest.status == "charged", ApiRequest.run_id.is_not(None)
            )
        ).all()
    )
    by_run: dict[str, list[WorkPart]] = {}
    for p in parts:
        by_run.setdefault(p.work_key.split("/", 1)[0], []).append(p)
    items: list[WorkItem] = []
    for run_id, run_parts in sorted(by_run.items()):
        units = int(charged.get(run_id, 0)) // CREDIT_UNIT_WEI
        split = split_units(units, [(p.work_key, p.units * (p.layer_end - p.layer_start)) for p in run_parts])
        items += [WorkItem(p.work_key, p.worker, split[p.work_key], p.status) for p in run_parts]
    return items

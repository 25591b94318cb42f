"""Credit bookkeeping on a migrated database: reservations never overdraw (fee included), charges and releases
return the rest, the key cap, closing, and the settlement items that pay each request's charge to its run's parts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from market.db import ApiRequest, Job, JobRun, WorkPart
from market.db.engine import make_engine, make_session_factory
from market.db.migrate import upgrade
from market.domain_errors import InsufficientQuota
from market.services import api_keys, credits
from market.settlement.payout import PAID, UNPAID_SLASHED, fee_of

NOW = datetime(2026, 12, 2, tzinfo=UTC)
ALICE = "0x" + "a1" * 20
PRICE = credits.TokenPrice(prompt=10**12, completion=2 * 10**12)
FUNDED = 10**14


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(engine)
    with make_session_factory(engine)() as s:
        yield s
    engine.dispose()


def funded_credit(session: Session) -> str:
    job, _ = credits.create_credit(
        session, requester=ALICE, amount=FUNDED, deadline=NOW + timedelta(days=2), fee_bps=200, created_block=0, now=NOW
    )
    job.status, job.funded_amount = "funded", FUNDED  # what confirm-funding does on the JobFunded event
    session.commit()
    return job.id


def reserve(session: Session, key_id: str, max_tokens: int = 8) -> ApiRequest:
    return credits.reserve(
        session,
        key_id=key_id,
        model="m",
        endpoint="completions",
        n=1,
        prompt_tokens=5,
        max_tokens=max_tokens,
        price=PRICE,
        close_margin_s=3600,
        now=NOW,
    )


def test_reserve_charge_release_and_402_at_the_fee_inclusive_limit(session: Session) -> None:
    key = api_keys.create_key(session, requester=ALICE, name="", spend_cap=None, rate_limit_per_min=60, now=NOW).row
    with pytest.raises(InsufficientQuota):
        reserve(session, key.id)  # no credit yet
    credit_id = funded_credit(session)
    worst = PRICE.cost(5, 8)
    held = []
    while True:
        try:
            held.append(reserve(session, key.id))
        except InsufficientQuota:
            break
    used = worst * len(held)
    assert used + fee_of(used, 200) <= FUNDED < used + worst + fee_of(used + worst, 200)
    first = credits.charge(
        session,
        request_id=held[0].id,
        completion_tokens=3,
        finish_reasons=["stop"],
        min_request_cost=PRICE.cost(1, 1),
        now=NOW,
    )
    assert first.charged == PRICE.cost(5, 3) and first.status == "charged"
    credits.release(session, request_id=held[1].id, min_request_cost=PRICE.cost(1, 1), now=NOW)
    again = credits.charge(
        session,
        request_id=held[0].id,
        completion_tokens=8,
        finish_reasons=["length"],
        min_request_cost=PRICE.cost(1, 1),
        now=NOW,
    )
    assert again.charged == first.charged  # ended once
    credit, _ = credits.get_credit(session, job_id=credit_id, requester=ALICE)
    assert credit.spent == first.charged and credit.reserved == worst * (len(held) - 2)
    by_key = credits.spend_by_key(session, job_id=credit_id)
    assert by_key[0]["spent"] == credit.spent and by_key[0]["reserved"] == credit.reserved
    # Closing waits for requests in flight; the job completes (for verification) when the last one ends.
    credits.close_credit(session, job_id=credit_id, requester=ALICE, reason="requester", now=NOW)
    assert credit.status == "closing"
    with pytest.raises(InsufficientQuota):
        reserve(session, key.id, max_tokens=1)
    session.add(JobRun(run_id="00000000-0000-0000-0000-000000000001", job_id=credit_id, created_at=NOW))
    session.commit()
    for r in held[2:]:
        credits.charge(
            session,
            request_id=r.id,
            completion_tokens=1,
            finish_reasons=["stop"],
            min_request_cost=PRICE.cost(1, 1),
            now=NOW,
        )
    session.refresh(credit)
    assert credit.status == "closed" and session.get(Job, credit_id).status == "completed"  # type: ignore[union-attr]


def test_key_spend_cap(session: Session) -> None:
    funded_credit(session)
    key = api_keys.create_key(
        session, requester=ALICE, name="", spend_cap=PRICE.cost(5, 8), rate_limit_per_min=60, now=NOW
    ).row
    reserve(session, key.id)
    with pytest.raises(InsufficientQuota, match="spend cap"):
        reserve(session, key.id)


def test_settlement_items_pay_each_charge_to_its_runs_parts(session: Session) -> None:
    credit_id = funded_credit(session)
    job = session.get(Job, credit_id)
    assert job is not None
    key = api_keys.create_key(session, requester=ALICE, name="", spend_cap=None, rate_limit_per_min=60, now=NOW).row
    runs = ["10000000-0000-0000-0000-000000000000", "20000000-0000-0000-0000-000000000000"]
    charged = []
    for run_id in runs:
        req = reserve(session, key.id)
        credits.attach_run(session, request_id=req.id, run_id=run_id, now=NOW)
        charged.append(
            credits.charge(
                session, request_id=req.id, completion_tokens=7, finish_reasons=["length"], min_request_cost=1, now=NOW
            ).charged
        )
    parts = [
        WorkPart(
            job_id=credit_id,
            work_key=f"{runs[0]}/0/0xA",
            worker="0xA",
            layer_start=0,
            layer_end=2,
            units=40,
            status=PAID,
        ),
        WorkPart(
            job_id=credit_id,
            work_key=f"{runs[0]}/2/0xB",
            worker="0xB",
            layer_start=2,
            layer_end=4,
            units=7,
            status=PAID,
        ),
        WorkPart(
            job_id=credit_id,
            work_key=f"{runs[1]}/0/0xC",
            worker="0xC",
            layer_start=0,
            layer_end=4,
            units=47,
            status=UNPAID_SLASHED,
        ),
    ]
    items = credits.credit_work_items(session, job, parts)
    units = {i.task_key.split("/")[2]: i.units for i in items}
    assert units["0xA"] + units["0xB"] == charged[0] // credits.CREDIT_UNIT_WEI and units["0xA"] > units["0xB"]
    assert units["0xC"] == charged[1] // credits.CREDIT_UNIT_WEI
    assert [i.status for i in items if i.payee == "0xC"] == [UNPAID_SLASHED]  # units kept, paid nothing

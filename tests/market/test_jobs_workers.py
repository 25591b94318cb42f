"""Workers (registration, stake eligibility, sync) and jobs (escrow parameters, funding, list, cancel)."""

from __future__ import annotations

from datetime import timedelta

from eth_account import Account
from eth_utils import keccak
from sqlalchemy import select
from sqlalchemy.orm import Session

from globai.chain.ids import chain_job_id as job_id
from market.db import Job, ReputationEvent, Settlement, Task, Worker
from market.services.chain_sync import sync_escrow, sync_stakes
from market.services.job_specs import canonical_json
from tests.market.conftest import ADMIN, CLAIM_ALL, MIN_STAKE, Market, profile


def test_register_reads_stake_and_eligibility(market: Market) -> None:
    rich, poor = Account.create(), Account.create()
    market.chain.stake(rich.address, MIN_STAKE)
    market.chain.stake(poor.address, MIN_STAKE - 1)
    for account, eligible in ((rich, True), (poor, False)):
        headers = market.login(account)
        r = market.client.post("/v1/workers", headers=headers, json=profile())
        assert r.status_code == 200, r.text
        assert r.json()["eligible"] is eligible
        assert r.json()["stake"] == str(market.chain.stakes[account.address][0])
    poor_headers = market.login(poor)
    assert market.client.post("/v1/tasks/claim", headers=poor_headers, json=CLAIM_ALL).status_code == 403
    hb = market.client.post("/v1/workers/me/heartbeat", headers=poor_headers)
    assert hb.status_code == 200
    listed = market.client.get("/v1/workers?eligible=true", headers=poor_headers).json()
    assert [w["address"] for w in listed["items"]] == [rich.address]


def test_stake_sync_from_events(market: Market) -> None:
    account = Account.create()
    market.worker(account, stake=0)
    with Session(market.engine) as session:
        assert not session.scalar(select(Worker.eligible).where(Worker.address == account.address))
        market.chain.stake(account.address, MIN_STAKE)
        report = sync_stakes(session, market.chain, now=market.clock.now, page=1)
        assert report.pages >= 1 and report.events >= 1
        assert session.scalar(select(Worker.eligible).where(Worker.address == account.address))
        # resumes from the cursor: nothing new, nothing re-applied
        assert sync_stakes(session, market.chain, now=market.clock.now).events == 0
        market.chain.slash(account.address, 60)
        sync_stakes(session, market.chain, now=market.clock.now)
        worker = session.scalar(select(Worker).where(Worker.address == account.address))
        assert worker is not None and not worker.eligible and worker.stake == MIN_STAKE - 60
        kinds = session.scalars(select(ReputationEvent.kind).where(ReputationEvent.worker_id == worker.id)).all()
        assert kinds == ["slash"]


def test_post_job_returns_escrow_parameters(market: Market) -> None:
    headers = market.login(Account.create())
    created = market.training_job(headers, fund=False)
    job, escrow = created["job"], created["escrow"]
    # The requester funds the key; the escrow's id binds it to the requester (nobody else can fund that id).
    assert escrow["job_key"] == "0x" + keccak(text=job["id"]).hex()
    assert escrow["job_id"] == job_id(job["id"], job["requester"]) == job["chain_job_id"]
    assert escrow["spec_hash"] == "0x" + keccak(canonical_json(job["spec"])).hex()
    assert escrow["amount"] == job["budget"] and escrow["escrow_address"] == market.chain.escrow_address
    assert job["status"] == "created"
    # not funded: no claimable work
    worker = market.worker()
    assert market.client.post("/v1/tasks/claim", headers=worker, json=CLAIM_ALL).status_code == 204


def test_budget_and_deadline_validation(market: Market) -> None:
    headers = market.login(Account.create())
    spec = {"kind": "inference", "model": "tiny-llama", "prompts": ["hi"], "max_new_tokens": 10}
    soon = (market.clock.now + timedelta(hours=1)).isoformat()
    low = market.client.post(
        "/v1/jobs", headers=headers, json={"spec": spec, "budget": "9", "price_per_unit": "1", "deadline": soon}
    )
    assert low.status_code == 400 and "budget" in low.json()["detail"]
    past = market.client.post(
        "/v1/jobs",
        headers=headers,
        json={"spec": spec, "budget": "10", "price_per_unit": "1", "deadline": market.clock.now.isoformat()},
    )
    assert past.status_code == 400
    bad = market.client.post(
        "/v1/jobs", headers=headers, json={"spec": spec, "budget": "-1", "price_per_unit": "1", "deadline": soon}
    )
    assert bad.status_code == 422
    # A model the market does not serve: refused at post time, before any money could move.
    unknown = market.client.post(
        "/v1/jobs",
        headers=headers,
        json={"spec": {**spec, "model": "gpt-4"}, "budget": "10", "price_per_unit": "1", "deadline": soon},
    )
    assert unknown.status_code == 400 and "not served" in unknown.json()["detail"]


def test_funding_requires_matching_event(market: Market) -> None:
    account = Account.create()
    headers = market.login(account)
    created = market.training_job(headers, fund=False)
    job_id = created["job"]["id"]
    confirm = f"/v1/jobs/{job_id}/confirm-funding"
    assert market.client.post(confirm, headers=headers).status_code == 409  # nothing on chain yet
    market.chain.fund(created["escrow"], account.address, amount=int(created["escrow"]["amount"]) - 1)
    r = market.client.post(confirm, headers=headers)
    assert r.status_code == 409 and "amount" in r.json()["detail"]
    market.chain.fund(created["escrow"], account.address, spec_hash="0x" + "11" * 32)
    assert market.client.post(confirm, headers=headers).status_code == 409
    market.chain.fund(created["escrow"], account.address)
    r = market.client.post(confirm, headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "funded" and r.json()["funded_tx"]
    assert market.client.post(confirm, headers=headers).json()["status"] == "funded"  # idempotent
    with Session(market.engine) as session:
        assert len(session.scalars(select(Task).where(Task.job_id == job_id)).all()) == 4


def test_funding_via_sync_path(market: Market) -> None:
    account = Account.create()
    headers = market.login(account)
    created = market.training_job(headers, fund=False)
    market.chain.fund(created["escrow"], account.address)
    with Session(market.engine) as session:
        sync_escrow(session, market.chain, now=market.clock.now)
    assert market.client.get(f"/v1/jobs/{created['job']['id']}", headers=headers).json()["status"] == "funded"


def test_list_get_and_cancel(market: Market) -> None:
    alice, bob = Account.create(), Account.create()
    a, b = market.login(alice), market.login(bob)
    funded = market.training_job(a)
    unfunded = market.training_job(a, fund=False)
    market.training_job(b, fund=False)
    mine = market.client.get("/v1/jobs", headers=a).json()
    assert mine["total"] == 2 and {j["id"] for j in mine["items"]} == {funded["job"]["id"], unfunded["job"]["id"]}
    page = market.client.get("/v1/jobs?limit=1&status=created", headers=a).json()
    assert page["total"] == 1 and page["items"][0]["id"] == unfunded["job"]["id"]
    pages = [market.client.get(f"/v1/jobs?limit=1&offset={i}", headers=a).json()["items"] for i in (0, 1, 2)]
    assert [len(p) for p in pages] == [1, 1, 0] and pages[0][0]["id"] != pages[1][0]["id"]
    assert market.client.get(f"/v1/jobs?requester={bob.address}", headers=a).status_code == 403
    assert market.client.get(f"/v1/jobs/{funded['job']['id']}", headers=b).status_code == 403
    admin = market.login(ADMIN, roles=["admin"])
    assert market.client.get("/v1/jobs", headers=admin).json()["total"] == 3
    assert market.client.get("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=a).status_code == 404

    # a worker holds a lease on the funded job when it is cancelled
    worker = market.worker()
    lease = market.client.post("/v1/tasks/claim", headers=worker, json=CLAIM_ALL).json()
    assert market.client.post(f"/v1/jobs/{funded['job']['id']}/cancel", headers=b).status_code == 403
    r = market.client.post(f"/v1/jobs/{funded['job']['id']}/cancel", headers=a)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    submit = market.client.post(
        f"/v1/tasks/{lease['task']['id']}/result",
        headers=worker,
        json={"lease_id": lease["lease_id"], "result_hash": "0x" + "ab" * 32},
    )
    assert submit.status_code == 409
    assert market.client.post("/v1/tasks/claim", headers=worker, json=CLAIM_ALL).status_code == 204
    assert market.client.post(f"/v1/jobs/{unfunded['job']['id']}/cancel", headers=admin).status_code == 200
    with Session(market.engine) as session:
        refunds = session.scalars(select(Settlement)).all()
        # only the funded job needs a refund on chain (the refund hook for settlement code)
        assert [(s.job_id, s.kind, s.status) for s in refunds] == [(funded["job"]["id"], "refund", "pending")]


def test_jobs_record_their_chain_and_funding_is_read_from_that_chain(market: Market) -> None:
    headers = market.login(Account.create())
    created = market.training_job(headers, fund=False)
    job, escrow = created["job"], created["escrow"]
    assert job["chain_id"] == escrow["chain_id"] == market.settings.chain_id == market.chain.chain_id
    with Session(market.engine) as session:
        row = session.get(Job, job["id"])
        assert row is not None and row.chain_id == market.settings.chain_id
    market.chain.chain_id += 1  # the market now reads another chain than the one that escrows this job
    try:
        r = market.client.post(f"/v1/jobs/{job['id']}/confirm-funding", headers=headers)
    finally:
        market.chain.chain_id -= 1
    assert r.status_code == 409 and f"chain {market.settings.chain_id}" in r.json()["detail"]

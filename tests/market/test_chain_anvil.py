"""The chain-facing market code against a real Anvil with the real contracts: stake eligibility from the vault and
its events, and jobs funded on chain with a permit, confirmed from the JobFunded event."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from globai.chain.ids import chain_job_id
from globai.chain.web3_market import Web3ChainView
from market.api import create_app
from market.services.chain_sync import sync_stakes
from tests.market.conftest import CLAIM_ALL, Clock, empty_tables, login, make_settings, profile


@dataclass
class Live:
    client: TestClient
    view: Web3ChainView
    chain: Any  # tests.conftest.Anvil
    deployment: Any
    engine: Engine
    clock: Clock

    def login(self, account: LocalAccount) -> dict[str, str]:
        return login(self.client, self.clock, account)

    def transact(self, fn: Any, sender: LocalAccount) -> dict[str, Any]:
        return dict(self.chain.client.transact(fn, sender))


@pytest.fixture
def live(chain: Any, deployment: Any, db_engine: Engine, db_url: str) -> Iterator[Live]:
    view = Web3ChainView(chain.client, staking_address=deployment.vault, escrow_address=deployment.escrow)
    # The chain's clock, so deadlines and message times agree with block timestamps.
    clock = Clock(datetime.fromtimestamp(chain.client.w3.eth.get_block("latest")["timestamp"], UTC))
    settings = make_settings(db_url, chain_id=view.chain_id)
    app = create_app(settings, engine=db_engine, chain=view, clock=clock)
    with TestClient(app) as client:
        yield Live(client, view, chain, deployment, db_engine, clock)
    empty_tables(db_engine)


def _give_glb(live: Live, to: LocalAccount, amount: int) -> None:
    token = live.deployment.bind(live.chain.client).token
    live.transact(token.functions.transfer(to.address, amount), live.chain.accounts[0])


def test_job_id_matches_chain_ids() -> None:
    from globai.chain.ids import job_id_bytes

    requester = "0x" + "12" * 20
    assert (
        chain_job_id("0f8fad5b-d9cb-469f-a165-70867728950e", requester)
        == "0x" + job_id_bytes("0f8fad5b-d9cb-469f-a165-70867728950e", requester).hex()
    )


def test_stake_makes_worker_eligible_and_unstake_event_removes_it(live: Live) -> None:
    contracts = live.deployment.bind(live.chain.client)
    worker = live.chain.accounts[3]
    minimum = live.view.min_stake()
    _give_glb(live, worker, minimum)
    headers = live.login(worker)
    r = live.client.post("/v1/workers", headers=headers, json=profile())
    assert r.status_code == 200 and r.json()["eligible"] is False
    live.transact(contracts.token.functions.approve(contracts.vault.address, minimum), worker)
    live.transact(contracts.vault.functions.stake(minimum), worker)
    with Session(live.engine) as session:
        sync_stakes(session, live.view, now=live.clock.now, page=5)
    me = live.client.get("/v1/workers/me", headers=headers).json()
    assert me["eligible"] is True and me["stake"] == str(minimum)
    assert live.client.post("/v1/tasks/claim", headers=headers, json=CLAIM_ALL).status_code == 204

    live.transact(contracts.vault.functions.requestUnstake(1), worker)
    with Session(live.engine) as session:
        report = sync_stakes(session, live.view, now=live.clock.now)
        assert report.events >= 1
    me = live.client.get("/v1/workers/me", headers=headers).json()
    assert me["eligible"] is False and me["unbonding"] == "1"
    assert live.client.post("/v1/tasks/claim", headers=headers, json=CLAIM_ALL).status_code == 403


def _post_job(live: Live, headers: dict[str, str], price: int) -> dict[str, Any]:
    spec = {
        "kind": "training",
        "model": "tiny-llama",
        "dataset": "d",
        "rounds": 1,
        "tasks_per_round": 2,
        "local_steps": 1,
        "layer_start": 0,
        "layer_end": 4,
    }
    body = {
        "spec": spec,
        "budget": str(price * 2),
        "price_per_unit": str(price),
        "deadline": (live.clock.now + timedelta(hours=1)).isoformat(),
    }
    r = live.client.post("/v1/jobs", headers=headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_job_funded_with_permit_and_confirmed_from_event(live: Live) -> None:
    from globai.chain.permit import sign_glb_permit

    contracts = live.deployment.bind(live.chain.client)
    requester = live.chain.accounts[4]
    headers = live.login(requester)
    price = 10**18
    created = _post_job(live, headers, price)
    escrow = created["escrow"]
    assert escrow["escrow_address"] == contracts.escrow.address
    _give_glb(live, requester, int(escrow["amount"]) * 2)
    confirm = f"/v1/jobs/{created['job']['id']}/confirm-funding"
    assert live.client.post(confirm, headers=headers).status_code == 409

    def fund(job: dict[str, Any], amount: int) -> None:
        permit = sign_glb_permit(
            live.chain.client,
            requester,
            token=contracts.token.address,
            spender=contracts.escrow.address,
            value=amount,
            deadline=job["escrow"]["deadline"],
        )
        live.transact(
            contracts.escrow.functions.fundJobWithPermit(
                bytes.fromhex(job["escrow"]["job_key"][2:]),
                amount,
                bytes.fromhex(job["escrow"]["spec_hash"][2:]),
                job["escrow"]["deadline"],
                permit.deadline,
                permit.v,
                permit.r,
                permit.s,
            ),
            requester,
        )

    fund(created, int(escrow["amount"]))
    r = live.client.post(confirm, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "funded" and r.json()["funded_amount"] == escrow["amount"]
    assert live.view.get_job(escrow["job_id"]).status == "funded"

    # funding a job with less than its budget on chain does not fund it in the market
    short = _post_job(live, headers, price)
    fund(short, int(short["escrow"]["amount"]) - 1)
    r = live.client.post(f"/v1/jobs/{short['job']['id']}/confirm-funding", headers=headers)
    assert r.status_code == 409 and "amount" in r.json()["detail"]

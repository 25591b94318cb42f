"""Read-only audit API: public reports, auditor-only checks and indexed chain events."""

from __future__ import annotations

from datetime import UTC, datetime

from eth_account import Account
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from globai.chain.web3_market import Web3ChainView
from market.api import create_app
from market.db import VerificationRun, WorkPart
from market.indexer import index_chain
from market.services.settlement import settle_jobs
from tests.market.conftest import Clock, login, make_settings

AUDITOR = Account.create()


def test_auditor_reads_checks_and_indexed_events(db, funder, operator, chain, deployment) -> None:  # type: ignore[no-untyped-def]
    with Session(db, expire_on_commit=False) as s:
        job = funder.job(s)
        s.add(WorkPart(job_id=job.id, work_key=f"{job.id}-0", worker=Account.create().address, units=3, status="paid"))
        s.add(VerificationRun(job_id=job.id, status="settling", secret="0x" + "11" * 32, beacon="0x" + "22" * 32))
        s.commit()
        settle_jobs(s, operator, job_ids=[job.id], now=datetime.now(UTC))
        view = Web3ChainView(chain.client, staking_address=deployment.vault, escrow_address=deployment.escrow)
        assert index_chain(s, view, start_block=deployment.first_block).events > 0
    clock = Clock()
    app = create_app(
        make_settings(str(db.url), auditor_addresses=[AUDITOR.address]), engine=db, chain=None, clock=clock
    )
    with TestClient(app) as client:
        assert client.get(f"/v1/audit/jobs/{job.id}/report").status_code == 200  # public
        assert client.get("/v1/audit/events").status_code == 401
        requester = login(client, clock, Account.create(), ["requester"])
        assert client.get("/v1/audit/events", headers=requester).status_code == 403
        auditor = login(client, clock, AUDITOR, ["auditor"])
        events = client.get("/v1/audit/events", params={"event": "JobSettled"}, headers=auditor).json()
        assert events["total"] == 1 and events["items"][0]["args"]["jobId"] == job.chain_job_id
        funded = client.get("/v1/audit/events", params={"event": "JobFunded", "limit": 1}, headers=auditor).json()
        assert funded["total"] >= 1 and len(funded["items"]) == 1
        assert client.get(f"/v1/audit/jobs/{job.id}/checks", headers=auditor).json() == []
        assert client.get(f"/v1/audit/jobs/{job.id}/slashes", headers=auditor).json() == []

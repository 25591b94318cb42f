"""Chain effects are confirmed, not assumed: a settlement is `sent` until its JobSettled event is N blocks deep
(confirmed by the settle beat or by the indexer); a settlement the chain lost (a revert below N, as a reorg or a
node restarted without its state would do) is sent again; a cancelled funded job is refunded through the same
path and the audit accepts its report."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from globai.chain.deploy import GLB
from globai.chain.web3_market import Web3ChainView
from market.audit.job import audit_job
from market.db import Job, Settlement, SettlementReport
from market.indexer import index_chain
from market.services.jobs import cancel_job
from market.services.settlement import ready_jobs, settle_jobs
from tests.settlement.support import credited, iter_events
from tests.settlement.test_settle_onchain import A, add_parts

NOW = datetime.now(UTC)
N = 3


def _mine(chain, blocks: int) -> None:  # type: ignore[no-untyped-def]
    for _ in range(blocks):
        chain.client.rpc("evm_mine")


def test_sent_then_confirmed_by_depth_and_by_indexer(db, funder, operator, chain, deployment) -> None:  # type: ignore[no-untyped-def]
    op = dataclasses.replace(operator, confirmations=N)
    view = Web3ChainView(chain.client, staking_address=deployment.vault, escrow_address=deployment.escrow)
    with Session(db) as s:
        jobs = [funder.job(s), funder.job(s)]
        for job in jobs:
            add_parts(s, job, [(A, 10, "paid")])
        index_chain(s, view, start_block=deployment.first_block, confirmations=N)
        sent = settle_jobs(s, op, job_ids=[j.id for j in jobs], now=NOW)
        assert {o.status for o in sent} == {"sent"}
        assert {r.status for r in s.query(Settlement)} == {"sent"}
        assert {s.get(Job, j.id).status for j in jobs} == {"completed"}  # type: ignore[union-attr]
        assert sorted(ready_jobs(s)) == sorted(j.id for j in jobs)  # the beat keeps checking them
        # Not deep enough yet: another pass changes nothing and sends nothing.
        assert {o.status for o in settle_jobs(s, op, job_ids=[jobs[0].id], now=NOW)} == {"sent"}
        _mine(chain, N)
        # The settle beat confirms one, the indexer (reading N blocks behind the head) the other.
        (again,) = settle_jobs(s, op, job_ids=[jobs[0].id], now=NOW)
        assert again.status == "already_settled" and again.tx_hash == sent[0].tx_hash
        index_chain(s, view, start_block=deployment.first_block, confirmations=N)
        s.expire_all()
        assert {r.status for r in s.query(Settlement)} == {"confirmed"}
        assert {s.get(Job, j.id).status for j in jobs} == {"settled"}  # type: ignore[union-attr]
        assert ready_jobs(s) == []
    assert len(list(iter_events(chain.client, deployment, "JobSettled"))) == 2


def test_settlement_lost_below_n_is_sent_again(db, funder, operator, chain, deployment) -> None:  # type: ignore[no-untyped-def]
    op = dataclasses.replace(operator, confirmations=N)
    with Session(db) as s:
        job = funder.job(s)
        add_parts(s, job, [(A, 10, "paid")])
        before = chain.snapshot()
        (first,) = settle_jobs(s, op, job_ids=[job.id], now=NOW)
        assert first.status == "sent"
        chain.revert(before)  # the block with the settlement is gone (a reorg of depth 1 < N)
        assert op.job(bytes.fromhex(job.chain_job_id[2:])).status == "funded"  # JobEscrow status 1
        (resent,) = settle_jobs(s, op, job_ids=[job.id], now=NOW)
        assert resent.status == "sent"
        _mine(chain, N)
        (done,) = settle_jobs(s, op, job_ids=[job.id], now=NOW)
        assert done.status == "already_settled" and done.tx_hash == resent.tx_hash
        assert s.get(Job, job.id).status == "settled"  # type: ignore[union-attr]
        report = s.get(SettlementReport, job.id).report  # type: ignore[union-attr]
    assert len(list(iter_events(chain.client, deployment, "JobSettled"))) == 1
    assert credited(chain.client, deployment, A) == 10 * GLB
    result = audit_job(chain.client, op.escrow, report, from_block=deployment.first_block)
    assert result.ok, result.reason


def test_cancelled_funded_job_is_refunded_and_audits(db, funder, operator, chain, deployment) -> None:  # type: ignore[no-untyped-def]
    with Session(db) as s:
        job = funder.job(s, budget=40 * GLB, status="funded")
        job.funded_amount = 40 * GLB
        s.commit()
        cancel_job(s, job_id=job.id, caller=job.requester, is_admin=False, now=NOW)
        assert ready_jobs(s) == [job.id]
        (out,) = settle_jobs(s, operator, job_ids=[job.id], now=NOW)
        assert out.status == "settled"
        assert s.get(Job, job.id).status == "refunded"  # type: ignore[union-attr]
        row = s.query(Settlement).filter_by(job_id=job.id).one()
        assert (row.kind, row.status) == ("refund", "confirmed")
        report = s.get(SettlementReport, job.id).report  # type: ignore[union-attr]
        assert ready_jobs(s) == []
    assert report["paid"] == "0" and report["refunded"] == str(40 * GLB)
    assert credited(chain.client, deployment, funder.requester.address) == 40 * GLB
    result = audit_job(chain.client, operator.escrow, report, from_block=deployment.first_block)
    assert result.ok, result.reason

"""Every verification state has an owner after a crash: the steps' Celery messages are lost (as with a Redis
restart or a killed Celery worker) at each stage of a cheating job, and the `recover` beat task alone brings the
job to `done` - cheater slashed once, honest worker paid, settled once. `decide_job` commits the decision as one
transaction: a crash in the middle leaves the run `replaying`, decided again later."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from market.db import Job, SlashRecord, VerificationCheck, VerificationRun, WorkPart
from market.services import verification as svc
from market.services.recovery import RecoveryPolicy, recover
from market.tasks.verification import recover as recover_task
from tests.verification.conftest import Harness
from tests.verification.network import SimNetwork
from tests.verification.test_cheating import stake, two_part_job

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _submit_without_messages(harness: Harness, net: SimNetwork) -> tuple[str, str, str]:
    """A cheating job whose verification was started but none of whose replay messages exist any more."""
    cheater = net.add_worker("op-cheat", "noise_x1.10")
    honest = [net.add_worker(f"op-{i}") for i in range(3)]
    stake(harness, cheater)
    with Session(harness.engine, expire_on_commit=False) as s:
        job = harness.funder.job(s, budget=2_000 * 10**18, price=10**16, prefunded=True)
        svc.open_run(s, job_id=job.id, now=job.created_at)
    net.add_job(job.id, two_part_job(net, cheater, honest[0], seed=3)(job.id))
    harness.router.by_job[job.id] = net
    with Session(harness.engine) as s:
        ids = svc.start_verification(s, harness.router, harness.config, job_id=job.id, now=datetime.now(UTC))
    assert ids  # pending checks, never enqueued
    return job.id, cheater.address, honest[0].address


def _drive(harness: Harness, job_id: str, timeout: float = 120.0) -> str:
    """Only the beat: call `recover` until the run is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recover_task.apply_async().get(timeout=60)
        with Session(harness.engine) as s:
            status = s.get(VerificationRun, job_id).status  # type: ignore[union-attr]
        if status == "done":
            return status
        time.sleep(0.6)  # > recovery_stale_s of the harness
    return status


def test_lost_replay_messages_recovered(harness: Harness) -> None:
    job_id, cheater, honest = _submit_without_messages(harness, SimNetwork())
    assert _drive(harness, job_id) == "done"
    [result] = harness.wait([job_id])
    assert result.slashed == {cheater: "confirmed"}
    assert result.parts[cheater] == "unpaid_slashed" and result.parts[honest] == "paid"
    with Session(harness.engine) as s:
        assert s.get(Job, job_id).status == "settled"  # type: ignore[union-attr]


def test_lost_decision_and_slash_messages_recovered(harness: Harness) -> None:
    job_id, cheater, _ = _submit_without_messages(harness, SimNetwork())
    with Session(harness.engine) as s:
        for check_id in svc._pending_ids(s, job_id):  # replays done, but finish_job's message is lost
            svc.run_check(s, harness.router, harness.config, check_id=check_id, now=datetime.now(UTC))
        for check_id in svc._pending_ids(s, job_id):  # dispute rounds too
            svc.run_check(s, harness.router, harness.config, check_id=check_id, now=datetime.now(UTC))
        s.get(VerificationRun, job_id).status = "deciding"  # type: ignore[union-attr]  # left by an older version
        s.commit()
    assert _drive(harness, job_id) == "done"
    with Session(harness.engine) as s:
        slashes = s.scalars(select(SlashRecord).where(SlashRecord.job_id == job_id)).all()
        assert [(r.worker, r.status) for r in slashes] == [(cheater, "confirmed")]


def test_decision_is_one_transaction(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id, cheater, _ = _submit_without_messages(harness, SimNetwork())
    with Session(harness.engine) as s:
        while ids := svc._pending_ids(s, job_id):
            for check_id in ids:
                svc.run_check(s, harness.router, harness.config, check_id=check_id, now=datetime.now(UTC))

    decided = []
    real = svc.decide_segment

    def crash(votes):  # type: ignore[no-untyped-def]
        decided.append(real(votes))
        if len(decided) == 2:  # after the run was claimed and the first segment decided
            raise RuntimeError("process killed mid-decision")
        return decided[-1]

    monkeypatch.setattr(svc, "decide_segment", crash)
    with Session(harness.engine) as s, pytest.raises(RuntimeError):
        svc.decide_job(s, harness.config, job_id=job_id, now=datetime.now(UTC))
    assert len(decided) == 2
    with Session(harness.engine) as s:
        assert s.get(VerificationRun, job_id).status == "replaying"  # type: ignore[union-attr]
        assert {p.status for p in s.scalars(select(WorkPart).where(WorkPart.job_id == job_id))} == {"pending"}
        assert not s.scalars(select(SlashRecord).where(SlashRecord.job_id == job_id)).all()
    monkeypatch.undo()
    with Session(harness.engine) as s:
        decision = svc.decide_job(s, harness.config, job_id=job_id, now=datetime.now(UTC))
        assert decision is not None and list(decision.guilty) == [cheater]
        assert svc.decide_job(s, harness.config, job_id=job_id, now=datetime.now(UTC)) is None  # decided once
        assert s.get(VerificationRun, job_id).status == "slashing"  # type: ignore[union-attr]


def test_replay_that_never_answers_is_void_after_its_age_limit(harness: Harness) -> None:
    job_id, _, _ = _submit_without_messages(harness, SimNetwork())
    later = datetime.now(UTC) + timedelta(hours=1)
    with Session(harness.engine) as s:
        pending = len(svc._pending_ids(s, job_id))
        plan = recover(s, now=later, policy=RecoveryPolicy(stale_s=60, check_max_age_s=1800))
        assert plan.voided == pending and job_id in plan.finish and not plan.replay
        assert svc._pending_ids(s, job_id) == []
        reasons = {c.reason for c in s.scalars(select(VerificationCheck).where(VerificationCheck.job_id == job_id))}
        assert "timed out" in reasons

"""Task leases: capability filter, priority, heartbeat, expiry and requeue, holder-only idempotent submit,
no double lease under 50 concurrent claimers, and nothing paid twice."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from market.db import Job, Lease, Settlement, SettlementItem, Task, Worker
from market.db.engine import make_session_factory
from market.services import leasing
from market.services.jobs import TaskSpec, enqueue_tasks
from market.services.reservations import apply_reservations
from tests.market.conftest import CLAIM_ALL, Market

pytestmark = pytest.mark.timeout(180)

RESULT = {"result_hash": "0x" + "cd" * 32, "result": {"loss": 1.5}}


def _claim(market: Market, headers: dict[str, str], body: dict | None = None) -> dict | None:  # type: ignore[type-arg]
    r = market.client.post("/v1/tasks/claim", headers=headers, json=body or CLAIM_ALL)
    assert r.status_code in (200, 204), r.text
    return r.json() if r.status_code == 200 else None


def test_claim_heartbeat_submit_idempotent(market: Market) -> None:
    requester = market.login(Account.create())
    job = market.training_job(requester, tasks=1)
    worker, other = market.worker(), market.worker(operator="op-2")
    lease = _claim(market, worker)
    assert lease is not None and lease["task"]["job_id"] == job["job"]["id"] and lease["task"]["status"] == "leased"
    assert _claim(market, other) is None  # the only task is leased
    task_id, lease_id = lease["task"]["id"], lease["lease_id"]

    market.clock.advance(20)
    hb = market.client.post(f"/v1/tasks/{task_id}/heartbeat", headers=worker, json={"lease_id": lease_id})
    assert hb.status_code == 200 and hb.json()["lease_expires_at"] > lease["lease_expires_at"]
    # only the holder: someone else's heartbeat and submit are refused
    assert (
        market.client.post(f"/v1/tasks/{task_id}/heartbeat", headers=other, json={"lease_id": lease_id}).status_code
        == 409
    )
    assert (
        market.client.post(
            f"/v1/tasks/{task_id}/result", headers=other, json={"lease_id": lease_id, **RESULT}
        ).status_code
        == 409
    )

    first = market.client.post(f"/v1/tasks/{task_id}/result", headers=worker, json={"lease_id": lease_id, **RESULT})
    assert first.status_code == 200 and first.json()["accepted"] is True
    again = market.client.post(f"/v1/tasks/{task_id}/result", headers=worker, json={"lease_id": lease_id, **RESULT})
    assert again.status_code == 200 and again.json()["accepted"] is False
    different = market.client.post(
        f"/v1/tasks/{task_id}/result", headers=worker, json={"lease_id": lease_id, "result_hash": "0x" + "ee" * 32}
    )
    assert different.status_code == 409
    seen = market.client.get(f"/v1/tasks/{task_id}", headers=requester).json()
    assert seen["status"] == "submitted" and seen["result_hash"] == RESULT["result_hash"]
    assert market.client.get(f"/v1/tasks/{task_id}", headers=other).status_code == 403


def test_expired_lease_is_requeued_and_old_holder_locked_out(market: Market) -> None:
    market.training_job(market.login(Account.create()), tasks=1)
    slow, fast = market.worker(), market.worker(operator="op-2")
    lease = _claim(market, slow)
    assert lease is not None
    market.clock.advance(market.settings.lease_ttl_s + 1)
    # expired but not yet requeued: still cannot be revived or submitted
    assert (
        market.client.post(
            f"/v1/tasks/{lease['task']['id']}/heartbeat", headers=slow, json={"lease_id": lease["lease_id"]}
        ).status_code
        == 409
    )
    with Session(market.engine) as session:
        assert leasing.requeue_expired(session, now=market.clock.now, max_attempts=5) == 1
    again = _claim(market, fast)
    assert again is not None and again["task"]["id"] == lease["task"]["id"] and again["task"]["attempts"] == 2
    late = market.client.post(
        f"/v1/tasks/{lease['task']['id']}/result", headers=slow, json={"lease_id": lease["lease_id"], **RESULT}
    )
    assert late.status_code == 409
    with Session(market.engine) as session:
        statuses = Counter(session.scalars(select(Lease.status)).all())
        assert statuses == {"expired": 1, "active": 1}


def test_requeue_gives_up_after_max_attempts(market: Market) -> None:
    market.training_job(market.login(Account.create()), tasks=1)
    worker = market.worker()
    for _ in range(2):
        assert _claim(market, worker) is not None
        market.clock.advance(market.settings.lease_ttl_s + 1)
        with Session(market.engine) as session:
            leasing.requeue_expired(session, now=market.clock.now, max_attempts=2)
    with Session(market.engine) as session:
        assert session.scalar(select(Task.status)) == "failed"


def test_capability_filter(market: Market) -> None:
    market.training_job(market.login(Account.create()), tasks=1)
    worker = market.worker()
    for wrong in (
        {**CLAIM_ALL, "models": ["other-model"]},
        {**CLAIM_ALL, "kinds": ["forward"]},
        {**CLAIM_ALL, "layer_ranges": [{"start": 0, "end": 2}, {"start": 2, "end": 4}]},  # split: not covered
        {**CLAIM_ALL, "memory_bytes": 1 << 20},
    ):
        assert _claim(market, worker, wrong) is None, wrong
    small = market.worker(operator="op-small", memory=1 << 20)  # the registered profile caps the claim too
    assert _claim(market, small) is None
    assert _claim(market, worker, {**CLAIM_ALL, "layer_ranges": [{"start": 0, "end": 4}]}) is not None


def test_priority_by_price_and_replica_operator_exclusion(market: Market) -> None:
    requester = market.login(Account.create())
    cheap = market.training_job(requester, tasks=1, price=1)
    dear = market.training_job(requester, tasks=1, price=50)
    worker = market.worker(operator="op-A")
    first = _claim(market, worker)
    second = _claim(market, worker)
    assert first and second
    assert [first["task"]["job_id"], second["task"]["job_id"]] == [dear["job"]["id"], cheap["job"]["id"]]
    # a replay task that checks op-A's work must go to another operator
    with Session(market.engine) as session:
        job = session.get(Job, dear["job"]["id"])
        assert job is not None
        enqueue_tasks(
            session,
            job=job,
            now=market.clock.now,
            tasks=[
                TaskSpec(
                    kind="forward",
                    model="tiny-llama",
                    layer_start=0,
                    layer_end=4,
                    memory_bytes=0,
                    units=1,
                    exclude_operator="op-A",
                )
            ],
        )
        session.commit()
    forward = {**CLAIM_ALL, "kinds": ["forward"]}
    assert _claim(market, worker, forward) is None
    replica = market.worker(operator="op-B")
    assert _claim(market, replica, forward) is not None


def test_reserved_worker_gets_long_job_first(market: Market) -> None:
    requester = market.login(Account.create())
    market.training_job(requester, tasks=1, price=100)
    long_job = market.training_job(requester, tasks=1, price=1, rounds=10)
    assert long_job["job"]["long_running"] is True
    account = Account.create()
    headers = market.worker(account)
    with Session(market.engine) as session:
        worker = session.scalar(select(Worker).where(Worker.address == account.address))
        assert worker is not None
        worker.reserved_job_id = long_job["job"]["id"]
        session.commit()
    lease = _claim(market, headers)
    assert lease is not None and lease["task"]["job_id"] == long_job["job"]["id"]


def test_capacity_reservations_applied_to_workers(market: Market) -> None:
    requester = market.login(Account.create())
    market.training_job(requester, tasks=1, price=100)
    long_job = market.training_job(requester, tasks=2, price=1, rounds=10)
    accounts = [Account.create() for _ in range(4)]
    headers = [market.worker(a, operator=f"op-{i}") for i, a in enumerate(accounts)]
    with Session(market.engine) as session:
        reserved = apply_reservations(session, now=market.clock.now)
    assert sorted(reserved.values()) == [long_job["job"]["id"]] * 2  # 2 wanted, and at most half of 4 workers
    reserved_headers = [h for a, h in zip(accounts, headers, strict=True) if _worker_id(market, a) in reserved]
    for h in reserved_headers:
        lease = _claim(market, h)
        assert lease is not None and lease["task"]["job_id"] == long_job["job"]["id"]


def _worker_id(market: Market, account: Any) -> str:
    with Session(market.engine) as session:
        return str(session.scalar(select(Worker.id).where(Worker.address == account.address)))


def test_one_active_lease_and_one_payment_per_task_enforced_by_db(market: Market) -> None:
    market.training_job(market.login(Account.create()), tasks=1)
    account = Account.create()
    headers = market.worker(account)
    lease = _claim(market, headers)
    assert lease is not None
    with Session(market.engine) as session:
        worker_id = session.scalar(select(Worker.id).where(Worker.address == account.address))
        session.add(
            Lease(
                task_id=lease["task"]["id"],
                worker_id=worker_id,
                status="active",
                expires_at=market.clock.now + timedelta(seconds=5),
            )
        )
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()
        job_id = lease["task"]["job_id"]
        settlement = Settlement(job_id=job_id, kind="settle")
        session.add(settlement)
        session.flush()
        item = {"task_id": lease["task"]["id"], "payee": account.address, "units": 2, "amount": 20}
        session.add(SettlementItem(settlement_id=settlement.id, **item))
        session.commit()
        session.add(SettlementItem(settlement_id=settlement.id, **item))
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()
        session.add(Settlement(job_id=job_id, kind="settle"))
        with pytest.raises(IntegrityError):
            session.commit()


def test_batched_claim_and_submit(market: Market) -> None:
    requester = market.login(Account.create())
    cheap = market.training_job(requester, tasks=3, price=1)
    dear = market.training_job(requester, tasks=2, price=50)
    worker, other = market.worker(), market.worker(operator="op-2")
    r = market.client.post("/v1/tasks/claims", headers=worker, json={**CLAIM_ALL, "max_tasks": 4})
    assert r.status_code == 200, r.text
    leases = r.json()["leases"]
    jobs = [lease["task"]["job_id"] for lease in leases]
    assert jobs == [dear["job"]["id"]] * 2 + [cheap["job"]["id"]] * 2  # best-paying first, at most max_tasks
    assert len({lease["lease_id"] for lease in leases}) == 4 and all(x["task"]["status"] == "leased" for x in leases)
    rest = market.client.post("/v1/tasks/claims", headers=other, json={**CLAIM_ALL, "max_tasks": 4}).json()["leases"]
    assert len(rest) == 1 and rest[0]["task"]["id"] not in {x["task"]["id"] for x in leases}
    assert market.client.post("/v1/tasks/claims", headers=other, json=CLAIM_ALL).json() == {"leases": []}
    assert market.client.post("/v1/tasks/claims", headers=other, json={**CLAIM_ALL, "max_tasks": 65}).status_code == 422

    items = [{"task_id": x["task"]["id"], "lease_id": x["lease_id"], **RESULT} for x in leases[:3]]
    items.append({"task_id": rest[0]["task"]["id"], "lease_id": rest[0]["lease_id"], **RESULT})  # not this worker's
    out = market.client.post("/v1/tasks/results", headers=worker, json={"results": items})
    assert out.status_code == 200, out.text
    got = out.json()["results"]
    assert [g["accepted"] for g in got] == [True, True, True, False] and got[3]["error"] and not got[0]["error"]
    again = market.client.post("/v1/tasks/results", headers=worker, json={"results": items[:1]}).json()["results"]
    assert again == [{"task_id": items[0]["task_id"], "accepted": False, "error": None}]  # the same result: a no-op
    seen = market.client.get(f"/v1/tasks/{leases[3]['task']['id']}", headers=worker).json()
    assert seen["status"] == "leased"  # not submitted in the batch: still leased


def test_50_concurrent_claimers_never_share_a_task(market: Market) -> None:
    tasks, claimers = 200, 50
    market.training_job(market.login(Account.create()), tasks=tasks)
    accounts = [Account.create() for _ in range(claimers)]
    for i, account in enumerate(accounts):
        market.worker(account, operator=f"op-{i}")
    factory = make_session_factory(market.engine)
    with factory() as session:
        workers = list(session.scalars(select(Worker)).all())
    wanted = leasing.ClaimFilter(kinds=["train"], models=["tiny-llama"], layer_ranges=[(0, 8)], memory_bytes=16 << 30)
    barrier = threading.Barrier(claimers)
    claimed: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(worker: Worker, limit: int) -> None:
        try:
            barrier.wait()
            with factory() as session:
                while True:
                    # half the claimers take batches of 3 (one statement on Postgres), half one task at a time
                    got = leasing.claim_tasks(
                        session, worker=worker, wanted=wanted, lease_ttl_s=60, now=market.clock.now, limit=limit
                    )
                    if not got:
                        return
                    with lock:
                        claimed.extend((c.task.id, worker.id) for c in got)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w, 1 + 2 * (i % 2))) for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    per_task = Counter(task_id for task_id, _ in claimed)
    assert len(per_task) == tasks and max(per_task.values()) == 1
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Lease)) == tasks
        assert session.scalar(select(func.count()).where(Task.status == "leased")) == tasks
    assert len({w for _, w in claimed}) > 1  # several claimers actually took part

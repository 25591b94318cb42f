"""The periodic lease requeue runs as a real Celery task on a real worker over Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy.orm import Session

from market.db import Job, Lease, Task, Worker
from market.tasks.celery_app import create_celery, runtime
from market.tasks.indexer import index_chain_task
from market.tasks.leases import requeue_expired_leases
from tests.market.conftest import empty_tables, make_settings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def stale_lease(db_engine):  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    with Session(db_engine) as session:
        worker = Worker(
            address="0x" + "11" * 20,
            operator_id="op",
            device="cpu",
            memory_bytes=1,
            throughput_tokens_s=1,
            bandwidth_bytes_s=1,
            latency_ms=1,
            reference_layer="r",
            models=[],
        )
        job = Job(
            chain_job_id="0x" + "22" * 32,
            requester="0x" + "33" * 20,
            kind="training",
            model="m",
            spec={},
            spec_hash="0x" + "44" * 32,
            budget=10,
            price_per_unit=1,
            max_units=10,
            deadline=now + timedelta(hours=1),
            status="funded",
        )
        session.add_all([worker, job])
        session.flush()
        task = Task(
            job_id=job.id,
            index=0,
            kind="train",
            model="m",
            layer_start=0,
            layer_end=1,
            memory_bytes=0,
            units=1,
            priority=1,
            deadline=job.deadline,
            status="leased",
            attempts=1,
            lease_id="L1",
            leased_by=worker.id,
            lease_expires_at=now - timedelta(seconds=1),
        )
        session.add(task)
        session.flush()
        session.add(Lease(id="L1", task_id=task.id, worker_id=worker.id, expires_at=now - timedelta(seconds=1)))
        task_id = task.id
        session.commit()
    # The session is closed before the worker runs: on SQLite an open transaction holds the write lock.
    yield task_id
    empty_tables(db_engine)


def test_requeue_task_on_real_worker(redis_url: str, db_url: str, db_engine, stale_lease: str) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(db_url, redis_url=redis_url)
    app = create_celery(settings)
    assert app.conf.beat_schedule["requeue-expired-leases"]["task"] == requeue_expired_leases.name
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
        assert requeue_expired_leases.apply_async().get(timeout=20) == 1
        assert index_chain_task.apply_async().get(timeout=20) == {"skipped": "no chain configured"}
    runtime(app).dispose()
    with Session(db_engine) as session:
        task = session.get(Task, stale_lease)
        assert task is not None and task.status == "queued" and task.lease_id is None
        assert session.get(Lease, "L1").status == "expired"  # type: ignore[union-attr]

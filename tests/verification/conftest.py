"""Verification pipeline harness: SQLite DB, a real Celery worker (thread, solo pool) over the real Redis on a
private queue, the real Anvil (operator = account 0: settler and slasher), and a simulated worker network."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from globai.chain.client import ChainClient
from globai.chain.deploy import GLB
from globai.protocol.sketch import DEFAULT_K
from market.db import SettlementReport, SlashRecord, VerificationCheck, VerificationRun, WorkPart
from market.services.verification import ClaimedPart, HopRerun, ReplayReceipt, VerifierConfig, is_replay, open_run
from market.tasks.celery_app import create_celery, runtime
from market.tasks.verification import verify_job
from market.tasks.verifier_runtime import configure_verifier
from tests.market.conftest import make_settings
from tests.settlement.support import Funder, empty, migrated_engine, operator_for
from tests.verification.network import SimNetwork, SimPart


class Router:
    """One WorkSource over several simulated networks (e.g. an fp32 and a bf16 one), by job id."""

    def __init__(self) -> None:
        self.by_job: dict[str, SimNetwork] = {}

    def parts(self, job_id: str) -> list[ClaimedPart]:
        return self.by_job[job_id].parts(job_id)

    def commitment(self, job_id: str, work_key: str, chunk_index: int):  # type: ignore[no-untyped-def]
        return self.by_job[job_id].commitment(job_id, work_key, chunk_index)

    def replicas(self, job_id: str, part: ClaimedPart):  # type: ignore[no-untyped-def]
        return self.by_job[job_id].replicas(job_id, part)

    def replay(self, job_id: str, part: ClaimedPart, chunk_index: int, replica: str):  # type: ignore[no-untyped-def]
        return self.by_job[job_id].replay(job_id, part, chunk_index, replica)

    def replay_evidence(self, job_id: str, part: ClaimedPart, chunk_index: int, replica: str) -> ReplayReceipt:
        return self.by_job[job_id].replay_evidence(job_id, part, chunk_index, replica)

    def rerun_hop(self, job_id: str, part: ClaimedPart, transcript: str, hop: int, replica: str) -> HopRerun:
        return self.by_job[job_id].rerun_hop(job_id, part, transcript, hop, replica)

    def held(self, job_id: str, part: ClaimedPart, chunk_index: int):  # type: ignore[no-untyped-def]
        return self.by_job[job_id].held(job_id, part, chunk_index)

    def violations(self, job_id: str):  # type: ignore[no-untyped-def]
        return self.by_job[job_id].violations(job_id)


@dataclass
class JobResult:
    job_id: str
    status: str
    parts: dict[str, str]  # worker -> part status
    slashed: dict[str, str]  # worker -> slash status
    checks: list[VerificationCheck]
    rates: dict[str, float]  # worker -> sampling rate used
    report: dict[str, Any] | None
    replays: list[tuple[str, int, str]] = field(default_factory=list)  # replicas' replays paid as work


@dataclass
class Harness:
    engine: Engine
    funder: Funder
    router: Router
    app: Any
    config: VerifierConfig
    submitted: list[str] = field(default_factory=list)

    def configure(self, config: VerifierConfig) -> None:
        self.config = config
        self.app.globai_verifier.config = config

    def job(self, net: SimNetwork, build, *, budget: int = 2_000 * GLB) -> str:  # type: ignore[no-untyped-def]
        """Create + fund a job, draw its secret, let the workers work (`build(job_id) -> parts`), submit it."""
        with Session(self.engine, expire_on_commit=False) as s:
            job = self.funder.job(s, budget=budget, price=GLB // 100, prefunded=True)
            open_run(s, job_id=job.id, now=job.created_at)
        parts: list[SimPart] = build(job.id)
        net.add_job(job.id, parts)
        self.router.by_job[job.id] = net
        verify_job.apply_async((job.id,))
        self.submitted.append(job.id)
        return job.id

    def wait(self, job_ids: list[str], timeout: float = 300.0) -> list[JobResult]:
        deadline = time.monotonic() + timeout
        while True:
            with Session(self.engine) as s:
                runs = {
                    r.job_id: r.status
                    for r in s.scalars(select(VerificationRun).where(VerificationRun.job_id.in_(job_ids)))
                }
            if all(runs.get(j) == "done" for j in job_ids):
                break
            if time.monotonic() > deadline:
                stuck = {j: runs.get(j) for j in job_ids if runs.get(j) != "done"}
                raise AssertionError(f"verification did not finish: {list(stuck.items())[:5]}")
            time.sleep(0.1)
        out = []
        with Session(self.engine) as s:
            for j in job_ids:
                rows = s.scalars(select(WorkPart).where(WorkPart.job_id == j)).all()
                parts = [p for p in rows if not is_replay(p.work_key)]
                replays = [p for p in rows if is_replay(p.work_key)]
                report = s.get(SettlementReport, j)
                out.append(
                    JobResult(
                        job_id=j,
                        status=runs[j],
                        parts={p.worker: p.status for p in parts},
                        slashed={
                            r.worker: r.status for r in s.scalars(select(SlashRecord).where(SlashRecord.job_id == j))
                        },
                        checks=list(s.scalars(select(VerificationCheck).where(VerificationCheck.job_id == j))),
                        rates={p.worker: p.rate for p in parts},
                        replays=[(p.worker, p.units, p.status) for p in replays],
                        report=None if report is None else report.report,
                    )
                )
        return out


@pytest.fixture(scope="module")
def vengine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    e = migrated_engine(f"sqlite:///{tmp_path_factory.mktemp('vdb') / 'market.db'}")
    yield e
    e.dispose()


@pytest.fixture
def harness(vengine: Engine, redis_url: str, chain, deployment) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    admin = chain.accounts[0]
    # A private Redis DB and queue: other suites' Celery workers on the same Redis never see these tasks.
    redis = redis_url.rsplit("/", 1)[0] + "/11"
    settings = make_settings(
        str(vengine.url),
        redis_url=redis,
        rpc_url=chain.url,
        staking_vault_address=deployment.vault,
        job_escrow_address=deployment.escrow,
        operator_private_key="0x" + bytes(admin.key).hex(),
        recovery_stale_s=0.5,  # the recovery tests re-drive lost steps without waiting minutes
    )
    app = create_celery(settings)
    app.conf.task_default_queue = f"verify-{uuid.uuid4().hex[:8]}"
    client = ChainClient(chain.url)
    router = Router()
    config = VerifierConfig(sketch_k=DEFAULT_K, slash_amount=10 * GLB)
    configure_verifier(app, source=router, config=config, operator=operator_for(client, deployment, admin))
    funder = Funder(client, deployment, admin, chain.accounts[1])
    funder.prefund(1_000_000 * GLB)
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30, loglevel="WARNING"):
        yield Harness(vengine, funder, router, app, config)
    runtime(app).dispose()
    empty(vengine)

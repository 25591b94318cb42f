"""Acceptance: real Anvil, Redis, a Celery worker process, the market (uvicorn) and five `globai worker run`
processes, two of them cheating: GLOBAI_WORKER_CHEAT=noise (outputs x1.10, caught by replays) and
GLOBAI_WORKER_CHEAT=unbound (commits to its honest output, sends another: the coordinator finds the signed
commitment contradicting the signed rows it sent, fails it over and keeps the evidence). The job completes, the
honest workers are paid on chain, both cheaters are slashed, and `globai audit job` / `globai audit chain` pass."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import select
from sqlalchemy.orm import Session

from globai.chain.deploy import GLB
from globai.chain.ids import job_id_bytes, job_key_bytes
from globai.dev.forker import Process, shared_forker
from globai.dev.services import free_port
from globai.models.tiny import build_tiny_llama
from market.config import Settings
from market.db import Job, JobRun, SlashRecord, VerificationCheck, VerificationRun
from market.db.engine import make_engine
from market.db.inference import InferenceRun, StageViolation
from market.db.migrate import upgrade
from market.services.verification import open_run
from market.tasks.celery_app import create_celery
from tests.runtime.conftest import MODEL, MarketServer, Requester

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ~30 s: not marked slow
ROOT = Path(__file__).resolve().parents[2]
SECRET = "e2e-verification-secret-" + "0123456789abcdef" * 2


def globai(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from market.cli import main; main()", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def _stake(chain: Any, deployment: Any, account: Any, amount: int) -> None:
    c = deployment.bind(chain.client)
    admin = chain.accounts[0]
    chain.client.rpc("anvil_setBalance", account.address, hex(10**20))
    chain.client.transact(c.token.functions.transfer(account.address, amount), admin)
    chain.client.transact(c.token.functions.approve(c.vault.address, amount), account)
    chain.client.transact(c.vault.functions.stake(amount), account)


def test_cheater_slashed_honest_paid_audit_passes(chain, deployment, redis_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    logs = Path(os.environ.get("GLOBAI_E2E_LOGS", str(tmp_path)))
    logs.mkdir(parents=True, exist_ok=True)
    admin = chain.accounts[0]
    c = deployment.bind(chain.client)
    build_tiny_llama(tmp_path / "models" / MODEL, hidden=128, layers=4, seed=0)
    db_url = f"sqlite:///{tmp_path / 'market.db'}"
    redis = redis_url.rsplit("/", 1)[0] + "/12"  # a private Redis DB: no other suite's worker takes these tasks
    env = {
        **os.environ,
        "GLOBAI_PROFILE": "test",
        "GLOBAI_AUTH_SECRET": SECRET,
        "GLOBAI_DATABASE_URL": db_url,
        "GLOBAI_REDIS_URL": redis,
        "GLOBAI_RPC_URL": chain.url,
        "GLOBAI_CHAIN_ID": "31337",
        "GLOBAI_STAKING_VAULT_ADDRESS": deployment.vault,
        "GLOBAI_JOB_ESCROW_ADDRESS": deployment.escrow,
        "GLOBAI_TOKEN_ADDRESS": deployment.token,
        "GLOBAI_OPERATOR_PRIVATE_KEY": "0x" + bytes(admin.key).hex(),
        "GLOBAI_MODELS_DIR": str(tmp_path / "models"),
        "GLOBAI_SLASH_AMOUNT_WEI": str(50 * GLB),
        "GLOBAI_BLOB_DIR": str(tmp_path / "blobs"),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    settings = Settings(
        profile="test",
        database_url=db_url,
        auth_secret=SECRET,
        auth_domain="localhost",  # type: ignore[arg-type]
        auth_uri="http://localhost",
        chain_id=31337,
        rpc_url=chain.url,
        staking_vault_address=deployment.vault,
        job_escrow_address=deployment.escrow,
        token_address=deployment.token,
        models_dir=str(tmp_path / "models"),
        blob_dir=str(tmp_path / "blobs"),
        stage_timeout_s=60.0,
        rate_limit_per_s=1000.0,
        rate_limit_burst=1000,
        admin_addresses=[admin.address],
        redis_url=redis,
    )
    engine = make_engine(db_url)
    upgrade(engine)
    market = MarketServer(settings, free_port())
    market.start()
    env["GLOBAI_MARKET_URL"] = market.url

    workers = [Account.from_key(bytes([0x90 + i]) * 32) for i in range(5)]
    for w in workers:
        _stake(chain, deployment, w, 200 * GLB)
    cheater, unbound = workers[3], workers[4]
    cheats = {cheater.address: "noise", unbound.address: "unbound"}
    procs: list[Process] = []
    celery = None
    try:
        for i, w in enumerate(workers):
            wenv = {**env, **({"GLOBAI_WORKER_CHEAT": cheats[w.address]} if w.address in cheats else {})}
            cmd = [
                sys.executable,
                "-c",
                "from market.cli import main; main()",
                "worker",
                "run",
                "--market",
                market.url,
                "--key",
                "0x" + bytes(w.key).hex(),
                "--model",
                MODEL,
                "--layers",
                "0:4",
                "--threads",
                "1",
                "--operator",
                f"op-{i}",
                "--cache-dir",
                str(tmp_path / f"cache{i}"),
                "--no-progress",
            ]
            procs.append(shared_forker(env, ROOT, logs).spawn(cmd, wenv, ROOT, logs / f"w{i}.log"))
        celery = shared_forker(env, ROOT, logs).spawn(
            [
                sys.executable,
                "-c",
                "from market.cli import main; main()",
                "market",
                "celery-worker",
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
            ],
            env,
            ROOT,
            logs / "celery.log",
        )
        market.wait_workers(5, timeout=180)

        # Each of the four serves the whole model; the test pins who runs each generation (round-robin) so every
        # worker, the cheater included, does one run of the job. Verification replays on the other three.
        coordinator = market.coordinator
        order = itertools.cycle(sorted(w.address for w in workers))
        original_plan = coordinator.plan

        def plan(served):  # type: ignore[no-untyped-def]
            original_plan(served)
            want = next(order)
            live = coordinator.links.live(served.manifest.name)
            primary = next(lnk for lnk in live if lnk.address == want)
            honest = [lnk for lnk in live if lnk.address not in cheats]
            return [(primary, [lnk for lnk in honest if lnk.address != want][:1])]

        coordinator.plan = plan

        # The requester's escrowed job: funded on chain before the work, its sampling secret drawn now.
        requester = Account.from_key(b"\x78" * 32)
        chain.client.rpc("anvil_setBalance", requester.address, hex(10**20))
        budget = 100 * GLB
        chain.client.transact(c.token.functions.transfer(requester.address, budget), admin)
        chain.client.transact(c.token.functions.approve(deployment.escrow, budget), requester)
        job_uuid = str(uuid.uuid4())
        deadline = int(chain.client.w3.eth.get_block("latest")["timestamp"]) + 3600
        receipt = chain.client.transact(
            c.escrow.functions.fundJob(job_key_bytes(job_uuid), budget, b"\x01" * 32, deadline), requester
        )
        with Session(engine, expire_on_commit=False) as s:
            job = Job(
                id=job_uuid,
                chain_job_id="0x" + job_id_bytes(job_uuid, requester.address).hex(),
                requester=requester.address,
                kind="inference",
                model=MODEL,
                spec={},
                spec_hash="0x" + "01" * 32,
                budget=budget,
                price_per_unit=GLB // 10,
                max_units=900,
                deadline=datetime.fromtimestamp(deadline, UTC),
                status="running",
                funded_amount=budget,
                funded_block=int(receipt["blockNumber"]),
                created_block=int(receipt["blockNumber"]) - 1,
                created_at=datetime.now(UTC),
            )
            s.add(job)
            s.commit()
            open_run(s, job_id=job_uuid, now=datetime.now(UTC))

        client = Requester(market, requester)
        runs = []
        for n in range(5):
            prompts = [[(7 * n + 3 * i + j) % 500 + 1 for j in range(40 + 5 * i)] for i in range(2)]
            done = client.generate(prompts, max_new_tokens=60)
            assert len(done["tokens"]) == 2 and all(len(t) == 60 for t in done["tokens"])
            runs.append(done["id"])
        deadline_t = time.monotonic() + 60
        while True:
            with Session(engine) as s:
                statuses = [s.get(InferenceRun, r).status for r in runs]  # type: ignore[union-attr]
            if all(st == "completed" for st in statuses):
                break
            assert time.monotonic() < deadline_t, statuses
            time.sleep(0.1)
        # The unbound cheater leaves before verification: its fault is proven by the signed evidence the
        # coordinator kept, no replay of it is needed. (Had it stayed, it would be one of the replicas, and two
        # lying replicas of four can outvote an honest worker 2-of-3: one cheater per replica pool here.)
        procs[4].terminate()
        procs[4].wait(timeout=15)
        gone_by = time.monotonic() + 15
        while any(lnk.address == unbound.address for lnk in coordinator.links.live()):
            assert time.monotonic() < gone_by
            time.sleep(0.05)
        with Session(engine) as s:
            for r in runs:
                s.add(JobRun(run_id=r, job_id=job_uuid))
            s.get(Job, job_uuid).status = "completed"  # type: ignore[union-attr]
            s.commit()

        app = create_celery(settings)
        app.send_task("market.verification.verify_job", args=(job_uuid,))
        deadline_t = time.monotonic() + 150
        while True:
            with Session(engine) as s:
                run = s.get(VerificationRun, job_uuid)
                status = run.status if run is not None else None
            if status == "done":
                break
            if time.monotonic() > deadline_t:
                raise AssertionError(f"verification stuck at {status}; logs in {logs}")
            time.sleep(0.2)

        with Session(engine) as s:
            slashes = s.scalars(select(SlashRecord).where(SlashRecord.job_id == job_uuid)).all()
            violations = s.scalars(select(StageViolation)).all()
            unbound_checks = s.scalars(select(VerificationCheck).where(VerificationCheck.reason == "unbound")).all()
        assert sorted((r.worker, r.status) for r in slashes) == sorted(
            [(cheater.address, "confirmed"), (unbound.address, "confirmed")]
        )
        # The coordinator caught the unbound commitment while the run went on (no replay needed): its evidence is
        # the signed commitment plus the signed hashes of the answers that carried the chunk's rows.
        assert violations and {v.worker_address for v in violations} == {unbound.address}
        assert all(v.evidence["calls"] and v.evidence["received_sha256"] for v in violations)
        assert {c.worker for c in unbound_checks} == {unbound.address}
        for w in (cheater, unbound):
            assert int(chain.client.call(c.vault.functions.stakeOf(w.address))) == 150 * GLB
        credited = {w.address: int(chain.client.call(c.escrow.functions.balanceOf(w.address))) for w in workers}
        assert credited[cheater.address] == 0 and credited[unbound.address] == 0
        assert all(credited[w.address] > 0 for w in workers if w.address not in cheats), credited
        assert (
            int(chain.client.call(c.escrow.functions.getJob(job_id_bytes(job_uuid, requester.address)))[3]) == 2
        )  # settled

        record = tmp_path / "deployment.json"
        record.write_text(__import__("json").dumps(deployment.to_json()))
        audit = globai(
            "audit",
            "job",
            job_uuid,
            "--rpc",
            chain.url,
            "--deployment",
            str(record),
            "--report",
            f"{market.url}/v1/audit/jobs/{job_uuid}/report",
            env=env,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr
        whole = globai("audit", "chain", "--rpc", chain.url, "--deployment", str(record), env=env)
        assert whole.returncode == 0, whole.stdout + whole.stderr
        print(f"\ne2e verification: {time.monotonic() - started:.1f} s")
    finally:
        for p in procs + ([celery] if celery is not None else []):
            p.terminate()
        for p in procs + ([celery] if celery is not None else []):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        market.stop()
        engine.dispose()

"""/metrics with several market processes (Prometheus multi-process mode), the metrics bearer token, JSON log
lines with their ids, and the public dashboard data never carrying a prompt."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from globai.dev.services import free_port
from globai.logs import JsonFormatter, bound, configure
from market.api import create_app
from market.db import Job, SettlementReport
from market.db.engine import make_engine, make_session_factory
from market.db.migrate import upgrade
from tests.market.conftest import TEST_SECRET, make_settings

pytestmark = pytest.mark.timeout(240)


def _requests(text: str, route: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "globai_http_requests_total" and s.labels.get("route") == route
    )


def test_metrics_add_up_over_several_market_processes(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    metrics_dir = tmp_path / "prom"
    env = {
        **os.environ,
        "GLOBAI_PROFILE": "test",
        "GLOBAI_AUTH_SECRET": TEST_SECRET,
        "GLOBAI_DATABASE_URL": f"sqlite:///{tmp_path / 'market.db'}",
        "GLOBAI_STAKING_VAULT_ADDRESS": "",
        "GLOBAI_JOB_ESCROW_ADDRESS": "",
        "GLOBAI_REDIS_URL": redis_url,  # the processes share the swarm through it (`--workers N` needs Redis)
        "GLOBAI_MODELS_DIR": str(tmp_path / "models"),
    }
    globai = [sys.executable, "-c", "from market.cli import main; main()"]
    subprocess.run([*globai, "market", "migrate"], env=env, check=True, capture_output=True)
    log = tmp_path / "server.log"
    server = subprocess.Popen(
        [*globai, "market", "serve", "--port", str(port), "--workers", "2", "--metrics-dir", str(metrics_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 150
        while True:  # both processes import torch: a slow start on a loaded machine
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        sent = 0
        # A new connection each time: the kernel hands them to both processes (until both have served some).
        while sent < 400 and (sent < 40 or len(list(metrics_dir.glob("counter_*.db"))) < 2):
            assert httpx.get(f"{url}/healthz", headers={"Connection": "close"}).status_code == 200
            sent += 1
        files = {p.name for p in metrics_dir.glob("counter_*.db")}
        counts = []
        for _ in range(6):  # whichever process answers the scrape, it reports every process's requests
            r = httpx.get(f"{url}/metrics", headers={"Connection": "close"})
            assert r.status_code == 200
            counts.append(_requests(r.text, "/healthz"))
        assert len(files) == 2, f"expected a counter file per server process, got {files}"
        assert counts == [sent + 1] * 6  # + the readiness poll that got its 200
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.fixture
def app_client(tmp_path: Path) -> TestClient:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    upgrade(engine)
    settings = make_settings(
        url, models_dir=str(tmp_path), redis_url="redis://127.0.0.1:1/0", metrics_token="scrape-secret"
    )
    return TestClient(create_app(settings, engine=engine, chain=None))


def test_metrics_token_and_public_dashboard_data_hold_no_prompt(app_client: TestClient) -> None:
    from datetime import UTC, datetime, timedelta

    sf = make_session_factory(app_client.app.state.ctx.engine)  # type: ignore[attr-defined]
    secret = "my very private prompt"
    with sf() as s:
        job = Job(
            chain_job_id="0x" + "ab" * 32,
            requester="0x" + "11" * 20,
            kind="inference",
            model="m",
            spec={"kind": "inference", "model": "m", "prompts": [secret], "max_new_tokens": 4},
            spec_hash="0x" + "00" * 32,
            budget=10,
            price_per_unit=1,
            max_units=4,
            deadline=datetime.now(UTC) + timedelta(hours=1),
            status="settled",
        )
        s.add(job)
        s.flush()
        s.add(
            SettlementReport(
                job_id=job.id,
                report_root="0x" + "cd" * 32,
                report={
                    "paid": "3",
                    "fee": "1",
                    "refunded": "6",
                    "payees": [{"payee": "0x" + "22" * 20, "amount": "3"}],
                    "records": [
                        {
                            "task": "t-1",
                            "task_id": "0x" + "33" * 32,
                            "payee": "0x" + "22" * 20,
                            "units": 4,
                            "amount": "3",
                            "status": "paid",
                            "leaf": "0x" + "44" * 32,
                            "proof": [],
                        }
                    ],
                },
            )
        )
        s.commit()
        job_id = job.id
    with app_client as c:
        assert c.get("/metrics").status_code == 401
        scraped = c.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert scraped.status_code == 200 and 'globai_jobs{kind="inference",status="settled"} 1.0' in scraped.text
        listing = c.get("/v1/dashboard/jobs")
        detail = c.get(f"/v1/dashboard/jobs/{job_id}")
        assert listing.status_code == detail.status_code == 200
        for body in (listing.text, detail.text):
            assert secret not in body
        d = detail.json()
        assert d["spec"]["prompts"] == 1  # how many, never what
        rec = d["settlement"]["records"][0]
        assert rec["proof_url"] == f"/v1/audit/jobs/{job_id}/proofs/0x{'33' * 32}"
        assert c.get(rec["proof_url"]).json()["record"]["payee"] == "0x" + "22" * 20
        page = c.get("/dashboard/")
        assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
        assert c.get("/dashboard/static/app.js").status_code == 200
        # The owner's result needs a sign-in.
        assert c.get(f"/v1/jobs/{job_id}/result").status_code == 401


def test_json_log_lines_carry_the_ids() -> None:
    out = io.StringIO()
    try:
        configure("json", level=logging.INFO, stream=out)
        log = logging.getLogger("globai.test")
        with bound(job_id="job-1"):
            with bound(run_id="run-9"):
                log.info("step %d", 3, extra={"tokens": 8})
            log.warning("after the run")
        log.info("no context")
    finally:
        configure("text")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["msg"], e["job_id"], e["run_id"], e["request_id"]) for e in lines] == [
        ("step 3", "job-1", "run-9", None),
        ("after the run", "job-1", None, None),
        ("no context", None, None, None),
    ]
    assert lines[0]["tokens"] == 8 and lines[0]["level"] == "info"
    with pytest.raises(ValueError):
        configure("yaml")
    assert isinstance(JsonFormatter().format(logging.makeLogRecord({"msg": "x"})), str)

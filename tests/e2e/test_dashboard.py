"""The dashboard in a real browser (Playwright driving Debian's /usr/bin/chromium), /metrics during a paid job,
JSON logs, and the status commands, against one running network: the demo cluster (real Anvil, Redis, Celery
worker + beat, the market as `globai market serve`, `globai worker run` processes, one cheating) running the paid
inference story of `globai demo run`, then a training job on a `globai worker train` process, then a chat through
the OpenAI-compatible API with an API key billed to a funded credit.

Screenshots are written to var/screenshots/ (test artifacts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from globai.amounts import fmt_glb
from globai.chain.deploy import GLB
from globai.dev.cluster import MODEL, ROOT, Cluster, ClusterConfig
from market.demo.paid_inference import Outcome, actors, demo_account, run_paid_inference
from tests.e2e.test_openai_api import chat_model  # the cluster's tiny Llama with a chat template (chat panel)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
SHOTS = ROOT / "var" / "screenshots"
PROMPTS = [f"dashboard prompt {i}" for i in range(9)]  # two batches (8 + 1): the token counter moves in steps
NEW_TOKENS = 24


def per_range() -> dict[str, int]:
    """Connected workers per layer range "a:b" once the story ran: its workers and verifiers."""
    work, verify = actors()
    out: dict[str, int] = {}
    for a in work + verify:
        out[a.layers] = out.get(a.layers, 0) + 1
    return out


def coverage(layers: int = 4) -> list[int]:
    counts = [0] * layers
    for rng, n in per_range().items():
        start, end = map(int, rng.split(":"))
        for i in range(start, end):
            counts[i] += n
    return counts


def metric_values(text: str) -> dict[str, float]:
    """Sample name{labels} -> value, plus each sample name summed over its labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


@dataclass
class Scraper:
    """GET /metrics every 0.1 s while the story runs (the market's URL is known once the cluster is prepared)."""

    cluster: Cluster
    samples: list[dict[str, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                if self.cluster.market_url:
                    try:
                        r = http.get(f"{self.cluster.market_url}/metrics")
                        if r.status_code == 200:
                            self.samples.append(metric_values(r.text))
                    except httpx.HTTPError:
                        pass  # not listening yet
                self.stop.wait(0.1)


@dataclass
class Network:
    cluster: Cluster
    out: Outcome
    samples: list[dict[str, float]]


@pytest.fixture(scope="module")
def network(anvil: Any, deployment: Any, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    snapshot = anvil.snapshot()
    var = tmp_path_factory.mktemp("dashboard")
    chat_model(var / "models")
    cfg = ClusterConfig(
        var=var,
        rpc_url=anvil.url,
        deployment=deployment,
        operator=anvil.accounts[0],
        redis_url=redis_url,
        redis_db=11,
        worker_metrics=True,
        extra_env={"GLOBAI_LOG_FORMAT": "json"},
    )
    try:
        with Cluster(cfg) as cluster:
            scraper = Scraper(cluster)
            thread = threading.Thread(target=scraper.run, daemon=True)
            thread.start()
            try:
                out = run_paid_inference(cluster, prompts=PROMPTS, max_new_tokens=NEW_TOKENS)
            finally:
                scraper.stop.set()
                thread.join()
            yield Network(cluster, out, scraper.samples)
    finally:
        anvil.revert(snapshot)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Fail (not skip) where the browser is missing: scripts/setup.sh installs Debian's chromium where it can.
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run `bash scripts/setup.sh` (apt-get install chromium)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_default_timeout(30_000)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


# --- metrics -----------------------------------------------------------------------------------------------------
def test_metrics_counters_move_during_the_paid_job(network: Network) -> None:
    samples = network.samples
    assert len(samples) > 20, "the scraper barely saw the market"
    first, last = samples[0], samples[-1]
    tokens = [s.get("globai_tokens_generated_total", 0.0) for s in samples]
    checks = [s.get("globai_verification_checks_total", 0.0) for s in samples]
    settled = [s.get("globai_settlements_total{kind=settle,status=confirmed}", 0.0) for s in samples]
    # Every sequence's sampled tokens count (8 + 1 prompts, up to NEW_TOKENS each).
    assert tokens[0] == 0 and tokens[-1] == sum(len(o["tokens"]) for o in network.out.outputs)
    assert tokens == sorted(tokens)  # a counter: never goes back
    assert any(0 < t < tokens[-1] for t in tokens), "no scrape saw the job half generated"
    assert checks[0] == 0 and checks[-1] > 0 and checks == sorted(checks)
    assert settled[0] == 0 and settled[-1] == 1
    assert last["globai_verification_checks_total{dispute=false,verdict=fail}"] >= 1  # the cheater's segment
    assert first.get("globai_glb_paid_total", 0.0) == 0
    paid = sum(int(p["amount"]) for p in network.out.result["settlement"]["payees"])
    assert last["globai_glb_paid_total"] == pytest.approx(paid / GLB)
    assert last["globai_slashes_total{status=confirmed}"] == 1
    # Live metrics: the four workers' connections, per-hop latency of both hops, requests by route template.
    for layers, n in per_range().items():
        assert last[f"globai_connected_workers{{layers={layers.replace(':', '-')},model={MODEL}}}"] == n
    for layers in per_range():
        assert last[f"globai_hop_latency_seconds_count{{layers={layers.replace(':', '-')},model={MODEL}}}"] > 0
    assert last["globai_http_requests_total{method=GET,route=/v1/jobs/{job_id}/result,status=200}"] > 0
    assert "globai_celery_queue_depth{queue=celery}" in last
    assert "globai_chain_indexer_lag_blocks" in last
    # A worker's own metrics (its --metrics-port): the honest worker ran every generated token's hidden state.
    r = httpx.get(network.cluster.worker_metrics["worker-honest"], timeout=5)
    worker = metric_values(r.text)
    assert worker["globai_worker_tokens_processed_total"] >= tokens[-1]
    assert worker["globai_worker_connected"] == 1


def test_json_logs_carry_request_run_and_job_ids(network: Network) -> None:
    logs = network.cluster.logs
    lines = [line for line in (logs / "market.log").read_text().splitlines() if line.strip()]
    # Every log event is a JSON object; the only other lines are the CLI's own messages before the server starts.
    other = [line for line in lines if not line.startswith("{")]
    assert all(line.startswith(("using market", "market starting")) for line in other), other
    market = [json.loads(line) for line in lines if line.startswith("{")]
    assert market and all({"ts", "level", "msg", "request_id", "run_id", "job_id"} <= set(e) for e in market)
    job = network.out.job_id
    run_ids = {o["run_id"] for o in network.out.outputs}
    assert any(e["job_id"] == job and e["run_id"] in run_ids for e in market), "no line of the job's runs"
    assert any(e["logger"] == "market.access" and e["request_id"] for e in market)
    celery = [
        json.loads(line) for line in (logs / "celery-worker.log").read_text().splitlines() if line.startswith("{")
    ]
    assert any(e["job_id"] == job for e in celery), "no Celery line carries the job id"
    worker = [
        json.loads(line) for line in (logs / "worker-honest.log").read_text().splitlines() if line.startswith("{")
    ]
    assert worker and all("run_id" in e for e in worker)


# --- terminal views ----------------------------------------------------------------------------------------------
def test_market_status_and_worker_status(network: Network) -> None:
    cluster = network.cluster
    r = cluster.globai("market", "status", "--market", cluster.market_url)
    assert r.returncode == 0, r.stderr
    work, verify = actors()
    for a in work + verify:
        assert a.account.address in r.stdout
    assert "replicas per layer" in r.stdout and "".join(map(str, coverage())) in r.stdout
    assert network.out.job_id in r.stdout
    honest = demo_account("worker-honest")
    r = cluster.globai("worker", "status", "--market", cluster.market_url, "--key", "0x" + bytes(honest.key).hex())
    assert r.returncode == 0, r.stderr
    assert "Earnings per job" in r.stdout
    row = [line for line in r.stdout.splitlines() if network.out.job_id in line]
    assert row and fmt_glb(network.out.credited["worker-honest"]) in row[0]  # the job's row: what it earned


# --- browser -----------------------------------------------------------------------------------------------------
def test_coverage_map_shows_the_connected_workers(network: Network, page: Any) -> None:
    cluster = network.cluster
    page.goto(f"{cluster.market_url}/dashboard/#/swarm")
    table = page.locator(f"[data-testid=coverage-map][data-model='{cluster.cfg.model}']")
    table.wait_for()
    rows = table.locator("[data-testid=worker-row]")
    rows.first.wait_for()
    shown = {rows.nth(i).get_attribute("data-address") for i in range(rows.count())}
    work, verify = actors()
    assert shown == {w["address"] for w in cluster.connected()} == {a.account.address for a in work + verify}
    assert table.locator("[data-testid=coverage-cell]").count() == sum(coverage())  # one cell per (worker, layer)
    assert table.locator("[data-testid=replicas]").all_inner_texts() == [str(n) for n in coverage()]
    shot(page, "dashboard-swarm")


def test_paid_job_settled_with_proof_links_and_private_outputs(network: Network, page: Any) -> None:
    cluster, out = network.cluster, network.out
    page.goto(f"{cluster.market_url}/dashboard/#/jobs")
    page.locator(f"[data-testid=job-row][data-job='{out.job_id}'] a").click()
    status = page.locator("h1 [data-testid=status]")
    status.filter(has_text="settled").wait_for(timeout=60_000)  # the page polls until the job is settled
    settlement = page.locator("[data-testid=settlement]")
    assert settlement.locator("[data-testid=status]").inner_text() == "confirmed"
    assert settlement.locator("[data-testid=tx-link]").get_attribute("title") == out.settlement_tx
    links = page.locator("[data-testid=proof-link]")
    assert links.count() == page.locator("[data-testid=payment-row]").count() > 0
    proof = page.request.get(cluster.market_url + links.first.get_attribute("href")).json()
    assert proof["job_id"] == out.job_id and proof["report_root"] == out.result["settlement"]["report_root"]
    assert len(proof["record"]["proof"]) >= 1
    assert int(page.locator("[data-testid=checks-failed] b").inner_text()) >= 1  # the cheater was caught
    assert page.locator("[data-testid=slash-row]").count() == 1
    # Public: no prompt and no output on the page.
    body = page.locator("body").inner_text()
    assert not any(p in body for p in PROMPTS)
    assert page.locator("[data-testid=private-hint]").is_visible()
    shot(page, "dashboard-job-public")
    # The requester's token shows their prompts and text.
    token = cluster.requester(demo_account("requester")).sign_in()
    page.fill("#token", token)
    page.click("#credentials button[type=submit]")
    page.locator("[data-testid=output-row]").nth(len(PROMPTS) - 1).wait_for()
    texts = page.locator("[data-testid=output-text]").all_inner_texts()
    assert texts == [o["text"] for o in out.outputs]
    assert PROMPTS[0] in page.locator("[data-testid=private]").inner_text()
    shot(page, "dashboard-job-owner")
    # Someone else's token does not.
    page.fill("#token", cluster.requester(demo_account("stranger")).sign_in())
    page.click("#credentials button[type=submit]")
    page.locator("[data-testid=private-hint]", has_text="cannot read").wait_for()
    assert not any(p in page.locator("body").inner_text() for p in PROMPTS)


def test_worker_page_shows_earnings_per_job(network: Network, page: Any) -> None:
    cluster, out = network.cluster, network.out
    honest = demo_account("worker-honest").address
    page.goto(f"{cluster.market_url}/dashboard/#/workers/{honest}")
    row = page.locator("[data-testid=earning-row]", has=page.locator(f"a[href='#/jobs/{out.job_id}']"))
    row.wait_for()
    wei = out.credited["worker-honest"]
    frac = str(wei % GLB).zfill(18)[:4].rstrip("0")  # the page shows 4 decimals, truncated
    earned = f"{wei // GLB}" + (f".{frac}" if frac else "")
    assert row.locator("[data-testid=earned]").inner_text().startswith(earned)
    cheat = demo_account("worker-cheat").address
    page.goto(f"{cluster.market_url}/dashboard/#/workers/{cheat}")
    page.locator("[data-testid=reputation-plot] circle").first.wait_for()
    assert "failed" in page.locator("[data-testid=worker-checks]").inner_text()
    shot(page, "dashboard-worker")


def test_training_job_loss_plot(network: Network, page: Any, tmp_path: Path) -> None:
    cluster = network.cluster
    trainer = demo_account("dashboard-trainer")
    cluster.stake(trainer, 200 * GLB)
    cluster.start_trainer("trainer", trainer, operator="op-trainer")
    requester = demo_account("dashboard-train-requester")
    cluster.give(requester, 10 * GLB)
    key = tmp_path / "requester.key"
    key.write_text("0x" + bytes(requester.key).hex())
    rounds = 2
    r = cluster.globai(
        "job",
        "train",
        "post",
        str(ROOT / "tests" / "data" / "corpus.txt"),
        "--price",
        "0.0001",  # GLB per inner step
        "--rounds",
        str(rounds),
        "--workers",
        "1",
        "--inner-steps",
        "3",
        "--verify-rate",
        "0",
        "--fund",
        "--market",
        cluster.market_url,
        "--key-file",
        str(key),
    )
    assert r.returncode == 0, r.stderr
    job_id = next(line.split()[1].rstrip(":") for line in r.stderr.splitlines() if line.startswith("job "))

    def trained() -> bool:
        j = httpx.get(f"{cluster.market_url}/v1/dashboard/jobs/{job_id}", timeout=10).json()
        return len(j["training"].get("loss") or []) == rounds + 1

    cluster.wait("the training job's rounds", trained, timeout=180, every=1.0)
    page.goto(f"{cluster.market_url}/dashboard/#/jobs/{job_id}")
    plot = page.locator("[data-testid=loss-plot]")
    plot.locator("circle").nth(rounds).wait_for()
    assert plot.locator("circle").count() == rounds + 1  # checkpoint 0 and one per applied round
    assert page.locator("[data-testid=checkpoint-row]").count() == rounds + 1
    shot(page, "dashboard-training")
    assert os.path.getsize(SHOTS / "dashboard-training.png") > 10_000


def test_chat_panel_streams_an_answer(network: Network, page: Any, tmp_path: Path) -> None:
    """The chat panel talks to /openai/v1/chat/completions (streamed) with an API key billed to a funded credit."""
    cluster = network.cluster
    requester = demo_account("dashboard-chat")
    cluster.give(requester, 5 * GLB)
    env = {**cluster.env, "GLOBAI_PRIVATE_KEY": "0x" + bytes(requester.key).hex()}
    env.pop("GLOBAI_OPERATOR_PRIVATE_KEY", None)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", "from market.cli import main; main()", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    key = cli("keys", "create", "--name", "dashboard").strip()
    cli("credit", "fund", "1", "--days", "1")
    page.goto(f"{cluster.market_url}/dashboard/#/chat")
    page.fill("#token", key)
    page.click("#credentials button[type=submit]")
    page.locator(f"[data-testid=chat-model] option[value='{cluster.cfg.model}']").wait_for(state="attached")
    # Count how often the answer's text changes while it streams.
    page.evaluate("""() => { window.__chatUpdates = 0;
        new MutationObserver(() => { window.__chatUpdates += 1; })
          .observe(document.querySelector('[data-testid=chat-log]'), {subtree: true, characterData: true,
                                                                       childList: true}); }""")
    page.fill("#chat-max", "24")
    page.fill("#chat-input", "Once upon a time")
    page.click("[data-testid=chat-send]")
    page.wait_for_function(
        """() => document.querySelector('[data-testid=chat-answer][data-done=true]')
             || document.querySelector('[data-testid=chat-status]').textContent.startsWith('Error')""",
        timeout=120_000,
    )
    answer = page.locator("[data-testid=chat-answer][data-done=true]")
    assert answer.count() == 1, page.locator("[data-testid=chat-status]").inner_text()
    text = answer.locator("p").inner_text()
    status = page.locator("[data-testid=chat-status]").inner_text()
    assert text.strip(), status
    assert "completion tokens" in status  # the usage chunk (stream_options.include_usage) arrived
    # The question and the empty answer bubble, then at least two deltas: the text arrived in pieces.
    assert page.evaluate("window.__chatUpdates") >= 4
    shot(page, "dashboard-chat")

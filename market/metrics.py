"""Prometheus metrics of the market (names and meanings in docs/observability.md).

Two kinds:
- *live* metrics, counted by the process that does the work (requests, connected workers, generations, tokens,
  per-hop latency). With several market processes set `PROMETHEUS_MULTIPROC_DIR` (`globai market serve
  --workers N` does it for you): every process writes its samples there and `/metrics`, answered by any process,
  adds them up (gauges of live things use `livesum`, so a process that exits stops counting).
- *ledger* metrics, read from the shared database at scrape time (verification checks by verdict, slashes,
  settlements and GLB paid, jobs by status), plus the Celery queue depth (Redis) and the chain indexer's lag
  (chain head minus the indexer's cursor). They are the same whichever process answers, and they survive restarts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
GLB = 10**18

# --- live metrics (per process; summed over processes in multi-process mode) ---------------------------------
HTTP_REQUESTS = Counter(
    "globai_http_requests",
    "HTTP requests answered, by route template, method and status code.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "globai_http_request_duration_seconds",
    "Time to answer an HTTP request (streams: until the last byte).",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONNECTED_WORKERS = Gauge(
    "globai_connected_workers",
    "Workers connected over the WebSocket, by model and layer range [a, b).",
    ["model", "layers"],
    multiprocess_mode="livesum",
)
SESSIONS_ACTIVE = Gauge(
    "globai_sessions_active",
    "Pipeline generations (sessions over a route of workers) running now.",
    ["model"],
    multiprocess_mode="livesum",
)
SESSIONS = Counter("globai_sessions", "Pipeline generations finished, by outcome.", ["model", "outcome"])
TOKENS = Counter("globai_tokens_generated", "Tokens sampled by the coordinator (all sequences of a batch).", ["model"])
HOP_LATENCY = Histogram(
    "globai_hop_latency_seconds",
    "Wall time of one forward call on one hop (network + the worker's compute).",
    ["model", "layers"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
FAILOVERS = Counter(
    "globai_failovers", "Hops replaced during a generation (worker gone, timed out or refused).", ["model"]
)


def layers_label(start: int, end: int) -> str:
    return f"{start}-{end}"


# --- ledger metrics (read at scrape time) ----------------------------------------------------------------------
class LedgerCollector(Collector):
    """Counts from the database, the Celery queue and the chain; each source that fails is left out (logged)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        redis_url: str | None = None,
        chain_head: Callable[[], int] | None = None,
        queues: Iterable[str] = ("celery",),
    ) -> None:
        self.session_factory = session_factory
        self.redis_url = redis_url
        self.chain_head = chain_head
        self.queues = tuple(queues)

    def collect(self) -> Iterable[Metric]:
        try:
            yield from self._database()
        except Exception as exc:  # a scrape must answer even when the DB is briefly away
            log.warning("metrics: database unavailable: %s", exc)
        yield from self._queue()

    def _database(self) -> Iterable[Metric]:
        from market.db import ChainCursor, Job, Settlement, SettlementReport, SlashRecord, VerificationCheck

        with self.session_factory() as s:
            checks = CounterMetricFamily(
                "globai_verification_checks",
                "Replay checks of sampled segments, by verdict "
                "(pending, pass, fail, void); round > 0 are 2-of-3 dispute checks.",
                labels=["verdict", "dispute"],
            )
            for status, rnd, n in s.execute(
                select(VerificationCheck.status, VerificationCheck.round > 0, func.count()).group_by(
                    VerificationCheck.status, VerificationCheck.round > 0
                )
            ):
                checks.add_metric([status, "true" if rnd else "false"], n)
            yield checks

            slashes = CounterMetricFamily(
                "globai_slashes",
                "Slashes, by status (pending, sent, confirmed, nothing_staked, rejected).",
                labels=["status"],
            )
            slashed_glb = CounterMetricFamily("globai_slashed_glb", "GLB taken by confirmed slashes.")
            total_slashed = 0
            for status, n in s.execute(select(SlashRecord.status, func.count()).group_by(SlashRecord.status)):
                slashes.add_metric([status], n)
            for amount in s.scalars(select(SlashRecord.slashed).where(SlashRecord.status == "confirmed")):
                total_slashed += int(amount or 0)
            slashed_glb.add_metric([], total_slashed / GLB)
            yield slashes
            yield slashed_glb

            settlements = CounterMetricFamily(
                "globai_settlements",
                "On-chain settlements and refunds, by kind (settle, refund) and status.",
                labels=["kind", "status"],
            )
            for kind, status, n in s.execute(
                select(Settlement.kind, Settlement.status, func.count()).group_by(Settlement.kind, Settlement.status)
            ):
                settlements.add_metric([kind, status], n)
            yield settlements

            paid = fee = 0
            for report in s.scalars(
                select(SettlementReport.report)
                .join(Settlement, Settlement.job_id == SettlementReport.job_id)
                .where(Settlement.status == "confirmed")
            ):
                paid += int(report.get("paid") or 0)
                fee += int(report.get("fee") or 0)
            glb = CounterMetricFamily("globai_glb_paid", "GLB paid to workers by confirmed settlements.")
            glb.add_metric([], paid / GLB)
            yield glb
            fees = CounterMetricFamily("globai_glb_fees", "GLB protocol fees taken by confirmed settlements.")
            fees.add_metric([], fee / GLB)
            yield fees

            jobs = GaugeMetricFamily("globai_jobs", "Jobs by kind and status.", labels=["kind", "status"])
            for kind, status, n in s.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)):
                jobs.add_metric([kind, status], n)
            yield jobs

            if self.chain_head is not None:
                cursors = list(s.scalars(select(ChainCursor.block)))
                try:
                    head = self.chain_head()
                except Exception as exc:
                    log.warning("metrics: chain unavailable: %s", exc)
                else:
                    lag = GaugeMetricFamily(
                        "globai_chain_indexer_lag_blocks",
                        "Chain head minus the slowest "
                        "indexer cursor (blocks not yet indexed); the head when none ran yet.",
                    )
                    lag.add_metric([], max(0, head - min(cursors)) if cursors else head)
                    yield lag
                    height = GaugeMetricFamily("globai_chain_head_block", "Latest block of the configured chain.")
                    height.add_metric([], head)
                    yield height

    def _queue(self) -> Iterable[Metric]:
        if not self.redis_url:
            return
        try:
            import redis

            client = redis.Redis.from_url(self.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            try:
                depths = [(q, int(client.llen(q))) for q in self.queues]
            finally:
                client.close()
        except Exception as exc:
            log.warning("metrics: Redis unavailable: %s", exc)
            return
        depth = GaugeMetricFamily(
            "globai_celery_queue_depth", "Celery tasks waiting in the broker, by queue.", labels=["queue"]
        )
        for queue, n in depths:
            depth.add_metric([queue], n)
        yield depth


def exposition(ledger: Collector | None) -> bytes:
    """The text to answer a scrape with: live metrics (all processes in multi-process mode) + the ledger."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        live = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY

        live = generate_latest(REGISTRY)
    if ledger is None:
        return live
    extra = CollectorRegistry(auto_describe=False)
    extra.register(ledger)
    return live + generate_latest(extra)


def prepare_multiprocess_dir(path: str) -> None:
    """Empty the directory before the server processes start (stale files would add old counts)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))


def mark_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)

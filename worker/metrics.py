"""The worker's own Prometheus metrics, served on `--metrics-port` (names in docs/observability.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS = Counter("globai_worker_requests", "Requests from the market answered, by op and outcome.", ["op", "outcome"])
TOKENS = Counter("globai_worker_tokens_processed", "Token positions run through this worker's layers.")
FORWARD = Histogram(
    "globai_worker_forward_seconds",
    "Compute time of one forward call on this worker's layers.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
BATCH = Histogram(
    "globai_worker_batch_sessions",
    "Sessions whose steps one batched forward ran (continuous batching across sessions).",
    buckets=(2, 3, 4, 6, 8, 12, 16, 32, 64),
)
SESSIONS = Gauge("globai_worker_sessions_open", "Pipeline sessions (KV caches) open on this worker.")
CONNECTED = Gauge("globai_worker_connected", "1 while the WebSocket to the market is up.")
LAYERS = Gauge("globai_worker_layers", "The layer range [start, end) this worker serves.", ["model", "bound"])
TRAINING_TASKS = Counter("globai_worker_training_tasks", "Training tasks finished, by outcome.", ["outcome"])


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on host:port in a background thread (0: off)."""
    if port:
        start_http_server(port, addr=host)

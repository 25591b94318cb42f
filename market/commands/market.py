"""`globai market serve|migrate|sync|requeue|celery-worker|celery-beat|openapi`."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

import typer

from globai.errors import ConfigError, GlobaiError, RpcUnavailable
from market.config import Settings

app = typer.Typer(help="The market API server, its database and its background jobs.")
log = logging.getLogger(__name__)


def _settings_with_devnet_addresses(settings: Settings) -> Settings:
    """Fill contract addresses from the devnet deployment record when none are configured (dev profile only)."""
    if settings.staking_vault_address and settings.job_escrow_address:
        return settings
    if settings.profile != "dev":
        return settings
    if "GLOBAI_RPC_URL" not in os.environ:  # `globai devnet up --port P`: the running devnet, not :8545
        from globai.chain import local

        port = local.running_port(local.DevnetPaths())
        if port is not None:
            settings = settings.model_copy(update={"rpc_url": local.rpc_url(port)})
            os.environ["GLOBAI_RPC_URL"] = settings.rpc_url  # server processes read it again
    try:
        from globai.chain import local

        client, record = local.connect(settings.rpc_url)
    except (ConfigError, RpcUnavailable) as exc:
        typer.echo(f"warning: no chain configured ({exc}); chain features answer 503", err=True)
        return settings
    if client.chain_id != settings.chain_id:
        raise ConfigError(f"RPC chain id {client.chain_id} != GLOBAI_CHAIN_ID {settings.chain_id}")
    return settings.model_copy(
        update={
            "staking_vault_address": record.vault,
            "job_escrow_address": record.escrow,
            "token_address": record.token,
            "chain_start_block": settings.chain_start_block or record.first_block,
        }
    )


@app.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default: GLOBAI_HOST)."),
    port: int = typer.Option(None, help="Port (default: GLOBAI_PORT)."),
    workers: int = typer.Option(
        None, help="Server processes (default: GLOBAI_WORKERS); more than one share the swarm through Redis."
    ),
    metrics_dir: str = typer.Option(
        None,
        "--metrics-dir",
        envvar="PROMETHEUS_MULTIPROC_DIR",
        help="Prometheus multi-process directory (default with --workers > 1: var/metrics-<port>); emptied at start.",
    ),
) -> None:
    """Run the market API with uvicorn (TLS when GLOBAI_SSL_CERTFILE/KEYFILE are set)."""
    import uvicorn

    from globai.protocol.pipeline import WS_MAX_BYTES
    from market.metrics import MULTIPROC_ENV, prepare_multiprocess_dir

    settings = _settings_with_devnet_addresses(Settings())
    processes = workers or settings.workers
    if metrics_dir is None and processes > 1:
        metrics_dir = f"var/metrics-{port or settings.port}"
    if metrics_dir:
        # Every server process writes its samples here; /metrics (any process) adds them up. Set before the
        # processes import prometheus_client.
        prepare_multiprocess_dir(metrics_dir)
        os.environ[MULTIPROC_ENV] = os.path.abspath(metrics_dir)
    if settings.profile == "prod" and not settings.ssl_certfile:
        raise ConfigError("the prod profile needs TLS: set GLOBAI_SSL_CERTFILE and GLOBAI_SSL_KEYFILE")
    if processes > 1:
        # N processes serve one swarm: worker links, relayed calls and runs shared through GLOBAI_REDIS_URL.
        os.environ["GLOBAI_SHARED_COORDINATOR"] = "true"
    # Server processes read Settings from the environment at their own entry point (market.api.asgi).
    for key in ("staking_vault_address", "job_escrow_address", "token_address"):
        value = getattr(settings, key)
        if value:
            os.environ[f"GLOBAI_{key.upper()}"] = value
    bind_host, bind_port = host or settings.host, port or settings.port
    scheme = "https" if settings.ssl_certfile else "http"
    typer.echo(
        f"market starting at {scheme}://{bind_host}:{bind_port} (OpenAPI at /docs); database "
        f"{settings.database_url}; chain {settings.rpc_url}"
        + (f"; {processes} processes sharing the swarm through {settings.redis_url}" if processes > 1 else ""),
        err=True,
    )
    uvicorn.run(
        "market.api.asgi:app_factory",
        factory=True,
        host=bind_host,
        port=bind_port,
        timeout_graceful_shutdown=1,  # SIGTERM: open WebSockets and streams get 1 s, then the process exits
        workers=processes,
        ws_max_size=WS_MAX_BYTES,  # a worker's largest answer (a scoring prefill's logits) is one frame
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        log_level="warning",
        access_log=False,  # the market logs one access event per request itself (market.access, with its id)
        log_config=None,  # uvicorn's loggers go through ours (GLOBAI_LOG_FORMAT=json: one JSON object per line)
    )


@app.command()
def migrate(
    revision: str = typer.Argument("heads", help="Target revision (heads = every branch)."),
    down: bool = typer.Option(False, "--down", help="Downgrade to the revision instead (e.g. base)."),
) -> None:
    """Apply the Alembic migrations to GLOBAI_DATABASE_URL."""
    from market.db import migrate as migrations
    from market.db.engine import make_engine

    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        (migrations.downgrade if down else migrations.upgrade)(engine, revision)
    finally:
        engine.dispose()
    typer.echo(f"database at {revision}: {engine.url.render_as_string(hide_password=True)}")


@app.command()
def sync() -> None:
    """Apply new StakingVault and JobEscrow events once (the beat task does this periodically)."""
    from market.db.engine import make_engine, make_session_factory
    from market.services.chain_sync import sync_escrow, sync_stakes
    from market.services.chain_view import chain_view_from_settings

    settings = _settings_with_devnet_addresses(Settings())
    chain = chain_view_from_settings(settings)
    if chain is None:
        raise ConfigError("no chain configured: set GLOBAI_STAKING_VAULT_ADDRESS and GLOBAI_JOB_ESCROW_ADDRESS")
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            now = datetime.now(UTC)
            stakes = sync_stakes(
                session,
                chain,
                now=now,
                page=settings.log_page_blocks,
                confirmations=settings.confirmations,
                start_block=settings.chain_start_block,
            )
            escrow = sync_escrow(
                session,
                chain,
                now=now,
                page=settings.log_page_blocks,
                confirmations=settings.confirmations,
                start_block=settings.chain_start_block,
            )
    finally:
        engine.dispose()
    typer.echo(f"stake events {stakes.events}, escrow events {escrow.events}, up to block {stakes.to_block}")


@app.command()
def requeue() -> None:
    """Requeue tasks whose lease expired, once."""
    from market.db.engine import make_engine, make_session_factory
    from market.services.leasing import requeue_expired

    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            count = requeue_expired(session, now=datetime.now(UTC), max_attempts=settings.max_task_attempts)
    finally:
        engine.dispose()
    typer.echo(f"requeued {count} tasks")


def _celery() -> object:
    from market.tasks.celery_app import create_celery
    from market.tasks.logging import install_task_logging

    install_task_logging()
    return create_celery(_settings_with_devnet_addresses(Settings()))


@app.command("celery-worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def celery_worker(ctx: typer.Context) -> None:
    """Run a Celery worker for the market's tasks (extra arguments go to Celery, e.g. --concurrency 2)."""
    _celery().worker_main(["worker", "--loglevel=INFO", *ctx.args])  # type: ignore[attr-defined]


@app.command("celery-beat", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def celery_beat(ctx: typer.Context) -> None:
    """Run Celery beat: lease requeue and chain sync on their intervals (schedule file under var/)."""
    args = list(ctx.args)
    if not any(a in ("-s", "--schedule") or a.startswith("--schedule=") for a in args):
        os.makedirs("var", exist_ok=True)
        args += ["--schedule", "var/celerybeat-schedule"]
    _celery().start(["beat", "--loglevel=INFO", *args])  # type: ignore[attr-defined]


@app.command()
def openapi() -> None:
    """Print the API's OpenAPI schema (JSON)."""
    from market.api import create_app

    settings = Settings(database_url="sqlite:///:memory:")
    typer.echo(json.dumps(create_app(settings, chain=None).openapi(), indent=2))


class MarketUnavailable(GlobaiError):
    """The market did not answer (or answered an error) to a read-only status request."""


@app.command()
def status(
    market: str = typer.Option(None, "--market", help="Market URL (default: GLOBAI_MARKET_URL)."),
    jobs: int = typer.Option(10, "--jobs", min=0, max=200, help="Recent jobs to list."),
    as_json: bool = typer.Option(False, "--json", help="Print the dashboard's JSON instead of tables."),
) -> None:
    """The swarm as the dashboard shows it: per model the layers x workers coverage, live routes, recent jobs."""
    import httpx

    from market.commands.status_view import print_status

    url = (market or Settings().market_url).rstrip("/")

    def get(http: httpx.Client, path: str) -> dict[str, Any]:
        r = http.get(path)
        if r.status_code != 200:
            raise MarketUnavailable(f"GET {path}: HTTP {r.status_code} {r.text[:200]}")
        data: dict[str, Any] = r.json()
        return data

    try:
        with httpx.Client(base_url=url, timeout=15) as http:
            swarm = get(http, "/v1/dashboard/swarm")
            recent = get(http, f"/v1/dashboard/jobs?limit={jobs}") if jobs else {"items": [], "total": 0}
    except httpx.HTTPError as exc:
        raise MarketUnavailable(f"cannot reach the market at {url}: {type(exc).__name__}") from None
    if as_json:
        typer.echo(json.dumps({"swarm": swarm, "jobs": recent}, indent=2))
        return
    print_status(url, swarm, recent)

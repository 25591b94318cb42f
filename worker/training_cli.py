"""`globai worker train`: claim DiLoCo training tasks from the market and run them until stopped.

A separate module so the inference daemon's CLI (`worker.cli`) stays its own; `worker.cli` registers `train`.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import httpx
import typer

from globai.logs import bound
from worker.options import KeyFileOpt, KeyOpt, MarketOpt, parse_bytes, worker_account

if TYPE_CHECKING:
    from worker.training_client import TaskOutcome

log = logging.getLogger(__name__)
app = typer.Typer(help="Run DiLoCo training tasks for the market.")


@app.command("train")
def train(
    market: MarketOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    operator: Annotated[
        str | None,
        typer.Option(
            help="Operator id (default: the address); machines of one operator never replay each other's tasks."
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads.", min=1, max=256)] = 1,
    max_memory: Annotated[str, typer.Option("--max-memory", help="Memory for a task, e.g. 4G.")] = "4G",
    cache_dir: Annotated[Path, typer.Option(help="Content-addressed tensor cache.")] = Path("var/worker-train-cache"),
    max_tasks: Annotated[int | None, typer.Option(help="Exit after this many tasks.")] = None,
    register: Annotated[bool, typer.Option(help="Register (profile) with the market first.")] = True,
    metrics_port: Annotated[
        int,
        typer.Option(
            "--metrics-port",
            envvar="GLOBAI_WORKER_METRICS_PORT",
            min=0,
            max=65535,
            help="Serve Prometheus /metrics here (0: off).",
        ),
    ] = 0,
    metrics_host: Annotated[str, typer.Option("--metrics-host", help="Bind address of --metrics-port.")] = "127.0.0.1",
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Your own training data (.txt, or .jsonl with a 'text' field) for federated jobs: it is tokenised "
            "here and never uploaded; only masked updates leave this machine.",
        ),
    ] = None,
) -> None:
    """Claim training tasks, run H AdamW steps each, submit signed compressed pseudo-gradients. Ctrl-C stops."""
    from worker.training_client import TrainingClient  # torch: only when training

    account = worker_account(key, key_file)
    stop = threading.Event()

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    from worker import metrics

    metrics.serve(metrics_port, metrics_host)

    def report(o: TaskOutcome) -> None:
        kind = "replay" if o.replay else "task"
        metrics.TRAINING_TASKS.labels("accepted" if o.accepted else "duplicate").inc()
        with bound(job_id=o.job_id):
            log.info(
                "%s round %d slot %d: loss %.4f -> %.4f in %.1fs",
                kind,
                o.round,
                o.slot,
                o.metrics.loss_start,
                o.metrics.loss_end,
                o.metrics.seconds,
            )
        typer.echo(
            f"{kind} job {o.job_id[:8]} round {o.round} slot {o.slot}: loss {o.metrics.loss_start:.3f} -> "
            f"{o.metrics.loss_end:.3f} in {o.metrics.seconds:.1f}s, up {o.bytes_up} B, down {o.bytes_down} B"
            f"{'' if o.accepted else ' (already had it)'}"
        )

    with httpx.Client(base_url=market, timeout=120) as http:
        client = TrainingClient(
            http,
            account,
            cache_dir=cache_dir,
            operator_id=operator or account.address,
            memory_bytes=parse_bytes(max_memory),
            num_threads=threads,
            local_data=data,
        )
        client.sign_in()
        if register:
            client.register()
        typer.echo(f"worker {account.address} training for {market} (Ctrl-C to stop)", err=True)
        done = client.run(stop, idle_s=2.0, max_tasks=max_tasks, on_task=report)
    typer.echo(f"{done} task(s) done", err=True)

"""`globai dev up|status|down`: the whole local stack from one state file (globai/dev/stack.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="The whole local stack (devnet, private Redis, market, Celery worker + beat) from one state file under var/.",
    no_args_is_help=True,
)


def _say(text: str) -> None:
    typer.echo(text, err=True)


@app.command()
def up(
    var: Annotated[Path, typer.Option("--var", help="Where the stack's DB, models, blobs and logs go.")] = Path(
        "var/dev"
    ),
    chain_port: Annotated[
        int | None, typer.Option("--chain-port", help="Devnet port (default 8545, or a free one when 8545 is taken).")
    ] = None,
    market_port: Annotated[
        int | None, typer.Option("--market-port", help="Market port (default 8000, or a free one when 8000 is taken).")
    ] = None,
) -> None:
    """Start the devnet, a private Redis, the market and Celery (worker + beat); record them in the state file."""
    from globai.dev import stack as devstack

    state = devstack.up(var=var, chain_port=chain_port, market_port=market_port, say=_say)
    _show(state)
    typer.echo(f"every `globai` command now uses this stack ({devstack.state_path()}); `globai dev down` stops it")


@app.command()
def status() -> None:
    """What runs, where, and whether it answers."""
    from globai.dev import stack as devstack
    from globai.dev.services import port_open

    state = devstack.read_state()
    if state is None:
        typer.echo(f"no dev stack recorded at {devstack.state_path()}: start one with `globai dev up`")
        raise typer.Exit(1)
    _show(state)
    down = [name for name, pid in state.pids.items() if not devstack.pid_alive(pid)]
    port = int(state.market_url.rsplit(":", 1)[1])
    for name, pid in state.pids.items():
        typer.echo(f"  {name:14s} pid {pid:<8d} {'running' if devstack.pid_alive(pid) else 'NOT RUNNING'}")
    if not state.pids:
        typer.echo("  (stopped: `globai dev up` starts it again)")
    elif down or not port_open(port):
        typer.echo(f"some processes are down: logs in {Path(state.var) / 'logs'}; `globai dev down && globai dev up`")
        raise typer.Exit(1)


@app.command()
def down(
    keep_devnet: Annotated[bool, typer.Option("--keep-devnet", help="Leave the devnet running.")] = False,
) -> None:
    """Stop every process `dev up` started (the devnet's chain state and the market DB are kept)."""
    from globai.dev import stack as devstack

    if not devstack.down(say=typer.echo, keep_devnet=keep_devnet):
        raise typer.Exit(0)


def _show(state: object) -> None:
    from globai.dev.stack import StackState

    assert isinstance(state, StackState)
    typer.echo(f"market   {state.market_url}   (OpenAPI at {state.market_url}/docs)")
    typer.echo(f"chain    {state.rpc_url}   chain {state.chain_id}, genesis {state.genesis_hash[:18]}…")
    typer.echo(f"         GLBToken {state.token}  StakingVault {state.vault}  JobEscrow {state.escrow}")
    typer.echo(f"redis    {state.redis_url}   (private)")
    typer.echo(f"database {state.database_url}")
    typer.echo(f"models   {state.models_dir}")
    typer.echo(f"logs     {Path(state.var) / 'logs'}")

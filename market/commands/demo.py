"""`globai demo`: walk-throughs on embedded defaults."""

from __future__ import annotations

import typer

from market.chain import devnet
from market.chain.client import ChainClient
from market.errors import GlobaiError

app = typer.Typer(help="End-to-end demos on embedded defaults (devnet Anvil, SQLite, local Redis).")


@app.command()
def chain(port: int = typer.Option(devnet.DEFAULT_PORT, "--port", help="Devnet port if it is not running.")) -> None:
    """The money path: fund → settle → withdraw, refund, slash, and a reconciliation from events."""
    from market.demo.chain_walkthrough import Walkthrough

    url, deployment, _, _ = devnet.up(port)
    typer.echo(f"devnet {url}, chain {deployment.chain_id}")
    if not Walkthrough(ChainClient(url), deployment, say=typer.echo).run():
        raise GlobaiError("reconciliation failed: balances do not match the events")
    typer.echo("reconciliation: ok")


@app.command()
def run(port: int = typer.Option(devnet.DEFAULT_PORT, "--port", help="Devnet port if it is not running.")) -> None:
    """The main demo."""
    chain(port)

"""`globai contracts build|check`: compile the Solidity contracts into the package's artifacts."""

from __future__ import annotations

import typer

from globai.chain import build as chain_build

app = typer.Typer(help="Compile the Solidity contracts (npm solc) into globai/chain/artifacts.")


@app.command()
def build() -> None:
    """Compile contracts/ and rewrite the artifacts whose content changed."""
    result = chain_build.build()
    for path in result.written:
        typer.echo(f"wrote {path.relative_to(chain_build.REPO_ROOT)}")
    typer.echo(f"{len(result.written)} written, {len(result.unchanged)} unchanged (sources {result.source_hash[:12]})")


@app.command()
def check() -> None:
    """Exit 1 if the artifacts are stale against the sources (no compiler needed)."""
    reasons = chain_build.stale_reasons()
    for reason in reasons:
        typer.echo(f"stale: {reason}", err=True)
    if reasons:
        raise typer.Exit(1)
    typer.echo("artifacts are up to date")

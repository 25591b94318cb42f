"""`globai credit fund|status|close`: prepaid GLB credit for the OpenAI-compatible API, escrowed on chain."""

from __future__ import annotations

from pathlib import Path

import typer

from globai.amounts import fmt_glb, parse_glb
from market.commands.requester import KeyOpt, MarketOpt, fund_job
from market.commands.requester import echo_json as _echo
from market.commands.requester import requester_client as _client

app = typer.Typer(help="Prepaid credit (escrowed GLB) that your API keys draw from.")


def _glb(wei: str | None) -> str:
    return "-" if wei is None else fmt_glb(wei)


@app.command()
def fund(
    amount_glb: str = typer.Argument(..., help="GLB to escrow, e.g. 5 or 0.25."),
    days: float = typer.Option(None, "--days", help="Escrow deadline in days (default: the market's)."),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Create a credit and fund it on chain (permit + fundJobWithPermit in one transaction)."""
    settings, client = _client(market, key_file)
    body: dict[str, object] = {"amount": str(parse_glb(amount_glb, what="AMOUNT_GLB"))}
    if days is not None:
        body["days"] = days
    created = client.request("POST", "/v1/credits", json=body)
    credit_id = created["credit"]["id"]
    fund_job(settings, client, credit_id)
    _echo(client.request("GET", f"/v1/credits/{credit_id}"))


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Everything as JSON."),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Your credits: funded, spent, reserved, available, per key; the settlement once settled."""
    _, client = _client(market, key_file)
    rows = client.request("GET", "/v1/credits")
    if as_json:
        _echo(rows)
        return
    if not rows:
        typer.echo("no credits: fund one with `globai credit fund AMOUNT_GLB`")
    for c in rows:
        typer.echo(
            f"credit {c['id']}: {c['status']} (job {c['job_status']}), funded {_glb(c['funded'])}, "
            f"spent {_glb(c['spent'])}, reserved {_glb(c['reserved'])}, available {_glb(c['available'])}"
        )
        for k in c["keys"]:
            typer.echo(
                f"  key {k['prefix']}… {k['name'] or ''}: {k['requests']} requests, spent {_glb(k['spent'])}, "
                f"reserved {_glb(k['reserved'])}"
            )
        if c.get("settlement"):
            s = c["settlement"]
            typer.echo(
                f"  settled: paid {_glb(s['paid'])}, fee {_glb(s['fee'])}, refunded {_glb(s['refunded'])}, "
                f"root {s['report_root']}"
            )


@app.command()
def close(credit_id: str = typer.Argument(...), market: str = MarketOpt, key_file: Path = KeyOpt) -> None:
    """Close a credit: no new requests; it is verified and settled on chain (the rest refunded)."""
    _, client = _client(market, key_file)
    _echo(client.request("POST", f"/v1/credits/{credit_id}/close"))

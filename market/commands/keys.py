"""`globai keys create|list|revoke`: API keys for the OpenAI-compatible API (signed in as the requester)."""

from __future__ import annotations

from pathlib import Path

import typer

from globai.amounts import parse_glb
from market.commands.requester import KeyOpt, MarketOpt
from market.commands.requester import echo_json as _echo
from market.commands.requester import requester_client as _client

app = typer.Typer(help="API keys for /openai/v1 (shown once, stored by the market only as a hash).")


@app.command()
def create(
    name: str = typer.Option("", "--name", help="A label for listings."),
    cap_glb: str = typer.Option(None, "--cap", help="Spend cap of the key, in GLB (default: none)."),
    rate: int = typer.Option(None, "--rate", help="Requests per minute (default: the market's)."),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Create a key; the key is printed on stdout once (the rest on stderr)."""
    _, client = _client(market, key_file)
    body: dict[str, object] = {"name": name}
    if cap_glb is not None:
        body["spend_cap"] = str(parse_glb(cap_glb, what="--cap", allow_zero=True))
    if rate is not None:
        body["rate_limit_per_min"] = rate
    made = client.request("POST", "/v1/api-keys", json=body)
    typer.echo(f"key {made['id']} ({made['prefix']}…): keep it now, it is not shown again", err=True)
    typer.echo(made["key"])


@app.command("list")
def list_keys(market: str = MarketOpt, key_file: Path = KeyOpt) -> None:
    """Your keys (prefix, cap, rate limit, spent, reserved, revoked)."""
    _, client = _client(market, key_file)
    _echo(client.request("GET", "/v1/api-keys"))


@app.command()
def revoke(key_id: str = typer.Argument(...), market: str = MarketOpt, key_file: Path = KeyOpt) -> None:
    """Revoke a key: it answers 401 from now on."""
    _, client = _client(market, key_file)
    _echo(client.request("DELETE", f"/v1/api-keys/{key_id}"))

"""What the requester commands (`globai job`, `globai job train`, `globai credit`, `globai keys`) share: options,
key loading, the signed-in client, funding a job. Heavy modules (web3, eth-account, pydantic-settings) load only
when a command runs, so `--help` stays fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import typer

from globai.amounts import fmt_glb
from globai.errors import ConfigError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from globai.client import MarketClient
    from market.config import Settings

MarketOpt = typer.Option(None, "--market", help="Market URL (default: GLOBAI_MARKET_URL).")
KeyOpt = typer.Option(None, "--key-file", help="File holding the requester's hex private key.")


def requester_account(settings: Settings, key_file: Path | None) -> LocalAccount:
    from globai.keys import load_account

    key = settings.private_key.get_secret_value() if settings.private_key is not None else None
    return load_account(key if key_file is None else None, key_file, who="requester", env="GLOBAI_PRIVATE_KEY")


def requester_client(market: str | None, key_file: Path | None) -> tuple[Settings, MarketClient]:
    from globai.client import MarketClient
    from market.config import Settings

    settings = Settings()
    return settings, MarketClient(market or settings.market_url, requester_account(settings, key_file))


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def market_chain(client: MarketClient, rpc_url: str, chain_id: int) -> Any:
    """A client for `rpc_url`, refused unless it is the market's chain (same id and genesis block)."""
    from globai.chain.client import ChainClient

    chain = ChainClient(rpc_url, retries=1)
    if chain.check() != chain_id:
        raise ConfigError(
            f"RPC {rpc_url} is chain {chain.chain_id}, the market's escrow is on chain {chain_id}: "
            "set GLOBAI_RPC_URL to the market's chain (or use `globai dev up` and no overrides)"
        )
    try:
        genesis = client.http.get("/v1/info").json().get("genesis_hash")
    except (httpx.HTTPError, ValueError, AttributeError):
        genesis = None
    ours = "0x" + bytes(chain.w3.eth.get_block(0)["hash"]).hex().removeprefix("0x")
    if genesis and genesis != ours:
        raise ConfigError(
            f"RPC {rpc_url} is another chain {chain_id} than the market's (genesis blocks differ): "
            "set GLOBAI_RPC_URL to the market's chain (or use `globai dev up` and no overrides)"
        )
    return chain


def fund_job(settings: Settings, client: MarketClient, job_id: str) -> Any:
    """Permit + fundJobWithPermit for a job (or an API credit) in one transaction; returns the confirmed job."""
    from globai.chain.permit import fund_job_with_permit

    escrow = client.request("GET", f"/v1/jobs/{job_id}/escrow")
    if not escrow.get("escrow_address"):
        raise ConfigError("the market has no escrow configured")
    chain = market_chain(client, settings.rpc_url, escrow["chain_id"])
    receipt = fund_job_with_permit(chain, client.account, escrow)
    typer.echo(
        f"funded {fmt_glb(int(escrow['amount']))} in tx {receipt['transactionHash'].hex()} "
        f"(block {receipt['blockNumber']})",
        err=True,
    )
    return client.request("POST", f"/v1/jobs/{job_id}/confirm-funding")

"""`globai worker run|status|stake`: the worker daemon's command line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount

from market.errors import ConfigError

app = typer.Typer(help="Serve layers of a model to the market and get paid for verified work.",
                  no_args_is_help=True)

MarketOpt = Annotated[str, typer.Option("--market", help="Market base URL.", envvar="GLOBAI_MARKET_URL")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="Worker private key (0x-hex).", envvar="GLOBAI_WORKER_KEY")]
KeyFileOpt = Annotated[Path | None, typer.Option("--key-file", help="File holding the private key.")]


def _account(key: str | None, key_file: Path | None) -> LocalAccount:
    if key_file is not None:
        key = key_file.read_text().strip()
    if not key:
        raise ConfigError("give the worker's key with --key, --key-file or GLOBAI_WORKER_KEY")
    try:
        return Account.from_key(key)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a private key: {type(exc).__name__}") from None


def _parse_bytes(text: str | None) -> int | None:
    if text is None:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, KeyError):
        raise ConfigError(f"--max-memory: cannot read {text!r} (e.g. 4G, 512M)") from None


@app.command()
def run(
    market: MarketOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    model: Annotated[str | None, typer.Option(help="Model name (default: the market's first).")] = None,
    layers: Annotated[str | None, typer.Option(help="Layers a:b to serve (default: by memory and coverage).")] = None,
    max_memory: Annotated[
        str | None, typer.Option("--max-memory", help="Memory for weights + KV cache, e.g. 4G.")
    ] = None,
    threads: Annotated[int, typer.Option(help="torch CPU threads.", min=1, max=256)] = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    cache_dir: Annotated[Path, typer.Option(help="Where shards are downloaded.")] = Path("var/worker-cache"),
    operator: Annotated[
        str | None, typer.Option(help="Operator id (one operator's machines are never each other's replicas).")
    ] = None,
    session_ttl: Annotated[float, typer.Option(help="Idle seconds before a session's KV cache is dropped.")] = 600.0,
    progress: Annotated[bool, typer.Option(help="Show a download progress bar.")] = True,
    rpc: Annotated[str | None, typer.Option(help="Also read this worker's stake from this chain RPC.")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Probe, sign in, pick and download layers, register, then serve until SIGTERM/SIGINT."""
    from worker.runtime.daemon import WorkerConfig, WorkerDaemon

    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("worker").setLevel(logging.INFO)
    account = _account(key, key_file)
    memory = _parse_bytes(max_memory)
    config = WorkerConfig(
        market_url=market, account=account, model=model, layers=layers, max_memory=memory, threads=threads,
        device=device, cache_dir=cache_dir, operator_id=operator, session_ttl_s=session_ttl,
        max_cache_bytes=(memory // 4) if memory else 1 << 30, show_progress=progress, rpc_url=rpc,
    )
    daemon = WorkerDaemon(config)
    daemon.prepare()
    cheat = os.environ.get("GLOBAI_WORKER_CHEAT")  # verification tests only: see worker/runtime/cheats.py
    if cheat and daemon.server is not None:
        from worker.runtime.cheats import apply_cheat

        apply_cheat(daemon.server, cheat)
    start, end = daemon.state.layer_range or (0, 0)
    typer.echo(f"worker {account.address}: layers [{start}, {end}) ready, connecting to {market}", err=True)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await daemon.serve(stop)

    try:
        asyncio.run(main())
    finally:
        daemon.close()
    typer.echo("worker stopped", err=True)


@app.command()
def status(market: MarketOpt = "http://127.0.0.1:8000", key: KeyOpt = None, key_file: KeyFileOpt = None) -> None:
    """Stake, eligibility, reputation, tasks done and GLB earned, as the market sees this worker."""
    import httpx

    from market.protocol.auth_client import check, sign_in

    account = _account(key, key_file)
    with httpx.Client(base_url=market, timeout=30) as http:
        token = sign_in(http, account, ["worker"])
        me = check(http.get("/v1/workers/me/summary", headers={"Authorization": f"Bearer {token}"})).json()
    typer.echo(f"address      {me['address']}")
    typer.echo(f"status       {me['status']}  eligible {me['eligible']}")
    typer.echo(f"stake        {int(me['stake']) / 10**18:,.4f} GLB  (unbonding {int(me['unbonding']) / 10**18:,.4f})")
    rep = me.get("reputation_mean")
    typer.echo(f"reputation   {rep:.3f}" if rep is not None else "reputation   -")
    typer.echo(f"tasks done   {me['tasks_done']}  stage calls served {me['stage_calls']}")
    typer.echo(f"GLB earned   {int(me['earned']) / 10**18:,.4f}")
    typer.echo(f"connected    {', '.join(me['connected']) or 'no'}")


@app.command()
def stake(
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    amount: Annotated[float, typer.Option(help="GLB to stake (default: the vault minimum).")] = 0.0,
    rpc: Annotated[
        str | None, typer.Option(envvar="GLOBAI_RPC_URL", help="RPC URL (default: the running devnet).")
    ] = None,
    from_devnet_faucet: Annotated[bool, typer.Option(help="On the devnet, top up GLB from the treasury first.")] = True,
) -> None:
    """Stake GLB in the StakingVault (devnet convenience: tops the balance up from the devnet treasury)."""
    from worker.runtime.staking import stake_glb

    account = _account(key, key_file)
    staked, total = stake_glb(account, amount_glb=amount or None, rpc=rpc, faucet=from_devnet_faucet)
    typer.echo(f"staked {staked / 10**18:,.4f} GLB; {account.address} now has {total / 10**18:,.4f} GLB staked")


# DiLoCo training tasks (claimed over the lease API): `globai worker train`, see worker/training_cli.py.
from worker.training_cli import train as _train  # noqa: E402

app.command("train")(_train)

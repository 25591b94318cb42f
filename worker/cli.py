"""`globai worker run|status|stake`: the worker daemon's command line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from globai.amounts import fmt_glb, parse_glb
from globai.errors import ConfigError
from worker.options import KeyFileOpt, KeyOpt, MarketOpt, parse_bytes, worker_account

if TYPE_CHECKING:
    pass

app = typer.Typer(help="Serve layers of a model to the market and get paid for verified work.", no_args_is_help=True)


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
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (default: 1 if shared, every core if dedicated).", min=1)
    ] = None,
    thread_policy: Annotated[
        str,
        typer.Option(
            "--thread-policy",
            envvar="GLOBAI_WORKER_THREAD_POLICY",
            help="shared: idle threads sleep (stages or others share the cores); dedicated: a box of its own.",
        ),
    ] = "shared",
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where shards are downloaded (default: var/worker-cache/<address>, one per worker on a machine)."
        ),
    ] = None,
    operator: Annotated[
        str | None, typer.Option(help="Operator id (one operator's machines are never each other's replicas).")
    ] = None,
    session_ttl: Annotated[float, typer.Option(help="Idle seconds before a session's KV cache is dropped.")] = 600.0,
    progress: Annotated[bool, typer.Option(help="Show a download progress bar.")] = True,
    rpc: Annotated[str | None, typer.Option(help="Also read this worker's stake from this chain RPC.")] = None,
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
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Probe, sign in, pick and download layers, register, then serve until SIGTERM/SIGINT."""
    from worker import threads as thread_policies

    try:
        threads = thread_policies.apply(thread_policy, threads)  # before torch loads: OpenMP reads it then
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--thread-policy") from None
    from worker.runtime.daemon import WorkerConfig, WorkerDaemon, event_loop_factory

    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("worker").setLevel(logging.INFO)
    account = worker_account(key, key_file)
    memory = None if max_memory is None else parse_bytes(max_memory)
    if cache_dir is None:  # several workers on one machine must not download into one folder at once
        cache_dir = Path("var/worker-cache") / account.address.lower()
    config = WorkerConfig(
        market_url=market,
        account=account,
        model=model,
        layers=layers,
        max_memory=memory,
        threads=threads,
        device=device,
        cache_dir=cache_dir,
        operator_id=operator,
        session_ttl_s=session_ttl,
        max_cache_bytes=(memory // 4) if memory else 1 << 30,
        show_progress=progress,
        rpc_url=rpc,
    )
    daemon = WorkerDaemon(config)
    daemon.prepare()
    from worker import metrics

    start_layer, end_layer = daemon.state.layer_range or (0, 0)
    served = daemon.server.stage.manifest.name if daemon.server is not None else (model or "")
    metrics.LAYERS.labels(served, "start").set(start_layer)
    metrics.LAYERS.labels(served, "end").set(end_layer)
    metrics.serve(metrics_port, metrics_host)
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
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(main())
    finally:
        daemon.close()
    typer.echo("worker stopped", err=True)


@app.command()
def status(market: MarketOpt = "http://127.0.0.1:8000", key: KeyOpt = None, key_file: KeyFileOpt = None) -> None:
    """Stake, eligibility, reputation, tasks done and GLB earned, as the market sees this worker."""
    me, earned = _market_get(market, key, key_file, "/v1/workers/me/summary", "/v1/workers/me/earnings")
    typer.echo(f"address      {me['address']}")
    typer.echo(f"status       {me['status']}  eligible {me['eligible']}")
    typer.echo(f"stake        {fmt_glb(me['stake'])}  (unbonding {fmt_glb(me['unbonding'])})")
    rep = me.get("reputation_mean")
    typer.echo(f"reputation   {rep:.3f}" if rep is not None else "reputation   -")
    typer.echo(f"tasks done   {me['tasks_done']}  stage calls served {me['stage_calls']}")
    typer.echo(f"GLB earned   {fmt_glb(me['earned'])}  (checked against the escrow: `globai worker earnings`)")
    typer.echo(f"connected    {', '.join(me['connected']) or 'no'}")
    if earned["jobs"]:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Earnings per job", title_justify="left")
        for name in ("job", "kind", "model", "GLB earned", "settled", "settlement tx"):
            table.add_column(name, justify="right" if name == "GLB earned" else "left")
        for r in earned["jobs"]:
            table.add_row(
                r["job_id"],
                r["kind"],
                r["model"],
                fmt_glb(r["amount"]),
                r.get("settled_at") or "-",
                r.get("settlement_tx") or "-",
            )
        Console(width=200).print(table)


def _market_get(market: str, key: str | None, key_file: Path | None, *paths: str) -> Any:
    """GET each path as the signed-in worker (one sign-in); one path: its JSON, several: a tuple of them."""
    import httpx

    from globai.client import check, sign_in

    account = worker_account(key, key_file)
    with httpx.Client(base_url=market, timeout=30) as http:
        token = sign_in(http, account, ["worker"])
        out = [dict(check(http.get(p, headers={"Authorization": f"Bearer {token}"})).json()) for p in paths]
    return out[0] if len(out) == 1 else tuple(out)


RpcOpt = Annotated[
    str | None,
    typer.Option(envvar="GLOBAI_RPC_URL", help="RPC URL (default: the dev stack's chain or the running devnet)."),
]
WeiOpt = Annotated[bool, typer.Option("--wei", help="The amount is in wei, not GLB.")]


@app.command()
def stake(
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    amount: Annotated[str | None, typer.Option(help="GLB to stake (default: the vault minimum).")] = None,
    wei: WeiOpt = False,
    rpc: RpcOpt = None,
    market: MarketOpt = "http://127.0.0.1:8000",
    from_devnet_faucet: Annotated[bool, typer.Option(help="On the devnet, top up GLB from the treasury first.")] = True,
) -> None:
    """Stake GLB in the StakingVault (devnet convenience: tops the balance up from the devnet treasury)."""
    from worker.runtime.staking import stake_glb

    account = worker_account(key, key_file)
    value = None if amount is None else parse_glb(amount, what="--amount", wei=wei)
    staked, total = stake_glb(account, amount=value, rpc=rpc, faucet=from_devnet_faucet, market=market)
    typer.echo(f"staked {fmt_glb(staked)}; {account.address} now has {fmt_glb(total)} staked")


@app.command()
def unstake(
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    amount: Annotated[str | None, typer.Option(help="GLB to unstake (default: all of it).")] = None,
    wei: WeiOpt = False,
    withdraw: Annotated[
        bool,
        typer.Option(
            "--withdraw", help="Withdraw stake whose unbonding period is over (instead of requesting a new unstake)."
        ),
    ] = False,
    rpc: RpcOpt = None,
    market: MarketOpt = "http://127.0.0.1:8000",
) -> None:
    """Request unstaking (the stake unbonds for the vault's period, slashable meanwhile); `--withdraw` after."""
    from datetime import UTC, datetime

    from worker.runtime import staking

    account = worker_account(key, key_file)
    if withdraw:
        got = staking.withdraw_stake(account, rpc=rpc)
        typer.echo(f"withdrew {fmt_glb(got)} of unbonded stake to {account.address}")
        return
    value = None if amount is None else parse_glb(amount, what="--amount", wei=wei)
    requested, release = staking.unstake(account, amount=value, rpc=rpc, market=market)
    when = datetime.fromtimestamp(release, UTC).strftime("%Y-%m-%d %H:%M UTC")
    typer.echo(
        f"unstaking {fmt_glb(requested)}: it unbonds at {when}; then run "
        f"`globai worker unstake --withdraw` to get it back"
    )


@app.command()
def withdraw(
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    rpc: RpcOpt = None,
    market: MarketOpt = "http://127.0.0.1:8000",
) -> None:
    """Withdraw every GLB the escrow credited to this worker (settled earnings) to its address."""
    from worker.runtime.staking import withdraw_earnings

    account = worker_account(key, key_file)
    amount, tx = withdraw_earnings(account, rpc=rpc, market=market)
    typer.echo(f"withdrew {fmt_glb(amount)} of earnings to {account.address} (tx {tx})")


@app.command()
def earnings(
    key: KeyOpt = None,
    key_file: KeyFileOpt = None,
    rpc: RpcOpt = None,
    market: MarketOpt = "http://127.0.0.1:8000",
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Per job: GLB the market says settlement credited, next to what the escrow's events say; then totals.
    Exits 1 if the two disagree."""
    import json

    from worker.runtime.staking import escrow_history

    account = worker_account(key, key_file)
    rows = _market_get(market, key, key_file, "/v1/workers/me/earnings")["jobs"]
    chain = escrow_history(account.address, rpc=rpc, market=market)
    on_chain: dict[str, int] = chain["credited"]
    out = []
    for r in rows:
        got = on_chain.get(r["chain_job_id"].lower(), 0)
        out.append({**r, "on_chain": str(got), "agrees": got == int(r["amount"])})
    unknown = {k: v for k, v in on_chain.items() if k not in {r["chain_job_id"].lower() for r in rows}}
    total_chain = sum(on_chain.values())
    agree = all(r["agrees"] for r in out) and not unknown
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "address": account.address,
                    "jobs": out,
                    "credited_on_chain": str(total_chain),
                    "withdrawn": str(chain["withdrawn"]),
                    "withdrawable": str(chain["withdrawable"]),
                    "agrees": agree,
                },
                indent=2,
            )
        )
    else:
        typer.echo(f"{'job':36s}  {'kind':9s}  {'market says':>16s}  {'chain says':>16s}")
        for r in out:
            typer.echo(
                f"{r['job_id']:36s}  {r['kind']:9s}  {fmt_glb(r['amount']):>16s}  "
                f"{fmt_glb(r['on_chain']):>16s}{'' if r['agrees'] else '  MISMATCH'}"
            )
        for k, v in unknown.items():
            typer.echo(f"{k[:36]:36s}  {'?':9s}  {'-':>16s}  {fmt_glb(v):>16s}  (not in this market)")
        typer.echo(
            f"credited {fmt_glb(total_chain)}, withdrawn {fmt_glb(chain['withdrawn'])}, "
            f"withdrawable now {fmt_glb(chain['withdrawable'])} (`globai worker withdraw`)"
        )
    if not agree:
        raise ConfigError("the market's earnings and the escrow's events disagree (see the rows above)")


# DiLoCo training tasks (claimed over the lease API): `globai worker train`, see worker/training_cli.py.
from worker.training_cli import train as _train  # noqa: E402

app.command("train")(_train)

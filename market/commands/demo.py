"""`globai demo`: walk-throughs on embedded defaults."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from globai.chain.client import ChainClient
from globai.dev import devnet
from globai.errors import GlobaiError

DEMO_VAR = Path("var/demo")
app = typer.Typer(help="End-to-end demos on embedded defaults (devnet Anvil, SQLite, local Redis).")


@app.command()
def chain(
    port: int = typer.Option(
        None, "--port", help="Devnet port if it is not running (default 8545, or a free one when 8545 is taken)."
    ),
) -> None:
    """The money path: fund → settle → withdraw, refund, slash, and a reconciliation from events."""
    from market.demo.chain_walkthrough import Walkthrough

    url, deployment, _, _ = devnet.up(port)
    typer.echo(f"devnet {url}, chain {deployment.chain_id}")
    if not Walkthrough(ChainClient(url), deployment, say=typer.echo).run():
        raise GlobaiError("reconciliation failed: balances do not match the events")
    typer.echo("reconciliation: ok")


@app.command()
def run(
    port: int = typer.Option(
        None, "--port", help="Devnet port if it is not running (default 8545, or a free one when 8545 is taken)."
    ),
    var: Annotated[Path, typer.Option("--var", help="Where the demo's DB, blobs, model and logs go.")] = DEMO_VAR,
    tokens: int = typer.Option(64, "--tokens", "-n", help="At most this many tokens per answer."),
    model: str = typer.Option(
        "smollm2",
        "--model",
        help="smollm2 (the real SmolLM2-135M-Instruct, imported once into VAR/models) or "
        "tiny (a 4-layer random-weight Llama: fast, gibberish).",
    ),
) -> None:
    """The main demo: a paid inference job on a local market with one cheating worker, verified, settled on
    chain and audited. Exits 0 only if the job and chain audits pass."""
    import signal

    from globai.dev.cluster import Cluster
    from market.demo.paid_inference import run_paid_inference

    def _terminate(*_args: object) -> None:
        raise KeyboardInterrupt  # unwinds through `with Cluster`, which ends every child

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (SIG_IGN)
    started = time.monotonic()
    typer.echo("• devnet (Anvil + contracts)...")
    url, deployment, started_chain, deployed = devnet.up(port)
    typer.echo(
        f"devnet {url} (chain {deployment.chain_id}, {'started' if started_chain else 'reused'}"
        f"{', contracts deployed' if deployed else ''})"
    )
    cfg = _cluster_config(var, url, deployment, model)

    try:
        with Cluster(cfg, say=typer.echo) as cluster:
            out = run_paid_inference(cluster, max_new_tokens=tokens, say=typer.echo, write=_write)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: every process the demo started has been stopped", err=True)
        raise typer.Exit(130) from None
    glb = 10**18
    r = out.result
    typer.echo("")
    typer.echo(f"settlement tx {out.settlement_tx}  report root {r['settlement']['report_root']}")
    s = r["settlement"]
    typer.echo(
        f"  paid {int(s['paid']) / glb:g} GLB, fee {int(s['fee']) / glb:g} GLB, "
        f"refunded to the requester {int(s['refunded']) / glb:g} GLB"
    )
    for p in s["payees"] or []:
        typer.echo(f"  payee {p['payee']} credited {int(p['amount']) / glb:g} GLB")
    for sl in r["slashes"]:
        typer.echo(f"  SLASHED {sl['worker']} {int(sl['amount']) / glb:g} GLB ({sl['status']}, tx {sl['tx']})")
    typer.echo("balances (this run):")
    for name, credited in out.credited.items():
        typer.echo(
            f"  {name:14s} credited {credited / glb:8.4f} GLB   stake {out.stake_before[name] / glb:g} → "
            f"{out.stake_after[name] / glb:g} GLB"
        )
    typer.echo(f"audit job:   {'PASSED' if out.audit_job[0] else 'FAILED'}  {out.audit_job[1].splitlines()[-1:]}")
    typer.echo(f"audit chain: {'PASSED' if out.audit_chain[0] else 'FAILED'}  {out.audit_chain[1].splitlines()[-1:]}")
    typer.echo(
        f"demo finished in {time.monotonic() - started:.0f} s; logs in {cfg.var / 'logs'}; "
        f"the devnet stays up at {url} for the next run (`globai devnet down` stops it)"
    )
    if not out.passed:
        raise GlobaiError("the demo's audits did not pass")


@app.command("openai")
def openai_api(
    port: int = typer.Option(
        None, "--port", help="Devnet port if it is not running (default 8545, or a free one when 8545 is taken)."
    ),
    var: Annotated[Path, typer.Option("--var", help="Where the demo's DB, blobs, model and logs go.")] = Path(
        "var/demo-openai"
    ),
    tokens: int = typer.Option(48, "--tokens", "-n", help="At most this many tokens per answer."),
    model: str = typer.Option("smollm2", "--model", help="smollm2 (chat) or tiny (completions, gibberish)."),
) -> None:
    """The OpenAI-compatible, paid API: a key, a credit funded on chain, a streamed chat through the `openai`
    package and through curl, then the credit settled on chain and audited. Exits 0 only if both audits pass."""
    from globai.dev.cluster import Cluster
    from market.demo.openai_api import run_openai_api

    started = time.monotonic()
    url, deployment, _, _ = devnet.up(port)
    typer.echo(f"devnet {url} (chain {deployment.chain_id})")
    cfg = _cluster_config(var, url, deployment, model)

    with Cluster(cfg, say=typer.echo) as cluster:
        out = run_openai_api(cluster, max_tokens=tokens, say=typer.echo, write=_write)
    typer.echo(f"audit job:   {'PASSED' if out.audit_job[0] else 'FAILED'}  {out.audit_job[1].splitlines()[-1:]}")
    typer.echo(f"audit chain: {'PASSED' if out.audit_chain[0] else 'FAILED'}  {out.audit_chain[1].splitlines()[-1:]}")
    typer.echo(f"demo finished in {time.monotonic() - started:.0f} s; logs in {cfg.var / 'logs'}")
    if not out.passed:
        raise GlobaiError("the demo's audits did not pass")


def _cluster_config(var: Path, url: str, deployment: Any, model: str) -> Any:
    """The demo cluster's settings; a Redis of the user's own only when named (GLOBAI_REDIS_URL), else a private one."""
    from globai.chain.local import dev_accounts
    from globai.dev.cluster import ClusterConfig

    return ClusterConfig(
        var=var.resolve(),
        rpc_url=url,
        deployment=deployment,
        operator=dev_accounts(1)[0],
        redis_url=os.environ.get("GLOBAI_REDIS_URL") or None,
        builtin=None if model == "tiny" else model,
    )


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()

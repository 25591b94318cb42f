"""`globai audit job|chain`: check settlements and balances from the chain alone (trusting no market DB).

Exit status 0 when everything checks out; otherwise 1 and one line `audit FAILED: <reason>` on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from globai.chain.client import ChainClient
from globai.chain.deploy import Deployment
from globai.errors import ConfigError

app = typer.Typer(help="Audit settlements and balances from the chain and the published reports.", no_args_is_help=True)

RpcOpt = Annotated[str, typer.Option("--rpc", envvar="GLOBAI_RPC_URL", help="EVM RPC URL (default: the dev stack's).")]
DeploymentOpt = Annotated[
    Path | None,
    typer.Option("--deployment", help="Deployment record (default: hardhat-free-devnet/deployments/<chainId>.json)."),
]


def _fail(reason: str) -> None:
    typer.echo(f"audit FAILED: {reason}", err=True)
    raise typer.Exit(1)


def _deployment(client: ChainClient, path: Path | None) -> Deployment:
    if path is not None:
        return Deployment.load(path)
    from globai.chain import local

    return local.read_deployment(local.DevnetPaths(), client.check())


def _load_report(source: str) -> Any:
    if source.startswith(("http://", "https://")):
        import httpx

        try:
            response = httpx.get(source, timeout=30.0, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise ConfigError(f"cannot fetch report {source}: {exc.__class__.__name__}") from None
        if response.status_code != 200:
            raise ConfigError(f"report {source} answered HTTP {response.status_code}")
        text = response.text
    else:
        try:
            text = Path(source).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read report {source}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError:
        raise ConfigError(f"report {source} is not JSON") from None


@app.command("job")
def job(
    job_id: Annotated[str, typer.Argument(help="The market's job id (UUID).")],
    rpc: RpcOpt,
    report: Annotated[
        str | None,
        typer.Option(
            "--report", help="Report JSON: a file or an http(s) URL (default: the market's /v1/audit/jobs/JOB/report)."
        ),
    ] = None,
    deployment: DeploymentOpt = None,
    escrow: Annotated[str | None, typer.Option("--escrow", help="JobEscrow address (overrides the record).")] = None,
    from_block: Annotated[int | None, typer.Option(help="First block to read events from.")] = None,
) -> None:
    """Check one job: report root = on-chain reportRoot, every proof, payee sums = PaymentCredited, amounts add up."""
    from market.audit.job import audit_job

    client = ChainClient(rpc, retries=1)
    client.check()
    if escrow is None:
        record = _deployment(client, deployment)
        escrow, start = record.escrow, record.first_block
    else:
        start = 0
    if report is None:
        import os

        market = os.environ.get("GLOBAI_MARKET_URL", "http://127.0.0.1:8000").rstrip("/")
        report = f"{market}/v1/audit/jobs/{job_id}/report"
    data = _load_report(report)
    if not isinstance(data, dict) or not isinstance(data.get("job"), dict) or data["job"].get("id") != job_id:
        _fail(f"report is not about job {job_id}")
    result = audit_job(
        client, client.contract("JobEscrow", escrow), data, from_block=start if from_block is None else from_block
    )
    if not result.ok:
        _fail(result.reason)
    for line in result.lines:
        typer.echo(line)
    typer.echo(f"audit ok: job {job_id}")


@app.command("chain")
def chain(rpc: RpcOpt, deployment: DeploymentOpt = None) -> None:
    """Reconcile JobEscrow and StakingVault token balances and every credited balance from events alone."""
    from market.audit.chain import audit_chain, first_mismatch

    client = ChainClient(rpc, retries=1)
    client.check()
    result = audit_chain(client, _deployment(client, deployment))
    for line in result.lines():
        typer.echo(line)
    reason = first_mismatch(result)
    if reason is not None:
        _fail(reason)
    typer.echo("audit ok: every escrow and vault balance reconciles with the events")

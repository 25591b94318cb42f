"""`globai job post|fund|get|list|cancel`: a requester's client for the market's REST API.

Signs in with the requester's key (GLOBAI_PRIVATE_KEY or --key-file), funds jobs on chain with an EIP-2612
permit in one transaction, then asks the market to confirm the JobFunded event.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from globai.amounts import fmt_glb, parse_glb
from globai.errors import ConfigError
from market.commands.requester import KeyOpt, MarketOpt, fund_job, market_chain
from market.commands.requester import echo_json as _echo
from market.commands.requester import requester_client as _client

if TYPE_CHECKING:  # web3/eth-account and pydantic-settings load only when a command needs them (fast --help)
    from globai.client import MarketClient
    from market.config import Settings

app = typer.Typer(help="Post, fund and manage jobs as a requester.")


def read_spec(spec_file: Path) -> dict[str, Any]:
    """The job spec in `spec_file`, validated as the market will; one-line errors naming the file."""
    from pydantic import ValidationError

    from market.cli_errors import pydantic_errors
    from market.services.job_specs import InferenceSpec, TrainingSpec

    try:
        spec = json.loads(spec_file.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{spec_file} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{spec_file} is not a text file") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{spec_file} must hold a JSON object (a job spec), not {type(spec).__name__}")
    model = TrainingSpec if spec.get("kind") == "training" else InferenceSpec
    try:
        model.model_validate(spec)
    except ValidationError as exc:
        raise ConfigError(f"{spec_file}: {pydantic_errors(exc)}") from None
    return spec


@app.command()
def post(
    spec_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON job spec (inference/training).")],
    price: str = typer.Option(..., "--price", help="Price per unit (one generated token) in GLB, e.g. 0.001."),
    budget: str = typer.Option(None, "--budget", help="GLB to escrow (default: price x units)."),
    wei: bool = typer.Option(False, "--wei", help="--price and --budget are in wei, not GLB."),
    hours: float = typer.Option(24.0, "--hours", help="Deadline, hours from now."),
    replicas: int = typer.Option(1, "--replicas", min=1, max=16),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Create a job; prints the job and the escrow parameters to fund it with (nothing is paid yet)."""
    from market.services.job_specs import InferenceSpec, TrainingSpec

    spec = read_spec(spec_file)
    units = (TrainingSpec if spec.get("kind") == "training" else InferenceSpec).model_validate(spec).units()
    price_wei = parse_glb(price, what="--price", wei=wei)
    budget_wei = price_wei * units if budget is None else parse_glb(budget, what="--budget", wei=wei)
    if not 0.0833 <= hours <= 365 * 24:
        raise ConfigError(f"--hours: the deadline must be 5 minutes to 365 days away, got {hours:g} h")
    _, client = _client(market, key_file)
    deadline = datetime.now(UTC) + timedelta(hours=hours)
    body = {
        "spec": spec,
        "price_per_unit": str(price_wei),
        "budget": str(budget_wei),
        "deadline": deadline.isoformat(),
        "replicas": replicas,
    }
    created = client.request("POST", "/v1/jobs", json=body)
    _echo(created)
    typer.echo(
        f"job {created['job']['id']}: {units} units at {fmt_glb(price_wei)} each, escrow "
        f"{fmt_glb(budget_wei)}; fund it with `globai job fund {created['job']['id']}`",
        err=True,
    )


@app.command()
def fund(
    job_id: str = typer.Argument(...),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Fund a job on chain (permit + fundJobWithPermit in one transaction), then confirm it with the market."""
    settings, client = _client(market, key_file)
    _echo(fund_job(settings, client, job_id))


@app.command()
def get(job_id: str = typer.Argument(...), market: str = MarketOpt, key_file: Path = KeyOpt) -> None:
    """Show one job."""
    _, client = _client(market, key_file)
    _echo(client.request("GET", f"/v1/jobs/{job_id}"))


@app.command()
def result(
    job_id: str = typer.Argument(...),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """An inference job's generated text per prompt, with its verification and settlement."""
    _, client = _client(market, key_file)
    data = client.request("GET", f"/v1/jobs/{job_id}/result")
    if as_json:
        _echo(data)
        return
    typer.echo(f"job {data['id']}: {data['status']}")
    for o in data["outputs"]:
        typer.echo(f"[{o['index']}] {o['prompt']}{o['text'] if o['text'] is not None else ' (not generated yet)'}")
    if data.get("verification"):
        typer.echo(f"verification: {data['verification']['status']} {data['verification']['detail']}".rstrip())
    for s in data.get("slashes") or []:
        typer.echo(f"slashed: {s['worker']} {fmt_glb(s['amount'])} ({s['status']})")
    if data.get("settlement"):
        st = data["settlement"]
        typer.echo(
            f"settled: paid {fmt_glb(st['paid'])}, fee {fmt_glb(st['fee'])}, refunded "
            f"{fmt_glb(st['refunded'])}; report root {st['report_root']}"
        )


@app.command("list")
def list_jobs(
    status: str = typer.Option(None, "--status"),
    kind: str = typer.Option(None, "--kind"),
    limit: int = typer.Option(50, "--limit"),
    offset: int = typer.Option(0, "--offset"),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """List your jobs, newest first."""
    _, client = _client(market, key_file)
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if status:
        params["status"] = status
    if kind:
        params["kind"] = kind
    _echo(client.request("GET", "/v1/jobs", params=params))


@app.command()
def cancel(
    job_id: str = typer.Argument(...),
    wait: float = typer.Option(60.0, "--wait", help="Seconds to wait for a funded job's refund on chain (0: don't)."),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Cancel a job. A funded job's escrow goes back to you within seconds (the settlement task pays verified
    work done so far, if any, and refunds the rest on chain); this waits for that and prints it."""
    import time

    settings, client = _client(market, key_file)
    job = client.request("POST", f"/v1/jobs/{job_id}/cancel")
    if job.get("funded_amount") is None:
        typer.echo(f"job {job_id} cancelled (it was never funded: no money moved)")
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        job = client.request("GET", f"/v1/jobs/{job_id}")
        if job["status"] in ("settled", "refunded"):
            data = client.request("GET", f"/v1/jobs/{job_id}/result") if job["kind"] == "inference" else {}
            st = data.get("settlement") or {}
            refunded = f" {fmt_glb(st['refunded'])}" if st.get("refunded") is not None else ""
            typer.echo(f"job {job_id} cancelled; the escrow refunded{refunded} to {job['requester']}")
            _withdraw_credits(client, settings)
            return
        time.sleep(1.0)
    typer.echo(
        f"job {job_id} cancelled; the refund of its {fmt_glb(job['funded_amount'])} is sent by the market's "
        "settlement task (Celery beat, every few seconds): check with `globai job get " + job_id + "`; "
        f"after the deadline {job['deadline']} `globai job refund {job_id}` takes it back yourself"
    )


def _withdraw_credits(client: MarketClient, settings: Settings) -> int:
    """Withdraw what the escrow credited to the requester (refunds are pull payments); returns wei received."""
    info = client.http.get("/v1/info").json()
    if not info.get("escrow_address"):
        return 0
    chain = market_chain(client, settings.rpc_url, int(info["chain_id"]))
    escrow = chain.contract("JobEscrow", info["escrow_address"])
    owed = int(chain.call(escrow.functions.balanceOf(client.account.address)))
    if owed == 0:
        typer.echo("nothing credited to withdraw")
        return 0
    receipt = chain.transact(escrow.functions.withdraw(), client.account)
    typer.echo(
        f"withdrew {fmt_glb(owed)} from the escrow to {client.account.address} "
        f"(tx 0x{bytes(receipt['transactionHash']).hex().removeprefix('0x')})"
    )
    return owed


@app.command()
def withdraw(market: str = MarketOpt, key_file: Path = KeyOpt) -> None:
    """Withdraw what settlements credited back to you (the unspent part of settled or cancelled jobs)."""
    settings, client = _client(market, key_file)
    _withdraw_credits(client, settings)


@app.command()
def refund(
    job_id: str = typer.Argument(...),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Take an unsettled job's escrow back yourself, on chain, once its deadline has passed (`JobEscrow.refund`)."""
    from globai.chain.client import ContractReverted

    settings, client = _client(market, key_file)
    escrow = client.request("GET", f"/v1/jobs/{job_id}/escrow")
    if not escrow.get("escrow_address"):
        raise ConfigError("the market has no escrow configured")
    chain = market_chain(client, settings.rpc_url, escrow["chain_id"])
    contract = chain.contract("JobEscrow", escrow["escrow_address"])
    chain_job_id = bytes.fromhex(escrow["job_id"][2:])
    now = int(chain.w3.eth.get_block("latest")["timestamp"])
    if now <= int(escrow["deadline"]):
        raise ConfigError(
            f"job {job_id}'s deadline is in {(int(escrow['deadline']) - now) / 3600:.1f} h; before it, "
            f"`globai job cancel {job_id}` refunds through the market"
        )
    try:
        receipt = chain.transact(contract.functions.refund(chain_job_id), client.account)
    except ContractReverted as exc:
        if exc.error == "JobEscrowNotFunded":
            raise ConfigError(
                f"job {job_id} is not refundable: it was never funded, or it is already settled or refunded"
            ) from None
        raise
    events = chain.events(receipt, contract)
    amount = sum(int(e.args["amount"]) for e in events if e.name == "JobRefunded")
    typer.echo(
        f"refunded {fmt_glb(amount)} to {client.account.address} "
        f"(tx 0x{bytes(receipt['transactionHash']).hex().removeprefix('0x')})"
    )


# `globai job train post|watch|download`: DiLoCo training jobs (market/commands/job_train.py).
from market.commands.job_train import app as _train_app  # noqa: E402

app.add_typer(_train_app, name="train")

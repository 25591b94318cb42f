"""`globai job post|fund|get|list|cancel`: a requester's client for the market's REST API.

Signs in with the requester's key (GLOBAI_PRIVATE_KEY or --key-file), funds jobs on chain with an EIP-2612
permit in one transaction, then asks the market to confirm the JobFunded event.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from eth_account import Account
from eth_account.signers.local import LocalAccount

from market.config import Settings
from market.errors import ConfigError, GlobaiError
from market.protocol.siwe import build_message, sign_message

app = typer.Typer(help="Post, fund and manage jobs as a requester.")

MarketOpt = typer.Option(None, "--market", help="Market URL (default: GLOBAI_MARKET_URL).")
KeyOpt = typer.Option(None, "--key-file", help="File holding the requester's hex private key.")


class MarketRequestFailed(GlobaiError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"market answered {status}: {detail}")
        self.status = status
        self.detail = detail


class MarketClient:
    """A signed-in HTTP session with the market."""

    def __init__(self, base_url: str, account: LocalAccount, *, timeout: float = 30.0) -> None:
        self.account = account
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.token: str | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """A signed-in JSON request; 204 gives None."""
        response = self.raw(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A signed-in request whose response body is left to the caller (binary downloads, uploads)."""
        headers = {"Authorization": f"Bearer {self.sign_in()}", **kwargs.pop("headers", {})}
        try:
            response = self.http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise MarketRequestFailed(0, f"{self.http.base_url} unreachable ({exc.__class__.__name__})") from exc
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise MarketRequestFailed(response.status_code, str(detail)[:300])
        return response

    def sign_in(self) -> str:
        if self.token is not None:
            return self.token
        nonce = self.http.post("/v1/auth/nonce", json={"address": self.account.address})
        if nonce.status_code != 200:
            raise MarketRequestFailed(nonce.status_code, nonce.text[:300])
        n = nonce.json()
        now = datetime.now(UTC)
        message = build_message(
            domain=n["domain"],
            address=self.account.address,
            uri=n["uri"],
            chain_id=n["chain_id"],
            nonce=n["nonce"],
            issued_at=now,
            expiration_time=now + timedelta(minutes=5),
        )
        verified = self.http.post(
            "/v1/auth/verify",
            json={
                "message": message.to_text(),
                "signature": sign_message(message, self.account.key),
                "roles": ["requester"],
            },
        )
        if verified.status_code != 200:
            raise MarketRequestFailed(verified.status_code, verified.text[:300])
        self.token = str(verified.json()["access_token"])
        return self.token


def _account(settings: Settings, key_file: Path | None) -> LocalAccount:
    if key_file is not None:
        key = key_file.read_text().strip()
    elif settings.private_key is not None:
        key = settings.private_key.get_secret_value()
    else:
        raise ConfigError("no requester key: set GLOBAI_PRIVATE_KEY or pass --key-file")
    try:
        return Account.from_key(key)
    except ValueError as exc:
        raise ConfigError("the requester key is not a valid hex private key") from exc


def _client(market: str | None, key_file: Path | None) -> tuple[Settings, MarketClient]:
    settings = Settings()
    return settings, MarketClient(market or settings.market_url, _account(settings, key_file))


def _echo(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


@app.command()
def post(
    spec_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON job spec (inference/training).")],
    price: str = typer.Option(..., "--price", help="Price per unit in GLB wei."),
    budget: str = typer.Option(None, "--budget", help="GLB wei to escrow (default: price x units)."),
    hours: float = typer.Option(24.0, "--hours", help="Deadline, hours from now."),
    replicas: int = typer.Option(1, "--replicas"),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Create a job; prints the job and the escrow parameters to fund it with."""
    from market.services.job_specs import InferenceSpec, TrainingSpec

    spec = json.loads(spec_file.read_text())
    model = TrainingSpec if spec.get("kind") == "training" else InferenceSpec
    units = model.model_validate(spec).units()
    _, client = _client(market, key_file)
    deadline = datetime.now(UTC) + timedelta(hours=hours)
    body = {
        "spec": spec,
        "price_per_unit": price,
        "budget": budget or str(int(price) * units),
        "deadline": deadline.isoformat(),
        "replicas": replicas,
    }
    _echo(client.request("POST", "/v1/jobs", json=body))


@app.command()
def fund(
    job_id: str = typer.Argument(...),
    market: str = MarketOpt,
    key_file: Path = KeyOpt,
) -> None:
    """Fund a job on chain (permit + fundJobWithPermit in one transaction), then confirm it with the market."""
    from market.chain.client import ChainClient
    from market.chain.permit import sign_glb_permit

    settings, client = _client(market, key_file)
    escrow = client.request("GET", f"/v1/jobs/{job_id}/escrow")
    if not escrow.get("escrow_address"):
        raise ConfigError("the market has no escrow configured")
    chain = ChainClient(settings.rpc_url)
    if chain.check() != escrow["chain_id"]:
        raise ConfigError(f"GLOBAI_RPC_URL is chain {chain.chain_id}, the market's escrow is on {escrow['chain_id']}")
    contract = chain.contract("JobEscrow", escrow["escrow_address"])
    token = str(chain.call(contract.functions.token()))
    amount = int(escrow["amount"])
    permit = sign_glb_permit(
        chain, client.account, token=token, spender=contract.address, value=amount, deadline=int(escrow["deadline"])
    )
    receipt = chain.transact(
        contract.functions.fundJobWithPermit(
            bytes.fromhex(escrow["job_id"][2:]),
            amount,
            bytes.fromhex(escrow["spec_hash"][2:]),
            int(escrow["deadline"]),
            permit.deadline,
            permit.v,
            permit.r,
            permit.s,
        ),
        client.account,
    )
    typer.echo(f"funded in tx {receipt['transactionHash'].hex()} (block {receipt['blockNumber']})", err=True)
    _echo(client.request("POST", f"/v1/jobs/{job_id}/confirm-funding"))


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
        typer.echo(f"slashed: {s['worker']} {s['amount']} wei ({s['status']})")
    if data.get("settlement"):
        st = data["settlement"]
        typer.echo(f"settled: paid {st['paid']} fee {st['fee']} refunded {st['refunded']} (wei), "
                   f"root {st['report_root']}")


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
def cancel(job_id: str = typer.Argument(...), market: str = MarketOpt, key_file: Path = KeyOpt) -> None:
    """Cancel a job; a funded job is refunded by the settlement process."""
    _, client = _client(market, key_file)
    _echo(client.request("POST", f"/v1/jobs/{job_id}/cancel"))


# `globai job train post|watch|download`: DiLoCo training jobs (market/commands/job_train.py).
from market.commands.job_train import app as _train_app  # noqa: E402

app.add_typer(_train_app, name="train")

"""Client side of the market's sign-in: nonce -> signed EIP-4361 message -> bearer token.

Used by the worker daemon and the requester CLI (so it must not import fastapi or `market.api`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from eth_account.signers.local import LocalAccount

from market.errors import GlobaiError
from market.protocol.siwe import build_message, sign_message


class MarketError(GlobaiError):
    """The market answered with an error (status and detail kept for the caller)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"market answered {status}: {detail}")
        self.status = status
        self.detail = detail


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            detail = str(response.json().get("detail", response.text))
        except ValueError:
            detail = response.text
        raise MarketError(response.status_code, detail[:300])
    return response


def sign_in(http: httpx.Client, account: LocalAccount, roles: list[str]) -> str:
    """A bearer token for `account` with `roles` from the market `http` points at."""
    nonce = check(http.post("/v1/auth/nonce", json={"address": account.address})).json()
    now = datetime.now(UTC)
    message = build_message(
        domain=nonce["domain"], address=account.address, uri=nonce["uri"], chain_id=nonce["chain_id"],
        nonce=nonce["nonce"], issued_at=now, expiration_time=now + timedelta(minutes=5),
    )
    body = {"message": message.to_text(), "signature": sign_message(message, account.key), "roles": roles}
    return str(check(http.post("/v1/auth/verify", json=body)).json()["access_token"])

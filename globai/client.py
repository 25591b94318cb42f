"""The market's client side: sign-in (nonce -> signed EIP-4361 message -> bearer token) and a signed-in session.

One sign-in for every caller: the worker daemon, the training worker, the requester CLI, the demo and the tests
(so it must not import fastapi or anything from `market`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from globai.errors import GlobaiError

if TYPE_CHECKING:  # eth-account loads only when someone signs in (the CLI's --help stays fast)
    from eth_account.signers.local import LocalAccount

T = TypeVar("T")


class MarketError(GlobaiError):
    """The market answered with an error (status and detail kept for the caller; status 0: unreachable)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"market answered {status}: {detail}")
        self.status = status
        self.detail = detail


def error_detail(response: httpx.Response) -> str:
    """The market's error as one line: FastAPI's 422 list becomes `field: problem; field: problem`."""
    try:
        detail: Any = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        detail = response.text
    if isinstance(detail, list):
        parts = []
        for err in detail[:6]:
            if isinstance(err, dict):
                loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
                parts.append(f"{loc}: {err.get('msg', 'invalid')}")
            else:
                parts.append(str(err))
        detail = "; ".join(parts) + (f"; and {len(detail) - 6} more" if len(detail) > 6 else "")
    text = " ".join(str(detail).split())
    return text if len(text) <= 400 else text[:399] + "…"


def check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise MarketError(response.status_code, error_detail(response))
    return response


def sign_in(http: httpx.Client, account: LocalAccount, roles: Sequence[str]) -> str:
    """A bearer token for `account` with `roles` from the market `http` points at."""
    from globai.protocol.siwe import build_message, sign_message

    nonce = check(http.post("/v1/auth/nonce", json={"address": account.address})).json()
    now = datetime.now(UTC)
    message = build_message(
        domain=nonce["domain"],
        address=account.address,
        uri=nonce["uri"],
        chain_id=nonce["chain_id"],
        nonce=nonce["nonce"],
        issued_at=now,
        expiration_time=now + timedelta(minutes=5),
    )
    body = {"message": message.to_text(), "signature": sign_message(message, account.key), "roles": list(roles)}
    return str(check(http.post("/v1/auth/verify", json=body)).json()["access_token"])


class MarketClient:
    """A signed-in HTTP session with the market (signs in on first use, then reuses the token)."""

    def __init__(
        self, base_url: str, account: LocalAccount, *, roles: Sequence[str] = ("requester",), timeout: float = 30.0
    ) -> None:
        self.account = account
        self.roles = tuple(roles)
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.token: str | None = None

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """A signed-in JSON request; 204 gives None."""
        response = self.raw(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A signed-in request whose response body is left to the caller (binary downloads, uploads)."""
        headers = {"Authorization": f"Bearer {self.sign_in()}", **kwargs.pop("headers", {})}
        return check(self._unreachable_as_error(lambda: self.http.request(method, path, headers=headers, **kwargs)))

    def sign_in(self) -> str:
        if self.token is None:
            self.token = self._unreachable_as_error(
                lambda: sign_in(self.http, self.account, self.roles),
                hint=": is the market running? (`globai dev status`)",
            )
        return self.token

    def _unreachable_as_error(self, call: Callable[[], T], *, hint: str = "") -> T:
        try:
            return call()
        except httpx.HTTPError as exc:
            raise MarketError(0, f"{self.http.base_url} unreachable ({exc.__class__.__name__}){hint}") from exc

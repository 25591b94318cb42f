"""Sign-in with Ethereum: happy path, and every way a message or token must be refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from eth_account import Account

from globai.protocol.siwe import build_message, sign_message
from tests.market.conftest import ADMIN, Market


def _message(market: Market, account, **changes):  # type: ignore[no-untyped-def]
    n = market.client.post("/v1/auth/nonce", json={"address": account.address}).json()
    fields = {
        "domain": n["domain"],
        "address": account.address,
        "uri": n["uri"],
        "chain_id": n["chain_id"],
        "nonce": n["nonce"],
        "issued_at": market.clock.now,
        "expiration_time": market.clock.now + timedelta(minutes=5),
    }
    fields.update(changes)
    return build_message(**fields)


def _verify(market: Market, message, signer, roles=None):  # type: ignore[no-untyped-def]
    body = {"message": message.to_text(), "signature": sign_message(message, signer.key)}
    if roles is not None:
        body["roles"] = roles
    return market.client.post("/v1/auth/verify", json=body)


def test_sign_in_returns_bound_token(market: Market) -> None:
    account = Account.create()
    r = _verify(market, _message(market, account), account)
    assert r.status_code == 200, r.text
    token = r.json()
    assert token["address"] == account.address
    assert set(token["roles"]) == {"requester", "worker"}
    me = market.client.get("/v1/auth/me", headers={"Authorization": f"Bearer {token['access_token']}"})
    assert me.status_code == 200 and me.json()["address"] == account.address


def test_nonce_is_single_use(market: Market) -> None:
    account = Account.create()
    message = _message(market, account)
    assert _verify(market, message, account).status_code == 200
    replay = _verify(market, message, account)
    assert replay.status_code == 401 and "nonce" in replay.json()["detail"]


def test_rejects_wrong_domain_chain_signer_and_times(market: Market) -> None:
    account, other = Account.create(), Account.create()
    now = market.clock.now
    cases = {
        "domain": _message(market, account, domain="evil.example"),
        "chain": _message(market, account, chain_id=1),
        "expired": _message(
            market, account, issued_at=now - timedelta(minutes=10), expiration_time=now - timedelta(seconds=1)
        ),
        "future": _message(
            market, account, issued_at=now + timedelta(minutes=5), expiration_time=now + timedelta(minutes=8)
        ),
        "too long": _message(market, account, expiration_time=now + timedelta(days=1)),
    }
    for name, message in cases.items():
        r = _verify(market, message, account)
        assert r.status_code == 401, (name, r.text)
    # signed by someone else
    assert _verify(market, _message(market, account), other).status_code == 401
    # a nonce issued for another address
    theirs = _message(market, other)
    assert _verify(market, replace(theirs, address=account.address), account).status_code == 401


def test_nonce_expires(market: Market) -> None:
    account = Account.create()
    message = _message(market, account)
    market.clock.advance(market.settings.nonce_ttl_s + 1)
    message = replace(message, issued_at=market.clock.now, expiration_time=market.clock.now + timedelta(minutes=1))
    assert _verify(market, message, account).status_code == 401


def test_token_expiry_and_tampering(market: Market) -> None:
    account = Account.create()
    headers = market.login(account)
    token = headers["Authorization"].removeprefix("Bearer ")
    head, payload, mac = token.split(".")
    forged = {"Authorization": f"Bearer {head}.{payload}x.{mac}"}
    assert market.client.get("/v1/auth/me", headers=forged).status_code == 401
    assert market.client.get("/v1/auth/me").status_code == 401
    market.clock.advance(market.settings.token_ttl_s + 1)
    assert market.client.get("/v1/auth/me", headers=headers).status_code == 401


def test_roles(market: Market) -> None:
    account = Account.create()
    assert _verify(market, _message(market, account), account, roles=["admin"]).status_code == 403
    r = _verify(market, _message(market, ADMIN), ADMIN, roles=["admin", "auditor"])
    assert r.status_code == 200 and set(r.json()["roles"]) == {"admin", "auditor"}
    # the auditor role is configured: a random address can't take it (it reads every job's prompts)
    assert _verify(market, _message(market, account), account, roles=["auditor"]).status_code == 403
    auditor = market.login(ADMIN, roles=["auditor"])
    # an auditor-only token cannot act as a worker
    assert (
        market.client.post(
            "/v1/tasks/claim",
            headers=auditor,
            json={
                "kinds": ["train"],
                "models": ["m"],
                "layer_ranges": [{"start": 0, "end": 1}],
                "memory_bytes": 1,
            },
        ).status_code
        == 403
    )


def test_expired_nonces_are_purged(market: Market) -> None:
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from market.db import AuthNonce

    for _ in range(3):
        market.client.post("/v1/auth/nonce", json={"address": Account.create().address})
    market.clock.advance(market.settings.nonce_ttl_s + 1)
    market.client.post("/v1/auth/nonce", json={"address": Account.create().address})
    with Session(market.engine) as s:
        assert s.scalar(select(func.count()).select_from(AuthNonce)) == 1


def test_worker_socket_takes_its_token_only_from_the_header(market: Market) -> None:
    from starlette.websockets import WebSocketDisconnect

    headers = market.login(Account.create(), roles=["worker"])
    token = headers["Authorization"].removeprefix("Bearer ")
    with pytest.raises(WebSocketDisconnect) as refused:
        with market.client.websocket_connect(f"/v1/workers/ws?token={token}") as ws:
            ws.receive_bytes()
    assert refused.value.code == 4401

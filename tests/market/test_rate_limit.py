"""Rate limits per IP as well as per address: several addresses from one IP cannot multiply their bursts;
anonymous requests and worker-socket handshakes are limited by IP."""

from __future__ import annotations

import time

import pytest
from eth_account import Account
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from market.api import create_app
from market.api.middleware import RateLimit
from market.services.auth import Principal, encode_token
from tests.market.conftest import TEST_SECRET, make_settings


def _headers(address: str) -> dict[str, str]:
    p = Principal(address=address, roles=frozenset({"requester"}), expires_at=int(time.time()) + 600)
    return {"Authorization": "Bearer " + encode_token(p, secret=TEST_SECRET.encode())}


def test_addresses_from_one_ip_share_its_bucket(db_engine, db_url) -> None:  # type: ignore[no-untyped-def]
    burst = 2
    app = create_app(
        make_settings(db_url, rate_limit_per_s=0.001, rate_limit_burst=burst), engine=db_engine, chain=None
    )
    with TestClient(app) as client:
        codes = []
        for _ in range(RateLimit.IP_FACTOR):  # each address uses its whole burst
            h = _headers(Account.create().address)
            codes += [client.get("/v1/auth/me", headers=h).status_code for _ in range(burst)]
        assert 429 not in codes and len(codes) == burst * RateLimit.IP_FACTOR
        fresh = _headers(Account.create().address)  # its own bucket is full, the IP's is empty
        assert client.get("/v1/auth/me", headers=fresh).status_code == 429
        # Anonymous requests have their own per-IP bucket.
        assert [client.get("/v1/models").status_code for _ in range(burst + 1)][-1] == 429
        # So do worker-socket handshakes: refused before the upgrade.
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/v1/workers/ws"):
            pass
        assert refused.value.code == 1008


def test_shared_buckets_span_processes(db_engine, db_url, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    """With GLOBAI_RATE_LIMIT_SHARED two API processes (two apps here) draw from one budget in Redis."""
    import uuid

    settings = make_settings(
        db_url, rate_limit_per_s=0.001, rate_limit_burst=3, rate_limit_shared=True, redis_url=redis_url
    )
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    one = create_app(settings, engine=db_engine, chain=None)
    two = create_app(settings, engine=db_engine, chain=None)
    with TestClient(one, client=(ip, 1)) as a, TestClient(two, client=(ip, 2)) as b:
        codes = [a.get("/v1/models").status_code, b.get("/v1/models").status_code, a.get("/v1/models").status_code]
        assert 429 not in codes
        assert b.get("/v1/models").status_code == 429  # the 4th request overall, from the other "process"

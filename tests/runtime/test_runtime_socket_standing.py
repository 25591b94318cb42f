"""A live worker socket lasts no longer than its token and its stake (issue 14, deliver 6).

A real uvicorn market (SQLite, the session Anvil), a worker socket opened by hand: it is closed with 4401 when the
token that opened it expires, and its link is dropped within a second of the indexer seeing the worker's stake
leave (`requestUnstake`), and the socket closed (4403), with no new route needed to notice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from globai.chain.web3_market import Web3ChainView
from globai.client import sign_in
from globai.models.manifest import load_manifest
from globai.protocol.pipeline import WS_PATH
from globai.protocol.tensors import decode_message, encode_message
from market.db.engine import make_engine, make_session_factory
from market.indexer import index_chain
from tests.runtime.conftest import MODEL, MarketServer, _stake, serve_market

TOKEN_TTL_S = 10  # the smallest the settings allow


@pytest.fixture(scope="module")
def short_tokens(
    tiny_model: Path, deployment: Any, anvil: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MarketServer]:
    yield from serve_market(
        tiny_model.parent, deployment, anvil, tmp_path_factory, token_ttl_s=TOKEN_TTL_S, join_challenge=False
    )


def _open_socket(market: MarketServer, account: LocalAccount, digest: str) -> ClientConnection:
    with httpx.Client(base_url=market.url) as http:
        token = sign_in(http, account, ["worker"])
        http.headers["Authorization"] = f"Bearer {token}"
        http.post(
            "/v1/workers",
            json={
                "device": "cpu:test",
                "memory_bytes": 1 << 30,
                "throughput_tokens_s": 1.0,
                "bandwidth_bytes_s": 1.0,
                "latency_ms": 1.0,
                "reference_layer": "x",
                "operator_id": account.address.lower(),
            },
        ).raise_for_status()
    url = market.url.replace("http://", "ws://") + WS_PATH
    ws = connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None)
    hello = {"op": "hello", "model": MODEL, "digest": digest, "layer_start": 0, "layer_end": 1, "max_batch": 1}
    ws.send(encode_message({**hello, "max_tokens": 16}))
    assert decode_message(ws.recv(), max_bytes=0).header["op"] == "welcome"
    return ws


def _closed_code(ws: ClientConnection, timeout: float) -> int | None:
    """The close code the market sent within `timeout` s (None: still open)."""
    try:
        while True:
            ws.recv(timeout=timeout)
    except TimeoutError:
        return None
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


def _links(market: MarketServer, address: str) -> int:
    return sum(1 for link in market.coordinator.links.live(MODEL) if link.address == address)


def test_socket_closes_when_its_token_expires_and_when_its_stake_leaves(
    short_tokens: MarketServer, anvil: Any, deployment: Any, tiny_model: Path
) -> None:
    market, digest = short_tokens, load_manifest(tiny_model).digest()
    expiring, leaving = (Account.from_key(bytes([0x70 + i]) * 32) for i in range(2))
    for account in (expiring, leaving):
        _stake(anvil, deployment, account)

    opened = time.monotonic()
    ws = _open_socket(market, expiring, digest)
    assert _links(market, expiring.address) == 1
    assert _closed_code(ws, TOKEN_TTL_S - 3) is None  # alive while the token is
    assert _closed_code(ws, 6) == 4401  # closed at expiry (the token was signed just before `opened`)
    assert time.monotonic() - opened < TOKEN_TTL_S + 4
    assert _links(market, expiring.address) == 0

    ws = _open_socket(market, leaving, digest)
    contracts = deployment.bind(anvil.client)
    minimum = int(anvil.client.call(contracts.vault.functions.minStake()))
    anvil.client.transact(contracts.vault.functions.requestUnstake(minimum), leaving)
    engine = make_engine(market.settings.database_url)
    try:
        view = Web3ChainView(anvil.client, staking_address=deployment.vault, escrow_address=deployment.escrow)
        with make_session_factory(engine)() as session:
            index_chain(session, view, start_block=deployment.first_block)  # what the Celery beat's indexer does
    finally:
        engine.dispose()
    deadline = time.monotonic() + 5  # the standing watcher runs every second
    while _links(market, leaving.address) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _links(market, leaving.address) == 0
    assert _closed_code(ws, 2) == 4403  # and the socket itself is closed

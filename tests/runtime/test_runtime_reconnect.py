"""Workers reconnect on their own: after the socket drops, and after the market restarts (new secret too)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import SecretStr

from globai.models.reference import generate_reference
from tests.runtime.conftest import MODEL, InProcessWorker, MarketServer, Requester


def _wait(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def _check_exact(market: MarketServer, tiny_model: Path, seed: int) -> None:
    requester = Requester(market, Account.from_key(b"\x78" * 32))
    prompt = torch.randint(3, 500, (2, 6), generator=torch.Generator().manual_seed(seed))
    done = requester.generate(prompt.tolist(), 8)
    assert done["tokens"] == generate_reference(tiny_model, prompt, 8).tolist()
    requester.http.close()


def test_workers_reconnect_after_socket_drop_and_market_restart(
    market: MarketServer, staked: list[LocalAccount], tiny_model: Path, tmp_path: Path
) -> None:
    workers = [
        InProcessWorker.start(market, staked[i], layers, tmp_path / f"w{i}") for i, layers in enumerate(["0:2", "2:4"])
    ]
    try:
        market.wait_workers(2)
        _check_exact(market, tiny_model, 1)

        # 1. The TCP connection of one worker dies abruptly (no close handshake).
        victim = workers[1]
        ws = victim.daemon.ws
        assert ws is not None and victim.loop is not None
        victim.loop.call_soon_threadsafe(ws.transport.abort)
        _wait(lambda: victim.daemon.state.connects >= 2)
        market.wait_workers(2)
        _check_exact(market, tiny_model, 2)

        # 2. The market restarts (same port, same database) with a new auth secret: old tokens are refused,
        #    workers sign in again and reconnect by themselves.
        before = [w.daemon.state.connects for w in workers]
        market.stop()
        market.settings = market.settings.model_copy(
            update={"auth_secret": SecretStr("rotated-secret-" + "fedcba9876543210" * 2)}
        )
        time.sleep(0.5)  # workers see the market gone and back off
        market.start()
        _wait(lambda: all(w.daemon.state.connects > b for w, b in zip(workers, before, strict=True)))
        market.wait_workers(2)
        assert [lnk.model for lnk in market.coordinator.links.live()] == [MODEL, MODEL]
        _check_exact(market, tiny_model, 3)
    finally:
        for w in workers:
            w.stop()

"""Isolation: a slash decided elsewhere (the Celery verifier writes it to the database) reaches the coordinator's
live link of that worker at once - its reputation drops without a reconnect - and a ban closes its link, keeps it
out of routes and replicas, and refuses its reconnects. Real market (uvicorn), real worker daemons."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from eth_account.signers.local import LocalAccount
from sqlalchemy import select

from market.db import Worker
from market.db.engine import make_engine, make_session_factory
from market.services.workers import record_outcome
from tests.runtime.conftest import InProcessWorker, MarketServer


def _until(what: Callable[[], bool], timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not what():
        assert time.monotonic() - start < timeout, "not within the time bound"
        time.sleep(0.05)
    return time.monotonic() - start


def test_slash_and_ban_reach_live_links_at_once(
    market: MarketServer, staked: list[LocalAccount], tmp_path: Path
) -> None:
    cheat, other = staked[0], staked[1]
    workers = [InProcessWorker.start(market, a, "0:4", tmp_path / f"c{i}") for i, a in enumerate((cheat, other))]
    coordinator = market.coordinator
    engine = make_engine(market.settings.database_url)
    sessions = make_session_factory(engine)

    def link_of(address: str):  # type: ignore[no-untyped-def]
        return next((lnk for lnk in coordinator.links.live() if lnk.address == address), None)

    try:
        market.wait_workers(2, timeout=120)
        before = link_of(cheat.address).reputation.mean
        with sessions() as s:  # what decide_job does in the verifier process
            w = s.scalar(select(Worker).where(Worker.address == cheat.address))
            record_outcome(s, worker_id=w.id, kind="slash", now=datetime.now(UTC), detail="guilty")
            w.last_slash_at = datetime.now(UTC)
            s.commit()
        took = _until(lambda: link_of(cheat.address).reputation.mean < before / 2)
        assert link_of(cheat.address).reputation.mean < before / 2, took
        with sessions() as s:  # repeated guilt: banned
            w = s.scalar(select(Worker).where(Worker.address == cheat.address))
            w.status, w.eligible = "banned", False
            s.commit()
        _until(lambda: link_of(cheat.address) is None)
        time.sleep(1.5)  # its daemon keeps trying to reconnect: every hello is refused
        assert link_of(cheat.address) is None and link_of(other.address) is not None
        served = coordinator.catalog.all()[0]
        route = coordinator.plan(served)
        assert {lnk.address for lnk, _ in route} == {other.address}
        assert all(sb.address != cheat.address for _, standbys in route for sb in standbys)
    finally:
        for w in workers:
            w.stop()
        engine.dispose()

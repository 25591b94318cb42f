"""The join challenge (Deliver 5 of issue 13): a new link is timed and checked before it is ever routed.

Real market (uvicorn, SQLite, Anvil stake) and in-process worker daemons over real sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from eth_account.signers.local import LocalAccount
from sqlalchemy import select

from market.db import ReputationEvent, Worker
from market.db.engine import make_engine, make_session_factory
from tests.runtime.conftest import MODEL, InProcessWorker, MarketServer, Requester
from worker.runtime.cheats import apply_cheat
from worker.runtime.daemon import WorkerDaemon

SLEEP_S = 0.15  # the lying worker's extra time per forward call


def _until(what: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "not within the time bound"
        time.sleep(0.05)
    return value


def _overclaims_and_sleeps(daemon: WorkerDaemon) -> None:
    """Registers as an H100 at 1e9 tokens/s and 0.1 ms latency, then computes at CPU speed plus a sleep."""
    hw = daemon.state.hardware
    assert hw is not None and daemon.server is not None
    daemon._register(
        {
            "device": "H100",
            "memory_bytes": hw.memory_bytes,
            "throughput_tokens_s": 1e9,
            "bandwidth_bytes_s": 1e12,
            "latency_ms": 0.1,
            "reference_layer": hw.reference_layer,
            "operator_id": daemon.config.account.address.lower(),
            "models": [MODEL],
        }
    )
    stage = daemon.server.stage
    honest = stage.forward

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        time.sleep(SLEEP_S)
        return honest(*args, **kwargs)

    stage.forward = forward  # type: ignore[method-assign]
    daemon.server.merge_steps = False  # its steps go through the wrapped forward


def _challenge_fails(market: MarketServer, address: str) -> list[str]:
    engine = make_engine(market.settings.database_url)
    try:
        with make_session_factory(engine)() as s:
            rows = s.scalars(
                select(ReputationEvent.detail)
                .join(Worker, Worker.id == ReputationEvent.worker_id)
                .where(Worker.address == address, ReputationEvent.kind == "fail")
            ).all()
            return [d for d in rows if "join challenge" in d]
    finally:
        engine.dispose()


def _link(market: MarketServer, address: str) -> Any:
    return next((lnk for lnk in market.coordinator.links.live(MODEL) if lnk.address == address), None)


def test_a_worker_that_overclaims_its_speed_is_routed_as_measured_from_its_first_route(
    market: MarketServer, staked: list[LocalAccount], requester: Requester, tmp_path: Path
) -> None:
    liar, honest = staked[0], staked[1]
    workers = [
        InProcessWorker.start(market, liar, "0:4", tmp_path / "liar", setup=_overclaims_and_sleeps),
        InProcessWorker.start(market, honest, "0:4", tmp_path / "honest"),
    ]
    try:
        market.wait_workers(2, timeout=120)
        lied, fair = _link(market, liar.address), _link(market, honest.address)
        # Declared 1e9 tokens/s; measured by its join challenge (before any route) at CPU speed plus its sleep.
        assert lied.throughput_tokens_s == 1e9
        assert lied.calls == 1 + 3 + 1 and lied.observed_tokens_s is not None  # open, prefill + 2 decodes, close
        assert lied.effective_tokens_s < 4 * 1000 * 64 / (SLEEP_S * 1000)
        assert lied.effective_tokens_s < fair.effective_tokens_s
        served = market.coordinator.catalog.get(MODEL)
        # The very first routes, before any real work was timed: the liar is never the one doing the work.
        for _ in range(5):
            route = market.coordinator.plan(served)
            assert [lnk.address for lnk, _ in route] == [honest.address]
        done = requester.generate([[5, 6, 7, 8]], max_new_tokens=4)
        assert [h["worker"] for h in done["events"][0]["route"]] == [honest.address]
        assert not _challenge_fails(market, liar.address)  # slow is not wrong: its answer was right
    finally:
        for w in workers:
            w.stop()


def test_a_worker_that_answers_the_challenge_wrongly_is_never_routed(
    market: MarketServer, staked: list[LocalAccount], requester: Requester, tmp_path: Path
) -> None:
    cheat, honest = staked[2], staked[3]
    workers = [
        InProcessWorker.start(market, honest, "0:4", tmp_path / "honest"),
        InProcessWorker.start(
            market, cheat, "0:4", tmp_path / "cheat", setup=lambda d: apply_cheat(d.server, "noise:0")
        ),
    ]
    try:
        market.wait_workers(1, timeout=120)
        # Checked against the market's own run of the (tiny) model: a failed check on its record, no link.
        fails = _until(lambda: _challenge_fails(market, cheat.address))
        assert "the market's reference" in fails[0]
        assert _link(market, cheat.address) is None
        for _ in range(3):
            done = requester.generate([[9, 10, 11]], max_new_tokens=3)
            assert [h["worker"] for h in done["events"][0]["route"]] == [honest.address]
            assert _link(market, cheat.address) is None
        assert workers[1].daemon.state.connected  # its socket stays up, unrouted (no reconnect to retry it)
    finally:
        for w in workers:
            w.stop()


def test_without_a_reference_the_challenge_is_checked_against_replicas(
    market: MarketServer, staked: list[LocalAccount], tmp_path: Path
) -> None:
    references = market.coordinator.references
    references.max_bytes = 0  # as for a model too big for the market to run itself
    a, b, cheat = staked[4], staked[5], staked[0]
    workers: list[InProcessWorker] = []
    try:
        workers.append(InProcessWorker.start(market, a, "0:2", tmp_path / "a"))
        market.wait_workers(1, timeout=120)  # alone: admitted on its timed answer
        workers.append(InProcessWorker.start(market, b, "0:2", tmp_path / "b"))
        market.wait_workers(2, timeout=120)  # agrees with a
        workers.append(
            InProcessWorker.start(
                market, cheat, "0:2", tmp_path / "cheat", setup=lambda d: apply_cheat(d.server, "noise:0")
            )
        )
        fails = _until(lambda: _challenge_fails(market, cheat.address))
        assert "replicas" in fails[0] and a.address in fails[0] and b.address in fails[0]
        assert _link(market, cheat.address) is None
        assert {lnk.address for lnk in market.coordinator.links.live(MODEL)} == {a.address, b.address}
    finally:
        references.max_bytes = 64 << 20
        for w in workers:
            w.stop()


def test_one_disagreeing_incumbent_does_not_keep_an_honest_newcomer_out(
    market: MarketServer, staked: list[LocalAccount], tmp_path: Path
) -> None:
    references = market.coordinator.references
    references.max_bytes = 0  # no reference: replicas are the only second opinion
    cheat, newcomer = staked[1], staked[3]
    failed_before = len(_challenge_fails(market, newcomer.address))
    workers: list[InProcessWorker] = []
    try:
        # The incumbent is alone on [0, 2) (admitted on its timed answer) and answers every challenge wrongly.
        workers.append(
            InProcessWorker.start(
                market, cheat, "0:2", tmp_path / "cheat", setup=lambda d: apply_cheat(d.server, "noise:0")
            )
        )
        market.wait_workers(1, timeout=120)
        workers.append(InProcessWorker.start(market, newcomer, "0:2", tmp_path / "newcomer"))
        market.wait_workers(2, timeout=120)  # one replica against it decides nothing: admitted
        assert _link(market, newcomer.address) is not None
        assert len(_challenge_fails(market, newcomer.address)) == failed_before
    finally:
        references.max_bytes = 64 << 20
        for w in workers:
            w.stop()


def test_patient_cheat_answers_the_first_session_after_each_connection_honestly() -> None:
    """The test cheater every story uses (`noise`, patient): every connection starts with a join challenge, so it
    is honest in the first session after each hello, also after a reconnection (a market process it was on died:
    the next one challenges it again), and cheats in every other session, each keeping what it was first given."""

    class Stage:
        def forward(self, session: str, inputs: torch.Tensor) -> torch.Tensor:
            return inputs.clone()

    class Server:
        merge_steps = True
        stage = Stage()

        def hello(self) -> bytes:
            return b"hello"

    server = Server()
    apply_cheat(server, "noise")
    x = torch.ones(1, 2, 4)

    def honest(session: str) -> bool:
        return torch.equal(server.stage.forward(session, x), x)

    assert server.hello() == b"hello"
    assert honest("challenge-1") and not honest("job") and not honest("replay")
    server.hello()  # reconnected to another market process
    assert honest("challenge-2") and not honest("job-resumed")
    assert not honest("job") and honest("challenge-1")  # decided when first seen

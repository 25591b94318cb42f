"""Scheduling policy: capability, reputation, scoring and choice, replicas, priority, capacity reservation."""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from market.scheduler.capability import Capability, Requirement, covers, is_capable, merge_ranges
from market.scheduler.priority import LongJobDemand, QueuedWork, WorkerCapacity, order_queue, reserve_capacity
from market.scheduler.reputation import Outcome, ReputationParams, reputation
from market.scheduler.scoring import Candidate, ChoiceParams, choose, choose_replicas, score

NOW = datetime(2026, 11, 22, tzinfo=UTC)
DAY = timedelta(days=1)


def _cap(memory: int = 16 << 30, ranges: tuple[tuple[int, int], ...] = ((0, 8),)) -> Capability:
    return Capability(frozenset({"train"}), frozenset({"m"}), ranges, memory)


def test_capability() -> None:
    need = Requirement("train", "m", 2, 6, 8 << 30, min_stake=10)
    assert is_capable(_cap(), need, stake=10)
    assert not is_capable(_cap(), need, stake=9)
    assert not is_capable(_cap(memory=4 << 30), need, stake=10)
    assert not is_capable(_cap(ranges=((0, 4), (4, 8))), need, stake=10)  # split ranges don't cover a stage
    assert is_capable(_cap(ranges=merge_ranges([(4, 8), (0, 4)])), need, stake=10)
    assert not is_capable(_cap(), Requirement("forward", "m", 0, 1, 0), stake=10)
    assert covers([(0, 8)], 0, 8) and not covers([(1, 8)], 0, 8)


def test_reputation_posterior_decay_and_slash() -> None:
    params = ReputationParams(half_life_s=10 * 86_400)
    fresh = reputation([], now=NOW, params=params)
    assert fresh.mean == 0.5 and fresh.evidence == 0
    good = [Outcome("pass", NOW - i * timedelta(hours=1)) for i in range(50)]
    rep = reputation(good, now=NOW, params=params)
    assert rep.mean > 0.95 and rep.std < fresh.std
    # the same record 10 half-lives ago carries ~1/1024 of the weight
    old = reputation([Outcome(o.kind, o.at - 100 * DAY) for o in good], now=NOW, params=params)
    assert old.evidence < rep.evidence / 500 and abs(old.mean - 0.5) < 0.05
    slashed = reputation([*good, Outcome("slash", NOW - timedelta(minutes=1))], now=NOW, params=params)
    assert slashed.mean < 0.1  # history before the slash is gone
    recovered = reputation(
        [*good, Outcome("slash", NOW - 5 * DAY)] + [Outcome("pass", NOW - DAY) for _ in range(30)],
        now=NOW,
        params=params,
    )
    assert slashed.mean < recovered.mean < rep.mean


def _candidate(i: int, passes: int, *, operator: str | None = None, fails: int = 0) -> Candidate:
    outcomes = [Outcome("pass", NOW - timedelta(hours=1))] * passes + [Outcome("fail", NOW)] * fails
    return Candidate(f"w{i:03d}", operator or f"op{i}", reputation(outcomes, now=NOW), 1000.0, 20.0)


def test_score_orders_by_trust_speed_latency() -> None:
    base = _candidate(0, 50)
    assert score(base) > score(_candidate(1, 50, fails=20))
    slow = Candidate("s", "o", base.reputation, 10.0, 20.0)
    laggy = Candidate("l", "o", base.reputation, 1000.0, 2000.0)
    assert score(base) > score(slow) and score(base) > score(laggy)


def test_new_workers_are_not_starved() -> None:
    """Statistical: 30 established workers with long clean records vs 3 newcomers. Exploration must give the
    newcomers about `explore` of all picks (binomial bound, 5 sigma), each of them some, never zero."""
    params = ChoiceParams(explore=0.1, top_k=5)
    established = [_candidate(i, 200) for i in range(30)]
    newcomers = [_candidate(100 + i, 0) for i in range(3)]
    rng = random.Random(7)
    n = 6000
    picks = Counter(choose(established + newcomers, rng, params).worker_id for _ in range(n))  # type: ignore[union-attr]
    new_share = sum(picks[c.worker_id] for c in newcomers) / n
    p = params.explore
    assert new_share >= p - 5 * math.sqrt(p * (1 - p) / n)
    assert all(picks[c.worker_id] > n * p / 3 * 0.6 for c in newcomers)
    # without exploration they would indeed starve: that is what the exploration slot is for
    greedy = ChoiceParams(explore=0.0, top_k=5)
    assert all(
        choose(established + newcomers, rng, greedy).worker_id not in {c.worker_id for c in newcomers}  # type: ignore[union-attr]
        for _ in range(500)
    )


def test_weighted_choice_among_the_best() -> None:
    params = ChoiceParams(explore=0.0, top_k=3)
    pool = [_candidate(i, 100) for i in range(3)] + [_candidate(10 + i, 100, fails=100) for i in range(5)]
    rng = random.Random(1)
    picked = Counter(choose(pool, rng, params).worker_id for _ in range(3000))  # type: ignore[union-attr]
    assert set(picked) == {"w000", "w001", "w002"}  # never outside the top k
    assert min(picked.values()) > 800  # spread, not always the single best
    assert choose([], rng, params) is None


@settings(max_examples=200, deadline=None)
@given(
    operators=st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=20),
    n=st.integers(min_value=0, max_value=8),
    excluded=st.sets(st.integers(min_value=0, max_value=5), max_size=3),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_replicas_never_share_an_operator(operators: list[int], n: int, excluded: set[int], seed: int) -> None:
    pool = [_candidate(i, i % 7, operator=f"op{o}") for i, o in enumerate(operators)]
    chosen = choose_replicas(pool, n, random.Random(seed), exclude_operators={f"op{o}" for o in excluded})
    ops = [c.operator_id for c in chosen]
    assert len(ops) == len(set(ops))
    assert not set(ops) & {f"op{o}" for o in excluded}
    available = {f"op{o}" for o in operators} - {f"op{o}" for o in excluded}
    assert len(chosen) == min(n, len(available))


def test_priority_by_price_then_deadline() -> None:
    items = [
        QueuedWork("a", 5, NOW + DAY, NOW),
        QueuedWork("b", 9, NOW + 2 * DAY, NOW),
        QueuedWork("c", 5, NOW + timedelta(hours=1), NOW),
        QueuedWork("d", 5, NOW + timedelta(hours=1), NOW - timedelta(minutes=1)),
    ]
    assert [w.key for w in order_queue(items)] == ["b", "d", "c", "a"]


def test_capacity_reservation() -> None:
    workers = [WorkerCapacity(f"w{i}", f"op{i}", _cap(memory=(i + 1) << 30), stake=100) for i in range(10)]
    need = Requirement("train", "m", 0, 4, 3 << 30, min_stake=100)
    demands = [
        LongJobDemand("cheap", need, workers_wanted=10, price_per_unit=1, deadline=NOW + DAY),
        LongJobDemand("dear", need, workers_wanted=2, price_per_unit=9, deadline=NOW + DAY),
    ]
    reserved = reserve_capacity(workers, demands, max_fraction=0.5)
    assert len(reserved) == 5  # never more than half the fleet
    assert Counter(reserved.values()) == {"dear": 2, "cheap": 3}
    # the better-paying job reserves first and takes the smallest machines that fit (3 GiB and 4 GiB)
    assert sorted(w for w, j in reserved.items() if j == "dear") == ["w2", "w3"]
    assert all(int(w[1:]) >= 2 for w in reserved)  # machines under 3 GiB are never reserved for it
    assert reserve_capacity(workers, demands, max_fraction=0.0) == {}

"""Sampling policy: cheating never pays at the chosen rate, more history means fewer checks, the detection maths
matches simulation, and the sampler is deterministic given the seed but depends on the post-commit secret."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.verifier.sampling import (
    DEFAULT_ECONOMICS,
    DEFAULT_POLICY,
    Economics,
    Segment,
    TaskChunks,
    WorkerHistory,
    beacon_commitment,
    cheating_ev,
    chunk_draw,
    detection_probability,
    detection_rate,
    distrust,
    economic_rate,
    sample_segments,
    sampling_rate,
    sampling_seed,
)

econ_st = st.builds(
    Economics,
    cost=st.floats(0.0, 10.0),
    reward=st.floats(0.01, 10.0),
    slash=st.floats(0.0, 1000.0),
    collusion=st.floats(0.0, 0.9),
)
history_st = st.builds(WorkerHistory, verified=st.floats(0, 1e6), failed=st.floats(0, 100))


@settings(max_examples=300, deadline=None)
@given(econ_st, history_st, st.integers(1, 4096))
def test_cheating_has_negative_ev_whenever_it_can(econ: Economics, history: WorkerHistory, n: int) -> None:
    p = sampling_rate(econ, history, n)
    assert DEFAULT_POLICY.p_min <= p <= 1.0
    if economic_rate(econ) * DEFAULT_POLICY.safety <= 1.0 and econ.cost > 0:
        assert cheating_ev(p, econ) < 0  # the safety factor keeps it strictly negative
    elif economic_rate(econ) >= 1.0:
        assert p == 1.0  # no rate deters: check everything (and the market should raise the slash)


@settings(max_examples=200, deadline=None)
@given(econ_st, st.integers(1, 4096), st.floats(0, 1e5), st.floats(0, 1e5), st.floats(0, 50), st.floats(0, 50))
def test_monotone_in_history(econ: Economics, n: int, v1: float, v2: float, f1: float, f2: float) -> None:
    lo_v, hi_v = sorted((v1, v2))
    lo_f, hi_f = sorted((f1, f2))
    # More verified history never raises the rate; more failures never lower it.
    assert sampling_rate(econ, WorkerHistory(hi_v, lo_f), n) <= sampling_rate(econ, WorkerHistory(lo_v, lo_f), n)
    assert sampling_rate(econ, WorkerHistory(lo_v, hi_f), n) >= sampling_rate(econ, WorkerHistory(lo_v, lo_f), n)


def test_new_and_failed_workers_are_checked_much_more() -> None:
    n = 128
    new = sampling_rate(DEFAULT_ECONOMICS, WorkerHistory(), n)
    veteran = sampling_rate(DEFAULT_ECONOMICS, WorkerHistory(verified=10_000), n)
    failed = sampling_rate(DEFAULT_ECONOMICS, WorkerHistory(verified=10_000, failed=1), n)
    assert new >= 0.75 and veteran < 0.1 and failed > 2.5 * veteran
    assert distrust(WorkerHistory()) == 0.75


@pytest.mark.parametrize("n", [1, 8, 32, 100, 512, 4096])
@pytest.mark.parametrize("collusion", [0.0, 0.1, 0.3])
def test_default_target_caught_within_10_jobs(n: int, collusion: float) -> None:
    econ = Economics(cost=0.8, reward=1.0, slash=50.0, collusion=collusion)
    p = sampling_rate(econ, WorkerHistory(verified=1e9), n)  # the most trusted worker gets the lowest rate
    if detection_rate(n, collusion=collusion) == 1.0:
        assert p == 1.0  # out of reach (one cheated chunk in 10 jobs, colluding replicas): check everything
        return
    assert detection_probability(p, 0.10, n, 10, collusion) >= 0.999 - 1e-12
    assert p <= max(detection_rate(n, collusion=collusion), 2 * economic_rate(econ), 0.01) + 1e-6


@pytest.mark.parametrize("p, f, n, jobs", [(0.05, 0.1, 40, 10), (0.2, 0.25, 8, 3), (0.02, 0.5, 20, 5)])
def test_detection_probability_matches_monte_carlo(p: float, f: float, n: int, jobs: int) -> None:
    rng = random.Random(1234)
    trials = 4000
    cheated_per_job = round(f * n)
    caught = 0
    for _ in range(trials):
        # a cheated chunk is caught iff it is sampled (collusion 0)
        caught += any(rng.random() < p for _ in range(cheated_per_job * jobs))
    expected = detection_probability(p, f, n, jobs)
    sigma = (expected * (1 - expected) / trials) ** 0.5
    assert abs(caught / trials - expected) < 4 * sigma + 1e-3


def test_detection_probability_with_collusion_matches_monte_carlo() -> None:
    rng = random.Random(7)
    p, r, cheated, trials = 0.3, 0.4, 5, 4000
    caught = sum(any(rng.random() < p and rng.random() >= r for _ in range(cheated)) for _ in range(trials))
    expected = detection_probability(p, 1.0, cheated, 1, r)
    assert abs(caught / trials - expected) < 4 * (expected * (1 - expected) / trials) ** 0.5


SECRET = b"s" * 32
JOB = b"\x01" * 32
ROOTS = {b"\x0a" * 32: b"\xaa" * 32, b"\x0b" * 32: b"\xbb" * 32}


def _tasks(rate: float = 0.25) -> list[TaskChunks]:
    return [TaskChunks(task, stage, range(200), rate) for stage, task in enumerate(sorted(ROOTS))]


def test_sampler_is_deterministic_and_depends_on_secret_and_roots() -> None:
    beacon = beacon_commitment(SECRET)
    seed = sampling_seed(JOB, ROOTS, SECRET, beacon)
    assert sampling_seed(JOB, dict(reversed(list(ROOTS.items()))), SECRET, beacon) == seed  # order-free
    first = sample_segments(seed, _tasks())
    assert first == sample_segments(seed, _tasks()) and first == sorted(first)
    other_secret = b"t" * 32
    assert sample_segments(sampling_seed(JOB, ROOTS, other_secret, beacon_commitment(other_secret)), _tasks()) != first
    changed_root = {**ROOTS, b"\x0a" * 32: b"\xcc" * 32}
    assert sample_segments(sampling_seed(JOB, changed_root, SECRET, beacon), _tasks()) != first
    with pytest.raises(ValueError):
        sampling_seed(JOB, ROOTS, other_secret, beacon)  # a secret swapped after the fact is refused
    with pytest.raises(ValueError):
        beacon_commitment(b"short")


def test_sampled_fraction_matches_rate() -> None:
    seed = sampling_seed(JOB, ROOTS, SECRET, beacon_commitment(SECRET))
    tasks = [TaskChunks(b"\x0a" * 32, 0, range(20_000), 0.1)]
    k = len(sample_segments(seed, tasks))
    assert abs(k / 20_000 - 0.1) < 4 * (0.1 * 0.9 / 20_000) ** 0.5
    assert sample_segments(seed, [TaskChunks(b"\x0a" * 32, 0, range(50), 1.0)]) == [
        Segment(b"\x0a" * 32, 0, c) for c in range(50)
    ]
    assert sample_segments(seed, [TaskChunks(b"\x0a" * 32, 0, range(50), 0.0)]) == []
    assert 0.0 <= chunk_draw(seed, b"\x0a" * 32, 0, 0) < 1.0


def test_economics_validation() -> None:
    with pytest.raises(ValueError):
        Economics(cost=-1, reward=1, slash=1)
    with pytest.raises(ValueError):
        Economics(cost=1, reward=1, slash=1, collusion=1.0)
    with pytest.raises(ValueError):
        detection_probability(1.5, 0.1, 10, 10)

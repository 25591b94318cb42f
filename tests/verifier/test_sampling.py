"""Sampling policy: cheating never pays at the chosen rate, more history means fewer checks, the detection maths
matches simulation through the real sampler, a sampled sequence brings every chunk of it, and the sampler is
deterministic given the seed but depends on the post-commit secret."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.verifier.sampling import (
    DEFAULT_ECONOMICS,
    DEFAULT_POLICY,
    Economics,
    SamplingPolicy,
    Segment,
    TaskChunks,
    WorkerHistory,
    beacon_commitment,
    cheating_ev,
    chunks_per_sequence,
    detection_probability,
    detection_rate,
    distrust,
    economic_rate,
    sample_segments,
    sampling_rate,
    sampling_seed,
    sequence_draw,
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
@given(econ_st, history_st, st.integers(1, 64))
def test_cheating_has_negative_ev_whenever_it_can(econ: Economics, history: WorkerHistory, k: int) -> None:
    p = sampling_rate(econ, history, k)
    assert DEFAULT_POLICY.p_min <= p <= 1.0
    if economic_rate(econ, k) * DEFAULT_POLICY.safety <= 1.0 and econ.cost > 0:
        assert cheating_ev(p, econ, k) < 0  # the safety factor keeps it strictly negative
    elif economic_rate(econ, k) >= 1.0:
        assert p == 1.0  # no rate deters: check everything (and the market should raise the slash)


@settings(max_examples=200, deadline=None)
@given(econ_st, st.integers(1, 64), st.floats(0, 1e5), st.floats(0, 1e5), st.floats(0, 50), st.floats(0, 50))
def test_monotone_in_history(econ: Economics, k: int, v1: float, v2: float, f1: float, f2: float) -> None:
    lo_v, hi_v = sorted((v1, v2))
    lo_f, hi_f = sorted((f1, f2))
    # More verified history never raises the rate; more failures never lower it.
    assert sampling_rate(econ, WorkerHistory(hi_v, lo_f), k) <= sampling_rate(econ, WorkerHistory(lo_v, lo_f), k)
    assert sampling_rate(econ, WorkerHistory(lo_v, hi_f), k) >= sampling_rate(econ, WorkerHistory(lo_v, lo_f), k)


def test_new_and_failed_workers_are_checked_much_more() -> None:
    new = sampling_rate(DEFAULT_ECONOMICS, WorkerHistory(), 3)
    veteran = sampling_rate(DEFAULT_ECONOMICS, WorkerHistory(verified=10_000), 3)
    failed = sampling_rate(DEFAULT_ECONOMICS, WorkerHistory(verified=10_000, failed=1), 3)
    assert new >= 0.75 and veteran < 0.1 and failed > 2.5 * veteran
    assert distrust(WorkerHistory()) == 0.75


def test_default_economics_make_cheating_a_loss() -> None:
    """At the devnet's pay (0.32 GLB per chunk) and slash (100 GLB), an established worker's rate makes cheating
    on a whole sequence lose money for any sequence length up to 64 chunks (2,048 tokens)."""
    e = DEFAULT_ECONOMICS
    for k in (1, 3, 8, 64):
        p = sampling_rate(e, WorkerHistory(verified=1e9), k)
        assert cheating_ev(p, e, k) < 0, k
        # The slash comes once per job: cheating in m sequences of one job gains m K C and, when any of them is
        # caught, loses the slash and at least the cheated sequences' pay. Still a loss for every m.
        q = p * (1 - e.collusion)
        for m in range(1, 3000):
            assert m * k * e.cost - (1 - (1 - q) ** m) * (e.slash + m * k * e.reward) < 0, (k, m)


@pytest.mark.parametrize("collusion", [0.0, 0.1, 0.3])
def test_default_target_caught_before_n_sequences(collusion: float) -> None:
    econ = Economics(cost=0.256, reward=0.32, slash=100.0, collusion=collusion)
    p = sampling_rate(econ, WorkerHistory(verified=1e9), 3)  # the most trusted worker gets the lowest rate
    n = DEFAULT_POLICY.target_sequences
    assert detection_probability(p, 0.10, n, collusion) >= 0.999 - 1e-12
    assert p <= max(detection_rate(collusion=collusion), 2 * economic_rate(econ, 3), 0.01) + 1e-6
    assert p < 0.08  # what keeps the default job's verification under 5 % (BENCHMARKS.md, "Verification")


def test_out_of_reach_target_checks_everything() -> None:
    policy = SamplingPolicy(target_sequences=5, target_detection=0.999999)
    assert detection_rate(policy, 0.3) == 1.0
    assert sampling_rate(DEFAULT_ECONOMICS, WorkerHistory(verified=1e9), 3, policy) == 1.0


def chunk(seq: int, c: int) -> int:
    return seq << 32 | c


@pytest.mark.parametrize("p, f, seqs, jobs", [(0.05, 0.1, 40, 10), (0.2, 0.25, 8, 3), (0.02, 0.5, 20, 5)])
def test_detection_probability_matches_the_real_sampler(p: float, f: float, seqs: int, jobs: int) -> None:
    """A worker cheating in a fraction f of its sequences (3 chunks each) is caught iff the sampler draws one of
    them: Monte Carlo through `sample_segments` with fresh seeds matches `detection_probability`."""
    rng = random.Random(1234)
    trials = 1500
    cheated = set(range(round(f * seqs)))
    chunks = [chunk(s, c) for s in range(seqs) for c in range(3)]
    caught = 0
    for _ in range(trials):
        for _ in range(jobs):
            drawn = {
                seg.chunk_index >> 32 for seg in sample_segments(rng.randbytes(32), [TaskChunks(JOB, 1, chunks, p)])
            }
            if drawn & cheated:
                caught += 1
                break
    expected = detection_probability(p, f, seqs * jobs)
    sigma = (expected * (1 - expected) / trials) ** 0.5
    assert abs(caught / trials - expected) < 4 * sigma + 1e-3


def test_detection_probability_with_collusion_matches_monte_carlo() -> None:
    rng = random.Random(7)
    p, r, cheated, trials = 0.3, 0.4, 5, 4000
    caught = sum(any(rng.random() < p and rng.random() >= r for _ in range(cheated)) for _ in range(trials))
    expected = detection_probability(p, 1.0, cheated, r)
    assert abs(caught / trials - expected) < 4 * (expected * (1 - expected) / trials) ** 0.5


SECRET = b"s" * 32
JOB = b"\x01" * 32
ROOTS = {b"\x0a" * 32: b"\xaa" * 32, b"\x0b" * 32: b"\xbb" * 32}


def _tasks(rate: float = 0.25) -> list[TaskChunks]:
    chunks = [chunk(s, c) for s in range(100) for c in range(2)]
    return [TaskChunks(task, stage, chunks, rate) for stage, task in enumerate(sorted(ROOTS))]


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


def test_sampled_sequences_match_rate_and_bring_every_chunk() -> None:
    seed = sampling_seed(JOB, ROOTS, SECRET, beacon_commitment(SECRET))
    chunks = [chunk(s, c) for s in range(10_000) for c in range(3)]
    got = sample_segments(seed, [TaskChunks(b"\x0a" * 32, 0, chunks, 0.1)])
    per_seq: dict[int, set[int]] = {}
    for seg in got:
        per_seq.setdefault(seg.chunk_index >> 32, set()).add(seg.chunk_index & 0xFFFFFFFF)
    assert all(cs == {0, 1, 2} for cs in per_seq.values())  # all or nothing per sequence
    assert abs(len(per_seq) / 10_000 - 0.1) < 4 * (0.1 * 0.9 / 10_000) ** 0.5
    for s in list(per_seq)[:50]:  # the draw is the documented keccak rule
        assert sequence_draw(seed, b"\x0a" * 32, 0, s) < 0.1
    assert sample_segments(seed, [TaskChunks(b"\x0a" * 32, 0, range(50), 1.0)]) == [
        Segment(b"\x0a" * 32, 0, c) for c in range(50)
    ]
    assert sample_segments(seed, [TaskChunks(b"\x0a" * 32, 0, range(50), 0.0)]) == []
    assert chunks_per_sequence([chunk(0, 0), chunk(0, 1), chunk(3, 0)]) == 2 and chunks_per_sequence([]) == 0


def test_economics_validation() -> None:
    with pytest.raises(ValueError):
        Economics(cost=-1, reward=1, slash=1)
    with pytest.raises(ValueError):
        Economics(cost=1, reward=1, slash=1, collusion=1.0)
    with pytest.raises(ValueError):
        detection_probability(1.5, 0.1, 10)

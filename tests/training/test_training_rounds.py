"""Round close decisions: quorum, deadline, stalled rounds, late and duplicate submissions."""

from __future__ import annotations

from market.training.rounds import RoundState, Submission, decide_round


def _decide(subs: list[Submission], now: float, quorum: int = 4, min_updates: int = 1):  # type: ignore[no-untyped-def]
    return decide_round(subs, workers=4, quorum=quorum, min_updates=min_updates, deadline=100.0, now=now)


def test_closes_at_quorum_before_deadline() -> None:
    subs = [Submission(s, f"t{s}", received_at=10.0 + s) for s in range(4)]
    d = _decide(subs, now=14.0)
    assert d.state is RoundState.CLOSED_QUORUM and d.closed
    assert [s.slot for s in d.accepted] == [0, 1, 2, 3] and d.missing_slots == ()
    assert _decide(subs[:3], now=14.0).state is RoundState.OPEN


def test_quorum_below_w_keeps_the_first_arrivals() -> None:
    subs = [Submission(s, f"t{s}", received_at=50.0 - s) for s in range(4)]
    d = _decide(subs, now=60.0, quorum=2)
    assert d.state is RoundState.CLOSED_QUORUM
    assert [s.slot for s in d.accepted] == [2, 3] and d.missing_slots == (0, 1)


def test_deadline_closes_with_what_arrived() -> None:
    subs = [Submission(0, "a", 5.0), Submission(2, "b", 7.0)]
    assert _decide(subs, now=99.9).state is RoundState.OPEN
    d = _decide(subs, now=100.0)
    assert d.state is RoundState.CLOSED_DEADLINE
    assert [s.slot for s in d.accepted] == [0, 2] and d.missing_slots == (1, 3)


def test_stalled_when_too_few_by_the_deadline() -> None:
    d = _decide([Submission(1, "a", 5.0)], now=101.0, min_updates=2)
    assert d.state is RoundState.STALLED and not d.closed
    assert _decide([], now=101.0).state is RoundState.STALLED


def test_late_invalid_duplicate_and_unknown_slots_do_not_count() -> None:
    subs = [
        Submission(0, "late", 100.5),
        Submission(1, "bad", 3.0, valid=False),
        Submission(2, "first", 4.0),
        Submission(2, "resend", 5.0),
        Submission(9, "unknown slot", 5.0),
    ]
    d = _decide(subs, now=200.0)
    assert d.state is RoundState.CLOSED_DEADLINE
    assert [(s.slot, s.submission_id) for s in d.accepted] == [(2, "first")]

"""When does a training round close, and with which updates? (pure: submissions + clock in, decision out)

A round has W task slots. It closes early once ``quorum`` slots have an accepted update, or at its deadline
with whatever arrived, if that is at least ``min_updates``; with fewer, it is *stalled* and the coordinator
re-leases the missing slots with a new deadline (a round never applies an empty update). Updates received
after the deadline are ignored, so a straggler can't change a round that may already have closed. A slot
counts once: its first valid submission wins (a worker re-sending, or a second worker on a re-leased slot, is
not double-counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class RoundState(StrEnum):
    OPEN = "open"
    CLOSED_QUORUM = "closed_quorum"
    CLOSED_DEADLINE = "closed_deadline"
    STALLED = "stalled"  # deadline passed with fewer than min_updates: re-lease, don't apply


@dataclass(frozen=True)
class Submission:
    """One received update. ``valid`` is False when it failed to decode or its signature/commitment was
    wrong."""

    slot: int
    submission_id: str
    received_at: float
    valid: bool = True


@dataclass(frozen=True)
class RoundDecision:
    state: RoundState
    accepted: tuple[Submission, ...]  # what to aggregate once closed, ordered by slot
    missing_slots: tuple[int, ...]

    @property
    def closed(self) -> bool:
        return self.state in (RoundState.CLOSED_QUORUM, RoundState.CLOSED_DEADLINE)


def decide_round(
    submissions: Sequence[Submission],
    *,
    workers: int,
    quorum: int,
    min_updates: int,
    deadline: float,
    now: float,
) -> RoundDecision:
    """Decide the state of a round at time ``now`` (same clock as ``received_at`` and ``deadline``)."""
    first: dict[int, Submission] = {}
    for sub in sorted(submissions, key=lambda s: (s.received_at, s.submission_id)):
        if sub.valid and 0 <= sub.slot < workers and sub.received_at <= deadline and sub.slot not in first:
            first[sub.slot] = sub
    accepted = tuple(first[s] for s in sorted(first))
    missing = tuple(s for s in range(workers) if s not in first)
    if len(accepted) >= quorum:
        # Close at the moment quorum was reached, keeping only the updates that made it.
        by_time = sorted(accepted, key=lambda s: (s.received_at, s.submission_id))[:quorum]
        kept = tuple(sorted(by_time, key=lambda s: s.slot))
        kept_slots = {s.slot for s in kept}
        return RoundDecision(RoundState.CLOSED_QUORUM, kept, tuple(s for s in range(workers) if s not in kept_slots))
    if now < deadline:
        return RoundDecision(RoundState.OPEN, accepted, missing)
    if len(accepted) >= min_updates:
        return RoundDecision(RoundState.CLOSED_DEADLINE, accepted, missing)
    return RoundDecision(RoundState.STALLED, accepted, missing)

"""Capability filtering: can this worker run that piece of work at all?"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Capability:
    """What a worker can serve: task kinds, models, layer ranges (half-open) and free memory in bytes."""

    kinds: frozenset[str]
    models: frozenset[str]
    layer_ranges: tuple[tuple[int, int], ...]
    memory_bytes: int


@dataclass(frozen=True)
class Requirement:
    """What a piece of work needs: memory covers the shard's weights plus its KV cache/activations."""

    kind: str
    model: str
    layer_start: int
    layer_end: int
    memory_bytes: int
    min_stake: int = 0


def covers(ranges: Iterable[tuple[int, int]], start: int, end: int) -> bool:
    """True when one served range contains [start, end): a stage is never split across two of a worker's ranges."""
    return any(lo <= start and end <= hi for lo, hi in ranges)


def is_capable(capability: Capability, requirement: Requirement, *, stake: int) -> bool:
    return (
        requirement.kind in capability.kinds
        and requirement.model in capability.models
        and covers(capability.layer_ranges, requirement.layer_start, requirement.layer_end)
        and capability.memory_bytes >= requirement.memory_bytes
        and stake >= requirement.min_stake
    )


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Normalise served ranges (sorted, overlapping or touching ranges merged) so `covers` sees contiguous spans."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] < r[1]):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return tuple(merged)

"""Route selection: a chain of workers whose layer ranges tile [start, end), latency and score aware. Pure.

Each hop costs its expected time (link latency + compute of its layers at its measured speed) divided by the
scheduler's score (reputation x speed x latency, `market.scheduler.scoring.score`), so a slow or little-trusted
worker is used only when nothing better covers its layers. Cheapest path over layer boundaries (Dijkstra).
Standby replicas per hop are chosen with `choose_replicas` (another operator than the primary).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from market.scheduler.reputation import Reputation
from market.scheduler.scoring import Candidate, choose_replicas, score

# ms per layer per token at 1 token/s of measured reference throughput (relative speed is what matters).
_COMPUTE_MS = 1000.0


@dataclass(frozen=True)
class RouteCandidate:
    link_id: str
    operator_id: str
    start: int
    end: int
    throughput_tokens_s: float
    latency_ms: float
    reputation: Reputation

    @property
    def scored(self) -> Candidate:
        return Candidate(self.link_id, self.operator_id, self.reputation, self.throughput_tokens_s, self.latency_ms)


@dataclass(frozen=True)
class Hop:
    start: int
    end: int
    primary: str  # link id
    standbys: tuple[str, ...] = ()


def hop_cost(c: RouteCandidate) -> float:
    compute = (c.end - c.start) * _COMPUTE_MS / max(c.throughput_tokens_s, 1e-3)
    return (c.latency_ms + compute) / max(score(c.scored), 1e-6)


# A hop whose layer range no other operator covers - alone or as a chain - can't be replayed by an independent
# replica, so its work could not be checked (and is not paid): such hops cost this much more, used only when
# nothing else chains.
UNREPLICATED_PENALTY = 8.0


def _tiles(start: int, end: int, spans: set[tuple[int, int]]) -> bool:
    """Whether some of `spans` chain from `start` to `end` exactly."""
    reached, frontier = {start}, [start]
    while frontier:
        at = frontier.pop()
        for lo, hi in spans:
            if lo == at and hi <= end and hi not in reached:
                reached.add(hi)
                frontier.append(hi)
    return end in reached


def replicated(candidates: Sequence[RouteCandidate]) -> set[str]:
    """Link ids whose layer range workers of other operators also cover: one serving exactly that range, or a
    chain of narrower ones (`verify_replay.replica_chains` replays through such a chain)."""
    out: set[str] = set()
    for c in candidates:
        spans = {(o.start, o.end) for o in candidates if o.operator_id != c.operator_id and c.start <= o.start}
        if _tiles(c.start, c.end, spans):
            out.add(c.link_id)
    return out


def plan_span(
    start: int, end: int, candidates: Sequence[RouteCandidate], *, exclude: Collection[str] = ()
) -> list[RouteCandidate] | None:
    """Cheapest chain of candidates covering [start, end) exactly, or None if the swarm has a gap.

    Hops that an independent replica could check are preferred (`UNREPLICATED_PENALTY`)."""
    usable = [c for c in candidates if c.link_id not in exclude and start <= c.start and c.end <= end]
    checkable = replicated(candidates)
    best: dict[int, float] = {start: 0.0}
    back: dict[int, RouteCandidate] = {}
    heap: list[tuple[float, int]] = [(0.0, start)]
    while heap:
        cost, at = heapq.heappop(heap)
        if at == end:
            break
        if cost > best.get(at, float("inf")):
            continue
        for c in sorted((c for c in usable if c.start == at), key=lambda c: c.link_id):
            total = cost + hop_cost(c) * (1.0 if c.link_id in checkable else UNREPLICATED_PENALTY)
            if total < best.get(c.end, float("inf")):
                best[c.end] = total
                back[c.end] = c
                heapq.heappush(heap, (total, c.end))
    if end not in back and start != end:
        return None
    path: list[RouteCandidate] = []
    at = end
    while at != start:
        path.append(back[at])
        at = back[at].start
    return path[::-1]


def plan_route(
    num_layers: int,
    candidates: Sequence[RouteCandidate],
    *,
    standbys: int = 1,
    rng: random.Random | None = None,
    exclude: Collection[str] = (),
) -> list[Hop] | None:
    """Hops covering every layer, each with up to `standbys` replicas of the same range (other operators)."""
    path = plan_span(0, num_layers, candidates, exclude=exclude)
    if path is None:
        return None
    rng = rng or random.Random(0)
    used = {c.link_id for c in path}
    hops = []
    for c in path:
        same = [
            o
            for o in candidates
            if (o.start, o.end) == (c.start, c.end) and o.link_id not in used and o.link_id not in exclude
        ]
        picked = choose_replicas([o.scored for o in same], standbys, rng, exclude_operators={c.operator_id})
        used.update(p.worker_id for p in picked)
        hops.append(Hop(c.start, c.end, c.link_id, tuple(p.worker_id for p in picked)))
    return hops

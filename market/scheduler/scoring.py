"""Scoring and choosing workers: weighted random among the best, with an exploration slot for new workers."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from market.scheduler.reputation import Reputation


@dataclass(frozen=True)
class Candidate:
    worker_id: str
    operator_id: str
    reputation: Reputation
    throughput_tokens_s: float
    latency_ms: float


@dataclass(frozen=True)
class ChoiceParams:
    top_k: int = 5
    # Probability of giving the pick to a worker we know little about; without it a new worker (neutral prior)
    # would never beat established ones, never get work, and never build a record: starvation.
    explore: float = 0.1
    new_evidence: float = 5.0  # below this much decayed evidence a worker counts as new
    ref_throughput: float = 1000.0  # tokens/s on the reference layer that counts as "fast enough"
    ref_latency_ms: float = 50.0


DEFAULT_CHOICE = ChoiceParams()


def score(candidate: Candidate, params: ChoiceParams = DEFAULT_CHOICE) -> float:
    """Higher is better: trust (posterior mean) x speed factor x latency factor, each in (0, 1]."""
    speed = min(1.0, max(candidate.throughput_tokens_s, 0.0) / params.ref_throughput) ** 0.5
    latency = params.ref_latency_ms / (params.ref_latency_ms + max(candidate.latency_ms, 0.0))
    return candidate.reputation.mean * max(speed, 1e-3) * latency


def choose(
    candidates: Sequence[Candidate], rng: random.Random, params: ChoiceParams = DEFAULT_CHOICE
) -> Candidate | None:
    """One worker: with probability `explore` a uniformly random new worker, else score-weighted among the top k."""
    if not candidates:
        return None
    newcomers = [c for c in candidates if c.reputation.evidence < params.new_evidence]
    if newcomers and rng.random() < params.explore:
        return rng.choice(newcomers)
    ranked = sorted(candidates, key=lambda c: (-score(c, params), c.worker_id))[: params.top_k]
    weights = [score(c, params) for c in ranked]
    if sum(weights) <= 0:
        return rng.choice(ranked)
    return rng.choices(ranked, weights=weights, k=1)[0]


def choose_replicas(
    candidates: Sequence[Candidate],
    n: int,
    rng: random.Random,
    *,
    exclude_operators: Collection[str] = (),
    params: ChoiceParams = DEFAULT_CHOICE,
) -> list[Candidate]:
    """Up to `n` workers, no two of one operator and none of `exclude_operators`.

    Replicas exist to catch a wrong result; two machines of one operator could agree on a lie.
    """
    used = set(exclude_operators)
    chosen: list[Candidate] = []
    while len(chosen) < n:
        pool = [c for c in candidates if c.operator_id not in used]
        pick = choose(pool, rng, params)
        if pick is None:
            break
        chosen.append(pick)
        used.add(pick.operator_id)
    return chosen

"""Reputation: a Beta posterior over verification outcomes, with exponential time decay; a slash resets it.

Old evidence fades (half-life) so a worker's record reflects its current behaviour, and a slash throws away
everything before it and starts from a heavy failure prior, so reputation drops near zero and recovers only slowly
through fresh verified work.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

PASS, FAIL, SLASH = "pass", "fail", "slash"


@dataclass(frozen=True)
class Outcome:
    kind: str  # pass | fail | slash
    at: datetime
    weight: float = 1.0


@dataclass(frozen=True)
class ReputationParams:
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    half_life_s: float = 30 * 86_400.0
    slash_beta: float = 20.0  # failure mass a slash adds (decays like any other evidence)


DEFAULT_PARAMS = ReputationParams()


@dataclass(frozen=True)
class Reputation:
    alpha: float
    beta: float
    evidence: float  # decayed outcome mass beyond the prior: how much we actually know

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def std(self) -> float:
        total = self.alpha + self.beta
        return math.sqrt(self.alpha * self.beta / (total * total * (total + 1.0)))


def _decay(age_s: float, half_life_s: float) -> float:
    return 0.5 ** (max(age_s, 0.0) / half_life_s)


def reputation(outcomes: Iterable[Outcome], *, now: datetime, params: ReputationParams = DEFAULT_PARAMS) -> Reputation:
    ordered = sorted(outcomes, key=lambda o: o.at)
    last_slash = max((i for i, o in enumerate(ordered) if o.kind == SLASH), default=None)
    alpha, beta, evidence = params.prior_alpha, params.prior_beta, 0.0
    if last_slash is not None:
        slash = ordered[last_slash]
        mass = params.slash_beta * _decay((now - slash.at).total_seconds(), params.half_life_s)
        beta += mass
        evidence += mass
        ordered = ordered[last_slash + 1 :]
    for outcome in ordered:
        w = outcome.weight * _decay((now - outcome.at).total_seconds(), params.half_life_s)
        if outcome.kind == PASS:
            alpha += w
        elif outcome.kind == FAIL:
            beta += w
        else:
            raise ValueError(f"unknown outcome kind {outcome.kind!r}")
        evidence += w
    return Reputation(alpha=alpha, beta=beta, evidence=evidence)

"""Compare a worker's claimed training update with a replica's replay of the same task (pure).

A replay re-runs the sampled task from the same checkpoint, shard and seed, and is passed through the job's
codec like the claim, so compression error cancels out. An honest pair then differs only by float reduction
order (thread counts, BLAS kernels), which is tiny; a random update (cosine ≈ 0), a scaled one (norm ratio ≠
1), skipped steps or another shard's data (both: a different trajectory) are orders of magnitude further off.

Thresholds are calibrated (`calibrate_tolerance`): max honest drift measured by replays, times a margin, with
floors.

A replay that disagrees is not a verdict yet: two more replicas of other operators replay the task and the update is
decided 2-of-3 exactly as an inference segment is (`decide_update`, over `market.verifier.disputes.decide_segment`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from market.verifier.disputes import GUILTY, Vote, decide_segment


@dataclass(frozen=True)
class UpdateTolerance:
    max_rel_l2: float = 1e-2  # ‖claimed − replayed‖ / ‖replayed‖
    min_cosine: float = 0.999
    max_norm_ratio_dev: float = 1e-2  # | ‖claimed‖ / ‖replayed‖ − 1 |


@dataclass(frozen=True)
class UpdateMetrics:
    rel_l2: float
    cosine: float
    norm_ratio: float
    worst_tensor: str  # the tensor with the largest relative error: where to look in a dispute
    worst_tensor_rel_l2: float


@dataclass(frozen=True)
class UpdateVerdict:
    ok: bool
    reason: str  # "match", or which check failed
    metrics: UpdateMetrics | None


def update_metrics(claimed: Mapping[str, torch.Tensor], replayed: Mapping[str, torch.Tensor]) -> UpdateMetrics:
    """Global relative L2 error, cosine and norm ratio over all tensors, in float64 for stable sums."""
    diff_sq = ref_sq = claim_sq = dot = 0.0
    worst, worst_err = "", -1.0
    for name, ref in replayed.items():
        c, r = claimed[name].to(torch.float64).reshape(-1), ref.to(torch.float64).reshape(-1)
        d = float(((c - r) ** 2).sum())
        rr = float((r**2).sum())
        diff_sq, ref_sq, claim_sq, dot = (
            diff_sq + d,
            ref_sq + rr,
            claim_sq + float((c**2).sum()),
            dot + float(c @ r),
        )
        err = math.sqrt(d / rr) if rr > 0 else (0.0 if d == 0 else math.inf)
        if err > worst_err:
            worst, worst_err = name, err
    ref_norm, claim_norm = math.sqrt(ref_sq), math.sqrt(claim_sq)
    if ref_norm == 0:
        rel = 0.0 if diff_sq == 0 else math.inf
        return UpdateMetrics(rel, 1.0 if claim_norm == 0 else 0.0, math.inf if claim_norm else 1.0, worst, worst_err)
    cosine = dot / (ref_norm * claim_norm) if claim_norm > 0 else 0.0
    return UpdateMetrics(math.sqrt(diff_sq) / ref_norm, cosine, claim_norm / ref_norm, worst, worst_err)


def compare_updates(
    claimed: Mapping[str, torch.Tensor],
    replayed: Mapping[str, torch.Tensor],
    tolerance: UpdateTolerance = UpdateTolerance(),
) -> UpdateVerdict:
    """Verdict on a claimed update against an honest replay of the same task."""
    if set(claimed) != set(replayed):
        return UpdateVerdict(False, "tensor names differ", None)
    for name, ref in replayed.items():
        if tuple(claimed[name].shape) != tuple(ref.shape):
            return UpdateVerdict(False, f"shape of {name} differs", None)
        if not torch.isfinite(claimed[name]).all():
            return UpdateVerdict(False, f"non-finite values in {name}", None)
    m = update_metrics(claimed, replayed)
    if not m.rel_l2 <= tolerance.max_rel_l2:
        return UpdateVerdict(False, f"relative L2 error {m.rel_l2:.3g} > {tolerance.max_rel_l2:.3g}", m)
    if not m.cosine >= tolerance.min_cosine:
        return UpdateVerdict(False, f"cosine {m.cosine:.6f} < {tolerance.min_cosine}", m)
    if not abs(m.norm_ratio - 1) <= tolerance.max_norm_ratio_dev:
        return UpdateVerdict(False, f"norm ratio {m.norm_ratio:.4f} off by > {tolerance.max_norm_ratio_dev}", m)
    return UpdateVerdict(True, "match", m)


def calibrate_tolerance(
    honest: Iterable[UpdateMetrics], margin: float = 10.0, floor_rel_l2: float = 1e-4
) -> UpdateTolerance:
    """Thresholds from honest replay pairs: max observed drift × ``margin`` (never tighter than the
    floors)."""
    samples = list(honest)
    if not samples:
        raise ValueError("calibration needs at least one honest pair")
    rel = max(floor_rel_l2, margin * max(s.rel_l2 for s in samples))
    cos_gap = max(floor_rel_l2**2, margin * max(1 - s.cosine for s in samples))
    ratio = max(floor_rel_l2, margin * max(abs(s.norm_ratio - 1) for s in samples))
    return UpdateTolerance(max_rel_l2=rel, min_cosine=1 - cos_gap, max_norm_ratio_dev=ratio)


def decide_update(votes: Sequence[Vote]) -> tuple[str, list[int]]:
    """An update whose first replay (round 0) disagreed, decided 2-of-3 with the dispute replays (rounds 1, 2):
    the outcome (`disputes.GUILTY`, `CLEARED`, ...) and the rounds whose replica was outvoted: its signed replay
    is the wrong one (it fails, unpaid and slashed like any wrong signed update)."""
    outcome, first_lost = decide_segment(votes)
    losers = [0] if first_lost else []
    if outcome == GUILTY:
        losers += [v.round for v in votes if v.round > 0 and v.status == "pass"]
    return outcome, losers

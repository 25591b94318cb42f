"""The (ε, δ) accountant of federated jobs with noise: Rényi DP of the Gaussian mechanism, composed over rounds.

Unit of privacy: one **worker** (all of its local data). Each round a worker's whole update is clipped to L2 norm
C and each worker adds N(0, σ²C²/t) per coordinate, so the sum of any t or more updates (the fewest a round closes
with) carries Gaussian noise of std ≥ σC. Adding or removing one worker moves the sum by at most C: the Gaussian
mechanism with noise multiplier σ, whose RDP of order α is α / (2σ²) (Mironov 2017). Rounds compose additively;
no amplification by subsampling is claimed (a worker may take part in every round). RDP → (ε, δ) uses the
conversion of Balle et al. 2020 (as Opacus and TF Privacy do), minimised over a grid of orders.
"""

from __future__ import annotations

import math

ORDERS: tuple[float, ...] = tuple([1.0 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128.0, 256.0])


def gaussian_rdp(noise_multiplier: float, rounds: int, order: float) -> float:
    return rounds * order / (2.0 * noise_multiplier**2)


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """ε after `rounds` releases of a Gaussian sum with noise multiplier σ (inf without noise, 0 before any)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    best = math.inf
    for a in ORDERS:
        rdp = gaussian_rdp(noise_multiplier, rounds, a)
        eps = rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return max(best, 0.0)


def worker_noise_std(clip_norm: float, noise_multiplier: float, threshold: int) -> float:
    """Per-coordinate std each worker adds so any `threshold` of them sum to noise of std σC."""
    return noise_multiplier * clip_norm / math.sqrt(threshold)

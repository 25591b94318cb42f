"""Robust aggregation of W pseudo-gradients (pure functions: tensors in, tensor out).

Coordinate-wise trimmed mean and median bound what a minority of bad updates can do: with k trimmed from each
end (median: fewer than half bad), every coordinate of the result lies between the smallest and largest
*honest* value of that coordinate, however large the bad values are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

Tensors = dict[str, torch.Tensor]
Method = Literal["trimmed_mean", "median", "mean"]


def trim_count(n: int, trim_fraction: float) -> int:
    """Updates dropped from *each* end per coordinate: ``floor(frac * n)``, >= 1 once n >= 3, < n / 2.

    Rounding up to 1 for small rounds is deliberate: with W = 3 or 4, a fraction of 0.25 would otherwise trim
    nothing and a single poisoned update would pass straight into the mean.
    """
    if n < 3 or trim_fraction <= 0:
        return 0
    k = max(1, int(trim_fraction * n))
    return min(k, (n - 1) // 2)


def trimmed_mean(stacked: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over dim 0 after dropping the k smallest and k largest values of each coordinate."""
    if k == 0:
        return stacked.mean(dim=0)
    ordered = stacked.sort(dim=0).values
    return ordered[k : stacked.shape[0] - k].mean(dim=0)


def median(stacked: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median; for an even count the mean of the two middle values (torch's is the lower)."""
    n = stacked.shape[0]
    ordered = stacked.sort(dim=0).values
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def aggregate(
    updates: Sequence[Mapping[str, torch.Tensor]],
    method: Method = "trimmed_mean",
    trim_fraction: float = 0.25,
) -> Tensors:
    """Combine updates that share names and shapes into one pseudo-gradient, tensor by tensor."""
    if not updates:
        raise ValueError("nothing to aggregate")
    names = list(updates[0])
    for u in updates[1:]:
        if list(u) != names and set(u) != set(names):
            raise ValueError("updates have different tensor names")
    k = trim_count(len(updates), trim_fraction)
    out: Tensors = {}
    for name in names:
        stacked = torch.stack([u[name].to(torch.float32) for u in updates])
        if method == "mean":
            out[name] = stacked.mean(dim=0)
        elif method == "median":
            out[name] = median(stacked)
        else:
            out[name] = trimmed_mean(stacked, k)
    return out

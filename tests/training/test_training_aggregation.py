"""Robust aggregation bounds and the outer Nesterov step against torch's SGD."""

from __future__ import annotations

import pytest
import torch

from market.training.aggregation import aggregate, median, trim_count, trimmed_mean
from market.training.outer import nesterov_step


def test_trim_count() -> None:
    assert [trim_count(n, 0.25) for n in (1, 2, 3, 4, 5, 8, 9)] == [0, 0, 1, 1, 1, 2, 2]
    assert trim_count(4, 0.0) == 0
    assert trim_count(5, 0.49) == 2


def test_trimmed_mean_and_median_values() -> None:
    x = torch.tensor([[1.0, 10.0], [2.0, -5.0], [3.0, 0.0], [1e6, 1.0]])
    assert trimmed_mean(x, 1).tolist() == [2.5, 0.5]
    assert median(x).tolist() == [2.5, 0.5]
    assert median(x[:3]).tolist() == [2.0, 0.0]
    assert trimmed_mean(x, 0).tolist() == x.mean(0).tolist()


@pytest.mark.parametrize("method", ["trimmed_mean", "median"])
@pytest.mark.parametrize("poison", ["scaled", "huge_random", "huge_negative"])
def test_one_poisoned_update_stays_in_the_honest_envelope(method: str, poison: str) -> None:
    g = torch.Generator().manual_seed(0)
    honest = [
        {"w": torch.randn(64, 16, generator=g) * 0.01, "b": torch.randn(16, generator=g) * 0.01} for _ in range(3)
    ]
    bad = {
        "scaled": {k: v * 1000 for k, v in honest[0].items()},
        "huge_random": {k: torch.randn(v.shape, generator=g) * 1e9 for k, v in honest[0].items()},
        "huge_negative": {k: torch.full_like(v, -1e30) for k, v in honest[0].items()},
    }[poison]
    out = aggregate([*honest, bad], method)  # type: ignore[arg-type]
    for name in out:
        stacked = torch.stack([h[name] for h in honest])
        assert bool((out[name] >= stacked.min(0).values).all() and (out[name] <= stacked.max(0).values).all())
        # Hence the norm bound the tests on whole runs rely on.
        assert float(out[name].norm()) <= float(stacked.abs().max(0).values.norm())
    plain = aggregate([*honest, bad], "mean")
    assert float(plain["w"].norm()) > 100 * float(out["w"].norm())


def test_aggregate_rejects_mismatched_updates() -> None:
    with pytest.raises(ValueError):
        aggregate([])
    with pytest.raises(ValueError):
        aggregate([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])


def test_nesterov_matches_torch_sgd_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(8, 4, generator=g), "b": torch.randn(4, generator=g)}
    torch_params = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = torch.optim.SGD(list(torch_params.values()), lr=0.7, momentum=0.9, nesterov=True)
    momentum: dict[str, torch.Tensor] | None = None
    for _ in range(4):
        grads = {k: torch.randn(v.shape, generator=g) for k, v in params.items()}
        params, momentum = nesterov_step(params, momentum, grads, 0.7, 0.9)
        for k, p in torch_params.items():
            p.grad = grads[k].clone()
        opt.step()
    assert momentum is not None
    for k, p in torch_params.items():
        assert torch.equal(params[k], p.detach())
        assert torch.equal(momentum[k], opt.state[p]["momentum_buffer"])

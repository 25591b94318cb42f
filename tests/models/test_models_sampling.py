"""Coordinator-side sampling: greedy is argmax, top-p keeps the nucleus, a seed reproduces the draw."""

from __future__ import annotations

import pytest
import torch

from globai.protocol.sampling import Sampler, SamplingParams, greedy, sample_next, top_p_filter


def test_greedy_is_argmax_first_on_ties() -> None:
    logits = torch.tensor([[0.1, 3.0, 3.0, -1.0], [5.0, 0.0, 0.0, 0.0]])
    assert greedy(logits).tolist() == [1, 0]
    assert Sampler()(logits).tolist() == [1, 0]


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p_filter(probs.log(), 0.75).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    assert top_p_filter(probs.log(), 0.01).isfinite().sum() == 1  # never empty


def test_seeded_sampling_reproduces_and_respects_top_p() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.3, top_p=0.5, seed=99)
    draws_a = [Sampler(params)(logits).tolist() for _ in range(2)]
    sampler = Sampler(params)
    sequence_a = [sampler(logits).tolist() for _ in range(5)]
    sampler = Sampler(params)
    assert [sampler(logits).tolist() for _ in range(5)] == sequence_a
    assert draws_a[0] == draws_a[1]
    allowed = top_p_filter(logits / 1.3, 0.5).isfinite()
    for draw in sequence_a:
        assert all(allowed[row, tok] for row, tok in enumerate(draw))


def test_bad_params() -> None:
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError):
        sample_next(torch.zeros(1, 3), SamplingParams(temperature=1.0), None)

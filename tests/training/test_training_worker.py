"""The worker's inner loop: deterministic, reports losses, leaves process-wide torch settings as it found them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from market.training.data import prepare, shard_for
from market.training.model import initial_checkpoint
from market.training.spec import TrainingJobSpec
from worker.training import batch_rows, run_inner_steps


def test_inner_steps_are_deterministic_and_report_losses(
    make_spec: Callable[..., TrainingJobSpec], corpus: bytes
) -> None:
    spec = make_spec(inner_steps=8)
    config, params = initial_checkpoint(spec)
    shard = shard_for(prepare(spec, corpus), spec, 0, 0)
    torch.manual_seed(123)
    before_rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    a, m = run_inner_steps(params, config, shard, 8, 3e-3, seed=42)
    assert torch.equal(torch.get_rng_state(), before_rng)  # the task's seeding doesn't leak
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    b, _ = run_inner_steps(params, config, shard, 8, 3e-3, seed=42)
    c, _ = run_inner_steps(params, config, shard, 8, 3e-3, seed=43)
    assert set(a) == set(params) and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed picks the batches
    assert m.steps == 8 and m.tokens == 8 * spec.batch_size * spec.seq_len
    assert m.loss_end < m.loss_start
    # Pseudo-gradient sign convention: θ_v − θ_after.
    after = {k: params[k] - a[k] for k in a}
    assert all(torch.isfinite(v).all() for v in after.values())


def test_batch_rows_and_input_checks(make_spec: Callable[..., TrainingJobSpec]) -> None:
    rows = batch_rows(10, 4, 3, seed=1)
    assert rows.shape == (4, 3) and int(rows.max()) < 10
    assert torch.equal(rows, batch_rows(10, 4, 3, seed=1))
    spec = make_spec()
    config, params = initial_checkpoint(spec)
    with pytest.raises(ValueError):
        run_inner_steps(params, config, torch.zeros(5, dtype=torch.int64), 1, 1e-3, 0)
    with pytest.raises(ValueError):
        run_inner_steps(params, config, torch.zeros(2, 9, dtype=torch.int64), 0, 1e-3, 0)
    with pytest.raises(RuntimeError):  # a checkpoint that doesn't match the config is refused
        run_inner_steps({}, config, torch.zeros(2, 9, dtype=torch.int64), 1, 1e-3, 0)

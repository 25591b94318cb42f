"""Replaying a sampled task catches cheating workers; honest replays (1 or 2 threads) pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from globai.protocol.compression import decode_update, encode_update, parse_codec, shapes_of
from market.training.data import prepare, shard_for
from market.training.model import initial_checkpoint
from market.training.spec import TrainingJobSpec, task_seed
from market.training.verification import (
    UpdateTolerance,
    calibrate_tolerance,
    compare_updates,
    update_metrics,
)
from worker.training import run_inner_steps

Tensors = dict[str, torch.Tensor]


@dataclass
class Task:
    spec: TrainingJobSpec
    config: dict
    params: Tensors
    shard: torch.Tensor
    other_shard: torch.Tensor
    seed: int

    def run(self, shard: torch.Tensor | None = None, steps: int | None = None, threads: int = 1) -> Tensors:
        update, _ = run_inner_steps(
            self.params,
            self.config,
            self.shard if shard is None else shard,
            steps or self.spec.inner_steps,
            self.spec.inner_lr,
            self.seed,
            batch_size=self.spec.batch_size,
            num_threads=threads,
        )
        return update


@pytest.fixture(scope="module")
def task(make_spec: Callable[..., TrainingJobSpec], corpus: bytes) -> Task:
    spec = make_spec(inner_steps=10)
    config, params = initial_checkpoint(spec)
    data = prepare(spec, corpus)
    return Task(spec, config, params, shard_for(data, spec, 0, 0), shard_for(data, spec, 0, 1), task_seed(spec, 0, 0))


@pytest.fixture(scope="module")
def honest(task: Task) -> Tensors:
    return task.run()


def _cheats(task: Task, honest: Tensors) -> dict[str, Tensors]:
    g = torch.Generator().manual_seed(5)
    # Shuffled labels: each window's tokens permuted, so targets no longer follow the inputs.
    perm = torch.stack([torch.randperm(task.shard.shape[1], generator=g) for _ in range(task.shard.shape[0])])
    shuffled = torch.gather(task.shard, 1, perm)
    return {
        "random": {k: torch.randn(v.shape, generator=g) * float(v.std()) for k, v in honest.items()},
        "scaled x1.5": {k: v * 1.5 for k, v in honest.items()},
        "skipped steps (H/2)": task.run(steps=task.spec.inner_steps // 2),
        "other shard": task.run(shard=task.other_shard),
        "shuffled labels": task.run(shard=shuffled),
    }


@pytest.mark.parametrize("codec", ["none", "int8", "topk:0.1"])
def test_honest_replays_pass_and_cheats_fail(task: Task, honest: Tensors, codec: str) -> None:
    c = parse_codec(codec)

    def wire(u: Tensors) -> Tensors:  # what the verifier sees: the update after the job's codec
        return decode_update(encode_update(u, c), shapes_of(u), c)

    replay_1, replay_2 = wire(task.run(threads=1)), wire(task.run(threads=2))
    claimed = wire(honest)
    calibrated = calibrate_tolerance([update_metrics(replay_1, replay_2), update_metrics(claimed, replay_1)])
    for tol in (UpdateTolerance(), calibrated):
        assert compare_updates(claimed, replay_1, tol).ok
        assert compare_updates(claimed, replay_2, tol).ok
        for name, cheat in _cheats(task, honest).items():
            verdict = compare_updates(wire(cheat), replay_1, tol)
            assert not verdict.ok, name
            assert verdict.metrics is not None and verdict.metrics.rel_l2 > 0.1, name


def test_structural_mismatches_fail(honest: Tensors) -> None:
    missing = dict(honest)
    missing.pop(next(iter(missing)))
    assert compare_updates(missing, honest).reason == "tensor names differ"
    name = next(iter(honest))
    assert "shape" in compare_updates({**honest, name: honest[name].reshape(-1)}, honest).reason
    nan = {**honest, name: torch.full_like(honest[name], float("nan"))}
    assert "non-finite" in compare_updates(nan, honest).reason
    zero = {k: torch.zeros_like(v) for k, v in honest.items()}
    assert not compare_updates(zero, honest).ok
    assert compare_updates(zero, zero).ok


def test_calibration_needs_samples_and_keeps_floors() -> None:
    with pytest.raises(ValueError):
        calibrate_tolerance([])
    exact = update_metrics({"a": torch.ones(3)}, {"a": torch.ones(3)})
    tol = calibrate_tolerance([exact])
    assert tol.max_rel_l2 == 1e-4 and tol.min_cosine < 1.0


def test_a_disputed_update_is_decided_2_of_3_and_the_outvoted_replica_loses() -> None:
    from market.training.verification import decide_update
    from market.verifier.disputes import Vote

    first = Vote(0, "fail", "relative L2 error")
    assert decide_update([first, Vote(1, "pass", ""), Vote(2, "pass", "")]) == ("cleared", [0])
    assert decide_update([first, Vote(1, "fail", ""), Vote(2, "pass", "")]) == ("guilty", [2])
    assert decide_update([first, Vote(1, "fail", ""), Vote(2, "fail", "")]) == ("guilty", [])
    assert decide_update([first, Vote(1, "fail", ""), Vote(2, "void", "")]) == ("guilty", [])
    # One independent vote for the worker and none against it besides the first: cleared, nobody provably wrong.
    assert decide_update([first, Vote(1, "pass", ""), Vote(2, "void", "")]) == ("cleared", [])

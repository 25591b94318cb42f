"""Stage sessions: TTL, memory cap with LRU eviction, clear errors for the coordinator, input validation, replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from worker.models.errors import (
    CacheCapacityError,
    SessionEvictedError,
    SessionExistsError,
    StageInputError,
    UnknownSessionError,
)
from worker.stage import Stage, StageInput


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ids(batch: int = 1, length: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_ttl_evicts_idle_sessions(tiny_llama: Path) -> None:
    clock = FakeClock()
    stage = Stage(tiny_llama, 0, 2, session_ttl_s=60, clock=clock)
    stage.open_session("a")
    stage.forward("a", _ids())
    clock.now += 59
    stage.forward("a", _ids(length=1))  # touching the session renews it
    stage.open_session("b")
    clock.now += 61
    assert stage.expire_idle() == ["a", "b"] and stage.cache_stats()["sessions"] == 0
    with pytest.raises(SessionEvictedError) as info:
        stage.forward("a", _ids(length=1))
    assert info.value.reason == "ttl" and info.value.code == "session_evicted"


def test_memory_cap_evicts_least_recently_used(tiny_llama: Path) -> None:
    probe = Stage(tiny_llama, 0, 2)
    per_session = 8 * probe.kv_bytes_per_token()  # 8 tokens of batch 1
    stage = Stage(tiny_llama, 0, 2, max_cache_bytes=2 * per_session)
    for sid in ("a", "b"):
        stage.open_session(sid)
        stage.forward(sid, _ids(length=8))
    assert stage.cache_stats()["cache_bytes"] == 2 * per_session  # the estimate is the real cache size
    stage.open_session("c")
    stage.forward("c", _ids(length=8))  # needs room: "a" is the least recently used
    with pytest.raises(SessionEvictedError) as info:
        stage.forward("a", _ids(length=1))
    assert info.value.reason == "memory"
    assert "b" in stage.sessions and "c" in stage.sessions


def test_one_session_over_the_cap_is_refused_and_left_intact(tiny_llama: Path) -> None:
    stage = Stage(tiny_llama, 0, 2, max_cache_bytes=4 * Stage(tiny_llama, 0, 2).kv_bytes_per_token())
    stage.open_session("big")
    stage.forward("big", _ids(length=3))
    with pytest.raises(CacheCapacityError):
        stage.forward("big", _ids(length=2))
    assert stage.session_length("big") == 3


def test_session_lifecycle_errors(tiny_llama: Path) -> None:
    stage = Stage(tiny_llama, 2, 4)
    with pytest.raises(UnknownSessionError):
        stage.forward("nope", torch.randn(1, 2, 128))
    stage.open_session("s")
    with pytest.raises(SessionExistsError):
        stage.open_session("s")
    assert stage.close_session("s") and not stage.close_session("s")
    with pytest.raises(UnknownSessionError):  # closed on purpose is not "evicted"
        stage.forward("s", torch.randn(1, 2, 128))


@pytest.mark.parametrize(
    ("first", "inputs", "kwargs"),
    [
        (True, torch.randn(1, 4), {}),  # floats to stage 0
        (True, torch.tensor([[1, 2, 100000]]), {}),  # token id out of range
        (True, torch.tensor([[1, -2]]), {}),
        (False, torch.randn(1, 4, 64), {}),  # wrong hidden size
        (False, torch.randn(1, 4, 128, dtype=torch.float64), {}),
        (False, torch.randn(1, 4, 128), {"positions": torch.tensor([[0, 1]])}),
        (False, torch.randn(1, 4, 128), {"positions": torch.tensor([[0, 1, 2, 5000]])}),
        (False, torch.randn(1, 4, 128), {"attention_mask": torch.tensor([[1, 2, 1, 1]])}),
    ],
)
def test_bad_inputs_get_stage_input_error(
    tiny_llama: Path, first: bool, inputs: torch.Tensor, kwargs: dict[str, Any]
) -> None:
    stage = Stage(tiny_llama, 0, 1) if first else Stage(tiny_llama, 1, 2)
    stage.open_session("s")
    with pytest.raises(StageInputError):
        stage.forward("s", inputs, **kwargs)
    assert stage.session_length("s") == 0  # a refused request leaves the session as it was


def test_batch_cannot_change_within_a_session(tiny_llama: Path) -> None:
    stage = Stage(tiny_llama, 0, 1)
    stage.open_session("s")
    stage.forward("s", _ids(batch=2))
    with pytest.raises(StageInputError, match="batch"):
        stage.forward("s", _ids(batch=3, length=1))


def test_replay_rebuilds_the_same_cache(tiny_llama: Path) -> None:
    stage = Stage(tiny_llama, 0, 2)
    stage.open_session("s")
    steps = [_ids(batch=2, length=5, seed=1), _ids(batch=2, length=1, seed=2), _ids(batch=2, length=1, seed=3)]
    for x in steps:
        stage.forward("s", x)
    following = _ids(batch=2, length=1, seed=4)
    expected = stage.forward("s", following)

    other = Stage(tiny_llama, 0, 2)
    other.replay("s", [StageInput(x) for x in steps])
    assert other.session_length("s") == 7
    assert torch.equal(other.forward("s", following), expected)


def test_stage_introspection_for_the_daemon(tiny_llama: Path) -> None:
    first, last = Stage(tiny_llama, 0, 2), Stage(tiny_llama, 2, 4)
    assert first.is_first and not first.is_last and last.is_last
    assert first.input_dtype == torch.int64 and last.input_dtype == torch.float32
    assert first.input_shape_ok((2, 7)) and not first.input_shape_ok((2, 7, 128))
    assert last.input_shape_ok((2, 7, 128)) and not last.input_shape_ok((2, 7, 64))
    # 2 layers x K and V x 1 KV head x head_dim 64 x 4 bytes
    assert first.kv_bytes_per_token() == 2 * 2 * 1 * 64 * 4

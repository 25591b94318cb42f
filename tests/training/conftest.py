"""Fixtures for training tests: the corpus kept with the tests, a tiny Llama spec, one torch thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from market.training.model import tiny_llama_config
from market.training.spec import ConfigModelRef, TrainingJobSpec

CORPUS_PATH = Path(__file__).resolve().parents[1] / "data" / "corpus.txt"


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    # The machine is shared: keep torch to one thread; tests that need two set it themselves.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def corpus() -> bytes:
    return CORPUS_PATH.read_bytes()


@pytest.fixture(scope="session")
def make_spec() -> Callable[..., TrainingJobSpec]:
    def make(**overrides: Any) -> TrainingJobSpec:
        fields: dict[str, Any] = {
            "model": ConfigModelRef(config=tiny_llama_config(), init_seed=7),
            "seq_len": 64,
            "batch_size": 8,
            "inner_steps": 10,
            "rounds": 3,
            "workers_per_round": 3,
            "inner_lr": 3e-3,
            "compression": "none",
            "seed": 11,
            "round_timeout_s": 60.0,
        }
        fields.update(overrides)
        return TrainingJobSpec(**fields)

    return make

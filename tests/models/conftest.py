"""A tiny deterministic Llama model built once per test session (hidden 128, 4 layers, GQA 2:1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from globai.models.tiny import build_tiny_llama


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    # The test machine is shared by several runners: one thread avoids OpenMP barrier stalls when
    # cores are oversubscribed, and the tiny models gain nothing from more.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(out, hidden=128, layers=4, seed=0)
    return out

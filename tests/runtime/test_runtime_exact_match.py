"""Greedy generation through the market and real worker connections equals the unsharded model's `generate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eth_account.signers.local import LocalAccount

from market.models.reference import generate_reference
from tests.runtime.conftest import InProcessWorker, MarketServer, Requester

SPLITS = {1: ["0:4"], 2: ["0:2", "2:4"], 4: ["0:1", "1:2", "2:3", "3:4"]}
NEW_TOKENS = 10


def _prompts(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_stages", [1, 2, 4])
def test_greedy_through_market_equals_generate(
    n_stages: int, market: MarketServer, requester: Requester, staked: list[LocalAccount], tiny_model: Path,
    tmp_path: Path,
) -> None:
    workers = [InProcessWorker.start(market, staked[i], layers, tmp_path / f"w{i}")
               for i, layers in enumerate(SPLITS[n_stages])]
    try:
        market.wait_workers(n_stages)
        prompt = _prompts(batch=3, length=7, seed=n_stages)
        expected = generate_reference(tiny_model, prompt, NEW_TOKENS)
        done = requester.generate(prompt.tolist(), NEW_TOKENS)
        assert done["tokens"] == expected.tolist()
        assert [hop["layers"] for hop in done["route"]] == [[int(x) for x in s.split(":")] for s in SPLITS[n_stages]]
        assert done["failovers"] == 0
    finally:
        for w in workers:
            w.stop()

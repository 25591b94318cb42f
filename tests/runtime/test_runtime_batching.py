"""Continuous batching through the market and real worker connections: concurrent requests' decode steps run
as batched forwards on the workers, and every request's greedy tokens equal its own unsharded `generate`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount

from globai.models.reference import generate_reference
from tests.runtime.conftest import InProcessWorker, MarketServer, Requester

NEW_TOKENS = 12
# Different lengths (and one batch of two) so the merged caches are padded differently at every step.
SHAPES = [(1, 5), (2, 9), (1, 3), (1, 12)]


def test_concurrent_requests_batch_on_workers_and_equal_generate(
    market: MarketServer, staked: list[LocalAccount], tiny_model: Path, tmp_path: Path
) -> None:
    workers = [
        InProcessWorker.start(market, staked[i], layers, tmp_path / f"w{i}") for i, layers in enumerate(["0:2", "2:4"])
    ]
    requesters = [Requester(market, Account.from_key(bytes([0x90 + i]) * 32)) for i in range(len(SHAPES))]
    try:
        market.wait_workers(2)
        prompts = [
            torch.randint(3, 500, shape, generator=torch.Generator().manual_seed(20 + i))
            for i, shape in enumerate(SHAPES)
        ]
        expected = [generate_reference(tiny_model, p, NEW_TOKENS).tolist() for p in prompts]
        with ThreadPoolExecutor(len(prompts)) as pool:
            done = list(
                pool.map(lambda rp: rp[0].generate(rp[1].tolist(), NEW_TOKENS), zip(requesters, prompts, strict=True))
            )
        assert [d["tokens"] for d in done] == expected
        assert all(d["failovers"] == 0 for d in done)
        servers = [w.daemon.server for w in workers]
        assert all(s is not None for s in servers)
        # the steps did meet on the workers: batched forwards of several sessions ran on both stages
        assert [s.largest_merge >= 2 for s in servers if s is not None] == [True, True], [
            (s.merged_steps, s.largest_merge) for s in servers if s is not None
        ]
    finally:
        for r in requesters:
            r.http.close()
        for w in workers:
            w.stop()

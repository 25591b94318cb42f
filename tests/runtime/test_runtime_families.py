"""Every decoder family in the registry, through the market and real worker processes, equals its unsharded
model's greedy `generate` token for token: splits of 2 and 3 stages, a left-padded batch.

Adding a family to `globai.models.families` adds it here. Tiny random models (hidden 128, 3 layers, built from
a seed: no weights for these families install here); the first worker serves layer 0 for both splits, so each
family starts four `globai worker run` processes.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account.signers.local import LocalAccount

from globai.dev.forker import Process
from globai.models.families import family_names, get_family
from globai.models.reference import generate_reference
from globai.models.tiny import build_tiny_model
from tests.runtime.conftest import MarketServer, Requester, serve_market, worker_process

DECODERS = [name for name in family_names() if get_family(name).task == "causal-lm"]
HIDDEN, LAYERS, NEW_TOKENS = 128, 3, 8
# Unequal prompts: the coordinator left-pads them (lengths 7, 4 and 6).
PROMPTS = [
    [17, 301, 44, 90, 250, 12, 7],
    [150, 3, 480, 66],
    [201, 9, 333, 72, 140, 58],
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny model per decoder family."""
    root = tmp_path_factory.mktemp("family-models")
    for name in DECODERS:
        manifest = build_tiny_model(root / name, family=name, hidden=HIDDEN, layers=LAYERS, seed=0)
        assert manifest.family == name
    return root


@pytest.fixture(scope="module")
def market(
    models_dir: Path, deployment: Any, anvil: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MarketServer]:
    """This module's market serves the family models."""
    yield from serve_market(models_dir, deployment, anvil, tmp_path_factory)


def _padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def _wait_route(market: MarketServer, model: str, ranges: set[tuple[int, int]], procs: list, logs: list[Path]) -> None:
    """Until exactly `ranges` are live for `model` (a stopped worker's link must be gone before the next split)."""
    deadline = time.monotonic() + 120
    while {(link.layer_start, link.layer_end) for link in market.coordinator.links.live(model)} != ranges or len(
        market.coordinator.links.live(model)
    ) != len(ranges):
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(log.read_text()[-1500:] for log in logs if log.exists())
            raise AssertionError(f"workers for {model} {sorted(ranges)} did not connect:\n{tails}")
        time.sleep(0.05)


def _stop(procs: list[Process]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.parametrize("family", DECODERS)
def test_family_through_worker_processes_equals_generate(
    family: str,
    models_dir: Path,
    market: MarketServer,
    requester: Requester,
    staked: list[LocalAccount],
    tmp_path: Path,
) -> None:
    model_dir = models_dir / family
    manifest = market.coordinator.catalog.get(f"tiny-{family}-h{HIDDEN}-l{LAYERS}-s0").manifest
    ids, mask = _padded(PROMPTS, int(manifest.config["pad_token_id"]))
    expected = generate_reference(model_dir, ids, NEW_TOKENS, attention_mask=mask).tolist()
    # A model that repeats one token would match almost any bug: the reference must say something varied.
    assert len({t for row in expected for t in row}) >= NEW_TOKENS, expected

    def start(account: LocalAccount, layers: str) -> Process:
        log = tmp_path / f"{layers.replace(':', '-')}.log"
        logs.append(log)
        return worker_process(market, account, layers, tmp_path / f"cache-{layers}", log, model=manifest.name)

    logs: list[Path] = []
    first, two_layers = start(staked[0], "0:1"), start(staked[1], "1:3")
    procs = [first, two_layers]
    try:
        _wait_route(market, manifest.name, {(0, 1), (1, 3)}, procs, logs)
        done = requester.generate(PROMPTS, NEW_TOKENS, model=manifest.name)
        assert [hop["layers"] for hop in done["route"]] == [[0, 1], [1, 3]]
        assert done["tokens"] == expected

        _stop([two_layers])
        procs += [start(staked[2], "1:2"), start(staked[3], "2:3")]
        _wait_route(market, manifest.name, {(0, 1), (1, 2), (2, 3)}, procs[2:], logs)
        done = requester.generate(PROMPTS, NEW_TOKENS, model=manifest.name)
        assert [hop["layers"] for hop in done["route"]] == [[0, 1], [1, 2], [2, 3]]
        assert done["tokens"] == expected
    finally:
        _stop(procs)

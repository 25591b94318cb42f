"""The real SmolLM2-135M-Instruct through the market and real worker connections (in-process daemons on real
sockets): greedy tokens equal the unsharded model's `generate` at 2 and 4 stages on a left-padded batch, and a
chat request ends at the model's end-of-sequence token with finish_reason "stop" and the expected answer.

One market, one reference generation and one imported model (the session's `smollm2` fixture) for the module:
the real model costs seconds per step on the shared cores, so these are the only real-model pipeline tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount

from globai.models.manifest import load_manifest
from globai.models.reference import generate_reference
from globai.models.tokenizer import load_tokenizer
from market.coordinator.chat import render_chat
from market.coordinator.service import left_pad
from tests.runtime.conftest import InProcessWorker, MarketServer, Requester, serve_market

SPLITS = {2: ["0:15", "15:30"], 4: ["0:8", "8:15", "15:23", "23:30"]}
NEW_TOKENS = 10
QUESTIONS = ["What is the capital of France?", "Name a primary colour."]


@pytest.fixture(scope="module")
def real_market(
    smollm2: Path, deployment: Any, anvil: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MarketServer]:
    yield from serve_market(smollm2.parent, deployment, anvil, tmp_path_factory)


@pytest.fixture(scope="module")
def requester(real_market: MarketServer, smollm2: Path) -> Iterator[Requester]:
    r = Requester(real_market, Account.from_key(b"\x78" * 32), model=load_manifest(smollm2).name)
    yield r
    r.http.close()


@pytest.fixture(scope="module")
def batch(smollm2: Path) -> tuple[list[list[int]], torch.Tensor]:
    """Two chat prompts of different lengths (left-padded together) and the unsharded model's greedy tokens."""
    manifest = load_manifest(smollm2)
    tokenizer = load_tokenizer(smollm2, manifest)
    ids = [render_chat(tokenizer, manifest, [{"role": "user", "content": q}]) for q in QUESTIONS]
    assert len(ids[0]) != len(ids[1])
    prompt, mask = left_pad(ids, manifest.generation.pad_token_id)  # type: ignore[union-attr,arg-type]
    return ids, generate_reference(smollm2, prompt, NEW_TOKENS, attention_mask=mask)


def _workers(
    market: MarketServer, accounts: list[LocalAccount], split: list[str], tmp: Path, model: str
) -> list[InProcessWorker]:
    return [
        InProcessWorker.start(market, accounts[i], layers, tmp / f"w{i}", model=model) for i, layers in enumerate(split)
    ]


@pytest.mark.parametrize("n_stages", [2, 4])
def test_smollm2_greedy_through_workers_equals_generate(
    n_stages: int,
    real_market: MarketServer,
    requester: Requester,
    staked: list[LocalAccount],
    batch: tuple[list[list[int]], torch.Tensor],
    smollm2: Path,
    tmp_path: Path,
) -> None:
    ids, expected = batch
    workers = _workers(real_market, staked, SPLITS[n_stages], tmp_path, requester.model)
    try:
        real_market.wait_workers(n_stages, timeout=180, model=requester.model)
        done = requester.generate(ids, NEW_TOKENS, ignore_eos=True)
        assert done["tokens"] == expected.tolist()
        assert [hop["layers"] for hop in done["route"]] == [[int(x) for x in s.split(":")] for s in SPLITS[n_stages]]
        assert done["finish_reason"] == ["length", "length"]
        if n_stages == 2:
            # The same question as a chat request: rendered by the market, it stops at <|im_end|> by itself.
            chat = requester.generate([], 40, messages=[[{"role": "user", "content": QUESTIONS[0]}]])
            eos = load_manifest(smollm2).generation.eos_token_ids  # type: ignore[union-attr]
            assert chat["finish_reason"] == ["stop"]
            assert chat["tokens"][0][-1] in eos and len(chat["tokens"][0]) < 40
            assert "Paris" in chat["text"][0] and "<|im_end|>" not in chat["text"][0]
            assert "".join(e["text"][0] for e in chat["events"] if e["event"] == "token") == chat["text"][0]
    finally:
        for w in workers:
            w.stop()


def test_smollm2_stores_its_tied_embedding_once(smollm2: Path) -> None:
    """134.5M parameters, not 163M: the LM head is the embedding matrix, kept in the embed shard only."""
    from globai.models.hf import load_full_model
    from globai.models.manifest import parameter_count

    manifest = load_manifest(smollm2)
    assert manifest.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert manifest.shard("head").tensors == ["model.norm.weight"]
    _, model = load_full_model(smollm2)
    unique = sum(p.numel() for p in model.parameters())
    assert parameter_count(smollm2, manifest) == unique
    assert 134e6 < unique < 135e6
    assert sum(s.size for s in manifest.shards) < 4 * unique + 1_000_000  # float32 bytes, headers aside

"""Greedy generation through the market and real worker connections equals the unsharded model's `generate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eth_account.signers.local import LocalAccount

from globai.models.reference import generate_reference
from tests.runtime.conftest import InProcessWorker, MarketServer, Requester

SPLITS = {1: ["0:4"], 2: ["0:2", "2:4"], 4: ["0:1", "1:2", "2:3", "3:4"]}
NEW_TOKENS = 10


def _prompts(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_stages", [1, 2, 4])
def test_greedy_through_market_equals_generate(
    n_stages: int,
    market: MarketServer,
    requester: Requester,
    staked: list[LocalAccount],
    tiny_model: Path,
    tmp_path: Path,
) -> None:
    workers = [
        InProcessWorker.start(market, staked[i], layers, tmp_path / f"w{i}")
        for i, layers in enumerate(SPLITS[n_stages])
    ]
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


def test_seeded_sampling_and_signed_evidence(
    market: MarketServer, requester: Requester, staked: list[LocalAccount], tiny_model: Path, tmp_path: Path
) -> None:
    from sqlalchemy import select

    from globai.models.reference import run_pipeline_local
    from globai.protocol.commitments import SignedCommitment, tensor_sha256, verify_commitment
    from globai.protocol.sampling import Sampler, SamplingParams
    from globai.protocol.tensors import decode_message
    from market.db.engine import make_engine, make_session_factory
    from market.db.inference import StageCommitment, StageRecord
    from tests.runtime.test_runtime_failover import wait_finished
    from worker.stage import Stage

    workers = [
        InProcessWorker.start(market, staked[i], layers, tmp_path / f"w{i}") for i, layers in enumerate(["0:2", "2:4"])
    ]
    try:
        market.wait_workers(2)
        prompt = _prompts(batch=2, length=40, seed=11)  # > 32 positions: full chunks get committed mid-run
        params = {"temperature": 0.9, "top_p": 0.8, "seed": 1234}
        first = requester.generate(prompt.tolist(), 8, **params)
        second = requester.generate(prompt.tolist(), 8, **params)
        assert first["tokens"] == second["tokens"]
        local = run_pipeline_local(
            [Stage(tiny_model, 0, 2), Stage(tiny_model, 2, 4)], prompt, 8, sample=Sampler(SamplingParams(**params))
        )
        assert first["tokens"] == local.tolist()

        info = wait_finished(requester, first["id"])
        assert info["status"] == "completed"
        engine = make_engine(market.settings.database_url)
        with make_session_factory(engine)() as session:
            records = session.scalars(select(StageRecord).where(StageRecord.run_id == first["id"])).all()
            rows = session.scalars(select(StageCommitment).where(StageCommitment.run_id == first["id"])).all()
        engine.dispose()
        assert sorted({(r.layer_start, r.step) for r in records}) == [(s, t) for s in (0, 2) for t in range(8)]
        assert all(market.coordinator.blobs.has(r.input_blob) for r in records)
        chunks = [r for r in rows if r.chunk_index is not None]
        roots = [r for r in rows if r.chunk_index is None]
        assert {r.worker_address for r in roots} == {staked[0].address, staked[1].address}
        for row in chunks:
            signed = SignedCommitment.from_json(row.body)
            assert verify_commitment(signed, row.worker_address)
        # stage 0 committed 2 sequences x 2 chunks (positions 0..46); the last stage one chunk per sequence
        assert len([r for r in chunks if r.stage == 0]) == 4 and len([r for r in chunks if r.stage == 2]) == 2
        # Binding: each answer's signed hash is stored with it; stage 0's committed rows are exactly what it sent,
        # and what it sent is, byte for byte, stage 2's recorded input at the same step.
        blobs = market.coordinator.blobs
        by_step = {(r.layer_start, r.step): r for r in records}
        sent_rows: dict[int, list[torch.Tensor]] = {}
        for step in range(8):
            rec, nxt = by_step[(0, step)], by_step[(2, step)]
            assert rec.sent_signature and rec.output_blob
            output = decode_message(blobs.get(rec.output_blob), max_bytes=1 << 26).tensors[0]
            assert tensor_sha256(output).hex() == rec.output_sha256
            assert torch.equal(decode_message(blobs.get(nxt.input_blob), max_bytes=1 << 26).tensors[0], output)
            for seq in range(output.shape[0]):
                sent_rows.setdefault(seq, []).extend(output[seq])
        for row in (r for r in chunks if r.stage == 0):
            c = SignedCommitment.from_json(row.body).commitment
            seq, pc = c.chunk_index >> 32, c.chunk_index & 0xFFFFFFFF
            assert tensor_sha256(torch.stack(sent_rows[seq][pc * 32 : pc * 32 + 32])) == c.output_sha256
    finally:
        for w in workers:
            w.stop()


def test_stop_strings_end_a_sequence_and_are_not_returned(
    market: MarketServer, requester: Requester, staked: list[LocalAccount], tmp_path: Path
) -> None:
    """The tiny model has no EOS in its manifest (it never stops early); a stop string taken from its own output
    ends that sequence with finish_reason "stop", the text stops before it, the other sequence runs to length."""
    workers = [
        InProcessWorker.start(market, staked[i], layers, tmp_path / f"w{i}") for i, layers in enumerate(["0:2", "2:4"])
    ]
    try:
        market.wait_workers(2)
        prompts = ["Once upon a time", "The market"]
        free = requester.generate([], 12, prompts=prompts)
        assert free["finish_reason"] == ["length", "length"]
        text = free["text"][0]
        # Three characters from the middle of sequence 0's text that sequence 1's text does not contain.
        stop = next(
            text[i : i + 3]
            for i in range(len(text) // 2, len(text) - 2)
            if text[i : i + 3].strip() and text[i : i + 3] not in free["text"][1]
        )
        stopped = requester.generate([], 12, prompts=prompts, stop=[stop])
        assert stopped["finish_reason"] == ["stop", "length"]
        assert stopped["text"][0] == text[: text.index(stop)]
        assert stopped["text"][1] == free["text"][1]
        assert len(stopped["tokens"][0]) < 12 and stopped["tokens"][0] == free["tokens"][0][: len(stopped["tokens"][0])]
        streamed = "".join(e["text"][0] for e in stopped["events"] if e["event"] == "token")
        assert streamed == stopped["text"][0]
    finally:
        for w in workers:
            w.stop()

"""Stages chained in-process must reproduce the unsharded model exactly (Petals' test_block_exact_match idea)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from globai.models.reference import (
    Recorded,
    generate_reference,
    prefill_positions,
    reference_logits,
    run_pipeline_local,
)
from globai.models.tiny import build_tiny_llama
from globai.protocol.sampling import Sampler, SamplingParams
from globai.protocol.tensors import decode_message, encode_message, validate_tensor
from worker.stage import Stage, StageInput

SPLITS = {1: [0, 4], 2: [0, 2, 4], 4: [0, 1, 2, 3, 4]}
NEW_TOKENS = 12


def _stages(model_dir: Path, n: int) -> list[Stage]:
    bounds = SPLITS[n]
    return [Stage(model_dir, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def _prompts(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_stages", [1, 2, 4])
def test_greedy_tokens_equal_generate(tiny_llama: Path, n_stages: int) -> None:
    prompt = _prompts(batch=2, length=9, seed=n_stages)
    expected = generate_reference(tiny_llama, prompt, NEW_TOKENS)
    got = run_pipeline_local(_stages(tiny_llama, n_stages), prompt, NEW_TOKENS)
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("n_stages", [2, 4])
def test_left_padded_batch_equals_generate(tiny_llama: Path, n_stages: int) -> None:
    prompt = _prompts(batch=3, length=8, seed=10 + n_stages)
    mask = torch.ones_like(prompt)
    mask[0, :3] = 0  # sequences of 5, 8 and 6 real tokens, left-padded
    mask[2, :2] = 0
    prompt = prompt.masked_fill(mask == 0, 0)
    expected = generate_reference(tiny_llama, prompt, NEW_TOKENS, attention_mask=mask)
    got = run_pipeline_local(_stages(tiny_llama, n_stages), prompt, NEW_TOKENS, attention_mask=mask)
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("n_stages", [1, 2, 4])
def test_prefill_logits_bit_identical(tiny_llama: Path, n_stages: int) -> None:
    prompt = _prompts(batch=2, length=16, seed=20)
    expected = reference_logits(tiny_llama, prompt)
    hidden: torch.Tensor = prompt
    for stage in _stages(tiny_llama, n_stages):
        hidden = stage.forward(None, hidden)
    assert hidden.dtype == expected.dtype and torch.equal(hidden, expected)


def test_chunked_prefill_continues_the_cache(tiny_llama: Path) -> None:
    # Multi-token chunks after the first need layer_idx=first layer in the mask (TOOLCHAIN.md).
    prompt = _prompts(batch=1, length=12, seed=30)
    expected = reference_logits(tiny_llama, prompt)
    stages = _stages(tiny_llama, 2)
    for stage in stages:
        stage.open_session("s")
    outs = []
    for chunk in (prompt[:, :5], prompt[:, 5:9], prompt[:, 9:]):
        hidden = chunk
        for stage in stages:
            hidden = stage.forward("s", hidden)
        outs.append(hidden)
    got = torch.cat(outs, dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert stages[1].session_length("s") == 12


def test_failover_replay_rebuilds_cache_and_output_is_identical(tiny_llama: Path) -> None:
    prompt = _prompts(batch=2, length=7, seed=40)
    expected = generate_reference(tiny_llama, prompt, NEW_TOKENS)
    stages: list[Stage] = _stages(tiny_llama, 4)
    record: Recorded = []

    def kill_stage_two(step: int) -> None:
        if step != 5:
            return
        # The worker serving layer 2 vanished: a fresh one replays everything stage 2 was sent so far.
        replacement = Stage(tiny_llama, 2, 3)
        replayed = [StageInput(x, pos, mask) for index, x, pos, mask in record if index == 2]
        replacement.replay("local", replayed)
        stages[2] = replacement

    got = run_pipeline_local(stages, prompt, NEW_TOKENS, record=record, on_step=kill_stage_two)
    assert got.tolist() == expected.tolist()


def test_seeded_sampling_is_reproducible_through_the_pipeline(tiny_llama: Path) -> None:
    prompt = _prompts(batch=2, length=6, seed=50)
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=1234)
    first = run_pipeline_local(_stages(tiny_llama, 2), prompt, 8, sample=Sampler(params))
    second = run_pipeline_local(_stages(tiny_llama, 2), prompt, 8, sample=Sampler(params))
    assert first.tolist() == second.tolist()


def test_prefill_positions_match_generate_convention() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert prefill_positions(mask).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def test_bfloat16_model_is_exact_too(tmp_path: Path) -> None:
    # RoPE's inv_freq stays float32 in both the stages and the reference, as from_pretrained keeps it.
    model_dir = tmp_path / "bf16"
    build_tiny_llama(model_dir, hidden=64, layers=2, dtype="bfloat16")
    prompt = _prompts(batch=2, length=6, seed=60)
    stages = [Stage(model_dir, 0, 1), Stage(model_dir, 1, 2)]
    assert run_pipeline_local(stages, prompt, 8).tolist() == generate_reference(model_dir, prompt, 8).tolist()
    hidden: torch.Tensor = prompt
    for stage in stages:
        hidden = stage.forward(None, hidden)
    assert hidden.dtype == torch.bfloat16 and torch.equal(hidden, reference_logits(model_dir, prompt))


class WireStage:
    """A stage reached through the binary codec both ways, as the coordinator will reach a worker."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.is_last = stage.is_last

    def open_session(self, session_id: str) -> None:
        self.stage.open_session(session_id)

    def close_session(self, session_id: str) -> bool:
        return self.stage.close_session(session_id)

    def forward(
        self,
        session_id: str | None,
        inputs: torch.Tensor,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        last_token_only: bool = False,
    ) -> torch.Tensor:
        tensors = [inputs, positions if positions is not None else torch.empty(0, dtype=torch.int64)]
        if attention_mask is not None:
            tensors.append(attention_mask)
        request = encode_message({"op": "forward", "session": session_id, "last": last_token_only}, tensors)
        msg = decode_message(request, max_bytes=1 << 24)
        x = validate_input(self.stage, msg.tensors[0])
        pos = msg.tensors[1] if msg.tensors[1].numel() else None
        out = self.stage.forward(
            msg.header["session"],
            x,
            pos,
            msg.tensors[2] if len(msg.tensors) > 2 else None,
            last_token_only=msg.header["last"],
        )
        return decode_message(encode_message({"op": "result"}, [out]), max_bytes=1 << 24).tensors[0]


def validate_input(stage: Stage, tensor: torch.Tensor) -> torch.Tensor:
    validate_tensor(tensor, expected_dtype=stage.input_dtype, expected_shape=stage.input_shape_ok)
    return tensor


def test_exact_match_survives_the_wire_codec(tiny_llama: Path) -> None:
    prompt = _prompts(batch=2, length=8, seed=70)
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0
    expected = generate_reference(tiny_llama, prompt, NEW_TOKENS, attention_mask=mask)
    stages = [WireStage(s) for s in _stages(tiny_llama, 2)]
    assert run_pipeline_local(stages, prompt, NEW_TOKENS, attention_mask=mask).tolist() == expected.tolist()

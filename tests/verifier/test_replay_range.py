"""What a replica is sent for a sampled sequence (`verify_replay.chunk_replay`): one prefill of that sequence from
position 0, whose answer holds the row of every committed position in chunks 0..c (so one replay checks them all),
with the recorded inputs of that sequence alone."""

from __future__ import annotations

import pytest
import torch

from market.coordinator.verify_replay import RecordedCall, RecordedPart, chunk_replay
from market.domain_errors import NotFound

PROMPT, STEPS, BATCH, WIDTH = 40, 30, 3, 8


def recorded(last_token_only: bool) -> RecordedPart:
    """A batch of 3 sequences: a prefill of 40 positions, then 30 one-token decode steps."""
    g = torch.Generator().manual_seed(5)
    calls = [
        RecordedCall(
            0,
            0,
            last_token_only,
            [torch.randn(BATCH, PROMPT, WIDTH, generator=g), torch.arange(PROMPT).expand(BATCH, PROMPT)],
        )
    ]
    for step in range(STEPS):
        pos = PROMPT + step
        calls.append(
            RecordedCall(
                step + 1, pos, last_token_only, [torch.randn(BATCH, 1, WIDTH, generator=g), torch.full((BATCH, 1), pos)]
            )
        )
    committed = ([PROMPT - 1] if last_token_only else list(range(PROMPT))) + list(range(PROMPT, PROMPT + STEPS))
    return RecordedPart("m", 0, 2, calls, committed)


def inputs_of(part: RecordedPart, seq: int) -> torch.Tensor:
    return torch.cat([c.tensors[0][seq : seq + 1] for c in part.calls], dim=1)


def test_hidden_states_one_prefill_answers_every_chunk_up_to_c() -> None:
    part = recorded(last_token_only=False)
    replay = chunk_replay(part, 1 << 32 | 1)  # sequence 1, chunks 0 and 1: positions [0, 64)
    (call,) = replay.calls
    assert call.first_position == 0 and not call.last_token_only
    assert torch.equal(call.tensors[0], inputs_of(part, 1)[:, :64])
    assert replay.positions == list(range(64)) and replay.rows == list(range(64))
    last = chunk_replay(part, 2 << 32 | 2)  # the sequence's last chunk: the whole sequence, 70 positions
    assert last.positions == list(range(PROMPT + STEPS)) and last.calls[0].tensors[0].shape[1] == PROMPT + STEPS


def test_logits_prefix_fills_the_cache_then_every_committed_row_comes_back() -> None:
    part = recorded(last_token_only=True)
    replay = chunk_replay(part, 0 << 32 | 2)
    prefix, window = replay.calls
    assert prefix.last_token_only and prefix.first_position == 0 and prefix.tensors[0].shape[1] == PROMPT - 1
    assert not window.last_token_only and window.first_position == PROMPT - 1
    assert replay.positions == list(range(PROMPT - 1, PROMPT + STEPS))  # chunks 1 and 2: every committed row
    assert replay.rows == list(range(len(replay.positions)))
    whole = torch.cat([prefix.tensors[0], window.tensors[0]], dim=1)
    assert torch.equal(whole, inputs_of(part, 0))


def test_a_chunk_without_committed_rows_or_a_missing_sequence_is_not_found() -> None:
    with pytest.raises(NotFound):
        chunk_replay(recorded(last_token_only=True), 0)  # chunk 0 of the logits stage holds no committed row
    with pytest.raises(NotFound):
        chunk_replay(recorded(last_token_only=False), BATCH << 32)

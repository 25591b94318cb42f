"""`verify_replay.chunk_replay` (pure): a replay is one ordinary batch-1 session on the wire (a prompt prefill
answering every row - on the last stage a prompt-scoring request's - then 0..1 one-token decode steps, no padding,
no mask), and its answers' rows are the audited sequence's rows of chunks 0..c at the right positions (one replay
checks them all)."""

from __future__ import annotations

import random

import pytest
import torch

from globai.models.reference import prefill_positions
from market.coordinator.verify_replay import (
    MAX_DECODE_STEPS,
    ChunkReplay,
    RecordedCall,
    RecordedPart,
    chunk_replay,
    gather_rows,
    with_claimed_padding,
)

HIDDEN = 4


def recorded(
    lengths: list[int], new_tokens: int, *, last: bool, scored: bool = False
) -> tuple[RecordedPart, torch.Tensor]:
    """A left-padded batch run as the coordinator records it (`scored`: a scoring run, whose last-stage prefill
    answered every row); every input row holds (sequence, column) so an identity stage's answers say where each
    row came from. Returns the part and the inputs [B, T, hidden]."""
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.int64)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    total = width + new_tokens
    x = torch.zeros(len(lengths), total, HIDDEN)
    for b in range(len(lengths)):
        x[b, :, 0] = b
        x[b, :, 1] = torch.arange(total, dtype=torch.float32)
    positions = prefill_positions(mask)
    prefill_last_only = last and not scored
    calls = [RecordedCall(0, 0, prefill_last_only, [x[:, :width], positions, mask])]
    last_pos = positions[:, -1:]
    committed = [width - 1] if prefill_last_only else list(range(width))
    for step in range(1, new_tokens + 1):
        last_pos = last_pos + 1
        col = width + step - 1
        calls.append(RecordedCall(step, col, last, [x[:, col : col + 1], last_pos]))
        committed.append(col)
    return RecordedPart("m", 2, 4, calls, committed, last_stage=last), x


def identity_answers(replay: ChunkReplay) -> list[torch.Tensor]:
    """What an identity stage answers each call: the last row when asked for the last token only, else every row."""
    return [c.tensors[0][:, -1:] if c.last_token_only else c.tensors[0] for c in replay.calls]


@pytest.mark.parametrize(("last", "scored"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("max_rows", [None, 50])
def test_replay_is_an_ordinary_session_and_its_rows_are_the_chunks(
    last: bool, scored: bool, max_rows: int | None
) -> None:
    lengths, new_tokens = [40, 13, 70], 60
    part, x = recorded(lengths, new_tokens, last=last, scored=scored)
    width = max(lengths)
    prefill_lengths, session_lengths, decodes = set(), set(), set()
    for seed in range(40):
        for seq in range(len(lengths)):
            pad = width - lengths[seq]
            for pc in sorted({p // 32 for p in part.committed}):
                rng = random.Random(seed * 1000 + seq * 10 + pc)
                replay = chunk_replay(part, (seq << 32) | pc, rng, max_prefill_rows=max_rows)
                committed = [p for p in part.committed if p // 32 == pc]
                upto = [p for p in part.committed if p // 32 <= pc]  # every chunk of the sequence up to c
                assert replay.positions == [p for p in upto if p >= pad]
                if not replay.positions:
                    assert replay.calls == []
                    continue
                calls = replay.calls
                # The wire shape of an ordinary generation of one prompt.
                assert [c.step for c in calls] == list(range(len(calls)))
                a = int(calls[0].tensors[0].shape[1])
                assert calls[0].first_position == 0 and a >= 1
                assert torch.equal(calls[0].tensors[1], torch.arange(a).view(1, a))
                for k, c in enumerate(calls[1:], start=1):
                    assert c.first_position == a + k - 1
                    assert list(c.tensors[0].shape[:2]) == [1, 1] and torch.equal(
                        c.tensors[1], torch.tensor([[a + k - 1]])
                    )
                assert all(len(c.tensors) == 2 and c.tensors[0].shape[0] == 1 for c in calls)  # no mask, batch 1
                # The prefill answers every row (a scoring request's on the last stage), decode steps as always.
                assert not calls[0].last_token_only and all(c.last_token_only == last for c in calls[1:])
                session = a + len(calls) - 1
                assert session >= replay.positions[-1] + 1 - pad  # past the chunk's end
                if last and max_rows is not None and a == max_rows:
                    assert session - a >= 0  # a long sequence: prefilled up to the bound, decoded on from there
                else:
                    assert len(calls) - 1 <= MAX_DECODE_STEPS  # few decode steps: the cost of one prefill
                    decodes.add(len(calls) - 1)
                if last and max_rows is not None:
                    assert a <= max_rows
                prefill_lengths.add(a % 32)
                session_lengths.add(session % 32)
                # Its answers hold the audited rows: (sequence, column) of each compared position.
                rows = gather_rows(replay, identity_answers(replay))[0]
                assert rows[:, 0].tolist() == [seq] * len(replay.positions)
                assert rows[:, 1].tolist() == [float(p) for p in replay.positions]
                # Padding rows of chunk c are completed from the claim, the rest come from the replay.
                claimed = x[seq, committed] + 100.0
                mine = [i for i, p in enumerate(replay.positions) if p // 32 == pc]
                full = with_claimed_padding(rows[mine], [replay.positions[i] for i in mine], committed, claimed)
                for i, p in enumerate(committed):
                    want = x[seq, p] if p >= pad else claimed[i]
                    assert torch.equal(full[i], want)
    # Neither the prompt length nor the session length follows the chunk grid; every decode count 0..1 occurs.
    # (With a small prefill bound on the last stage many prefills stop at the bound.)
    assert len(session_lengths) > 16 and (len(prefill_lengths) > 16 or (last and max_rows is not None))
    assert decodes == set(range(MAX_DECODE_STEPS + 1))

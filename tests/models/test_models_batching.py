"""Continuous batching on one stage: concurrent sessions' steps in one forward equal each session run alone."""

from __future__ import annotations

from pathlib import Path

import torch

from globai.models.reference import prefill_positions
from worker.models.errors import UnknownSessionError
from worker.stage import Stage, Step

PROMPTS = {  # different lengths; "b" is a batch of two with left padding in its first row
    "a": (torch.randint(3, 500, (1, 5), generator=torch.Generator().manual_seed(1)), None),
    "b": (
        torch.randint(3, 500, (2, 9), generator=torch.Generator().manual_seed(2)),
        torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 9]),
    ),
    "c": (torch.randint(3, 500, (1, 3), generator=torch.Generator().manual_seed(3)), None),
}
STEPS = 10


def _active(step: int) -> list[str]:
    """Sequences join and leave between steps: "c" joins at step 3, "a" leaves after step 6."""
    return [k for k in PROMPTS if not (k == "c" and step < 3) and not (k == "a" and step > 6)]


def _decode(
    stage: Stage, tag: str, merged: bool
) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
    tokens: dict[str, list[torch.Tensor]] = {k: [] for k in PROMPTS}
    logits: dict[str, list[torch.Tensor]] = {k: [] for k in PROMPTS}
    nxt, pos = {}, {}
    for k, (prompt, mask) in PROMPTS.items():
        stage.open_session(tag + k)
        positions = prefill_positions(mask if mask is not None else torch.ones_like(prompt))
        out = stage.forward(tag + k, prompt, positions, mask, last_token_only=True)
        nxt[k], pos[k] = out[:, -1].argmax(-1, keepdim=True), positions[:, -1:] + 1
    for step in range(STEPS):
        active = _active(step)
        if merged:
            outs = stage.forward_many([Step(tag + k, nxt[k], pos[k]) for k in active], last_token_only=True)
        else:
            outs = [stage.forward(tag + k, nxt[k], pos[k], last_token_only=True) for k in active]
        for k, out in zip(active, outs, strict=True):
            assert isinstance(out, torch.Tensor), out
            logits[k].append(out[:, -1])
            nxt[k], pos[k] = out[:, -1].argmax(-1, keepdim=True), pos[k] + 1
            tokens[k].append(nxt[k])
    return tokens, logits


def test_merged_steps_equal_each_session_alone(tiny_llama: Path) -> None:
    stage = Stage(tiny_llama, 0, 4)
    assert stage.can_merge_sessions
    alone_tokens, alone_logits = _decode(stage, "alone-", merged=False)
    merged_tokens, merged_logits = _decode(stage, "merged-", merged=True)
    for k in PROMPTS:
        assert torch.equal(torch.cat(merged_tokens[k], 1), torch.cat(alone_tokens[k], 1)), k
        for alone, merged in zip(alone_logits[k], merged_logits[k], strict=True):
            torch.testing.assert_close(merged, alone, rtol=0, atol=1e-5)  # float rounding of wider matmuls only
        # the merged session's cache holds exactly its own tokens afterwards
        assert stage.session_length("merged-" + k) == stage.session_length("alone-" + k)


def test_a_failing_step_does_not_stop_the_others(tiny_llama: Path) -> None:
    first, last = Stage(tiny_llama, 0, 2), Stage(tiny_llama, 2, 4)
    for s in ("x", "y"):
        first.open_session(s)
    ids = torch.tensor([[5, 6, 7]])
    for s in ("x", "y"):
        first.forward(s, ids)
    out = first.forward_many(
        [Step("x", torch.tensor([[8]])), Step("nobody", torch.tensor([[8]])), Step("y", torch.tensor([[9]]))]
    )
    assert isinstance(out[1], UnknownSessionError)
    assert isinstance(out[0], torch.Tensor) and isinstance(out[2], torch.Tensor)
    assert first.session_length("x") == first.session_length("y") == 4
    alone = Stage(tiny_llama, 0, 2)
    alone.open_session("x")
    alone.forward("x", ids)
    torch.testing.assert_close(out[0], alone.forward("x", torch.tensor([[8]])), rtol=0, atol=1e-5)
    assert not last.is_first and last.can_merge_sessions

"""Cheating worker variants for the verification tests ONLY (`GLOBAI_WORKER_CHEAT`, read by `globai worker run`).

A cheat wraps the stage's forward so the worker returns (and honestly commits to) a wrong output; the market must
catch it by replaying sampled chunks on other workers. Never enable this outside tests: it gets a worker slashed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

CHEATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "noise": lambda out: out * 1.10,  # the "noise x1.10" cheat: a systematic 10 % distortion
    "identity": lambda out: out,  # placeholder: replaced below by the stage input
}


def apply_cheat(stage: Any, mode: str) -> None:
    """Make `stage.forward` return a cheated output (`noise`: x1.10; `identity`: the input hidden states)."""
    if mode not in CHEATS:
        raise ValueError(f"unknown cheat {mode!r} (known: {', '.join(sorted(CHEATS))})")
    honest = stage.forward

    def forward(session_id: Any, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = honest(session_id, inputs, *args, **kwargs)
        if mode == "identity" and inputs.dim() == 3 and inputs.shape == out.shape:
            return inputs.clone()
        return CHEATS[mode](out).to(out.dtype)

    stage.forward = forward
    log.warning("CHEATING WORKER (%s): for verification tests only", mode)

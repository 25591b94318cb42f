"""Cheating worker variants for the verification tests ONLY (`GLOBAI_WORKER_CHEAT`, read by `globai worker run`).

Output cheats wrap the stage's forward so the worker returns (and honestly commits to) a wrong output; the market
must catch them by replaying sampled chunks on other workers:
- `noise`: a systematic x1.10 distortion;
- `identity`: the stage input returned as its output;
- `outside_topk`: every coordinate outside each row's top-8 shrunk by 10 % (invisible to an 8-value sketch).
`unbound` commits to the honest output but sends another (x1.10 on every other row), with a valid signed hash of
what it sends: the coordinator must find the commitment contradicting the sent rows and the worker be slashed.
`sketch_v1` computes honestly but commits with the obsolete version-1 sketch (top-8 fp16, no projection), which
misses changes outside the top-8: the coordinator must refuse such commitments and the work never be paid.
A cheat is patient by default: its worker answers its first session after each connection honestly
(`honest_sessions` = 1), since that is the market's join challenge for any cheater that knows about it (the
challenge looks like ordinary work, so the first session is all a cheater can spare; every connection is
challenged, also a reconnection to the next market process after the one it was on died); `MODE:0` cheats from the
first session on (the join challenge must keep it out of every route).
Never enable this outside tests: it gets a worker slashed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


def _outside_topk(out: torch.Tensor) -> torch.Tensor:
    if out.dim() != 3 or out.shape[-1] <= 8:
        return out
    keep = torch.zeros_like(out, dtype=torch.bool).scatter_(-1, out.abs().topk(8, dim=-1).indices, True)
    return torch.where(keep, out, out * 0.9)


CHEATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "noise": lambda out: out * 1.10,
    "identity": lambda out: out,  # placeholder: replaced below by the stage input
    "outside_topk": _outside_topk,
}
SEND_CHEATS = ("unbound",)
COMMIT_CHEATS = ("sketch_v1",)


class _Patience:
    """Honest in the first `n` sessions the worker sees after each connection, cheating in every other one (a
    session keeps what was decided when it was first seen)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.left = n
        self.decided: dict[Any, bool] = {}

    def connected(self) -> None:
        self.left = self.n

    def cheats(self, session: Any) -> bool:
        if session not in self.decided:
            self.decided[session] = self.left <= 0
            self.left = max(self.left - 1, 0)
        return self.decided[session]


def apply_cheat(server: Any, spec: str) -> None:
    """Install cheat `spec` ("MODE" or "MODE:HONEST_SESSIONS") on a `StageServer` (its steps then run one at a
    time, through the wrapped calls)."""
    mode, _, honest = spec.partition(":")
    if not honest.isdigit() and honest:
        raise ValueError(f"cheat {spec!r}: the number of honest sessions must be a whole number")
    patience = _Patience(int(honest or 1))
    server.merge_steps = False
    hello = server.hello

    def hello_on_connect() -> bytes:  # sent first on every connection: a join challenge comes next
        patience.connected()
        return hello()

    server.hello = hello_on_connect
    if mode in SEND_CHEATS:
        _unbound(server, patience)
    elif mode in COMMIT_CHEATS:
        _obsolete_sketch(server, patience)
    elif mode in CHEATS:
        _output_cheat(server.stage, mode, patience)
    else:
        known = sorted([*CHEATS, *SEND_CHEATS, *COMMIT_CHEATS])
        raise ValueError(f"unknown cheat {mode!r} (known: {', '.join(known)})")
    log.warning("CHEATING WORKER (%s, honest in %d session(s)): for verification tests only", mode, patience.n)


def _output_cheat(stage: Any, mode: str, patience: _Patience) -> None:
    honest = stage.forward

    def forward(session_id: Any, inputs: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = honest(session_id, inputs, *args, **kwargs)
        if not patience.cheats(session_id):
            return out
        if mode == "identity" and inputs.dim() == 3 and inputs.shape == out.shape:
            return inputs.clone()
        return CHEATS[mode](out).to(out.dtype)

    stage.forward = forward


def _unbound(server: Any, patience: _Patience) -> None:
    from worker.runtime.commits import sign_sent

    honest = server._forward

    def forward(session: str, header: dict[str, Any], tensors: list[torch.Tensor]) -> tuple[Any, ...]:
        reply, output, signed = honest(session, header, tensors)  # commitments made over the honest output
        if patience.cheats(session) and output.dim() == 3 and output.shape[1] > 0:
            output = output.clone()
            output[:, ::2] = (output[:, ::2] * 1.10).to(output.dtype)
            scope = server.commits[session].scope
            reply["sent"] = sign_sent(scope, int(header["step"]), int(header["first_position"]), output, server.account)
        return reply, output, signed

    server._forward = forward


def _obsolete_sketch(server: Any, patience: _Patience) -> None:
    """Sessions opened from now on commit with the version-1 sketch at its k = 8."""
    from globai.protocol.commitments import ChunkCommitment, commit_chunk
    from worker.runtime.commits import SessionCommitments

    class ObsoleteCommitments(SessionCommitments):
        def commit_rows(self, index: int, rows: torch.Tensor) -> ChunkCommitment:
            return commit_chunk(self.scope, index, rows, 8, version=1)

    class Sessions(dict[str, SessionCommitments]):
        def __setitem__(self, session: str, commits: SessionCommitments) -> None:
            if patience.cheats(session):
                commits = ObsoleteCommitments(commits.scope)
            super().__setitem__(session, commits)

    server.commits = Sessions(server.commits)

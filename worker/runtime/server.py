"""Serve one Stage to the coordinator: decode a request, validate it against the manifest, run, answer.

`StageServer.handle_many(raws) -> replies` answers the messages that arrived together: concurrent sessions'
decode steps run as one batched forward (continuous batching), each answered, committed and signed as if alone.
It never raises for anything a peer sends: malformed or oversized frames,
unknown sessions and stage errors all become an `error` reply naming the request, and other sessions go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from eth_account.signers.local import LocalAccount

from globai.errors import GlobaiError
from globai.logs import RUN_ID
from globai.protocol.commitments import SignedCommitment
from globai.protocol.pipeline import (
    DEFAULT_MAX_BATCH,
    ProtocolError,
    StageLimits,
    attach_commitments,
    error_header,
    field,
    scope_from_json,
)
from globai.protocol.tensors import FrameError, Message, decode_message, encode_message
from worker import metrics
from worker.models.errors import StageError
from worker.runtime.commits import SessionCommitments, sign_sent
from worker.stage import Stage, Step

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _ForwardCall:
    step: Step
    first_position: int
    index: int  # the coordinator's step number (signed with the answer)
    last_token_only: bool


class StageServer:
    def __init__(self, stage: Stage, account: LocalAccount, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.stage = stage
        self.account = account
        self.limits = StageLimits.for_manifest(stage.manifest, max_batch=max_batch)
        self.commits: dict[str, SessionCommitments] = {}
        self.requests_served = 0
        self.merge_steps = True  # run concurrent sessions' steps as one forward (off: one at a time)
        self.merged_steps = 0  # batched forwards run (each of >= 2 sessions' steps)
        self.largest_merge = 0  # the most sessions' steps one forward has run

    def hello(self) -> bytes:
        m = self.stage.manifest
        return encode_message(
            {
                "op": "hello",
                "model": m.name,
                "digest": m.digest(),
                "layer_start": self.stage.start,
                "layer_end": self.stage.end,
                "max_batch": self.limits.max_batch,
                "max_tokens": self.limits.max_tokens,
            }
        )

    def handle(self, raw: bytes) -> bytes | None:
        """Answer one message from the market; None for messages that need no answer (welcome, errors)."""
        return self.handle_many([raw])[0]

    def handle_many(self, raws: Sequence[bytes]) -> list[bytes | None]:
        """Answer messages that arrived together, in order per session; forward steps of different sessions run
        as one batched forward (`Stage.forward_many`) where the stage can merge them. One answer per message."""
        replies: list[bytes | None] = [None] * len(raws)
        group: list[tuple[int, Message]] = []
        for i, raw in enumerate(raws):
            message = self._decode(raw)
            if not isinstance(message, Message):
                replies[i] = message
                continue
            if self._mergeable(message):
                if any(m.header["session"] == message.header["session"] for _, m in group):
                    self._run_group(group, replies)  # a session's second step waits for its first
                    group = []
                group.append((i, message))
                continue
            self._run_group(group, replies)
            group = []
            replies[i] = self._answer(message)
        self._run_group(group, replies)
        return replies

    def _decode(self, raw: bytes) -> Message | bytes | None:
        try:
            message = decode_message(raw, max_bytes=self.limits.max_payload_bytes)
        except FrameError as exc:
            metrics.REQUESTS.labels("unknown", "error").inc()
            return encode_message(error_header(None, f"bad_frame:{exc.reason}", str(exc)))
        op = message.header.get("op")
        if op in ("welcome", "error"):
            if op == "error":
                log.warning("market reported: %s", message.header.get("message"))
            return None
        return message

    def _mergeable(self, message: Message) -> bool:
        return (
            self.merge_steps
            and self.stage.can_merge_sessions
            and message.header.get("op") == "forward"
            and isinstance(message.header.get("session"), str)
            and type(message.header.get("rid")) is int
        )

    def _answer(self, message: Message) -> bytes:
        """One request on its own (open, close, or a forward that runs alone)."""

        def run(session: str) -> tuple[dict[str, Any], list[torch.Tensor], list[SignedCommitment]]:
            op = message.header.get("op")
            if op == "open":
                return self._open(session, message.header.get("scope")), [], []
            if op == "forward":
                header, output, signed = self._forward(session, message.header, message.tensors)
                return header, [output], signed
            if op == "close":
                header, signed = self._close(session)
                return header, [], signed
            raise ProtocolError(f"unknown op {op!r}")

        return self._reply(message, time.perf_counter(), run)

    def _run_group(self, group: list[tuple[int, Message]], replies: list[bytes | None]) -> None:
        """Forward steps of distinct sessions: one batched forward, then each answer signed and sent as alone."""
        if len(group) == 1:
            replies[group[0][0]] = self._answer(group[0][1])
        if len(group) <= 1:
            return
        started = time.perf_counter()
        calls: list[tuple[int, Message, _ForwardCall]] = []
        for i, message in group:
            try:
                calls.append(
                    (i, message, self._forward_call(message.header["session"], message.header, message.tensors))
                )
            except GlobaiError as exc:  # a malformed step is refused alone; the others go on
                replies[i] = self._refuse(message, exc)
        for last_token_only in sorted({c.last_token_only for _, _, c in calls}):
            batch = [(i, m, c) for i, m, c in calls if c.last_token_only == last_token_only]
            results = self.stage.forward_many([c.step for _, _, c in batch], last_token_only=last_token_only)
            metrics.BATCH.observe(len(batch))
            self.merged_steps += 1
            self.largest_merge = max(self.largest_merge, len(batch))
            for (i, message, call), result in zip(batch, results, strict=True):

                def run(
                    session: str, call: _ForwardCall = call, result: torch.Tensor | StageError = result
                ) -> tuple[dict[str, Any], list[torch.Tensor], list[SignedCommitment]]:
                    if isinstance(result, StageError):
                        raise result
                    header, output, signed = self._forward_reply(session, call, result)
                    return header, [output], signed

                replies[i] = self._reply(message, started, run)

    def _refuse(self, message: Message, exc: GlobaiError) -> bytes:
        def run(session: str) -> tuple[dict[str, Any], list[torch.Tensor], list[SignedCommitment]]:
            raise exc

        return self._reply(message, time.perf_counter(), run)

    def _reply(
        self,
        message: Message,
        started: float,
        run: Callable[[str], tuple[dict[str, Any], list[torch.Tensor], list[SignedCommitment]]],
    ) -> bytes:
        """Run one request's work and encode its answer; every failure becomes an `error` answer naming it."""
        token = RUN_ID.set(None)
        rid_value = message.header.get("rid")
        rid: int | None = rid_value if isinstance(rid_value, int) and not isinstance(rid_value, bool) else None
        op = message.header.get("op")
        try:
            rid = field(message, "rid", int)
            session = field(message, "session", str)
            RUN_ID.set(session)  # the coordinator's session id is its run id: log lines of this request carry it
            header, tensors, signed = run(session)
            if op == "forward":
                metrics.FORWARD.observe(time.perf_counter() - started)
                metrics.TOKENS.inc(int(message.tensors[0].shape[0]) * int(message.tensors[0].shape[1]))
            attach_commitments(header, tensors, signed)
            metrics.REQUESTS.labels(str(op), "ok").inc()
            metrics.SESSIONS.set(len(self.commits))
            self.requests_served += 1
            header.update(op="result", rid=rid, elapsed_ms=(time.perf_counter() - started) * 1000)
            return encode_message(header, tensors)
        except FrameError as exc:
            metrics.REQUESTS.labels("unknown", "error").inc()
            return encode_message(error_header(rid, f"bad_frame:{exc.reason}", str(exc)))
        except StageError as exc:
            metrics.REQUESTS.labels("stage", "error").inc()
            return encode_message(error_header(rid, exc.code, str(exc)))
        except GlobaiError as exc:
            return encode_message(error_header(rid, "error", str(exc)))
        except Exception as exc:  # a bug here must not take the connection (and every other session) down
            log.exception("request %s failed", rid)
            return encode_message(error_header(rid, "internal", f"{type(exc).__name__}: {exc}"))
        finally:
            RUN_ID.reset(token)

    def _open(self, session: str, scope: Any) -> dict[str, Any]:
        parsed = scope_from_json(scope)
        # Re-opening rebuilds the session from scratch: that is how the coordinator replays after a failover.
        self.stage.close_session(session)
        self.stage.open_session(session)
        self.commits[session] = SessionCommitments(parsed)
        return {"session": session}

    def _forward(
        self, session: str, header: dict[str, Any], tensors: list[torch.Tensor]
    ) -> tuple[dict[str, Any], torch.Tensor, list[SignedCommitment]]:
        call = self._forward_call(session, header, tensors)
        step = call.step
        output = self.stage.forward(
            session, step.inputs, step.positions, step.attention_mask, last_token_only=call.last_token_only
        )
        return self._forward_reply(session, call, output)

    def _forward_call(self, session: str, header: dict[str, Any], tensors: list[torch.Tensor]) -> _ForwardCall:
        """A forward request, checked: the stage step to run and what its answer must say."""
        self.limits.check_inputs(tensors, first_stage=self.stage.is_first)
        first_position = header.get("first_position")
        if not isinstance(first_position, int) or first_position < 0:
            raise ProtocolError("forward needs first_position (int >= 0)")
        step = header.get("step")
        if not isinstance(step, int) or step < 0:
            raise ProtocolError("forward needs step (int >= 0)")
        last_token_only = bool(header.get("last_token_only", self.stage.is_last))
        mask = tensors[2] if len(tensors) == 3 else None
        return _ForwardCall(Step(session, tensors[0], tensors[1], mask), first_position, step, last_token_only)

    def _forward_reply(
        self, session: str, call: _ForwardCall, output: torch.Tensor
    ) -> tuple[dict[str, Any], torch.Tensor, list[SignedCommitment]]:
        output = output.contiguous()
        commits = self.commits.get(session)
        if commits is None:
            raise ProtocolError("forward before open")
        # Last-token logits sit at the step's last position; hidden states at every position of the step.
        at = call.first_position + call.step.inputs.shape[1] - output.shape[1]
        signed = commits.add(output, at, self.account)
        sent = sign_sent(commits.scope, call.index, call.first_position, output, self.account)
        return {"session": session, "sent": sent}, output, signed

    def _close(self, session: str) -> tuple[dict[str, Any], list[SignedCommitment]]:
        self.stage.close_session(session)
        commits = self.commits.pop(session, None)
        if commits is None:
            return {"session": session, "root": None}, []
        signed, root = commits.finish(self.account)
        return {"session": session, "root": root}, signed

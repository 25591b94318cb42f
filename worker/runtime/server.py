"""Serve one Stage to the coordinator: decode a request, validate it against the manifest, run, answer.

`StageServer.handle(raw) -> reply bytes` never raises for anything a peer sends: malformed or oversized frames,
unknown sessions and stage errors all become an `error` reply naming the request, and other sessions go on.
"""

from __future__ import annotations

import logging
import time
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
from globai.protocol.tensors import FrameError, decode_message, encode_message
from worker import metrics
from worker.models.errors import StageError
from worker.runtime.commits import SessionCommitments, sign_sent
from worker.stage import Stage

log = logging.getLogger(__name__)


class StageServer:
    def __init__(self, stage: Stage, account: LocalAccount, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.stage = stage
        self.account = account
        self.limits = StageLimits.for_manifest(stage.manifest, max_batch=max_batch)
        self.commits: dict[str, SessionCommitments] = {}
        self.requests_served = 0

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
        token = RUN_ID.set(None)
        try:
            return self._handle(raw)
        finally:
            RUN_ID.reset(token)

    def _handle(self, raw: bytes) -> bytes | None:
        rid: int | None = None
        try:
            message = decode_message(raw, max_bytes=self.limits.max_payload_bytes)
            rid_value = message.header.get("rid")
            rid = rid_value if isinstance(rid_value, int) and not isinstance(rid_value, bool) else None
            op = message.header.get("op")
            if op in ("welcome", "error"):
                if op == "error":
                    log.warning("market reported: %s", message.header.get("message"))
                return None
            rid = field(message, "rid", int)
            session = field(message, "session", str)
            RUN_ID.set(session)  # the coordinator's session id is its run id: log lines of this request carry it
            started = time.perf_counter()
            header: dict[str, Any]
            tensors: list[torch.Tensor] = []
            signed: list[SignedCommitment] = []
            if op == "open":
                header = self._open(session, message.header.get("scope"))
            elif op == "forward":
                header, output, signed = self._forward(session, message.header, message.tensors)
                tensors = [output]
                metrics.FORWARD.observe(time.perf_counter() - started)
                metrics.TOKENS.inc(int(message.tensors[0].shape[0]) * int(message.tensors[0].shape[1]))
            elif op == "close":
                header, signed = self._close(session)
            else:
                raise ProtocolError(f"unknown op {op!r}")
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
        self.limits.check_inputs(tensors, first_stage=self.stage.is_first)
        first_position = header.get("first_position")
        if not isinstance(first_position, int) or first_position < 0:
            raise ProtocolError("forward needs first_position (int >= 0)")
        last_token_only = bool(header.get("last_token_only", self.stage.is_last))
        inputs, positions = tensors[0], tensors[1]
        mask = tensors[2] if len(tensors) == 3 else None
        output = self.stage.forward(session, inputs, positions, mask, last_token_only=last_token_only)
        output = output.contiguous()
        commits = self.commits.get(session)
        if commits is None:
            raise ProtocolError("forward before open")
        # Last-token logits sit at the step's last position; hidden states at every position of the step.
        at = first_position + inputs.shape[1] - output.shape[1]
        signed = commits.add(output, at, self.account)
        step = header.get("step")
        if not isinstance(step, int) or step < 0:
            raise ProtocolError("forward needs step (int >= 0)")
        return (
            {"session": session, "sent": sign_sent(commits.scope, step, first_position, output, self.account)},
            output,
            signed,
        )

    def _close(self, session: str) -> tuple[dict[str, Any], list[SignedCommitment]]:
        self.stage.close_session(session)
        commits = self.commits.pop(session, None)
        if commits is None:
            return {"session": session, "root": None}, []
        signed, root = commits.finish(self.account)
        return {"session": session, "root": root}, signed

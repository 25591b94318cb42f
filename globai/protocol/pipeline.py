"""Messages between the coordinator and a worker over the worker's WebSocket (shared by both sides).

Every WebSocket message is one binary envelope of `globai.protocol.tensors` (JSON header + tensor frames).
The header's `op` says what it is:

worker -> market
    hello    {model, digest, layer_start, layer_end, max_batch, max_tokens}    first message after connecting
    result   {rid, elapsed_ms, commitments: n, root?}  + [output][, commitments frame]
                                                                                answer to open/forward/close
    error    {rid | null, code, message}                                        a refused or failed request
market -> worker
    welcome  {worker_id, max_frame_bytes}                                       hello accepted
    open     {rid, session, scope: {chain_id, job_id, task_id, stage, job_nonce}}
    forward  {rid, session, step, first_position, last_token_only}  + [inputs, positions, (attention_mask)]
    close    {rid, session}
    error    {rid | null, code, message}                                        e.g. a malformed frame from the worker

Tensor shapes and dtypes are checked against the manifest (`StageLimits`) before anything is used. A result's
n signed chunk commitments travel as the last frame (uint8, `commitments.encode_commitments`), not in the JSON
header, so a long prefill's hundreds of commitments fit (the header stays under its 64 KiB limit).
Pure: no I/O, no fastapi.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from globai.models.families import get_family
from globai.models.manifest import Manifest
from globai.protocol.commitments import (
    MalformedCommitment,
    SignedCommitment,
    decode_commitments,
    encode_commitments,
    max_commitments_bytes,
)
from globai.protocol.signing import ChunkScope
from globai.protocol.tensors import FrameError, Message, dtype_from_name, validate_tensor

WS_PATH = "/v1/workers/ws"
# Envelope overhead on top of tensor payloads (JSON header, frame headers) that a limit must allow for.
ENVELOPE_SLACK = 128 * 1024
DEFAULT_MAX_BATCH = 8
# Prompt scoring (OpenAI `echo` + `logprobs`): the last stage answers the logits of every prompt row at once. Such
# an answer is bounded to this many bytes (rows x vocab x dtype size), so it fits one WebSocket frame
# (`WS_MAX_BYTES`) and the coordinator's memory; `StageLimits.max_scoring_rows` turns it into rows per model.
SCORING_MAX_BYTES = 32 << 20
# The market's WebSocket frame limit (uvicorn `ws_max_size`): a maximal scoring answer plus its commitments.
WS_MAX_BYTES = 64 << 20

WORKER_OPS = ("hello", "result", "error")
MARKET_OPS = ("welcome", "open", "forward", "close", "error")


class ProtocolError(FrameError):
    """A well-formed frame that does not make sense here (unknown op, missing field, wrong tensor count)."""

    def __init__(self, detail: str) -> None:
        super().__init__("bad_header", detail)


@dataclass(frozen=True)
class StageLimits:
    """What tensors may cross the wire for one model: derived from its manifest, never from the peer."""

    hidden_size: int
    vocab_size: int
    dtype: torch.dtype
    max_batch: int
    max_tokens: int

    @classmethod
    def for_manifest(
        cls, manifest: Manifest, *, max_batch: int = DEFAULT_MAX_BATCH, max_tokens: int | None = None
    ) -> StageLimits:
        positions = get_family(manifest.family).max_positions(manifest.config)
        return cls(
            hidden_size=manifest.hidden_size,
            vocab_size=manifest.vocab_size,
            dtype=dtype_from_name(manifest.dtype),
            max_batch=max_batch,
            max_tokens=min(positions, max_tokens or positions),
        )

    @property
    def max_scoring_rows(self) -> int:
        """Most logits rows (batch x positions) one last-stage answer may carry: a scoring prefill's bound."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return max(1, min(self.max_batch * self.max_tokens, SCORING_MAX_BYTES // (self.vocab_size * itemsize)))

    @property
    def max_payload_bytes(self) -> int:
        """Largest legitimate sum of tensor payloads in one message (hidden states or logits + ids)."""
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        # hidden states (or int64 ids) + positions + mask for every token, or logits: one row per sequence, or
        # every row of a scoring prefill
        per_token = self.hidden_size * max(itemsize, 8) + 2 * 8
        logits_rows = max(self.max_batch, self.max_scoring_rows)
        tensors = self.max_batch * self.max_tokens * per_token + logits_rows * self.vocab_size * itemsize
        return tensors + max_commitments_bytes(self.max_batch, self.max_tokens)

    @property
    def max_message_bytes(self) -> int:
        return self.max_payload_bytes + ENVELOPE_SLACK

    def check_inputs(self, tensors: list[torch.Tensor], *, first_stage: bool) -> None:
        """A forward request's tensors: inputs [B, T] int64 ids or [B, T, hidden] states, positions, mask."""
        if len(tensors) not in (2, 3):
            raise ProtocolError(f"forward carries {len(tensors)} tensors, expected inputs, positions[, mask]")
        inputs, positions = tensors[0], tensors[1]
        if first_stage:
            validate_tensor(inputs, expected_dtype=torch.int64, expected_shape=self._tokens_ok)
        else:
            validate_tensor(inputs, expected_dtype=self.dtype, expected_shape=self._states_ok)
        batch, tokens = int(inputs.shape[0]), int(inputs.shape[1])
        validate_tensor(
            positions,
            expected_dtype=torch.int64,
            expected_shape=lambda s: len(s) == 2 and s[0] in (1, batch) and s[1] == tokens,
        )
        if len(tensors) == 3:
            validate_tensor(tensors[2], expected_dtype=torch.int64, expected_shape=(batch, tokens))

    def check_output(
        self, output: torch.Tensor, *, batch: int, tokens: int, last_stage: bool, last_token_only: bool = True
    ) -> None:
        """A worker's answer: [B, T, hidden] states, or from the last stage [B, 1, vocab] logits (last token only)
        or [B, T, vocab] (every row: a scoring prefill, at most `max_scoring_rows` rows)."""
        if last_stage:
            rows = 1 if last_token_only else tokens
            if not last_token_only and batch * rows > self.max_scoring_rows:
                raise ProtocolError(f"{batch * rows} logits rows in one answer; at most {self.max_scoring_rows}")
            validate_tensor(output, expected_dtype=self.dtype, expected_shape=(batch, rows, self.vocab_size))
        else:
            validate_tensor(output, expected_dtype=self.dtype, expected_shape=(batch, tokens, self.hidden_size))

    def _tokens_ok(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 2 and 1 <= shape[0] <= self.max_batch and 1 <= shape[1] <= self.max_tokens

    def _states_ok(self, shape: tuple[int, ...]) -> bool:
        return self._tokens_ok(shape[:2]) and len(shape) == 3 and shape[2] == self.hidden_size


def scope_to_json(scope: ChunkScope) -> dict[str, Any]:
    return {
        "chain_id": scope.chain_id,
        "job_id": "0x" + scope.job_id.hex(),
        "task_id": "0x" + scope.task_id.hex(),
        "stage": scope.stage,
        "job_nonce": "0x" + scope.job_nonce.hex(),
    }


def scope_from_json(data: Any) -> ChunkScope:
    if not isinstance(data, dict):
        raise ProtocolError("scope must be an object")
    try:
        return ChunkScope(
            chain_id=int(data["chain_id"]),
            job_id=bytes.fromhex(str(data["job_id"]).removeprefix("0x")),
            task_id=bytes.fromhex(str(data["task_id"]).removeprefix("0x")),
            stage=int(data["stage"]),
            job_nonce=bytes.fromhex(str(data["job_nonce"]).removeprefix("0x")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad scope: {exc}") from None


def field(message: Message, name: str, kind: type) -> Any:
    """A required header field of the given JSON type (bool is not an int here)."""
    value = message.header.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{message.header.get('op')!r} needs {name!r} ({kind.__name__})")
    return value


def attach_commitments(header: dict[str, Any], tensors: list[torch.Tensor], signed: list[SignedCommitment]) -> None:
    """Put a result's signed commitments into its last frame (count in the header)."""
    header["commitments"] = len(signed)
    if signed:
        tensors.append(torch.frombuffer(bytearray(encode_commitments(signed)), dtype=torch.uint8))


def take_commitments(
    message: Message, *, scope: ChunkScope, width: int, version: int | None = None
) -> tuple[list[torch.Tensor], list[SignedCommitment]]:
    """Split a result into its output tensors and its commitments, parsed strictly under `scope` (and with sketches
    of `version` only, when given).

    Raises `ProtocolError` (bad count or frame) or `MalformedCommitment`."""
    count = message.header.get("commitments", 0)
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ProtocolError("commitments must be a count")
    tensors = list(message.tensors)
    if count == 0:
        return tensors, []
    if not tensors or tensors[-1].dtype != torch.uint8 or tensors[-1].dim() != 1:
        raise ProtocolError(f"{count} commitments announced without their frame")
    frame = tensors.pop()
    signed = decode_commitments(frame.numpy().tobytes(), scope=scope, hidden=width, version=version)
    if len(signed) != count:
        raise MalformedCommitment(f"{len(signed)} commitments in the frame, {count} announced")
    return tensors, signed


def error_header(rid: int | None, code: str, message: str) -> dict[str, Any]:
    return {"op": "error", "rid": rid, "code": code, "message": message[:500]}

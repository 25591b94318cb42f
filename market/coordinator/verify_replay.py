"""Verification replays through the coordinator: one sampled chunk is re-run on a replica worker.

A replay of chunk c of sequence s (positions [32c, 32c + 32)) is a prefill of that one sequence's recorded stage
input from position 0 to the chunk's end, in a fresh session of the replica's own (`chunk_replay`): the rows of the
chunk need the whole prefix in the replica's KV cache, but not the token-by-token decode that produced it, so a
check costs a prefill of at most one sequence (prefill runs several times faster per token than decode). Hidden-state
stages get one call, shaped like an ordinary prompt prefill of one sequence; the last stage gets the prefix as a
prefill that returns its last-token logits only, then the chunk's positions with every row's logits (the committed
rows are each step's last position). An honest replay differs from the worker's KV-cache decode by float drift only
(calibrated: "prefix prefill + token-by-token KV decode", `market/verifier/calibrate.py`).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from globai.protocol.commitments import CHUNK_TOKENS, tensor_sha256
from globai.protocol.pipeline import scope_to_json
from globai.protocol.scopes import stage_scope
from globai.protocol.signing import sent_digest, verify_signer
from globai.protocol.tensors import decode_message, encode_message
from market.blobstore import BlobStore
from market.coordinator.links import LinkRegistry, WorkerLink
from market.db.inference import InferenceRun, StageRecord
from market.domain_errors import Conflict, NotFound

MAX_BLOB_BYTES = 1 << 30


@dataclass(frozen=True)
class RecordedCall:
    step: int
    first_position: int
    last_token_only: bool
    tensors: list[torch.Tensor]  # inputs, positions[, mask] exactly as relayed


@dataclass(frozen=True)
class RecordedPart:
    model: str
    layer_start: int
    layer_end: int
    calls: list[RecordedCall]  # in step order, each step once (a call sent again is recorded again)
    committed: list[int]  # positions whose output rows the worker returned (and committed to)


def load_part(session: Session, blobs: BlobStore, *, run_id: str, layer_start: int, worker: str) -> RecordedPart:
    """The recorded calls of one worker on one stage of a run, in position order."""
    run = session.get(InferenceRun, run_id)
    if run is None:
        raise NotFound("inference run", run_id)
    rows = session.scalars(
        select(StageRecord)
        .where(
            StageRecord.run_id == run_id, StageRecord.layer_start == layer_start, StageRecord.worker_address == worker
        )
        .order_by(StageRecord.step)
    ).all()
    if not rows:
        raise NotFound("stage records", f"{run_id}/{layer_start}/{worker}")
    calls: list[RecordedCall] = []
    for row in rows:
        message = decode_message(blobs.get(row.input_blob), max_bytes=MAX_BLOB_BYTES)
        first = int(message.header["first_position"])
        last_only = bool(message.header.get("last_token_only"))
        if calls and int(message.header["step"]) == calls[-1].step:
            continue  # the same call sent again (a replay in place): the worker committed to it once
        calls.append(RecordedCall(int(message.header["step"]), first, last_only, list(message.tensors)))
    committed: list[int] = []
    seen = 0
    for rec in calls:
        if rec.first_position != seen:  # a replay concatenates the calls: they must follow each other
            raise Conflict(f"stage records of {run_id}/{layer_start}: position {rec.first_position}, expected {seen}")
        seen += int(rec.tensors[0].shape[1])
        committed.extend([seen - 1] if rec.last_token_only else range(rec.first_position, seen))
    return RecordedPart(
        model=run.model, layer_start=layer_start, layer_end=rows[0].layer_end, calls=calls, committed=committed
    )


@dataclass(frozen=True)
class ChunkReplay:
    """What a replica is sent to reproduce one chunk, and which rows of its last answer are the chunk's."""

    calls: list[RecordedCall]  # batch 1: the chunk's sequence alone
    rows: list[int]  # indices into the last call's output rows (dim 1)
    positions: list[int]  # the committed positions those rows are at


def chunk_replay(part: RecordedPart, chunk_index: int) -> ChunkReplay:
    """The calls that reproduce chunk `chunk_index` (sequence << 32 | position chunk) of a recorded part."""
    seq, pc = chunk_index >> 32, chunk_index & 0xFFFFFFFF
    batch = int(part.calls[0].tensors[0].shape[0]) if part.calls else 0
    lo, hi = pc * CHUNK_TOKENS, (pc + 1) * CHUNK_TOKENS
    positions = [p for p in part.committed if lo <= p < hi]
    if not 0 <= seq < batch or not positions:
        raise NotFound("chunk", f"{chunk_index:#x} of {part.model} [{part.layer_start}, {part.layer_end})")
    end = positions[-1] + 1
    inputs, pos, mask = [], [], []
    for rec in part.calls:
        x = rec.tensors[0][seq : seq + 1]
        inputs.append(x)
        p = rec.tensors[1]
        pos.append(p if p.shape[0] == 1 else p[seq : seq + 1])
        tokens = int(x.shape[1])
        mask.append(rec.tensors[2][seq : seq + 1] if len(rec.tensors) > 2 else torch.ones(1, tokens, dtype=torch.int64))
    x_all, p_all, m_all = (
        torch.cat(inputs, dim=1)[:, :end],
        torch.cat(pos, dim=1)[:, :end],
        torch.cat(mask, dim=1)[:, :end],
    )

    def call(step: int, a: int, b: int, last_only: bool) -> RecordedCall:
        tensors = [x_all[:, a:b].contiguous(), p_all[:, a:b].contiguous()]
        if not bool(m_all[:, :b].all()):
            tensors.append(m_all[:, a:b].contiguous())
        return RecordedCall(step, a, last_only, tensors)

    if not any(rec.last_token_only for rec in part.calls):  # hidden states: every position comes back
        return ChunkReplay([call(0, 0, end, False)], list(range(lo, end)), positions)
    calls = [call(0, 0, lo, True)] if lo > 0 else []  # the prefix: only its KV cache is needed
    calls.append(call(len(calls), lo, end, False))
    return ChunkReplay(calls, [p - lo for p in positions], positions)


def replicas(links: LinkRegistry, *, model: str, layer_start: int, layer_end: int) -> list[WorkerLink]:
    """Every live worker serving exactly these layers of the model (one link per address), by address."""
    found = {
        lnk.address: lnk for lnk in links.live(model) if (lnk.layer_start, lnk.layer_end) == (layer_start, layer_end)
    }
    return [found[a] for a in sorted(found)]


@dataclass(frozen=True)
class ReplayAnswer:
    output: torch.Tensor  # the chunk's rows [1, n, width], at `ChunkReplay.positions`
    sent_digest: bytes  # the `signing.sent_digest` the replica signed over the answer that holds them: evidence
    sent_signature: bytes  # the replica's signature over `sent_digest` (what the vault checks when it is slashed)
    # against it if it loses a 2-of-3


async def replay_on(
    links: LinkRegistry,
    model: str,
    layers: tuple[int, int],
    replay: ChunkReplay,
    *,
    replica: str,
    chain_id: int,
    timeout: float,
) -> ReplayAnswer:
    """Run a chunk's replay calls on `replica`; every answer must carry the replica's signed output hash.

    Nothing on the wire links the replay to the audited run: the session id is a fresh run-like UUID and the scope
    is built exactly like a real run's (keccak of that id, "<id>/stage/<first layer>", a fresh nonce)."""
    link = next(
        (lnk for lnk in links.live(model) if lnk.address == replica and (lnk.layer_start, lnk.layer_end) == layers),
        None,
    )
    if link is None:
        raise Conflict(f"replica {replica} does not serve {model} [{layers[0]}, {layers[1]}) now")
    session = str(uuid.uuid4())
    # A replay looks like ordinary work: a fresh run-like session and its stage scope (nothing links it to the run).
    scope = stage_scope(chain_id, session, layers[0], secrets.token_bytes(32))

    async def call(header: dict[str, object], tensors: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        rid = link.next_rid()
        return await link.call(rid, encode_message({**header, "rid": rid, "session": session}, tensors), timeout)

    await call({"op": "open", "scope": scope_to_json(scope)}, [])
    try:
        for rec in replay.calls:
            reply = await call(
                {
                    "op": "forward",
                    "step": rec.step,
                    "first_position": rec.first_position,
                    "last_token_only": rec.last_token_only,
                },
                rec.tensors,
            )
            output = reply.tensors[0]
            sent = reply.header.get("sent")
            try:
                sha = bytes.fromhex(str(sent["output_sha256"]).removeprefix("0x"))  # type: ignore[index]
                signature = bytes.fromhex(str(sent["signature"]).removeprefix("0x"))  # type: ignore[index]
            except (KeyError, TypeError, ValueError):
                raise Conflict(f"replica {replica} answered without a signed output hash") from None
            digest = sent_digest(scope, rec.step, rec.first_position, sha)
            if sha != tensor_sha256(output) or not verify_signer(digest, signature, replica):
                raise Conflict(f"replica {replica}: answer not signed by it")
    finally:
        await call({"op": "close"}, [])
    if output.dim() != 3 or output.shape[0] != 1 or output.shape[1] <= max(replay.rows):
        raise Conflict(f"replica {replica}: answer of shape {list(output.shape)}")
    return ReplayAnswer(output[:, replay.rows].contiguous(), digest, signature)

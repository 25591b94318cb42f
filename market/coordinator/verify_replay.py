"""Verification replays through the coordinator: a sampled stage part is re-run on a replica worker.

The replica gets the part's recorded stage calls (every forward call the coordinator relayed to the worker, from
the blob store) one by one, in their order, in a fresh session of its own - the same calls, shapes and cache use
as the audited worker had, so an honest replay is exact and no single message grows with the job's length (a
long job's last stage would otherwise return [B, T, vocab] logits in one frame). The outputs, concatenated, are the
rows at the positions the worker committed to (every position on hidden-state stages; the step's last position
on the last stage, which returns last-token logits).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from globai.protocol.commitments import tensor_sha256
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
    calls: list[RecordedCall]  # in the order the worker got them (a restart at step 0 reopened the session)
    committed: list[int]  # positions whose output rows the worker returned (and committed to)


def load_part(session: Session, blobs: BlobStore, *, run_id: str, layer_start: int, worker: str) -> RecordedPart:
    """The recorded calls of one worker on one stage of a run, as a single prefill."""
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
    committed: list[int] = []
    for row in rows:
        message = decode_message(blobs.get(row.input_blob), max_bytes=MAX_BLOB_BYTES)
        first, tokens = int(message.header["first_position"]), int(message.tensors[0].shape[1])
        last_only = bool(message.header.get("last_token_only"))
        if calls and int(message.header["step"]) == calls[-1].step:
            continue  # the same call sent again (a replay in place): the worker committed to it once
        calls.append(RecordedCall(int(message.header["step"]), first, last_only, list(message.tensors)))
        committed.extend([first + tokens - 1] if last_only else range(first, first + tokens))
    return RecordedPart(
        model=run.model, layer_start=layer_start, layer_end=rows[0].layer_end, calls=calls, committed=committed
    )


def replicas(links: LinkRegistry, *, model: str, layer_start: int, layer_end: int) -> list[WorkerLink]:
    """Every live worker serving exactly these layers of the model (one link per address), by address."""
    found = {
        lnk.address: lnk for lnk in links.live(model) if (lnk.layer_start, lnk.layer_end) == (layer_start, layer_end)
    }
    return [found[a] for a in sorted(found)]


@dataclass(frozen=True)
class ReplayAnswer:
    output: torch.Tensor  # rows [B, len(committed), width]
    rows_per_call: list[int]  # how many of those rows each replayed call answered, in order
    sent_digests: list[bytes]  # per call, the `signing.sent_digest` the replica signed: evidence if it loses a 2-of-3


async def replay_on(
    links: LinkRegistry, part: RecordedPart, *, replica: str, chain_id: int, timeout: float
) -> ReplayAnswer:
    """Run the recorded calls on `replica`; every answer must carry the replica's signed output hash.

    Nothing on the wire links the replay to the audited run: the session id is a fresh run-like UUID and the scope
    is built exactly like a real run's (keccak of that id, "<id>/stage/<first layer>", a fresh nonce); the calls
    have the audited calls' shapes."""
    link = next(
        (
            lnk
            for lnk in links.live(part.model)
            if lnk.address == replica and (lnk.layer_start, lnk.layer_end) == (part.layer_start, part.layer_end)
        ),
        None,
    )
    if link is None:
        raise Conflict(f"replica {replica} does not serve {part.model} [{part.layer_start}, {part.layer_end}) now")
    session = str(uuid.uuid4())
    # A replay looks like ordinary work: a fresh run-like session and its stage scope (nothing links it to the run).
    scope = stage_scope(chain_id, session, part.layer_start, secrets.token_bytes(32))

    async def call(header: dict[str, object], tensors: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        rid = link.next_rid()
        return await link.call(rid, encode_message({**header, "rid": rid, "session": session}, tensors), timeout)

    await call({"op": "open", "scope": scope_to_json(scope)}, [])
    outputs, digests = [], []
    try:
        for rec in part.calls:
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
            outputs.append(output)
            digests.append(digest)
    finally:
        await call({"op": "close"}, [])
    return ReplayAnswer(torch.cat(outputs, dim=1), [int(o.shape[1]) for o in outputs], digests)

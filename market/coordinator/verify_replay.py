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
from dataclasses import dataclass

import torch
from eth_utils import keccak
from sqlalchemy import select
from sqlalchemy.orm import Session

from market.blobstore import BlobStore
from market.coordinator.links import LinkRegistry
from market.db.inference import InferenceRun, StageRecord
from market.domain_errors import Conflict, NotFound
from market.protocol.pipeline import scope_to_json
from market.protocol.signing import ChunkScope
from market.protocol.tensors import decode_message, encode_message

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
        .where(StageRecord.run_id == run_id, StageRecord.layer_start == layer_start,
               StageRecord.worker_address == worker)
        .order_by(StageRecord.step)
    ).all()
    if not rows:
        raise NotFound("stage records", f"{run_id}/{layer_start}/{worker}")
    calls, committed = [], []
    for row in rows:
        message = decode_message(blobs.get(row.input_blob), max_bytes=MAX_BLOB_BYTES)
        first, tokens = int(message.header["first_position"]), int(message.tensors[0].shape[1])
        last_only = bool(message.header.get("last_token_only"))
        if calls and int(message.header["step"]) == calls[-1].step:
            continue  # the same call sent again (a replay in place): the worker committed to it once
        calls.append(RecordedCall(int(message.header["step"]), first, last_only, list(message.tensors)))
        committed.extend([first + tokens - 1] if last_only else range(first, first + tokens))
    return RecordedPart(model=run.model, layer_start=layer_start, layer_end=rows[0].layer_end, calls=calls,
                        committed=committed)


def replicas(links: LinkRegistry, *, model: str, layer_start: int, layer_end: int) -> list[tuple[str, str]]:
    """(address, operator) of every live worker serving exactly these layers of the model."""
    return sorted({(lnk.address, lnk.operator_id) for lnk in links.live(model)
                   if (lnk.layer_start, lnk.layer_end) == (layer_start, layer_end)})


async def replay_on(links: LinkRegistry, part: RecordedPart, *, replica: str, chain_id: int, run_id: str,
                    timeout: float) -> torch.Tensor:
    """Run the recorded calls on `replica`; returns its output rows [B, len(committed), width]."""
    link = next((lnk for lnk in links.live(part.model) if lnk.address == replica
                 and (lnk.layer_start, lnk.layer_end) == (part.layer_start, part.layer_end)), None)
    if link is None:
        raise Conflict(f"replica {replica} does not serve {part.model} [{part.layer_start}, {part.layer_end}) now")
    session = f"verify-{secrets.token_hex(8)}"
    # The replica signs its own commitments under a verification scope (never the audited worker's task id).
    scope = ChunkScope(chain_id, keccak(text=run_id), keccak(text=f"{run_id}/verify/{part.layer_start}/{replica}"),
                       part.layer_start, secrets.token_bytes(32))

    async def call(header: dict[str, object], tensors: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        rid = link.next_rid()
        return await link.call(rid, encode_message({**header, "rid": rid, "session": session}, tensors), timeout)

    await call({"op": "open", "scope": scope_to_json(scope)}, [])
    outputs = []
    try:
        for rec in part.calls:
            reply = await call({"op": "forward", "step": rec.step, "first_position": rec.first_position,
                                "last_token_only": rec.last_token_only}, rec.tensors)
            outputs.append(reply.tensors[0])
    finally:
        await call({"op": "close"}, [])
    return torch.cat(outputs, dim=1)

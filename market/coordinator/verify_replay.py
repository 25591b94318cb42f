"""Verification replays through the coordinator: a sampled stage part is re-run on a replica worker.

The replica gets the part's recorded stage inputs (every forward call the coordinator relayed to the worker, from
the blob store) concatenated into one ordinary forward call - a prefill of the whole recorded input, in a fresh
session of its own - and returns its output at every position. The verifier compares the rows at the positions
the worker committed to (every position on hidden-state stages; the step's last position on the last stage,
which returns last-token logits).
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
class RecordedPart:
    model: str
    layer_start: int
    layer_end: int
    tensors: list[torch.Tensor]  # inputs [B, T], positions [B, T], mask [B, T]
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
    inputs, positions, masks, committed = [], [], [], []
    for row in rows:
        message = decode_message(blobs.get(row.input_blob), max_bytes=MAX_BLOB_BYTES)
        x, pos = message.tensors[0], message.tensors[1]
        mask = message.tensors[2] if len(message.tensors) > 2 else torch.ones(x.shape[:2], dtype=torch.int64)
        inputs.append(x)
        positions.append(pos.expand(x.shape[0], -1) if pos.shape[0] == 1 else pos)
        masks.append(mask)
        first, tokens = int(message.header["first_position"]), int(x.shape[1])
        if message.header.get("last_token_only"):
            committed.append(first + tokens - 1)
        else:
            committed.extend(range(first, first + tokens))
    return RecordedPart(
        model=run.model, layer_start=layer_start, layer_end=rows[0].layer_end,
        tensors=[torch.cat(inputs, dim=1), torch.cat(positions, dim=1), torch.cat(masks, dim=1)],
        committed=committed,
    )


def replicas(links: LinkRegistry, *, model: str, layer_start: int, layer_end: int) -> list[tuple[str, str]]:
    """(address, operator) of every live worker serving exactly these layers of the model."""
    return sorted({(lnk.address, lnk.operator_id) for lnk in links.live(model)
                   if (lnk.layer_start, lnk.layer_end) == (layer_start, layer_end)})


async def replay_on(links: LinkRegistry, part: RecordedPart, *, replica: str, chain_id: int, run_id: str,
                    timeout: float) -> torch.Tensor:
    """Run the recorded part on `replica` as one forward; returns its output [B, T, width] at every position."""
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
    try:
        reply = await call({"op": "forward", "step": 0, "first_position": 0, "last_token_only": False}, part.tensors)
    finally:
        await call({"op": "close"}, [])
    return reply.tensors[0]

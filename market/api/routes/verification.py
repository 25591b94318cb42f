"""Verifier-facing endpoints of the coordinator (admin role: the market's own Celery verifiers).

- `GET /v1/verification/replicas?model=&layer_start=&layer_end=[&worker=]`: live workers serving exactly those
  layers, with the weight replicas are drawn by (reputation mean x stake); where none of another operator than
  `worker`'s does, chains of workers of other operators whose ranges together cover the layers
  (`verify_replay.replica_chains`, each with its hops under `chain`, weighted by its weakest hop);
- `POST /v1/verification/replay`: reproduce one worker's recorded stage calls of one sequence up to a chunk on a
  replica or a chain (`chain`: the hops' addresses) (a prefill session of that sequence past the chunk's end,
  shaped like ordinary work - on the last stage a prompt-scoring request - `verify_replay.chunk_replay`); the
  answer is a binary tensor message (`globai.protocol.tensors`) holding the replica's rows [1, n, width], row i
  being the output at `positions[i]` of its header (the committed positions of the sequence's chunks 0..c,
  padding excluded: one replay answers every chunk of a sampled sequence);
  `sent_digest` (the digest the replica signed over the answer holding the first of them) and `sent_signature`
  (its signature, which the vault checks) are the evidence against a lying replica; `units` (token positions the
  replica ran through its stage) is what its replay is paid as work. A chain's answer names its `transcript` (a
  blob: every hop's input and signed answer, `verify_replay.encode_transcript`);
- `POST /v1/verification/rerun`: re-run one hop of such a transcript alone on an independent replica (or chain)
  with exactly the input that hop got (`verify_replay.hop_replay`); the answer holds the hop's own answers
  [n, width] and the replica's [1, n, width] at the same rows, `input_bound`, the hop's `sent_digest` and
  `sent_signature` (the evidence if it lied), `units` and `replay_id` (the re-run, paid as a replay).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Query, Response

from globai.protocol.pipeline import StageLimits
from globai.protocol.tensors import encode_message
from market.api.deps import AdminDep, CoordinatorDep, CtxDep
from market.api.schemas.verification import ReplayIn, RerunIn
from market.blobstore import BlobNotFound
from market.coordinator.links import WorkerLink
from market.coordinator.verify_replay import (
    chunk_replay,
    encode_transcript,
    hop_replay,
    load_part,
    replay_on,
    replica_chains,
    replicas,
)
from market.domain_errors import NotFound
from market.services import workers
from market.services.verification import replica_weight

router = APIRouter(prefix="/v1/verification", tags=["verification"])


@router.get("/replicas")
async def list_replicas(
    coordinator: CoordinatorDep,
    _admin: AdminDep,
    ctx: CtxDep,
    model: Annotated[str, Query(max_length=128)],
    layer_start: Annotated[int, Query(ge=0)],
    layer_end: Annotated[int, Query(ge=1)],
    worker: Annotated[str | None, Query(pattern=r"^0x[0-9a-fA-F]{40}$")] = None,
) -> list[dict[str, object]]:
    await coordinator.refresh_standing_async()  # a worker slashed or banned a moment ago is no replica
    found = replicas(coordinator.links, model=model, layer_start=layer_start, layer_end=layer_end)
    chains: list[list[WorkerLink]] = []
    # The audited worker's operator: a chain with one of its workers would not be independent of it.
    own = {lnk.operator_id for lnk in coordinator.links.live() if worker and lnk.address.lower() == worker.lower()}
    if not any(r.operator_id not in own and r.address.lower() != (worker or "").lower() for r in found):
        chains = replica_chains(
            coordinator.links, model=model, layer_start=layer_start, layer_end=layer_end, exclude_operators=own
        )

    def read_stakes() -> dict[str, int]:  # off the event loop (SQLite reads may wait for the write lock)
        with ctx.session_factory() as session:
            addresses = [r.address for r in found] + [lnk.address for chain in chains for lnk in chain]
            return workers.stakes(session, addresses=addresses)

    stakes = await asyncio.to_thread(read_stakes)

    def weight(lnk: WorkerLink) -> float:
        return replica_weight(lnk.reputation.mean, stakes.get(lnk.address, 0))

    out: list[dict[str, object]] = [
        {"address": r.address, "operator_id": r.operator_id, "weight": weight(r)} for r in found
    ]
    for chain in chains:  # drawn by its weakest hop's weight
        out.append(
            {
                "address": chain[0].address,
                "operator_id": chain[0].operator_id,
                "weight": min(weight(lnk) for lnk in chain),
                "chain": [
                    {
                        "address": lnk.address,
                        "operator_id": lnk.operator_id,
                        "layer_start": lnk.layer_start,
                        "layer_end": lnk.layer_end,
                    }
                    for lnk in chain
                ],
            }
        )
    return out


@router.post("/replay")
async def replay(body: ReplayIn, _admin: AdminDep, ctx: CtxDep) -> Response:
    coordinator = ctx.coordinator

    def load() -> Any:
        with ctx.session_factory() as session:
            return load_part(
                session, coordinator.blobs, run_id=body.run_id, layer_start=body.layer_start, worker=body.worker
            )

    part = await asyncio.to_thread(load)
    served = coordinator.catalog.get(part.model)
    if served is None:
        raise NotFound("model", part.model)
    scoring_rows = StageLimits.for_manifest(served.manifest, max_batch=coordinator.config.max_batch).max_scoring_rows
    wanted = chunk_replay(part, body.chunk_index, max_prefill_rows=scoring_rows)
    header: dict[str, Any] = {"op": "replay", "positions": wanted.positions, "layer_end": part.layer_end}
    rows = torch.empty(1, 0, 1)  # a chunk of padding only: nothing to reproduce (its rows are not compared)
    if wanted.calls:
        answer = await replay_on(
            coordinator.links,
            part.model,
            (part.layer_start, part.layer_end),
            wanted,
            replica=body.chain or body.replica,
            chain_id=coordinator.config.chain_id,
            timeout=coordinator.config.call_timeout_s,
        )
        rows = answer.output
        header["units"] = sum(int(c.tensors[0].shape[1]) for c in wanted.calls)  # positions each hop ran
        header["replay_id"] = answer.session  # the replay paid once, whatever number of checks its rows serve
        if not body.chain:  # a chain's last hop signed rows computed from the others' outputs: not its fault alone
            header["sent_digest"] = "0x" + answer.sent_digest.hex()
            header["sent_signature"] = "0x" + answer.sent_signature.hex()
        else:  # but every hop signed its own answer: kept, to re-run each hop alone if the chain loses
            transcript = encode_transcript(part.model, answer.hops, last_stage=wanted.last_stage)
            if transcript is not None:
                header["transcript"] = await asyncio.to_thread(coordinator.blobs.put, transcript)
    raw = encode_message(header, [rows])
    return Response(content=raw, media_type="application/octet-stream")


@router.post("/rerun")
async def rerun(body: RerunIn, _admin: AdminDep, ctx: CtxDep) -> Response:
    coordinator = ctx.coordinator
    try:
        raw = await asyncio.to_thread(coordinator.blobs.get, body.transcript)
    except BlobNotFound:
        raise NotFound("replay transcript", body.transcript) from None
    hop = await asyncio.to_thread(hop_replay, raw, body.hop)
    answer = await replay_on(
        coordinator.links,
        hop.model,
        hop.layers,
        hop.replay,
        replica=body.chain or body.replica,
        chain_id=coordinator.config.chain_id,
        timeout=coordinator.config.call_timeout_s,
    )
    header = {
        "op": "rerun",
        "address": hop.address,
        "input_bound": hop.input_bound,
        "sent_digest": "0x" + hop.sent_digest.hex(),
        "sent_signature": "0x" + hop.sent_signature.hex(),
        "units": sum(int(c.tensors[0].shape[1]) for c in hop.replay.calls),
        "replay_id": answer.session,
    }
    return Response(content=encode_message(header, [hop.claimed, answer.output]), media_type="application/octet-stream")

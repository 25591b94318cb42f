"""Verification replays through the coordinator: a sampled sequence is re-run on a replica worker.

A replay of sequence s up to chunk c (positions [0, 32c + 32)) re-runs that one sequence's recorded stage input
from position 0 past the chunk's end in a fresh session of the replica's own (`chunk_replay`) and brings back the
row of every committed position of chunks 0..c: the session computes them anyway, so one replay checks them all
(the sampling unit is a whole sequence, `market/verifier/sampling.py`). The rows need the whole prefix in the
replica's KV cache, but not the batch it ran in. On the wire it is an ordinary
request for one prompt (docs/verification.md, "Replays look like work"): a fresh run-like session id and scope,
a prefill of the sequence (its left padding removed) up to a random point past the chunk, then a few one-token
decode steps. On the last stage the prefill asks for every row's logits, as a prompt-scoring request does (OpenAI
`echo` + `logprobs`, docs/openai.md), so the whole sequence costs one prefill rather than one batch-1 decode step
per row. An honest replay differs from the worker's batched KV-cache decode by float drift only (calibrated:
"prefix prefill + token-by-token KV decode" and "batched, padded", `market/verifier/calibrate.py`).
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from globai.errors import GlobaiError
from globai.protocol.commitments import CHUNK_TOKENS
from globai.protocol.pipeline import scope_to_json
from globai.protocol.scopes import stage_scope
from globai.protocol.signing import UnsignedAnswer, check_sent
from globai.protocol.tensors import decode_message, encode_message, tensor_sha256
from market.blobstore import BlobStore
from market.coordinator.links import LinkRegistry, WorkerLink
from market.coordinator.routing import plan_span
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
    last_stage: bool = False  # the stage answers logits (its layers end the model)


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
    # The route's hops end at the model's last layer; a run without a saved route tells by its last-token calls.
    ends = [int(h["layers"][1]) for h in run.route or [] if isinstance(h, dict) and "layers" in h]
    last_stage = rows[0].layer_end == max(ends) if ends else any(c.last_token_only for c in calls)
    return RecordedPart(
        model=run.model,
        layer_start=layer_start,
        layer_end=rows[0].layer_end,
        calls=calls,
        committed=committed,
        last_stage=last_stage,
    )


@dataclass(frozen=True)
class ChunkReplay:
    """What a replica is sent to reproduce a sequence up to a chunk: one ordinary batch-1 session (a prompt
    prefill answering every row, then a few one-token decode steps), and where the rows of chunks 0..c are in
    its answers."""

    calls: list[RecordedCall]  # the session's forward calls, in order (step 0 = prefill, step k = decode)
    rows: list[tuple[int, int]]  # per compared position: (index into `calls`, row of that call's output)
    positions: list[int]  # the committed positions (the audited run's columns) those rows are at; padding excluded
    last_stage: bool  # the audited stage answers logits (decode steps: the last token's; the prefill: every row)


MAX_PAD_DRAW = CHUNK_TOKENS  # the session end is drawn over a window of this many positions past the chunk
MAX_DECODE_STEPS = 1  # decode steps after the prefill: 0..1, as a scoring request with max_tokens 0..2 sends


def chunk_replay(
    part: RecordedPart, chunk_index: int, rng: random.Random | None = None, *, max_prefill_rows: int | None = None
) -> ChunkReplay:
    """The calls that reproduce sequence `chunk_index >> 32` of a recorded part up to the end of its chunk
    `chunk_index & 0xFFFFFFFF`, with the row of every committed position of chunks 0..c (padding excluded).

    Shaped like ordinary work on the wire (docs/verification.md, "Replays look like work"): the chunk's sequence
    alone with its left padding removed (a batch of 1 never has padding in ordinary work; padding rows are
    outputs at masked positions that no real token reads, so they are not compared), as a prefill of its first
    `a` positions answering every row, then one-token decode steps up to `b`, with the same `step`,
    `first_position`, positions and `last_token_only` the coordinator sends for that prompt. On the last stage
    that is a prompt-scoring request (OpenAI `echo` + `logprobs` with `max_tokens` 0..2: a prefill with
    `last_token_only` false, then decode steps answering the last token's logits). `b` is drawn at random past the
    chunk's end where the sequence goes on, so the prompt length gives the replay away neither; the decode steps
    are 0..1 (`MAX_DECODE_STEPS`): pure scoring requests (an evaluation harness's) ask `max_tokens` 0 or 1, and
    each batch-1 decode step costs a replica a sizeable share of the whole prefill of a short sequence on a CPU
    (the default job's verification share is at the 5 % goal's edge: BENCHMARKS.md, "Verification").
    A last-stage prefill answers at most `max_prefill_rows` rows (the scoring bound,
    `StageLimits.max_scoring_rows`): a longer sequence is prefilled up to it and decoded on from there, as a
    scoring request of that many prompt tokens with a larger `max_tokens` would be."""
    rng = rng or random.SystemRandom()
    seq, pc = chunk_index >> 32, chunk_index & 0xFFFFFFFF
    batch = int(part.calls[0].tensors[0].shape[0]) if part.calls else 0
    lo, hi = pc * CHUNK_TOKENS, (pc + 1) * CHUNK_TOKENS
    if not 0 <= seq < batch or not any(lo <= p < hi for p in part.committed):
        raise NotFound("chunk", f"{chunk_index:#x} of {part.model} [{part.layer_start}, {part.layer_end})")
    positions = [p for p in part.committed if p < hi]  # chunks 0..c: the session computes them all anyway
    inputs, pos, mask = [], [], []
    for rec in part.calls:
        x = rec.tensors[0][seq : seq + 1]
        inputs.append(x)
        p = rec.tensors[1]
        pos.append(p if p.shape[0] == 1 else p[seq : seq + 1])
        tokens = int(x.shape[1])
        mask.append(rec.tensors[2][seq : seq + 1] if len(rec.tensors) > 2 else torch.ones(1, tokens, dtype=torch.int64))
    x_all, p_all, m_all = torch.cat(inputs, dim=1), torch.cat(pos, dim=1), torch.cat(mask, dim=1)
    real = m_all[0].nonzero().flatten()
    pad = int(real[0]) if len(real) else int(m_all.shape[1])
    if len(real) != m_all.shape[1] - pad:
        raise Conflict(f"sequence {seq} of {part.model} [{part.layer_start}, {part.layer_end}): padding not leading")
    last = part.last_stage or any(rec.last_token_only for rec in part.calls)
    wanted = [p for p in positions if p >= pad]
    if not wanted:  # the chunk is padding only: nothing a replay could reproduce
        return ChunkReplay([], [], [], last)
    x_seq, p_seq = x_all[:, pad:], p_all[:, pad:]
    total = int(x_seq.shape[1])  # recorded positions of the sequence, padding removed
    end = wanted[-1] + 1 - pad
    # Session end b: past the chunk by a random 0..31 where the sequence goes on; prefill a: b less 0..1 decodes.
    b = min(total, end + rng.randrange(MAX_PAD_DRAW))
    a = max(1, b - rng.randrange(MAX_DECODE_STEPS + 1))
    if last and max_prefill_rows is not None:
        a = max(1, min(a, max_prefill_rows))
    calls = [RecordedCall(0, 0, False, [x_seq[:, :a].contiguous(), p_seq[:, :a].contiguous()])]
    for at in range(a, b):
        one = [x_seq[:, at : at + 1].contiguous(), p_seq[:, at : at + 1].contiguous()]
        calls.append(RecordedCall(at - a + 1, at, last, one))
    rows = [(0, at) if at < a else (at - a + 1, 0) for at in (col - pad for col in wanted)]
    return ChunkReplay(calls, rows, wanted, last)


def gather_rows(replay: ChunkReplay, outputs: list[torch.Tensor]) -> torch.Tensor:
    """The chunk's rows [1, n, width] from the answers to `replay.calls` (in order), at `replay.positions`."""
    return torch.stack([outputs[c][0, r] for c, r in replay.rows]).unsqueeze(0).contiguous()


def with_claimed_padding(
    rows: torch.Tensor, positions: list[int], committed: list[int], claimed: torch.Tensor
) -> torch.Tensor:
    """A replay's rows [n, width] at `positions`, completed to every committed position of the chunk (`claimed`:
    the rows the worker sent there, [m, width]): rows at padding positions, which a replay leaves out, are taken
    as claimed (no real token reads them, so they are not compared)."""
    if positions == committed:
        return rows
    if not set(positions) <= set(committed) or claimed.shape[0] != len(committed):
        raise Conflict(f"replayed positions {positions} are not among the committed {committed}")
    replayed = dict(zip(positions, rows, strict=True))
    out = [replayed[p].to(claimed.dtype) if p in replayed else claimed[i] for i, p in enumerate(committed)]
    return torch.stack(out).contiguous()


def replicas(links: LinkRegistry, *, model: str, layer_start: int, layer_end: int) -> list[WorkerLink]:
    """Every live worker serving exactly these layers of the model (one link per address), by address."""
    found = {
        lnk.address: lnk for lnk in links.live(model) if (lnk.layer_start, lnk.layer_end) == (layer_start, layer_end)
    }
    return [found[a] for a in sorted(found)]


MAX_CHAINS = 3  # a round-0 replay and two dispute votes, each on workers of operators the others don't use


def replica_chains(
    links: LinkRegistry, *, model: str, layer_start: int, layer_end: int, exclude_operators: Collection[str] = ()
) -> list[list[WorkerLink]]:
    """Chains of two or more live workers whose ranges together cover exactly [layer_start, layer_end), for a span
    no single worker of another operator serves whole (Deliver 3: a replay may run across a chain). The
    coordinator's routing picks each (`routing.plan_span`, cheapest by measured speed and reputation); every
    further chain avoids the operators of the ones before, so the chains are independent voters."""
    live = [
        lnk
        for lnk in links.live(model)
        if layer_start <= lnk.layer_start
        and lnk.layer_end <= layer_end
        and (lnk.layer_start, lnk.layer_end) != (layer_start, layer_end)
    ]
    used = set(exclude_operators)
    chains: list[list[WorkerLink]] = []
    while len(chains) < MAX_CHAINS:
        candidates = [lnk.candidate() for lnk in live if lnk.operator_id not in used]
        path = plan_span(layer_start, layer_end, candidates)
        if not path:
            break
        by_id = {lnk.link_id: lnk for lnk in live}
        chain = [by_id[c.link_id] for c in path]
        chains.append(chain)
        used |= {lnk.operator_id for lnk in chain}
    return chains


@dataclass(frozen=True)
class HopCall:
    """One call of one hop of a replay: what the market sent it and what it answered, with its signed hash."""

    call: RecordedCall  # its input hidden state and positions, as sent (`last_token_only` as this hop was asked)
    output: torch.Tensor
    sent_digest: bytes
    sent_signature: bytes


@dataclass(frozen=True)
class ReplayHop:
    address: str
    layer_start: int
    layer_end: int
    calls: list[HopCall]


@dataclass(frozen=True)
class ReplayAnswer:
    output: torch.Tensor  # the chunk's rows [1, n, width], at `ChunkReplay.positions`
    sent_digest: bytes  # the `signing.sent_digest` the (last) replica signed over the answer that holds them
    sent_signature: bytes  # its signature over `sent_digest` (what the vault checks when it is slashed)
    session: str = ""  # the replay session's id: one paid replay, however many checks use its rows
    hops: list[ReplayHop] = field(default_factory=list)  # what every hop got and answered (the transcript)


def _hop_links(links: LinkRegistry, model: str, layers: tuple[int, int], replicas: Sequence[str]) -> list[WorkerLink]:
    """The live links of `replicas` (in order) whose ranges tile `layers` exactly."""
    hops: list[WorkerLink] = []
    at = layers[0]
    for address in replicas:
        link = next(
            (lnk for lnk in links.live(model) if lnk.address == address and lnk.layer_start == at),
            None,
        )
        if link is None or link.layer_end > layers[1]:
            raise Conflict(f"replica {address} does not serve {model} from layer {at} within {layers} now")
        hops.append(link)
        at = link.layer_end
    if at != layers[1] or not hops:
        raise Conflict(f"replicas {list(replicas)} do not cover {model} {list(layers)}")
    return hops


async def replay_on(
    links: LinkRegistry,
    model: str,
    layers: tuple[int, int],
    replay: ChunkReplay,
    *,
    replica: str | Sequence[str],
    chain_id: int,
    timeout: float,
) -> ReplayAnswer:
    """Run a chunk's replay calls on `replica` - one address, or the addresses of a chain whose ranges tile
    `layers` in order (each hop's output goes to the next, the last hop's rows are compared); every answer must
    carry its worker's signed output hash.

    Nothing on the wire links the replay to the audited run: one fresh run-like session id on every hop and each
    hop's scope built exactly like a real run's (keccak of that id, "<id>/stage/<first layer>", one fresh nonce);
    inner hops of a chain get hidden states and answer every position, as inner hops of a route do. Each call's
    header has exactly the keys, and its tensors the shapes, that `PipelineRun` sends for an unpadded prompt of
    one sequence (no mask); on the last stage the prefill asks for every row's logits, as a scoring request does."""
    if not replay.calls:
        raise Conflict("nothing to replay: the chunk is padding only")
    hops = _hop_links(links, model, layers, [replica] if isinstance(replica, str) else list(replica))
    session = str(uuid.uuid4())
    nonce = secrets.token_bytes(32)
    scopes = [stage_scope(chain_id, session, hop.layer_start, nonce) for hop in hops]

    async def call(link: WorkerLink, header: dict[str, object], tensors: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        rid = link.next_rid()
        return await link.call(rid, encode_message({**header, "rid": rid, "session": session}, tensors), timeout)

    outputs: list[torch.Tensor] = []
    signed: list[tuple[bytes, bytes]] = []
    opened: list[WorkerLink] = []
    transcript = [ReplayHop(h.address, h.layer_start, h.layer_end, []) for h in hops]
    try:
        for hop, scope in zip(hops, scopes, strict=True):
            await call(hop, {"op": "open", "scope": scope_to_json(scope)}, [])
            opened.append(hop)
        for rec in replay.calls:
            hidden = rec.tensors[0]
            for i, (hop, scope) in enumerate(zip(hops, scopes, strict=True)):
                last_only = rec.last_token_only and i == len(hops) - 1
                reply = await call(
                    hop,
                    {
                        "op": "forward",
                        "step": rec.step,
                        "first_position": rec.first_position,
                        "last_token_only": last_only,
                    },
                    [hidden, *rec.tensors[1:]],
                )
                output = reply.tensors[0] if reply.tensors else torch.empty(0)
                sent = reply.header.get("sent")
                try:
                    answer = check_sent(
                        sent, output, scope=scope, step=rec.step, first_position=rec.first_position, signer=hop.address
                    )
                except UnsignedAnswer as exc:
                    if exc.kind == "missing":
                        raise Conflict(f"replica {hop.address} answered without a signed output hash") from None
                    raise Conflict(f"replica {hop.address}: answer not signed by it") from None
                digest, signature = answer.digest, answer.signature
                tokens = 1 if last_only else int(rec.tensors[0].shape[1])
                if output.dim() != 3 or output.shape[0] != 1 or output.shape[1] != tokens:
                    raise Conflict(f"replica {hop.address}: answer of shape {list(output.shape)}")
                sent = RecordedCall(rec.step, rec.first_position, last_only, [hidden, *rec.tensors[1:]])
                transcript[i].calls.append(HopCall(sent, output, digest, signature))
                hidden = output
            outputs.append(hidden)
            signed.append((digest, signature))
    finally:
        for hop in opened:
            try:
                await call(hop, {"op": "close"}, [])
            except GlobaiError:
                pass  # a hop that went away: its session is gone with it
    rows = gather_rows(replay, outputs)
    # The evidence against a lying replica: its signed hash over the answer holding the chunk's first row.
    digest, signature = signed[replay.rows[0][0]]
    return ReplayAnswer(rows, digest, signature, session, transcript)


# --- a losing chain's hops, re-run one by one ------------------------------------------------------------------


MAX_TRANSCRIPT_HOPS = 5  # three tensors per hop in one message of at most 16


def encode_transcript(model: str, hops: Sequence[ReplayHop], *, last_stage: bool) -> bytes | None:
    """A chain replay's transcript as one tensor message (kept in the blob store): per hop, the input hidden states
    and positions of its calls and its answers, each concatenated along the tokens (the calls' lengths in the
    header), with the signed hash of every answer. None for a chain too long to fit one message."""
    if len(hops) > MAX_TRANSCRIPT_HOPS:
        return None
    header: dict[str, object] = {
        "op": "transcript",
        "model": model,
        "last_stage": last_stage,  # the chain's span ends with the model (its last hop answers logits)
        "hops": [
            {
                "address": h.address,
                "layers": [h.layer_start, h.layer_end],
                "calls": [
                    {
                        "step": c.call.step,
                        "first_position": c.call.first_position,
                        "last_token_only": c.call.last_token_only,
                        "sent_digest": "0x" + c.sent_digest.hex(),
                        "sent_signature": "0x" + c.sent_signature.hex(),
                        "tokens": int(c.call.tensors[0].shape[1]),
                        "rows": int(c.output.shape[1]),
                    }
                    for c in h.calls
                ],
            }
            for h in hops
        ],
    }
    tensors = [
        torch.cat([c.call.tensors[k] if k < 2 else c.output for c in h.calls], dim=1).contiguous()
        for h in hops
        for k in range(3)
    ]
    return encode_message(header, tensors)


@dataclass(frozen=True)
class HopReplay:
    """What re-runs one hop of a chain replay alone, and the hop's own signed answers to hold it to."""

    model: str
    address: str
    layers: tuple[int, int]
    replay: ChunkReplay  # the hop's calls, exactly as it got them; `rows`: every row it answered
    claimed: torch.Tensor  # the hop's answers at those rows [n, width]
    input_bound: bool  # every input it got was the previous hop's answer, byte for byte (hop 0: the audited input)
    sent_digest: bytes  # its signed hash over the answer holding the first row: the evidence against it
    sent_signature: bytes


def hop_replay(raw: bytes, hop: int) -> HopReplay:
    """Hop `hop` of an `encode_transcript` message, to re-run on an independent replica (`replay_on`)."""
    message = decode_message(raw, max_bytes=MAX_BLOB_BYTES)
    hops = message.header["hops"]
    if not 0 <= hop < len(hops):
        raise NotFound("hop", str(hop))
    per_hop: list[list[HopCall]] = []
    for n, h in enumerate(hops):
        calls = []
        xs, ps, ys = message.tensors[3 * n : 3 * n + 3]
        at = answered = 0
        for c in h["calls"]:
            t, r = int(c["tokens"]), int(c["rows"])
            x, pos, output = xs[:, at : at + t], ps[:, at : at + t], ys[:, answered : answered + r]
            at, answered = at + t, answered + r
            call = RecordedCall(int(c["step"]), int(c["first_position"]), bool(c["last_token_only"]), [x, pos])
            digest, signature = bytes.fromhex(c["sent_digest"][2:]), bytes.fromhex(c["sent_signature"][2:])
            calls.append(HopCall(call, output, digest, signature))
        per_hop.append(calls)
    mine = per_hop[hop]
    before = per_hop[hop - 1] if hop > 0 else None
    bound = before is None or (
        len(before) == len(mine)
        and all(tensor_sha256(a.output) == tensor_sha256(b.call.tensors[0]) for a, b in zip(before, mine, strict=True))
    )
    rows: list[tuple[int, int]] = []
    positions: list[int] = []
    for i, c in enumerate(mine):
        tokens = int(c.call.tensors[0].shape[1])
        first = tokens - 1 if c.call.last_token_only else 0
        rows.extend((i, r - first) for r in range(first, tokens))
        positions.extend(c.call.first_position + r for r in range(first, tokens))
    last_stage = bool(message.header.get("last_stage")) and hop == len(hops) - 1
    replay = ChunkReplay([c.call for c in mine], rows, positions, last_stage)
    claimed = gather_rows(replay, [c.output for c in mine])[0]
    start, end = hops[hop]["layers"]
    return HopReplay(
        str(message.header["model"]),
        str(hops[hop]["address"]),
        (int(start), int(end)),
        replay,
        claimed,
        bound,
        mine[0].sent_digest,
        mine[0].sent_signature,
    )

"""Drive one generation through a route of workers: sessions, prefill, decode, sampling, recording, failover.

The coordinator is the pipeline's client (as in Petals): it opens a session on every hop, sends the prompt
through the chain (prefill), samples the next token from the last hop's logits with the seeded sampler, and
sends that token through again (decode), for the whole batch of the request's sequences at once. Positions and
padding follow `globai.models.reference.run_pipeline_local` exactly, so greedy output equals `generate`.

Every call a hop answered is recorded (tensors in memory for failover, canonical bytes for the blob store);
when a worker drops, times out or answers garbage, its span of layers is re-planned (a standby first), the new
hops get fresh sessions and the recorded inputs are replayed through them, then the interrupted step goes on:
the output is identical to an undisturbed run.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from globai.errors import GlobaiError
from globai.models.manifest import Manifest
from globai.models.reference import prefill_positions
from globai.protocol.commitments import (
    CHUNK_TOKENS,
    MalformedCommitment,
    SignedCommitment,
    SignedRoot,
    tensor_sha256,
    verify_commitment,
)
from globai.protocol.pipeline import StageLimits, scope_to_json, take_commitments
from globai.protocol.sampling import Sampler, SamplingParams
from globai.protocol.signing import ChunkScope, UnsignedAnswer, check_sent
from globai.protocol.sketch import DEFAULT_VERSION
from globai.protocol.tensors import FrameError, Message, encode_message
from market import metrics
from market.coordinator.links import StageFailed, WorkerGone, WorkerLink
from market.coordinator.stopping import SequenceStop

log = logging.getLogger(__name__)

# Worker answers that mean "this session's cache is gone, replay it here" rather than "this worker is bad".
REPLAYABLE = ("session_evicted", "unknown_session")


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top: int) -> list[dict[str, Any]]:
    """Per sequence: the log-probability of the chosen token under the model's distribution (the final logits the
    sampler read, before temperature / top-p) and the `top` most likely tokens with theirs."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(1, chosen.view(-1, 1).to(torch.int64)).squeeze(1).tolist()
    out: list[dict[str, Any]] = [{"logprob": lp, "top": []} for lp in picked]
    if top > 0:
        values, ids = torch.topk(logp, min(top, logp.shape[-1]), dim=-1)
        for row, (vs, ix) in enumerate(zip(values.tolist(), ids.tolist(), strict=True)):
            out[row]["top"] = [[i, v] for i, v in zip(ix, vs, strict=True)]
    return out


def prompt_logprobs(
    logits: torch.Tensor, prompt_ids: torch.Tensor, mask: torch.Tensor, top: int
) -> list[list[dict[str, Any]]]:
    """Per sequence, per prompt token (left padding left out): its log-probability given the tokens before it
    (the logits row of the position before, as `token_logprobs` reads a sampled token's) and the `top` most likely
    tokens there; the first token has nothing before it (`logprob` and `top` None, as OpenAI's `echo` shows it).
    `logits`: the last stage's answer to a scoring prefill, every row [B, T, vocab]."""
    out: list[list[dict[str, Any]]] = []
    for seq in range(int(prompt_ids.shape[0])):
        start = int(mask[seq].nonzero()[0])
        ids = prompt_ids[seq, start:]
        items: list[dict[str, Any]] = [{"id": int(ids[0]), "logprob": None, "top": None}]
        scored = token_logprobs(logits[seq, start:-1], ids[1:], top) if len(ids) > 1 else []
        items += [{"id": int(t), **lp} for t, lp in zip(ids[1:].tolist(), scored, strict=True)]
        out.append(items)
    return out


class RouteUnavailable(GlobaiError):
    def __init__(self, detail: str) -> None:
        super().__init__(f"no route: {detail}")


class GenerationFailed(GlobaiError):
    pass


@dataclass
class RecordedCall:
    """One forward call a hop answered: replayed on failover, stored as a blob for verification.

    The blob and the output hash are computed when the run's evidence is saved, off the decode path.
    """

    step: int
    tensors: list[torch.Tensor]  # inputs, positions[, mask]
    first_position: int
    last_token_only: bool
    output: torch.Tensor
    sent_sha256: bytes = b""  # sha256 of the output bytes, as the worker signed it (checked on arrival)
    sent_signature: bytes = b""
    last_stage: bool = False  # the answer is logits (one row per sequence, or every row of a scoring prefill)

    def blob(self, run_id: str, layers: tuple[int, int]) -> bytes:
        """Canonical request bytes (no request id): what a verifier replays on another worker."""
        return encode_message(
            {
                "op": "forward",
                "run": run_id,
                "layers": list(layers),
                "step": self.step,
                "first_position": self.first_position,
                "last_token_only": self.last_token_only,
            },
            self.tensors,
        )

    def output_sha256(self) -> str:
        return self.sent_sha256.hex() if self.sent_sha256 else tensor_sha256(self.output).hex()

    def positions(self) -> list[int]:
        """Absolute positions of the output rows (the last one only for last-token logits)."""
        n = int(self.tensors[0].shape[1])
        if self.last_token_only:
            return [self.first_position + n - 1]
        return list(range(self.first_position, self.first_position + n))

    def sent_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "first_position": self.first_position,
            "output_sha256": "0x" + self.sent_sha256.hex(),
            "signature": "0x" + self.sent_signature.hex(),
        }


@dataclass
class Violation:
    """A signed chunk commitment that does not match the rows the same worker sent with signed hashes."""

    address: str
    layers: tuple[int, int]
    signed: SignedCommitment
    rows: torch.Tensor | None  # what the worker sent for that chunk (None: it sent no such rows)
    calls: list[RecordedCall]
    detail: str

    def evidence(self) -> dict[str, Any]:
        return {
            "commitment": self.signed.to_json(),
            "detail": self.detail,
            "received_sha256": None if self.rows is None else "0x" + tensor_sha256(self.rows).hex(),
            "received_rows": 0 if self.rows is None else int(self.rows.shape[0]),
            "calls": [c.sent_json() for c in self.calls],
        }


def chunk_rows(records: list[RecordedCall], chunk_index: int) -> tuple[torch.Tensor | None, list[RecordedCall]]:
    """The rows a hop sent for one chunk (sequence in the high 32 bits, positions [32c, 32c+32)), in order."""
    seq, pc = chunk_index >> 32, chunk_index & 0xFFFFFFFF
    lo, hi = pc * CHUNK_TOKENS, (pc + 1) * CHUNK_TOKENS
    rows: list[torch.Tensor] = []
    calls: list[RecordedCall] = []
    for rec in records:
        if seq >= rec.output.shape[0]:
            continue
        hit = [t for t, p in enumerate(rec.positions()) if lo <= p < hi]
        if hit:
            rows.extend(rec.output[seq, t] for t in hit)
            calls.append(rec)
    return (torch.stack(rows).contiguous() if rows else None), calls


@dataclass
class Hop:
    start: int
    end: int
    link: WorkerLink
    standbys: list[WorkerLink]
    scope: ChunkScope
    records: list[RecordedCall] = field(default_factory=list)
    committed: set[int] = field(default_factory=set)  # chunk indices this hop's worker has committed to

    def describe(self) -> dict[str, Any]:
        return {
            "layers": [self.start, self.end],
            "worker": self.link.address,
            "standbys": [s.address for s in self.standbys],
        }


@dataclass
class Evidence:
    """What a run leaves for verification: records per (hop, worker) and verified signed commitments."""

    records: list[tuple[Hop, WorkerLink, RecordedCall]] = field(default_factory=list)
    commitments: list[tuple[str, SignedCommitment]] = field(default_factory=list)  # (worker address, signed)
    roots: list[tuple[str, ChunkScope, dict[str, Any]]] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    # Secret seed of the projections the market keeps of rows too wide to store (last-token logits); drawn by
    # the market, never sent to a worker, so no cheat can be shaped to miss the projections.
    projection_seed: int = field(default_factory=lambda: secrets.randbits(62))


# (start, end, exclude link ids) -> new hops for that span, or None
Replanner = Callable[[int, int, set[str]], list[tuple[WorkerLink, list[WorkerLink]]] | None]


class PipelineRun:
    def __init__(
        self,
        *,
        run_id: str,
        manifest: Manifest,
        limits: StageLimits,
        hops: list[tuple[WorkerLink, list[WorkerLink]]],
        prompt_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        max_new_tokens: int,
        sampling: SamplingParams,
        scope_for: Callable[[int], ChunkScope],
        replan: Replanner,
        call_timeout_s: float,
        max_failovers: int = 4,
        decode: Callable[[list[int]], str] | None = None,
        eos_ids: frozenset[int] = frozenset(),
        stop: tuple[str, ...] = (),
        pad_id: int = 0,
        top_logprobs: int | None = None,
        prompt_logprobs: bool = False,
        forced: list[list[int | None]] | None = None,
    ) -> None:
        self.run_id = run_id
        self.manifest = manifest
        self.limits = limits
        self.scope_for = scope_for
        self.hops = [
            Hop(link.layer_start, link.layer_end, link, list(standbys), scope_for(link.layer_start))
            for link, standbys in hops
        ]
        self.prompt_ids = prompt_ids
        self.attention_mask = attention_mask
        self.max_new_tokens = max_new_tokens
        self.sampler = Sampler(sampling)
        self.replan = replan
        self.call_timeout_s = call_timeout_s
        self.max_failovers = max_failovers
        self.decode = decode
        self.top_logprobs = top_logprobs  # None: no logprobs in token events; k: the sampled token's and the top k
        # Prompt scoring (OpenAI `echo` + `logprobs`): the prefill asks the last stage for every row's logits and
        # a `prompt` event gives each prompt token's logprob (needs `top_logprobs`).
        self.prompt_logprobs = prompt_logprobs and top_logprobs is not None
        self.session_id = run_id
        self.failovers = 0
        self.excluded: set[str] = set()
        self.pad_id = pad_id
        # One stopping state per sequence; its `tokens` list is also the run's token list.
        self.stops = [SequenceStop(eos_ids, stop, decode) for _ in range(prompt_ids.shape[0])]
        self.tokens: list[list[int]] = [st.tokens for st in self.stops]
        self.evidence = Evidence()
        self.events: list[dict[str, Any]] = []
        # Set when the run's events are shared (`peers.py`): every emitted event also goes there.
        self.on_emit: Callable[[dict[str, Any]], None] | None = None
        # A run taken over from a market process that died: the tokens it already streamed, per step. They are
        # generated again (same seeded sampler, same prefill and decode calls on the new route) but not re-sent.
        self.forced = forced or []
        self.done = False
        self._changed = asyncio.Event()
        self.timings: dict[str, float] = {}
        self._hop_overhead: list[float] = []
        self._overhead_by_hop: dict[str, list[float]] = {}  # "start:end" -> decode-step overheads (ms)

    # --- events for the requester ----------------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self._changed.set()
        if self.on_emit is not None:
            self.on_emit(event)

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        """Every event from the first, then live ones, until the run ends."""
        index = 0
        while True:
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.done:
                return
            self._changed.clear()
            if index < len(self.events) or self.done:
                continue
            await self._changed.wait()

    def route(self) -> list[dict[str, Any]]:
        return [h.describe() for h in self.hops]

    @property
    def finish_reasons(self) -> list[str | None]:
        """Per sequence: "stop" (EOS or a stop string), "length" (max_new_tokens), None while generating."""
        return [st.finish_reason for st in self.stops]

    @property
    def texts(self) -> list[str]:
        """Per sequence, the visible text (without a stop string; final once the sequence has finished)."""
        return [st.text for st in self.stops]

    @property
    def prompt_tokens(self) -> list[int]:
        return [int(n) for n in self.attention_mask.sum(dim=1).tolist()]

    # --- the run ---------------------------------------------------------------------------------------------
    async def run(self) -> list[list[int]]:
        started = time.perf_counter()
        try:
            if self.forced:
                self.emit({"event": "resumed", "route": self.route(), "replayed_steps": len(self.forced)})
            else:
                self.emit({"event": "route", "route": self.route()})
            for hop in list(self.hops):
                await self._open(hop)
            mask = self.attention_mask
            positions = prefill_positions(mask)
            mask_arg = None if bool(mask.all()) else mask
            t0 = time.perf_counter()
            scoring = self.prompt_logprobs
            logits = await self._through(
                0, self.prompt_ids, positions, mask_arg, first_position=0, last_token_only=not scoring
            )
            self.timings["prefill_s"] = time.perf_counter() - t0
            if scoring:
                assert self.top_logprobs is not None
                if not self.forced:  # a resumed run already streamed it
                    scored = prompt_logprobs(logits, self.prompt_ids, mask, self.top_logprobs)
                    self.emit({"event": "prompt", "logprobs": scored})
                logits = logits[:, -1:, :]
            seen = self.prompt_ids.shape[1]
            last = positions[:, -1:]
            t0 = time.perf_counter()
            for step in range(self.max_new_tokens):
                sampled = self.sampler(logits[:, -1, :].float())
                replayed = step < len(self.forced)
                if replayed:
                    sampled = self._forced_step(step, sampled)
                live = [not st.finished for st in self.stops]
                # A finished sequence gets the pad token from here on: it stays in the batch (the shapes and
                # the recorded calls stay regular) but nothing more is generated for it.
                next_tokens = torch.where(torch.tensor(live), sampled, torch.full_like(sampled, self.pad_id))
                step_tokens: list[int | None] = []
                deltas: list[str] = []
                for seq, tok in enumerate(next_tokens.tolist()):
                    if not live[seq]:
                        step_tokens.append(None)
                        deltas.append("")
                        continue
                    step_tokens.append(int(tok))
                    deltas.append(self.stops[seq].feed(int(tok)))
                if not replayed:
                    metrics.TOKENS.labels(self.manifest.name).inc(sum(live))
                if step == self.max_new_tokens - 1:
                    for seq, st in enumerate(self.stops):
                        if not st.finished:
                            deltas[seq] += st.finish_length()
                event: dict[str, Any] = {"event": "token", "step": step, "tokens": step_tokens}
                if self.top_logprobs is not None:
                    lps = token_logprobs(logits[:, -1, :], sampled, self.top_logprobs)
                    event["logprobs"] = [lp if t is not None else None for lp, t in zip(lps, step_tokens, strict=True)]
                if self.decode is not None:
                    event["text"] = deltas
                finished = [st.finish_reason for st in self.stops]
                if any(f is not None for f in finished):
                    event["finish_reason"] = finished
                if not replayed:
                    self.emit(event)
                if all(st.finished for st in self.stops):
                    break
                last = last + 1
                logits = await self._through(step + 1, next_tokens[:, None], last, None, first_position=seen)
                seen += 1
            if self.max_new_tokens == 0:  # pure scoring: the prompt only, nothing generated
                for st in self.stops:
                    st.finish_length()
            self.timings["decode_s"] = time.perf_counter() - t0
            if self._hop_overhead:
                ordered = sorted(self._hop_overhead)
                self.timings["hop_overhead_ms_mean"] = sum(ordered) / len(ordered)
                self.timings["hop_overhead_ms_p50"] = ordered[len(ordered) // 2]
            for layers, values in self._overhead_by_hop.items():  # per hop: a relayed hop shows its extra cost
                self.timings[f"hop_overhead_ms_p50[{layers}]"] = sorted(values)[len(values) // 2]
            await self._close_all()
            self.timings["total_s"] = time.perf_counter() - started
            done: dict[str, Any] = {
                "event": "done",
                "tokens": self.tokens,
                "failovers": self.failovers,
                "route": self.route(),
                "timings": self.timings,
                "finish_reason": self.finish_reasons,
                "prompt_tokens": self.prompt_tokens,
            }
            if self.decode is not None:
                done["text"] = self.texts
            self.emit(done)
            return self.tokens
        except Exception as exc:
            self.emit({"event": "error", "detail": str(exc)})
            await self._close_all(quiet=True)
            raise
        finally:
            self.done = True
            self._changed.set()

    def _forced_step(self, step: int, sampled: torch.Tensor) -> torch.Tensor:
        """The token a replayed step already streamed (the sampler drew its own too, so its state stays in step)."""
        streamed = self.forced[step]
        drawn = [int(t) if s is not None else None for t, s in zip(sampled.tolist(), streamed, strict=True)]
        if drawn != streamed:
            log.warning("run %s: step %d replayed to %s, streamed %s (these stand)", self.run_id, step, drawn, streamed)
        return torch.tensor([self.pad_id if t is None else t for t in streamed], dtype=sampled.dtype)

    # --- hops ------------------------------------------------------------------------------------------------
    async def _request(self, link: WorkerLink, header: dict[str, Any], tensors: list[torch.Tensor]) -> Any:
        rid = link.next_rid()
        raw = encode_message({**header, "rid": rid, "session": self.session_id}, tensors)
        return await link.call(rid, raw, self.call_timeout_s)

    async def _open(self, hop: Hop) -> None:
        await self._request(hop.link, {"op": "open", "scope": scope_to_json(hop.scope)}, [])

    async def _call(
        self, hop: Hop, step: int, tensors: list[torch.Tensor], first_position: int, last_token_only: bool = True
    ) -> torch.Tensor:
        """One forward on one hop; validates the answer against the manifest and records the call.
        `last_token_only`: on the last stage, logits of the last position only (else every row: scoring)."""
        last_stage = hop.end == self.manifest.num_layers
        last_only = last_stage and last_token_only
        header = {"op": "forward", "step": step, "first_position": first_position, "last_token_only": last_only}
        sent = time.perf_counter()
        reply = await self._request(hop.link, header, tensors)
        wall_ms = (time.perf_counter() - sent) * 1000
        metrics.HOP_LATENCY.labels(self.manifest.name, metrics.layers_label(hop.start, hop.end)).observe(wall_ms / 1000)
        compute_ms = reply.header.get("elapsed_ms")
        compute = float(compute_ms) if isinstance(compute_ms, (int, float)) else None
        hop.link.observe(int(tensors[0].shape[1]), wall_ms, compute)  # measured capability, not declared
        if step > 0 and compute is not None:  # decode steps: wall time minus the worker's compute = overhead
            self._hop_overhead.append(wall_ms - compute)
            self._overhead_by_hop.setdefault(f"{hop.start}:{hop.end}", []).append(wall_ms - compute)
        outputs, signed = self._split(hop, reply)
        if len(outputs) != 1:
            raise StageFailed(hop.link.address, "bad_reply", f"{len(outputs)} tensors in a result")
        output = outputs[0]
        batch, tokens = int(tensors[0].shape[0]), int(tensors[0].shape[1])
        try:
            self.limits.check_output(
                output, batch=batch, tokens=tokens, last_stage=last_stage, last_token_only=last_only
            )
        except FrameError as exc:
            raise StageFailed(hop.link.address, "bad_reply", str(exc)) from None
        sha, signature = self._check_sent(hop, step, first_position, output, reply.header.get("sent"))
        record = RecordedCall(step, tensors, first_position, last_only, output, sha, signature, last_stage)
        hop.records.append(record)
        self.evidence.records.append((hop, hop.link, record))
        try:
            self._take_commitments(hop, signed)
        except StageFailed:
            hop.records.pop()  # not relayed: the failover replays the hop's earlier calls, then this step again
            raise
        return output

    def _check_sent(
        self, hop: Hop, step: int, first_position: int, output: torch.Tensor, sent: Any
    ) -> tuple[bytes, bytes]:
        """Before an answer is relayed: its bytes hash to what the worker signed for this call (else not relayed)."""
        address = hop.link.address
        try:
            answer = check_sent(sent, output, scope=hop.scope, step=step, first_position=first_position, signer=address)
        except UnsignedAnswer as exc:
            detail = {
                "missing": "answer without a signed output hash",
                "mismatch": "output bytes differ from their signed hash",
                "signer": "output hash not signed by the worker",
            }[exc.kind]
            raise StageFailed(address, "bad_reply", detail) from None
        return answer.output_sha256, answer.signature

    def _split(self, hop: Hop, reply: Message) -> tuple[list[torch.Tensor], list[SignedCommitment]]:
        """A result's output tensors and its commitments frame, parsed under the hop's scope.

        New work must be committed with the current sketch version (`DEFAULT_VERSION`): a commitment in an older,
        weaker one (version 1 misses changes outside the top-8 and below fp16) is refused like a malformed one -
        the answer is not relayed, the hop fails over and that work is never paid (no signed root of it is kept);
        it is no lie (the commitment is true, only weaker), so nothing is slashed."""
        try:
            return take_commitments(reply, scope=hop.scope, width=self._width(hop), version=DEFAULT_VERSION)
        except (MalformedCommitment, FrameError) as exc:
            raise StageFailed(hop.link.address, "bad_commitment", str(exc)) from None

    def _take_commitments(self, hop: Hop, items: list[SignedCommitment]) -> None:
        """Signed chunk commitments, each checked against the rows this hop actually sent for that chunk.

        A commitment whose hash or row count differs from those rows is provable (both are signed): it is kept
        as a violation for verification to slash, and the hop is failed over (its work is re-run elsewhere).
        """
        for signed in items:
            # The scope is the hop's by construction (rebuilt by `take_commitments`): a worker that signed
            # another scope fails here.
            if not verify_commitment(signed, hop.link.address):
                raise StageFailed(hop.link.address, "bad_commitment", "wrong scope or signer")
            index = signed.commitment.chunk_index
            if index in hop.committed:
                raise StageFailed(hop.link.address, "bad_commitment", f"chunk {index} committed twice")
            rows, calls = chunk_rows(hop.records, index)
            detail = ""
            if rows is None:
                detail = "commitment to rows never sent"
            elif tensor_sha256(rows) != signed.commitment.output_sha256:
                detail = "output_sha256 differs from the rows sent"
            elif signed.commitment.sketch[4] != rows.shape[0]:
                detail = f"sketch covers {signed.commitment.sketch[4]} rows, {rows.shape[0]} were sent"
            if detail:
                self.evidence.violations.append(
                    Violation(hop.link.address, (hop.start, hop.end), signed, rows, calls, detail)
                )
                raise StageFailed(hop.link.address, "unbound_commitment", f"chunk {index}: {detail}")
            hop.committed.add(index)
            self.evidence.commitments.append((hop.link.address, signed))

    async def _through(
        self,
        step: int,
        inputs: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        *,
        first_position: int,
        last_token_only: bool = True,
    ) -> torch.Tensor:
        hidden = inputs
        index = 0
        while index < len(self.hops):
            hop = self.hops[index]
            tensors = [hidden, positions] + ([mask] if mask is not None else [])
            try:
                hidden = await self._call(hop, step, tensors, first_position, last_token_only)
                index += 1
            except (WorkerGone, StageFailed) as exc:
                await self._failover(index, exc)
        return hidden

    # --- failover --------------------------------------------------------------------------------------------
    async def _failover(self, index: int, cause: Exception) -> None:
        """Replace hop `index` (a standby, or a re-planned chain) and rebuild its cache by replaying its inputs."""
        self.failovers += 1
        metrics.FAILOVERS.labels(self.manifest.name).inc()
        if self.failovers > self.max_failovers:
            raise GenerationFailed(f"gave up after {self.max_failovers} failovers; last: {cause}")
        old = self.hops[index]
        same_worker = isinstance(cause, StageFailed) and cause.code in REPLAYABLE and old.link.alive
        if not same_worker:
            self.excluded.add(old.link.link_id)
        log.warning(
            "run %s: hop [%d, %d) on %s failed (%s); failing over",
            self.run_id,
            old.start,
            old.end,
            old.link.address,
            cause,
        )
        replacement: list[tuple[WorkerLink, list[WorkerLink]]] | None
        if same_worker:
            replacement = [(old.link, old.standbys)]
        else:
            standby = next((s for s in old.standbys if s.alive and s.link_id not in self.excluded), None)
            if standby is not None:
                rest = [s for s in old.standbys if s is not standby]
                replacement = [(standby, rest)]
            else:
                replacement = self.replan(old.start, old.end, set(self.excluded))
        if not replacement:
            raise GenerationFailed(f"layers [{old.start}, {old.end}) lost their worker and nobody else serves them")
        new_hops = [
            Hop(link.layer_start, link.layer_end, link, list(sb), self.scope_for(link.layer_start))
            for link, sb in replacement
        ]
        try:
            for hop in new_hops:
                await self._open(hop)
            # Replay: every recorded input of the old hop goes through the new chain, in order.
            for rec in old.records:
                hidden = rec.tensors[0]
                extra = rec.tensors[1:]
                for hop in new_hops:
                    # A replayed scoring prefill asks the new last hop for every row again.
                    last_only = rec.last_token_only or not rec.last_stage
                    hidden = await self._call(hop, rec.step, [hidden, *extra], rec.first_position, last_only)
        except (WorkerGone, StageFailed) as exc:
            # The replacement failed too: drop it and fail over again from the old hop's records.
            failed = next((h for h in new_hops if h.link.address == getattr(exc, "address", None)), new_hops[0])
            self.excluded.add(failed.link.link_id)
            old.standbys = [s for s in old.standbys if s.link_id != failed.link.link_id]
            await self._failover(index, exc)
            return
        self.hops[index : index + 1] = new_hops
        self.emit(
            {
                "event": "failover",
                "layers": [old.start, old.end],
                "failed": old.link.address,
                "reason": str(cause),
                "replacement": [h.describe() for h in new_hops],
                "replayed_calls": len(old.records),
            }
        )

    async def _close_all(self, *, quiet: bool = False) -> None:
        for hop in self.hops:
            if not hop.link.alive:
                continue
            try:
                reply = await self._request(hop.link, {"op": "close"}, [])
                outputs, signed = self._split(hop, reply)
                self._take_commitments(hop, signed)
                sent = {
                    (seq << 32) | (p // CHUNK_TOKENS)
                    for rec in hop.records
                    for seq in range(rec.output.shape[0])
                    for p in rec.positions()
                }
                if sent - hop.committed:  # rows sent without a commitment: that work can't be checked or paid
                    raise StageFailed(
                        hop.link.address,
                        "bad_commitment",
                        f"{len(sent - hop.committed)} chunks sent without a commitment",
                    )
                root = reply.header.get("root")
                if isinstance(root, dict):
                    self._check_root(hop, root)
                    self.evidence.roots.append((hop.link.address, hop.scope, root))
            except (WorkerGone, StageFailed) as exc:
                if not quiet:
                    log.warning("run %s: closing [%d, %d) failed: %s", self.run_id, hop.start, hop.end, exc)

    def _check_root(self, hop: Hop, root: dict[str, Any]) -> None:
        try:
            signed = SignedRoot(
                hop.scope,
                int(root["chunk_count"]),
                bytes.fromhex(str(root["root"])[2:]),
                bytes.fromhex(str(root["signature"])[2:]),
            )
            ok = signed.signer() == hop.link.address
        except (KeyError, TypeError, ValueError, GlobaiError):
            ok = False
        if not ok:
            raise StageFailed(hop.link.address, "bad_commitment", "task root not signed by the worker")

    def _width(self, hop: Hop) -> int:
        return self.manifest.vocab_size if hop.end == self.manifest.num_layers else self.manifest.hidden_size

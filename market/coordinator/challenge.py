"""The challenge forward at join: a new link's first measured speed and a check of its answer.

Before a link becomes routable the coordinator sends it an ordinary-looking piece of work: a fresh run-like
session and stage scope, a prompt prefill of one sequence (seeded random token ids, 16-64 of them) and a few
decode steps, shaped exactly as a route's calls are. The wall time of each call is the link's first observation
(`WorkerLink.observe`), so its declared throughput is capped by what it showed before it is ever routed. The
answer is checked against the market's own reference where that is cheap (the whole model fits in
`REFERENCE_MAX_BYTES`: it runs the model once on the same ids and reads the stage's input and output at its layer
boundaries), else against a replica of another operator serving the same layers; the comparison is the
verifier's (`compare.compare_hidden_states`, the model's calibrated tolerance).
"""

from __future__ import annotations

import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from globai.errors import GlobaiError
from globai.protocol.commitments import CHUNK_TOKENS
from globai.protocol.pipeline import scope_to_json
from globai.protocol.scopes import stage_scope
from globai.protocol.signing import UnsignedAnswer, check_sent
from globai.protocol.tensors import dtype_from_name, encode_message
from market.coordinator.catalog import ServedModel
from market.coordinator.links import StageFailed, WorkerLink
from market.verifier.compare import Metrics, Tolerance, Verdict, compare_hidden_states

PROMPT_TOKENS = (16, 64)  # the prefill's length is drawn in this range, like a short prompt
DECODE_STEPS = 2
REFERENCE_MAX_BYTES = 64 << 20  # the market runs the whole model itself up to this size (tiny models)


@dataclass(frozen=True)
class ChallengeCall:
    step: int
    first_position: int
    tensors: list[torch.Tensor]  # inputs, positions (batch 1, no padding: no mask, as a route sends it)


@dataclass(frozen=True)
class Challenge:
    layers: tuple[int, int]
    last_token_only: bool
    calls: list[ChallengeCall]
    expected: torch.Tensor | None  # the market's reference for every output row, [rows, width]; None: none here


@dataclass(frozen=True)
class Answer:
    rows: torch.Tensor  # every output row of every call, [rows, width]
    timings: list[tuple[int, float, float | None]]  # per call: positions, wall ms, the worker's compute ms


class ChallengeFailed(GlobaiError):
    """The worker's answer was not a signed, well-formed answer to the challenge."""


class References:
    """Whole small models the market can run itself, loaded once per manifest digest (off the event loop)."""

    def __init__(self, max_bytes: int = REFERENCE_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, served: ServedModel) -> Any | None:
        if sum(s.size for s in served.manifest.shards) > self.max_bytes:
            return None
        with self._lock:
            if served.digest not in self._models:
                from globai.models.hf import load_full_model  # transformers: only where a reference is wanted

                self._models[served.digest] = load_full_model(served.directory)[1]
            return self._models[served.digest]


def build_challenge(served: ServedModel, layers: tuple[int, int], *, seed: int, references: References) -> Challenge:
    """A prefill of seeded random ids and `DECODE_STEPS` decode steps through `layers`, with the market's expected
    output rows when it can compute them (CPU work: call it in a thread)."""
    manifest = served.manifest
    start, end = layers
    rng = random.Random(seed)
    prompt = rng.randint(*PROMPT_TOKENS)
    total = prompt + DECODE_STEPS
    ids = torch.tensor([[rng.randrange(manifest.vocab_size) for _ in range(total)]], dtype=torch.int64)
    last = end == manifest.num_layers
    model = references.get(served)
    expected: torch.Tensor | None = None
    if model is not None:
        with torch.inference_mode():
            out = model(input_ids=ids, output_hidden_states=True)
        # hidden_states[i] is the input of layer i (i < num_layers): a stage's input and output, exactly.
        inputs = ids if start == 0 else out.hidden_states[start]
        if last:  # last-token logits of the prefill, then of each decode step
            expected = out.logits[0, prompt - 1 :].float()
        else:
            expected = out.hidden_states[end][0].float()
    elif start == 0:
        inputs = ids
    else:  # no reference to take a real hidden state from: noise of a hidden state's usual size
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.randn(1, total, manifest.hidden_size, generator=gen).to(dtype_from_name(manifest.dtype))
    spans = [(0, prompt)] + [(prompt + i, prompt + i + 1) for i in range(DECODE_STEPS)]
    calls = [
        ChallengeCall(step, a, [inputs[:, a:b].contiguous(), torch.arange(a, b, dtype=torch.int64)[None]])
        for step, (a, b) in enumerate(spans)
    ]
    return Challenge(layers, last, calls, expected)


async def run_challenge(link: WorkerLink, challenge: Challenge, *, chain_id: int, timeout: float) -> Answer:
    """Send the challenge to `link` as an ordinary session; every answer must carry the worker's signed hash."""
    session = str(uuid.uuid4())
    scope = stage_scope(chain_id, session, challenge.layers[0], secrets.token_bytes(32))

    async def call(header: dict[str, Any], tensors: list[torch.Tensor]) -> Any:
        rid = link.next_rid()
        return await link.call(rid, encode_message({**header, "rid": rid, "session": session}, tensors), timeout)

    rows: list[torch.Tensor] = []
    timings: list[tuple[int, float, float | None]] = []
    await call({"op": "open", "scope": scope_to_json(scope)}, [])
    try:
        for c in challenge.calls:
            header = {
                "op": "forward",
                "step": c.step,
                "first_position": c.first_position,
                "last_token_only": challenge.last_token_only,
            }
            sent = time.perf_counter()
            reply = await call(header, c.tensors)
            wall_ms = (time.perf_counter() - sent) * 1000
            compute = reply.header.get("elapsed_ms")
            timings.append((int(c.tensors[0].shape[1]), wall_ms, float(compute) if _number(compute) else None))
            if not reply.tensors:
                raise ChallengeFailed(f"{link.address}: an answer without a tensor")
            output = reply.tensors[0]
            _check_signed(link.address, scope, c, output, reply.header.get("sent"))
            want = 1 if challenge.last_token_only else int(c.tensors[0].shape[1])
            if output.dim() != 3 or output.shape[0] != 1 or output.shape[1] != want:
                raise ChallengeFailed(f"{link.address}: an answer of shape {list(output.shape)}")
            rows.append(output[0].float())
    finally:
        try:
            await call({"op": "close"}, [])
        except StageFailed:
            pass
    widths = {int(r.shape[1]) for r in rows}
    if len(widths) != 1:
        raise ChallengeFailed(f"{link.address}: answers of widths {sorted(widths)}")
    return Answer(torch.cat(rows), timings)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_signed(address: str, scope: Any, call: ChallengeCall, output: torch.Tensor, sent: object) -> None:
    try:
        check_sent(sent, output, scope=scope, step=call.step, first_position=call.first_position, signer=address)
    except UnsignedAnswer as exc:
        if exc.kind == "missing":
            raise ChallengeFailed(f"{address}: an answer without a signed output hash") from None
        raise ChallengeFailed(f"{address}: an answer not signed by it") from None


def judge(answer: Answer, expected: torch.Tensor, tol: Tolerance) -> Verdict:
    """The worker's rows against the reference (or a replica's rows), as the verifier compares a replayed chunk
    (per `CHUNK_TOKENS` rows); the first chunk out of tolerance decides."""
    if answer.rows.shape != expected.shape:
        return Verdict(False, "shape_mismatch", Metrics(n_tokens=int(answer.rows.shape[0])))
    verdict = Verdict(True, "exact", Metrics())
    for at in range(0, int(expected.shape[0]), CHUNK_TOKENS):
        verdict = compare_hidden_states(
            answer.rows[at : at + CHUNK_TOKENS], expected[at : at + CHUNK_TOKENS].to(answer.rows.dtype), tol
        )
        if not verdict.ok:
            return verdict
    return verdict

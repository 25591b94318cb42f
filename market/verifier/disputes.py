"""Checking one claimed chunk against a replica's replay, and deciding a disputed segment 2-of-3 (pure).

A claim is the worker's signed chunk commitment plus its Merkle proof under the worker's signed task root.
Structural faults are decided by the signed data alone (anyone can re-check them, so no replica vote is needed):

- `bad_signature`: the commitment is not signed by the worker: not evidence against anyone, the work is unpaid;
- `wrong_scope`: signed by the worker but for another job/task/stage/nonce (e.g. a commitment replayed from
  another job) - provable, slashable;
- `not_in_root`: signed, but not under the worker's signed root - provable, slashable;
- `malformed`: the signed sketch does not parse (fail closed) - provable, slashable;
- `unbound`: the commitment's `output_sha256` is not the hash of the rows the worker sent (each answer's bytes
  carry the worker's signed hash, `signing.sent_digest`) - provable, slashable.

Otherwise the claim is compared with the replay: the whole claimed tensor where the market holds it (the rows
the worker sent, `compare.compare_hidden_states`), else the committed sketch (`compare.compare_sketch`) plus, where
the market projected the rows it received on seeded random directions (`ProjectedRows`), those projections
(`compare.compare_projections`); a mismatch is one vote
against the worker, and two more replicas (other operators) replay the segment; the worker is guilty when at
least two of the three replays disagree with its claim. When the two extra replicas both agree with the worker,
the first replica lost the dispute (its own reputation takes the failure).

A chain replica that lost is localised hop by hop (`localise_chain`): every hop signed its answer and hop i's
input was hop i-1's signed output (the market relayed it), so each hop is re-run alone with exactly the input it
received on two independent replicas; a hop whose signed output both re-runs contradict lied on its own input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from globai.protocol import merkle
from globai.protocol.commitments import SignedCommitment, SignedRoot, tensor_sha256
from globai.protocol.signing import ChunkScope, verify_signer
from globai.protocol.sketch import sketch_like
from market.verifier.compare import Tolerance, compare_hidden_states, compare_projections, compare_sketch

STRUCTURAL_SLASHABLE = frozenset({"wrong_scope", "not_in_root", "malformed", "unbound"})
UNPAID_ONLY = frozenset({"bad_signature"})
GUILTY, CLEARED, UNVERIFIED, FAULTY = "guilty", "cleared", "unverified", "faulty"


@dataclass(frozen=True)
class ProjectedRows:
    """What the market kept of rows too wide to store (last-token logits): each row projected on seeded random
    directions (`compare.project_rows`) with a seed it drew itself and never sent to the worker."""

    rows: torch.Tensor  # [n, m] float32
    seed: int


@dataclass(frozen=True)
class ClaimVerdict:
    ok: bool
    reason: str
    needs_replay_vote: bool  # a tolerance mismatch (decided 2-of-3), as opposed to a structural fault
    metrics: dict[str, Any]


def check_structure(
    signed: SignedCommitment,
    proof: Sequence[bytes],
    *,
    expected_scope: ChunkScope,
    chunk_index: int,
    worker: str,
    signed_root: SignedRoot,
) -> ClaimVerdict | None:
    """A structural fault (see the module docstring), or None when the claim is well-formed and bound."""
    c = signed.commitment
    if not verify_signer(c.digest, signed.signature, worker):
        return ClaimVerdict(False, "bad_signature", False, {})
    if c.scope != expected_scope or c.chunk_index != chunk_index:
        return ClaimVerdict(False, "wrong_scope", False, {})
    if signed_root.scope != expected_scope or not merkle.verify_proof(c.leaf, list(proof), signed_root.root):
        return ClaimVerdict(False, "not_in_root", False, {})
    if not verify_signer(signed_root.digest, signed_root.signature, worker):
        return ClaimVerdict(False, "not_in_root", False, {})
    return None


def check_claim(
    signed: SignedCommitment,
    proof: Sequence[bytes],
    replayed: torch.Tensor | None,
    tol: Tolerance,
    *,
    expected_scope: ChunkScope,
    chunk_index: int,
    worker: str,
    signed_root: SignedRoot,
    k: int | None = None,
    held: torch.Tensor | ProjectedRows | None = None,
) -> ClaimVerdict:
    """Full check of one claimed chunk against the replica's replayed chunk [tokens, hidden].

    `held`: the rows the worker actually sent for this chunk, where the market keeps them; then the commitment
    must hash to them and the whole tensor is compared, not only the sketch.
    """
    fault = check_structure(
        signed, proof, expected_scope=expected_scope, chunk_index=chunk_index, worker=worker, signed_root=signed_root
    )
    if fault is not None:
        return fault
    if isinstance(held, torch.Tensor) and tensor_sha256(held) != signed.commitment.output_sha256:
        return ClaimVerdict(False, "unbound", False, {})
    if replayed is None:
        raise ValueError("a well-formed claim needs the replayed chunk")
    if isinstance(held, torch.Tensor):
        # The signed sketch must be the canonical sketch of the rows it commits to (else a false, signed claim).
        sketch = signed.commitment.sketch
        canonical = sketch_like(sketch, held, signed.commitment.output_sha256)
        if sketch != canonical or (k is not None and sketch[5] != k):
            return ClaimVerdict(False, "malformed", False, {})
        full = compare_hidden_states(held, replayed, tol)
        return ClaimVerdict(full.ok, full.reason, not full.ok, full.metrics.to_json())
    verdict = compare_sketch(
        signed.commitment.sketch, replayed, tol, k=k, output_sha256=signed.commitment.output_sha256
    )
    if verdict.reason == "malformed":
        return ClaimVerdict(False, "malformed", False, verdict.metrics.to_json())
    if isinstance(held, ProjectedRows):  # the sketch's top-k plus whole-row projections the market kept
        projected = compare_projections(held.rows, replayed, held.seed, tol)
        errs = [e for e in (verdict.metrics.projection_err, projected.metrics.projection_err) if e == e]
        metrics = {**verdict.metrics.to_json(), "projection_err": max(errs) if errs else None}
        reasons = [v.reason for v in (verdict, projected) if not v.ok]
        ok = not reasons
        return ClaimVerdict(ok, ",".join(reasons) if reasons else verdict.reason, not ok, metrics)
    return ClaimVerdict(verdict.ok, verdict.reason, not verdict.ok, verdict.metrics.to_json())


@dataclass(frozen=True)
class Vote:
    round: int
    status: str  # pass | fail | void (no replica / replica failed)
    reason: str


def decide_segment(votes: Sequence[Vote]) -> tuple[str, bool]:
    """(outcome, first_replica_lost) for one sampled segment from its checks (round 0 first, then disputes).

    outcome: `guilty` (slash), `faulty` (unpaid, not slashable), `cleared`, or `unverified` (no replica could
    check it: treated like an unsampled chunk).
    """
    by_round = {v.round: v for v in votes}
    first = by_round.get(0)
    if first is None or first.status == "void":
        return UNVERIFIED, False
    if first.status == "pass":
        return CLEARED, False
    if first.reason in UNPAID_ONLY:
        return FAULTY, False
    if first.reason in STRUCTURAL_SLASHABLE:
        return GUILTY, False
    disputes = [by_round[r] for r in (1, 2) if r in by_round and by_round[r].status != "void"]
    fails = 1 + sum(v.status == "fail" for v in disputes)
    passes = sum(v.status == "pass" for v in disputes)
    if fails >= 2:
        return GUILTY, False
    # Two replicas of other operators reproduced the claim: the first replica was wrong (or lying).
    return CLEARED, passes >= 2


def localise_chain(reruns: Sequence[Sequence[Vote]]) -> tuple[int | None, str, set[int]]:
    """(liar hop, reason, hops proved honest) of a chain replica that lost its 2-of-3, from the votes of each hop's
    independent re-runs (in hop order; `pass`: the re-run reproduced the hop's signed output within tolerance,
    `fail`: it did not, `void`: no independent replica, or the hop's input was not the previous hop's signed
    output). The liar is the first hop that two re-runs contradict (2-of-3 against its own signed answer); a hop
    is honest when at least one re-run reproduced it and none contradicted it. Otherwise no hop is localised."""
    honest = {
        i for i, votes in enumerate(reruns) if _decided(votes) and all(v.status == "pass" for v in _decided(votes))
    }
    for i, votes in enumerate(reruns):
        if sum(v.status == "fail" for v in votes) >= 2:
            return i, f"hop {i} contradicted by {len(_decided(votes))} independent re-runs", honest
    undecided = [i for i in range(len(reruns)) if i not in honest]
    if not undecided:
        return None, "every hop reproduced by its re-runs: the chain's loss is not one hop's lie", honest
    return None, f"hop {undecided[0]} not localised: {_why(reruns[undecided[0]])}", honest


def _decided(votes: Sequence[Vote]) -> list[Vote]:
    return [v for v in votes if v.status in ("pass", "fail")]


def _why(votes: Sequence[Vote]) -> str:
    if not _decided(votes):
        return ", ".join(sorted({v.reason or v.status for v in votes})) or "not re-run"
    return "its re-runs disagree"

"""Verification cost and power on the real default model (SmolLM2-135M-Instruct); writes "## Verification".

    python bench/verify.py              # ~10 min on 2 busy cores; prints the section and replaces it in BENCHMARKS.md
    python bench/verify.py --no-write   # print only

Measured in one process, process CPU time, torch threads as given:
1. the job: a left-padded batch of B chat prompts through two real `worker.stage.Stage`s (layers [0, 15) and
   [15, 30)), prefill then greedy KV-cache decode for N steps (`run_pipeline_local`, the coordinator's driver), and
   the worker's commitments (`worker.runtime.commits`: sketch + signature per 32-token chunk, signed answers, root).
2. verification at the default policy, per stage part: the sampling draw (per sequence), then per sampled
   sequence what the market does (`market/coordinator/verify_replay.chunk_replay`): an ordinary-looking batch-1
   session of that sequence on the replica up to a random point past its last committed chunk (one prefill
   answering every row - on the last stage a prompt-scoring request's logits, OpenAI `echo` + `logprobs` - then
   0..1 one-token decode steps; the prefill bounded by `StageLimits.max_scoring_rows` on the last stage) with its
   own commitments and signed answers, and the verifier's check of every chunk of the sequence against that one
   replay (`check_claim`: signatures, Merkle proof, whole held tensor on the hidden-state stage, the market's
   seeded projections on the logits); side by side, the same sequence as one prefill up to the chunk's end with
   no decode steps (the lower bound of a replay).
3. side by side, on the same recorded run: the policy this replaced (chunks drawn one by one at a per-job rate,
   each replayed alone).
4. power: P(a worker cheating in a fraction f of its sequences is caught in 1 job and before it has served the
   policy's N sequences), analytic (`sampling.detection_probability`) and Monte Carlo through the real sampler
   (`sample_segments`, fresh seeds), with 10 % colluding replicas.
5. false slashes: every check above is an honest worker's chunk against an honest replica's replay.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from eth_account import Account  # noqa: E402

from globai.models.builtin import add_builtin  # noqa: E402
from globai.models.manifest import load_manifest  # noqa: E402
from globai.models.reference import run_pipeline_local  # noqa: E402
from globai.models.tokenizer import load_tokenizer  # noqa: E402
from globai.protocol import merkle  # noqa: E402
from globai.protocol.commitments import SignedRoot, sign_commitment, sign_task_root  # noqa: E402
from globai.protocol.pipeline import StageLimits  # noqa: E402
from globai.protocol.signing import ChunkScope  # noqa: E402
from market.coordinator.chat import render_chat  # noqa: E402
from market.coordinator.service import left_pad  # noqa: E402
from market.coordinator.verify_replay import (  # noqa: E402
    ChunkReplay,
    RecordedCall,
    RecordedPart,
    chunk_replay,
    gather_rows,
    with_claimed_padding,
)
from market.verifier import sampling  # noqa: E402
from market.verifier.compare import project_rows, shipped_model_tolerances  # noqa: E402
from market.verifier.disputes import ProjectedRows, check_claim  # noqa: E402
from worker.runtime.commits import SessionCommitments, sign_sent  # noqa: E402
from worker.stage import Stage  # noqa: E402

BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
ESTABLISHED = sampling.WorkerHistory(verified=10_000, failed=0)
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a CPU does in one sentence.",
    "Give me three tips for sleeping well.",
    "Why is the sky blue?",
    "Name the three primary colours.",
    "What is photosynthesis?",
    "Who wrote Romeo and Juliet?",
]


def cpu() -> float:
    return time.process_time()


@dataclass
class Part:
    """One stage's share of a job as the market records it: calls, the rows the worker sent, its commitments."""

    index: int
    scope: ChunkScope
    seed: int  # the market's projection seed (logits rows are kept as projections, as the coordinator does)
    calls: list[RecordedCall] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list)
    commits: SessionCommitments | None = None
    signed: dict[int, object] = field(default_factory=dict)
    root: SignedRoot | None = None
    tree: merkle.MerkleTree | None = None


class WorkerStage:
    """A real stage that also signs what it returns, as `worker/runtime/server.py` does for each forward."""

    def __init__(self, stage: Stage, part: Part, account) -> None:  # type: ignore[no-untyped-def]
        self.stage, self.part, self.account = stage, part, account
        self.is_last = stage.is_last
        self.commit_s = 0.0
        self.seen = 0

    def open_session(self, sid: str) -> None:
        self.stage.open_session(sid)
        self.part.commits = SessionCommitments(self.part.scope)

    def close_session(self, sid: str) -> bool:
        return self.stage.close_session(sid)

    def forward(self, sid, inputs, positions=None, mask=None, *, last_token_only=False):  # type: ignore[no-untyped-def]
        out = self.stage.forward(sid, inputs, positions, mask, last_token_only=last_token_only).contiguous()
        t0 = cpu()
        step, first = len(self.part.calls), self.seen
        self.seen += int(inputs.shape[1])
        assert self.part.commits is not None
        self.part.commits.add(out, self.seen - int(out.shape[1]), self.account)
        sign_sent(self.part.scope, step, first, out, self.account)
        self.commit_s += cpu() - t0
        tensors = [inputs, positions] + ([mask] if mask is not None else [])
        self.part.calls.append(RecordedCall(step, first, last_token_only, tensors))
        if last_token_only:  # what the coordinator keeps of vocabulary-wide rows (not verification work)
            b, t, width = out.shape
            self.part.outputs.append(project_rows(out.reshape(b * t, width), self.part.seed).reshape(b, t, -1))
        else:
            self.part.outputs.append(out)
        return out

    def finish(self) -> None:
        t0 = cpu()
        assert self.part.commits is not None
        self.part.commits.finish(self.account)
        done = self.part.commits.done
        self.part.signed = {c.chunk_index: sign_commitment(c, self.account) for c in done}
        self.part.root = sign_task_root(done, self.account)
        self.part.tree = merkle.MerkleTree([c.leaf for c in done])
        self.commit_s += cpu() - t0


def scope(stage: int) -> ChunkScope:
    return ChunkScope(31337, b"\x01" * 32, bytes([stage + 2]) * 32, stage, b"\x09" * 32)


def run_job(model_dir: Path, workers: list[Stage], batch: int, new: int, account):  # type: ignore[no-untyped-def]
    manifest = load_manifest(model_dir)
    tokenizer = load_tokenizer(model_dir, manifest)
    rows = [
        render_chat(tokenizer, manifest, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}])
        for i in range(batch)
    ]
    ids, mask = left_pad(rows, int(manifest.generation.pad_token_id))
    parts = [Part(i, scope(i), random.getrandbits(63)) for i in range(len(workers))]
    wrapped = [WorkerStage(w, p, account) for w, p in zip(workers, parts, strict=True)]
    t0 = cpu()
    run_pipeline_local(wrapped, ids, new, attention_mask=mask, record=[], session_id="job")  # type: ignore[arg-type]
    total = cpu() - t0
    for w in wrapped:
        w.finish()
    commit_s = sum(w.commit_s for w in wrapped)
    return parts, total - commit_s, commit_s, int(ids.shape[1])


def recorded(part: Part, model: str, layers: tuple[int, int]) -> RecordedPart:
    committed: list[int] = []
    for rec in part.calls:
        end = rec.first_position + int(rec.tensors[0].shape[1])
        committed.extend([end - 1] if rec.last_token_only else range(rec.first_position, end))
    return RecordedPart(model, layers[0], layers[1], part.calls, committed)


def held_rows(part: Part, rec: RecordedPart, rows: torch.Tensor, chunk: int):  # type: ignore[no-untyped-def]
    """What the market keeps of the chunk's rows: whole (hidden states) or projected (logits); rows [B, n, w]
    holds the part's kept rows, row i at position rec.committed[i]."""
    seq, pc = chunk >> 32, chunk & 0xFFFFFFFF
    idx = [i for i, p in enumerate(rec.committed) if pc * 32 <= p < pc * 32 + 32]
    got = rows[seq, idx].contiguous()
    return got if not rec.calls[0].last_token_only else ProjectedRows(got, part.seed)


def run_on_replica(replica: Stage, calls: list[RecordedCall], account, sid: str) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """What a replica worker does for these calls: forward in a fresh session, commit and sign each answer."""
    replica.open_session(sid)
    commits = SessionCommitments(scope(9))
    outs = []
    try:
        for rec in calls:
            mask = rec.tensors[2] if len(rec.tensors) > 2 else None
            out = replica.forward(sid, rec.tensors[0], rec.tensors[1], mask, last_token_only=rec.last_token_only)
            out = out.contiguous()
            commits.add(out, rec.first_position + int(rec.tensors[0].shape[1]) - int(out.shape[1]), account)
            sign_sent(scope(9), rec.step, rec.first_position, out, account)
            outs.append(out)
        commits.finish(account)
    finally:
        replica.close_session(sid)
    return outs


def prefill_replay(rec: RecordedPart, chunk: int) -> ChunkReplay:
    """For comparison only: the same sequence as one prefill up to the chunk's end with every row back, no decode
    steps and no random session end: the lower bound of what a replay costs."""
    shaped = chunk_replay(rec, chunk, random.Random(0))
    seq = chunk >> 32
    x = torch.cat([c.tensors[0][seq : seq + 1] for c in rec.calls], dim=1)
    pos = torch.cat([c.tensors[1] if c.tensors[1].shape[0] == 1 else c.tensors[1][seq : seq + 1] for c in rec.calls], 1)
    mask = torch.cat(
        [c.tensors[2][seq : seq + 1] if len(c.tensors) > 2 else torch.ones_like(c.tensors[1][:1]) for c in rec.calls], 1
    )
    pad = int(mask[0].nonzero().flatten()[0])
    end = shaped.positions[-1] + 1
    x, pos = x[:, pad:end], pos[:, pad:end]
    calls = [RecordedCall(0, 0, False, [x.contiguous(), pos.contiguous()])]
    return ChunkReplay(calls, [(0, p - pad) for p in shaped.positions], shaped.positions, shaped.last_stage)


def before_rate(history: sampling.WorkerHistory, chunks_per_job: int) -> float:
    """The policy this change replaced (per chunk, target "10 % of chunks caught within 10 jobs at 99.9 %" with
    10 % colluding replicas, p_econ = 0.035 from C 0.8, R 1, S 50), for the side-by-side column."""
    detect = (1 - 0.001 ** (1 / (0.1 * chunks_per_job * 10))) / 0.9
    base = max(2 * 0.8 / (0.9 * 51), min(detect, 1.0), 0.01)
    return min(base + (1 - base) * sampling.distrust(history), 1.0)


def check_chunks(part: Part, rec: RecordedPart, kept: torch.Tensor, chunks: list[int], wanted, outs, account, tol):  # type: ignore[no-untyped-def]
    """The verifier's check of each chunk against the replica's rows of it (`InferenceWorkSource.replay`: rows at
    padding positions taken as sent): signatures, proof, held tensor. Returns the failures."""
    rows = gather_rows(wanted, outs)[0] if outs else None
    failures = 0
    for chunk in chunks:
        pc = chunk & 0xFFFFFFFF
        held = held_rows(part, rec, kept, chunk)  # kept by the market during the job: not verification work
        idx = [i for i, p in enumerate(wanted.positions) if p // 32 == pc]
        committed = [p for p in rec.committed if p // 32 == pc]
        claimed = held if isinstance(held, torch.Tensor) else None
        replayed = rows[idx] if rows is not None else claimed
        if claimed is not None and replayed is not None:
            replayed = with_claimed_padding(replayed, [wanted.positions[i] for i in idx], committed, claimed)
        signed = part.signed[chunk]
        verdict = check_claim(
            signed,  # type: ignore[arg-type]
            part.tree.proof(signed.commitment.leaf),  # type: ignore[attr-defined, union-attr]
            replayed,
            tol,
            expected_scope=part.scope,
            chunk_index=chunk,
            worker=account.address,
            signed_root=part.root,  # type: ignore[arg-type]
            held=held,
        )
        failures += not verdict.ok
    return failures


@dataclass
class Costs:
    """Measured CPU seconds of one recorded run's checks, per stage part."""

    sequence: list[list[float]]  # [part][sequence]: replay of the whole sequence + the check of each of its chunks
    prefill: list[list[float]]  # the same as one prefill with every row back (recognisable; for comparison)
    chunk: list[list[float]]  # [part][chunk of the measured sequences]: that chunk replayed alone + its check
    before_sequences: int  # how many sequences `chunk` covers (of B)
    checked: int = 0
    failures: int = 0


def measure(
    parts, replicas, model: str, layers, account, replica_account, tol, before_sequences: int, max_rows: int
) -> Costs:  # type: ignore[no-untyped-def]
    """Replay every sequence of every part once, as the market does (now; a last-stage prefill answers at most
    `max_rows` rows, the scoring bound) and as one prefill (for comparison), and every chunk of the first
    `before_sequences` sequences alone (before), on a replica, timing each, and check every chunk against each
    replay."""

    def as_market(rec: RecordedPart, chunk: int) -> ChunkReplay:
        return chunk_replay(rec, chunk, max_prefill_rows=max_rows)

    costs = Costs([], [], [], before_sequences)
    for part, replica, span in zip(parts, replicas, layers, strict=True):
        rec = recorded(part, model, span)
        kept = torch.cat(part.outputs, dim=1)
        by_seq: dict[int, list[int]] = {}
        for c in sorted(part.signed):
            by_seq.setdefault(c >> 32, []).append(c)
        for lst in (costs.sequence, costs.prefill, costs.chunk):
            lst.append([])
        for seq, seq_chunks in sorted(by_seq.items()):
            for make, into in ((as_market, costs.sequence), (prefill_replay, costs.prefill)):
                wanted = make(rec, seq_chunks[-1])
                t0 = cpu()
                outs = run_on_replica(replica, wanted.calls, replica_account, "replay") if wanted.calls else []
                costs.failures += check_chunks(part, rec, kept, seq_chunks, wanted, outs, account, tol)
                costs.checked += len(seq_chunks)
                into[-1].append(cpu() - t0)
            if seq >= before_sequences:
                continue
            for chunk in seq_chunks:  # before: each chunk its own replay, as the market sends it
                wanted = as_market(rec, chunk)
                t0 = cpu()
                outs = run_on_replica(replica, wanted.calls, replica_account, "before") if wanted.calls else []
                check_chunks(part, rec, kept, [chunk], wanted, outs, account, tol)
                costs.chunk[-1].append(cpu() - t0)
    return costs


def expected_cost(costs: Costs, p_now: float, p_before: float, batch: int) -> tuple[float, float, float]:
    """(now, as one prefill, before) expected CPU seconds per run: each sequence is replayed with probability p_now;
    before, each chunk with probability p_before (the sequences of a left-padded batch have the same length: the
    measured ones stand for all B)."""
    now = sum(p_now * c for part in costs.sequence for c in part)
    prefill = sum(p_now * c for part in costs.prefill for c in part)
    before = sum(p_before * c for part in costs.chunk for c in part) * batch / costs.before_sequences
    return now, prefill, before


def drawn_chunks(parts, history, runs: int) -> int:  # type: ignore[no-untyped-def]
    """Chunks the real sampler picks over `runs` draws with fresh seeds (to show the draw, not to time it)."""
    n = 0
    for part in parts:
        chunks = sorted(part.signed)
        rate = sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, history, sampling.chunks_per_sequence(chunks))
        task = sampling.TaskChunks(part.scope.task_id, part.index, chunks, rate)
        n += sum(len(sampling.sample_segments(os.urandom(32), [task])) for _ in range(runs))
    return n


def detection_table(
    sequences_per_job: int, trials: int, rng: random.Random
) -> list[tuple[float, float, float, float, float]]:
    """(f, analytic 1 job, analytic within N sequences, Monte Carlo within N sequences, mean sequences served
    until caught (Monte Carlo)) for an established worker cheating in a fraction f of its sequences, 10 % of the
    replicas colluding (a sampled cheated sequence is missed when its replica colludes)."""
    r = sampling.DEFAULT_ECONOMICS.collusion
    n = sampling.DEFAULT_POLICY.target_sequences
    jobs = -(-n // sequences_per_job)
    p = sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, ESTABLISHED, 3)
    chunks = [seq << 32 | c for seq in range(sequences_per_job) for c in range(3)]
    out = []
    for f in (0.01, 0.02, 0.05, 0.10, 0.20, 0.50, 1.00):
        caught = 0
        served: list[int] = []
        for _ in range(trials):
            for job in range(10 * jobs):  # long enough to see when it is caught
                cheated = {seq for seq in range(sequences_per_job) if rng.random() < f}
                task = sampling.TaskChunks(b"\x07" * 32, 1, chunks, p)
                hit = {seg.chunk_index >> 32 for seg in sampling.sample_segments(rng.randbytes(32), [task])}
                if any(seq in cheated and rng.random() >= r for seq in hit):
                    caught += job < jobs
                    served.append((job + 1) * sequences_per_job)
                    break
            else:
                served.append(10 * jobs * sequences_per_job)
        out.append(
            (
                f,
                sampling.detection_probability(p, f, sequences_per_job, r),
                sampling.detection_probability(p, f, jobs * sequences_per_job, r),
                caught / trials,
                sum(served) / len(served),
            )
        )
    return out


def replace_section(text: str, section: str) -> str:
    pattern = re.compile(r"^## Verification\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1).rstrip("\n") + "\n"
    return (text.rstrip("\n") + "\n\n" if text.strip() else "# Benchmarks\n\n") + section.rstrip("\n") + "\n"


# (batch, new tokens, runs per job, workers): the coordinator's default batch is 8 (`max_batch`), the API's default
# max_new_tokens 32; a job of more prompts is several runs of 8.
JOBS = (
    (8, 32, 1, ("established", "new")),
    (8, 32, 8, ("established",)),
    (8, 128, 1, ("established",)),
    (8, 128, 8, ("established",)),
    (8, 256, 8, ("established",)),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="1 keeps CPU time free of spin-waiting")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="the default job only")
    parser.add_argument("--smoke", action="store_true", help="2 prompts, 8 new tokens, nothing written (a code check)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    model_dir, manifest, _ = add_builtin("smollm2", REPO_ROOT / "var" / "bench" / "real-models", dtype="float32")
    half = manifest.num_layers // 2
    layers = [(0, half), (half, manifest.num_layers)]
    workers = [Stage(model_dir, a, b) for a, b in layers]
    replicas = [Stage(model_dir, a, b) for a, b in layers]
    tol = shipped_model_tolerances()[manifest.name][manifest.dtype]
    max_rows = StageLimits.for_manifest(manifest).max_scoring_rows  # a scoring prefill's bound (float32: 170)
    account, replica_account = Account.create(), Account.create()
    rows = []
    made: dict[tuple[int, int], tuple] = {}  # type: ignore[type-arg]
    checked = failures = 0
    jobs = ((2, 8, 1, ("established",)),) if args.smoke else JOBS[:1] if args.quick else JOBS
    for batch, new, runs, labels in jobs:
        if (batch, new) not in made:
            parts, job_s, commit_s, prompt = run_job(model_dir, workers, batch, new, account)
            costs = measure(parts, replicas, manifest.name, layers, account, replica_account, tol, 2, max_rows)
            checked, failures = checked + costs.checked, failures + costs.failures
            made[(batch, new)] = (parts, job_s, commit_s, prompt, costs)
        parts, job_s, commit_s, prompt, costs = made[(batch, new)]
        chunks = len(parts[0].signed)
        k = max(sampling.chunks_per_sequence(sorted(p.signed)) for p in parts)
        full = sum(c for part in costs.sequence for c in part)
        for label in labels:
            history = ESTABLISHED if label == "established" else sampling.WorkerHistory()
            p = sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, history, k)
            old_p = before_rate(history, runs * chunks)
            new_s, pre_s, old_s = expected_cost(costs, p, old_p, batch)
            drawn = drawn_chunks(parts, history, 100)
            row = (runs, batch, prompt, new, chunks, label, p, old_p, drawn, job_s, commit_s, old_s, new_s, full, pre_s)
            rows.append(row)
            print(rows[-1], flush=True)
    table = detection_table(8, args.trials, random.Random(7))
    load_end = os.getloadavg()
    econ, policy = sampling.DEFAULT_ECONOMICS, sampling.DEFAULT_POLICY
    p3 = sampling.sampling_rate(econ, ESTABLISHED, 3)
    rich = sampling.Economics(econ.cost * 10, econ.reward * 10, econ.slash, econ.collusion)
    none, one = (1 - p3) ** 8, 8 * p3 * (1 - p3) ** 7

    def pct(x: float, job: float) -> str:
        return f"{100 * x / job:.1f} %"

    def job_name(r: tuple) -> str:  # type: ignore[type-arg]
        return f"{r[0]} x ({r[1]} x {r[2]} + {r[3]})"

    lines = [
        "## Verification",
        "",
        f"`python bench/verify.py` ({started}) on {platform.machine()} / {os.cpu_count()} cores, torch "
        f"{torch.__version__} CPU, {args.threads} thread; load average {load_start[0]:.1f} at the start, "
        f"{load_end[0]:.1f} at the end (the machine is shared with other engineers' test suites and benches: "
        "CPU seconds are the figure to read, the ratios are measured side by side in one process). Model: "
        f"{manifest.name} ({manifest.dtype}, {manifest.num_layers} layers), two stages [0, {half}) and "
        f"[{half}, {manifest.num_layers}), the default policy (`DEFAULT_ECONOMICS`, `DEFAULT_POLICY`), the model's "
        "shipped tolerance.",
        "",
        "**Cost per run** (process CPU seconds; a job = R runs alike, each B chat prompts of P tokens, left-padded, + "
        "N greedy KV-cache decode steps through both stages (the coordinator's default `max_batch` is 8, the API's "
        "default `max_new_tokens` 32); shares are of the run's compute, worker commitments excluded. Now: each of "
        "the worker's sequences is drawn with probability p (per stage part), a drawn sequence is replayed once on a "
        "replica as the market sends it (`verify_replay.chunk_replay`: an ordinary-looking batch-1 session up to "
        "a random point 0..31 positions past its last committed chunk, one prefill answering every row - on the "
        "last stage a prompt-scoring request, OpenAI `echo` + `logprobs`, at most "
        f"{max_rows} rows - then 0..1 one-token decode steps), with the replica's commitments and "
        "signed answers, and every chunk of it is checked against that replay "
        "(`check_claim`: signatures, Merkle proof, the whole held tensor on stage 0, the market's seeded projections "
        "of the logits on the last stage). Before: the replaced policy (chunks drawn one by one at a rate from "
        '"10 % of chunks caught within 10 jobs", each replayed alone), on the same recorded run. Costs are '
        "expectations: every sequence of the run is replayed and timed once (every chunk of the first 2 sequences "
        "alone for the before column, which stand for all B: the sequences of a left-padded batch have the same "
        "length), each weighted by its probability of being drawn; the R runs of a job only change the before "
        "policy's per-job rate):",
        "",
        "| R x (B x P + N) | chunks / stage / run | worker | p now (per sequence) | p before (per chunk) "
        "| chunks checked per run now (mean of 100 draws) | run CPU s | worker commitments | every sequence replayed "
        "| before | now | one prefill to the chunk's end, no decode steps (lower bound) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs, batch, prompt, new, chunks, label, p, old_p, drawn, job_s, commit_s, old_s, new_s, full, pre_s = r
        lines.append(
            f"| {job_name(r)} | {chunks} | {label} | {p:.3f} | {old_p:.3f} | {drawn / 100:.1f} | {job_s:.2f} | "
            f"{commit_s:.2f} s ({pct(commit_s, job_s)}) | {full:.2f} s ({pct(full, job_s)}) | "
            f"{old_s:.2f} s ({pct(old_s, job_s)}) | **{new_s:.2f} s ({pct(new_s, job_s)})** | "
            f"{pre_s:.2f} s ({pct(pre_s, job_s)}) |"
        )
    established = [r for r in rows if r[5] == "established"]
    default = rows[0]  # 1 x (8 x 39 + 32), established: the largest p that keeps it <= 5 %, and the N it implies
    p_star = 0.05 * default[9] / default[13]
    f, big_p, r_col = policy.target_cheat_fraction, policy.target_detection, econ.collusion
    q_star = p_star * (1 - r_col)
    n_star = math.log(1 - big_p) / (f * math.log(1 - q_star)) if 0 < q_star < 1 else math.inf
    met = [job_name(r) for r in established if r[12] <= 0.05 * r[9]]
    missed = [f"{job_name(r)} ({pct(r[12], r[9])})" for r in established if r[12] > 0.05 * r[9]]
    lines += [
        "",
        "Verification share of an established worker's job: "
        + ", ".join(f"{pct(r[12], r[9])} ({job_name(r)})" for r in established)
        + "; goal <= 5 %: "
        + (f"met for {', '.join(met)}" if met else "not met in the measured range")
        + (f"; not met for {', '.join(missed)}." if missed else ".")
        + " These are expectations over the draws (a run replays Binomial(8, p) sequences per stage; the "
        f"default job replays none in {none:.0%} of runs and one in {one:.0%}). The rate is per worker, not per "
        "job: p_detect makes a "
        f"worker cheating in {policy.target_cheat_fraction:.0%} of its sequences caught with "
        f"{policy.target_detection:.1%} before it has served {policy.target_sequences} sequences (10 % colluding "
        'replicas), whatever the size of each job. New workers are checked at p >= 0.75 on purpose (the "new" row). '
        f"Replaying every sequence as the market sends it costs {default[13] / default[9]:.2f}x the default run, so "
        f"<= 5 % there allows p <= {p_star:.4f} (a target of N >= {n_star:,.0f} sequences), against the economic "
        f"floor p_econ = {2 * sampling.economic_rate(econ, 3):.4f}; as one prefill to the chunk's end (no random end, "
        "no decode steps) it would cost "
        f"{sum(c for part in made[default[1], default[3]][4].prefill for c in part) / default[9]:.2f}x.",
        "",
        f"**Economics** (`DEFAULT_ECONOMICS`, GLB per 32-token chunk: pay R = {econ.reward}, the demo's 0.01 GLB per "
        f"unit; cost C = {econ.cost}; slash S = {econ.slash:g}, the vault's default minStake; collusion r = "
        f"{econ.collusion}): cheating on a whole sequence of K = 3 chunks (the default job's stage 0) gains at most "
        f"{3 * econ.cost:.2f} GLB; at p = {p3:.4f} it costs {-sampling.cheating_ev(p3, econ, 3):.2f} GLB in "
        f"expectation (EV {sampling.cheating_ev(p3, econ, 3):.2f} GLB per cheated sequence); break-even p = "
        f"{sampling.economic_rate(econ, 3):.4f}, p_econ (x2) = {2 * sampling.economic_rate(econ, 3):.4f}. A job "
        f"paying 10x the demo's price needs p >= {2 * sampling.economic_rate(rich, 3):.3f} "
        "for the same margin (the floor rises with pay / stake).",
        "",
        f"**False slashes**: {checked} honest chunks checked above (whole hidden-state tensors on "
        "stage 0, the market's seeded projections of the logits plus the sketch on the last stage, against a "
        f"replica's replay of the worker's KV-cache decode, in both replay shapes; every chunk of every measured "
        f"run): {failures} failures.",
        "",
        f"**Detection** (established worker, p = {p3:.4f} per sequence, jobs of 8 sequences x 3 chunks; a worker "
        "cheating in each sequence with probability f; a sampled cheated sequence is caught unless its replica "
        'colludes (10 %): every cheat in "Verification: binding and coverage" is caught on 100 % of sampled chunks '
        f"in the full and projection modes; Monte Carlo: {args.trials} workers through `sample_segments` with fresh "
        "seeds per job):",
        "",
        f"| cheat fraction f (of sequences) | P(caught in 1 job) | P(caught within {policy.target_sequences} "
        "sequences) | Monte Carlo | mean sequences served until caught (Monte Carlo; not caught within 10 N "
        "counts as 10 N) |",
        "|---|---|---|---|---|",
    ]
    for f, one, within, mc, served in table:
        lines.append(f"| {f:.0%} | {one:.4f} | {within:.6f} | {mc:.3f} | {served:.0f} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if not (args.no_write or args.smoke):
        existing = BENCHMARKS.read_text() if BENCHMARKS.is_file() else ""
        BENCHMARKS.write_text(replace_section(existing, section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

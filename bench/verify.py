"""Verification cost and power on the real default model (SmolLM2-135M-Instruct); writes "## Verification".

    python bench/verify.py              # ~10 min on 2 busy cores; prints the section and replaces it in BENCHMARKS.md
    python bench/verify.py --no-write   # print only

Measured in one process, process CPU time, torch threads as given:
1. the job: a left-padded batch of B chat prompts through two real `worker.stage.Stage`s (layers [0, 15) and
   [15, 30)), prefill then greedy KV-cache decode for N steps (`run_pipeline_local`, the coordinator's driver), and
   the worker's commitments (`worker.runtime.commits`: sketch + signature per 32-token chunk, signed answers, root).
2. verification at the default policy, per stage part: the sampling draw, then per sampled chunk what the market
   does now (`market/coordinator/verify_replay.chunk_replay`): the replica's prefill of that sequence up to the
   chunk's end (the last stage: prefix with last-token logits, then the chunk with every row's logits) with its
   own commitments and signed answers, and the verifier's check (`check_claim`: signatures, Merkle proof, whole
   held tensor on the hidden-state stage, the market's seeded projections on the logits).
3. side by side, on the same sampled chunks: what verification cost before this change (every recorded call of a
   sampled part replayed one by one on a replica, i.e. the stage's whole decode again, once per part: a lower
   bound, the old path did it once per (part, replica)), and what a replay from a recorded KV state would cost
   (only the chunk's window, its prefix already cached; not implemented: it needs the worker to commit to its KV).
4. power: P(a worker cheating on a fraction f of its chunks is caught within 1 and 10 jobs), analytic
   (`sampling.detection_probability`) and Monte Carlo through the real sampler (`sample_segments`, fresh seeds).
5. false slashes: every check above is an honest worker's chunk against an honest replica's replay.
"""

from __future__ import annotations

import argparse
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
from globai.protocol.signing import ChunkScope  # noqa: E402
from market.coordinator.chat import render_chat  # noqa: E402
from market.coordinator.service import left_pad  # noqa: E402
from market.coordinator.verify_replay import (  # noqa: E402
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


def verify_job(parts, replicas, model: str, layers, account, replica_account, history, tol, runs):  # type: ignore[no-untyped-def]
    """(new CPU s, old CPU s, window-only CPU s, chunks checked, failures) per run, for a job of `runs` runs alike:
    the rate is drawn from the worker's chunks in the whole job (now), or in this run alone (before). The run is
    sampled `runs` times with fresh seeds (one draw per run of the job) and the costs averaged per run."""
    new_s = old_s = window_s = 0.0
    checked = failures = 0
    for part, replica, span in zip(parts, replicas, layers, strict=True):
        t0 = cpu()
        rec = recorded(part, model, span)
        rate = sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, history, runs * len(part.signed))
        task = sampling.TaskChunks(part.scope.task_id, part.index, sorted(part.signed), rate)
        segments = [seg for _ in range(runs) for seg in sampling.sample_segments(os.urandom(32), [task])]
        old_rate = sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, history, len(part.signed))
        old_task = sampling.TaskChunks(part.scope.task_id, part.index, sorted(part.signed), old_rate)
        sampled_before = bool(sampling.sample_segments(os.urandom(32), [old_task]))
        new_s += cpu() - t0
        kept = torch.cat(part.outputs, dim=1)
        for seg in segments:
            chunk = seg.chunk_index
            wanted = chunk_replay(rec, chunk)
            held = held_rows(part, rec, kept, chunk)  # kept by the market during the job: not verification work
            t0 = cpu()
            outs = run_on_replica(replica, wanted.calls, replica_account, "replay") if wanted.calls else []
            claimed = held if isinstance(held, torch.Tensor) else None
            committed = [p for p in rec.committed if p // 32 == (chunk & 0xFFFFFFFF)]
            if not outs:  # a chunk of padding only: nothing to replay (the verifier takes it as claimed)
                replayed = claimed
            else:
                replayed = gather_rows(wanted, outs)[0]
                if claimed is not None:
                    replayed = with_claimed_padding(replayed, wanted.positions, committed, claimed)
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
            new_s += cpu() - t0
            checked += 1
            failures += not verdict.ok
            # A replay from a recorded KV state: the prefix is already in the cache, only the window is computed.
            lo = (chunk & 0xFFFFFFFF) * 32
            prefix, window = split_at(wanted.calls, lo)
            replica.open_session("window")
            for c in prefix:
                replica.forward(
                    "window", *c.tensors[:2], c.tensors[2] if len(c.tensors) > 2 else None, last_token_only=True
                )
            t0 = cpu()
            for c in window:
                replica.forward(
                    "window",
                    *c.tensors[:2],
                    c.tensors[2] if len(c.tensors) > 2 else None,
                    last_token_only=c.last_token_only,
                )
            window_s += cpu() - t0
            replica.close_session("window")
        if sampled_before:  # before: the whole part's recorded calls, one by one, on a replica
            t0 = cpu()
            run_on_replica(replica, rec.calls, replica_account, "old")
            old_s += cpu() - t0
    return new_s / runs, old_s, window_s / runs, checked, failures


def split_at(calls: list[RecordedCall], lo: int) -> tuple[list[RecordedCall], list[RecordedCall]]:
    """The replay's calls as [calls wholly before position lo] + [the rest: the chunk's window] (a prefill that
    reaches into the window counts in the window; positions here are the replay's, padding removed)."""
    at = next((i for i, c in enumerate(calls) if c.first_position + int(c.tensors[0].shape[1]) > lo), len(calls))
    return calls[:at], calls[at:]


def detection_table(
    chunks_per_job: int, trials: int, rng: random.Random
) -> list[tuple[float, float, float, float, float]]:
    """(f, analytic 1 job, analytic 10 jobs, Monte Carlo 10 jobs, analytic 10 jobs with r = 0.1)."""
    p = sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, ESTABLISHED, chunks_per_job)
    out = []
    for f in (0.01, 0.02, 0.05, 0.10, 0.20, 0.50, 1.00):
        caught = 0
        for _ in range(trials):
            for _job in range(10):
                cheated = [c for c in range(chunks_per_job) if rng.random() < f]
                task = sampling.TaskChunks(b"\x07" * 32, 1, cheated, p)
                if sampling.sample_segments(rng.randbytes(32), [task]):
                    caught += 1
                    break
        out.append(
            (
                f,
                sampling.detection_probability(p, f, chunks_per_job, 1),
                sampling.detection_probability(p, f, chunks_per_job, 10),
                caught / trials,
                sampling.detection_probability(p, f, chunks_per_job, 10, 0.1),
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
    parser.add_argument("--quick", action="store_true", help="the smallest job only (a smoke run)")
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
    account, replica_account = Account.create(), Account.create()
    rows = []
    made: dict[tuple[int, int], tuple] = {}  # type: ignore[type-arg]
    for batch, new, runs, labels in JOBS[:1] if args.quick else JOBS:
        if (batch, new) not in made:
            made[(batch, new)] = run_job(model_dir, workers, batch, new, account)
        parts, job_s, commit_s, prompt = made[(batch, new)]
        chunks = len(parts[0].signed)
        for label in labels:
            history = ESTABLISHED if label == "established" else sampling.WorkerHistory()
            p = sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, history, runs * chunks)
            new_s, old_s, window_s, checked, fails = verify_job(
                parts, replicas, manifest.name, layers, account, replica_account, history, tol, runs
            )
            rows.append(
                (runs, batch, prompt, new, chunks, label, p, checked, job_s, commit_s, old_s, new_s, window_s, fails)
            )
            print(rows[-1], flush=True)
    per_job = rows[-1][0] * rows[-1][4]
    table = detection_table(per_job, args.trials, random.Random(7))
    load_end = os.getloadavg()

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
        "default `max_new_tokens` 32); verification = sampling + for each sampled chunk the replica's replay with "
        "its commitments and signed answers + the verifier's check; shares are of the run's compute, worker "
        "commitments excluded; the run is sampled R times with fresh seeds, one draw per run of the job, and the "
        "verification costs are averaged per run):",
        "",
        "| R x (B x P + N) | chunks / stage / run | worker | rate p | chunks checked (R draws) | run CPU s "
        "| worker commitments | before: whole-part replay | now: chunk replay (prefix prefill) "
        "| replay from a KV state (window only) | false fails |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs, batch, prompt, new, chunks, label, p, checked, job_s, commit_s, old_s, new_s, window_s, fails = r
        lines.append(
            f"| {job_name(r)} | {chunks} | {label} | {p:.3f} | {checked} | {job_s:.2f} | "
            f"{commit_s:.2f} s ({pct(commit_s, job_s)}) | {old_s:.2f} s ({pct(old_s, job_s)}) | "
            f"{new_s:.2f} s ({pct(new_s, job_s)}) | {window_s:.2f} s ({pct(window_s, job_s)}) | {fails} |"
        )
    established = [r for r in rows if r[5] == "established"]
    met = [job_name(r) for r in established if r[11] <= 0.05 * r[8]]
    lines += [
        "",
        "Verification share of an established worker's job now: "
        + ", ".join(f"{pct(r[11], r[8])} ({job_name(r)})" for r in established)
        + "; goal <= 5 %: "
        + (f"met for {', '.join(met)}." if met else "not met in the measured range.")
        + " Before this change a sampled part was replayed call by call (the stage's whole decode again) and the "
        "rate was drawn per run, not per job; a check is now one prefill of one sequence up to the sampled chunk, "
        "and the rate counts the worker's chunks over the whole job (the detection target is per job). The target "
        "(10 % cheating caught within 10 jobs at 99.9 %, 10 % colluding replicas) needs ~7.7 checked chunks per "
        "worker per job whatever its size (and the economic floor p >= 0.035 more on large jobs), each a prefill of "
        "half a sequence on average (plus, on the last stage, the vocabulary-wide logits of the chunk's 32 rows), "
        "against a job that decodes at batch B: the share falls as the job grows and stays high on a one-run "
        "default job, where ~28 % of its 24 chunks per stage must be checked. Before this change the share was "
        "~100 % at every size. Replaying only the chunk's window from a recorded KV state would cost the last "
        "column; that needs the worker to commit to its KV cache per chunk and keep it until the sample is drawn (not "
        "implemented). New workers are checked at p >= 0.75 on purpose.",
        "",
        f"**False slashes**: {sum(r[7] for r in rows)} honest chunks checked above (whole hidden-state tensors on "
        "stage 0, the market's seeded projections of the logits plus the sketch on the last stage, against a "
        f"replica's prefix-prefill replay of the worker's KV-cache decode): {sum(r[13] for r in rows)} failures.",
        "",
        f"**Detection** (established worker, {per_job} chunks per job, p = "
        f"{sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, ESTABLISHED, per_job):.4f}; Monte Carlo: "
        f"{args.trials} runs of 10 jobs through `sample_segments` with fresh seeds; a sampled cheated chunk counts "
        'as caught: every cheat in "Verification: binding and coverage" is caught on 100 % of sampled chunks in '
        "the full and projection modes):",
        "",
        "| cheat fraction f | P(caught in 1 job) | P(caught within 10 jobs) | Monte Carlo (10 jobs) "
        "| 10 jobs, 10 % colluding replicas |",
        "|---|---|---|---|---|",
    ]
    for f, one, ten, mc, col in table:
        lines.append(f"| {f:.0%} | {one:.4f} | {ten:.6f} | {mc:.3f} | {col:.6f} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        existing = BENCHMARKS.read_text() if BENCHMARKS.is_file() else ""
        BENCHMARKS.write_text(replace_section(existing, section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Honest jobs on the real model are never slashed: count the verification checks an honest SmolLM2 job would fail.

    python bench/real_verify.py                 # 12 jobs per dtype; writes "## Verification: SmolLM2" in BENCHMARKS.md
    python bench/real_verify.py --jobs 2 --no-write

Each job is what a worker computes and what the market's verifier replays, in one process: a left-padded batch of
chat prompts (different lengths, rendered with the model's template) through two real `worker.stage.Stage`s
(layers [0, 15) and [15, 30)), prefill then greedy KV-cache decode until every sequence reaches end-of-sequence
(`run_pipeline_local`, the coordinator's driver), at `--worker-threads` torch threads. The verifier's replay of a
chunk is what `market/coordinator/verify_replay.py` sends a replica (`chunk_replay`): the chunk's sequence alone,
its recorded calls concatenated into one prefill answering every row (the last stage: every row's logits, as a
prompt-scoring request) up to a random point past the chunk's end, then 0..1 one-token decode steps, in a fresh
session, here at `--replica-threads`. Every committed chunk
(32 positions of hidden states on the first stage; the last-token logits rows on the last stage) is judged with
the model's shipped tolerance (`market/verifier/tolerances/`) from the worker's sketch as committed (version 2,
k = 1, with its projections), from the old version-1 k = 8 sketch, and from the full tensor. The bench reports
checks and failures; a failure would be a false slash.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from globai.models.builtin import add_builtin  # noqa: E402
from globai.models.manifest import load_manifest  # noqa: E402
from globai.models.reference import Recorded, run_pipeline_local  # noqa: E402
from globai.models.tokenizer import load_tokenizer  # noqa: E402
from globai.protocol.commitments import chunk_id, tensor_sha256  # noqa: E402
from globai.protocol.sampling import greedy  # noqa: E402
from globai.protocol.sketch import sketch_chunk  # noqa: E402
from market.coordinator.chat import render_chat  # noqa: E402
from market.coordinator.service import left_pad  # noqa: E402
from market.coordinator.verify_replay import (  # noqa: E402
    RecordedCall,
    RecordedPart,
    chunk_replay,
    gather_rows,
    with_claimed_padding,
)
from market.verifier.compare import compare_hidden_states, compare_sketch, shipped_model_tolerances  # noqa: E402
from worker.stage import Stage  # noqa: E402

BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
TITLE = "## Verification: SmolLM2"
QUESTIONS = [
    "What is the capital of France?",
    "What is 2 + 2?",
    "Name the three primary colours.",
    "Write a haiku about the sea.",
    "Who wrote Romeo and Juliet?",
    "Explain what a CPU does in one sentence.",
    "Give me three tips for sleeping well.",
    "What is the boiling point of water?",
    "Translate 'hello' to French.",
    "What is photosynthesis?",
    "Name a famous painter.",
    "Why is the sky blue?",
]


def job_prompts(manifest, tokenizer, job: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    questions = [QUESTIONS[(job * batch + i) % len(QUESTIONS)] for i in range(batch)]
    rows = [render_chat(tokenizer, manifest, [{"role": "user", "content": q}]) for q in questions]
    return left_pad(rows, int(manifest.generation.pad_token_id))


def recorded_part(record: Recorded, stage: int, last: bool) -> RecordedPart:
    """A stage's recorded calls as the market keeps them (inputs, positions[, mask]) and the committed positions."""
    calls, committed, seen = [], [], 0
    for index, x, pos, mask in record:
        if index != stage:
            continue
        tensors = [x, pos] + ([mask] if mask is not None else [])
        calls.append(RecordedCall(len(calls), seen, last, tensors))
        seen += x.shape[1]
        committed.extend([seen - 1] if last else range(seen - x.shape[1], seen))
    return RecordedPart("", 0, 0, calls, committed, last_stage=last)


def replay_chunk(replica: Stage, part: RecordedPart, chunk: int, claimed: torch.Tensor) -> torch.Tensor:
    """The replica's rows of one chunk, replayed as the market asks for it (rows at padding positions, which a
    replay leaves out, taken from `claimed`, as the verifier does)."""
    wanted = chunk_replay(part, chunk)
    committed = [p for p in part.committed if p // 32 == (chunk & 0xFFFFFFFF)]
    if not wanted.calls:
        return claimed
    outs = []
    replica.open_session("replay")
    try:
        for rec in wanted.calls:
            mask = rec.tensors[2] if len(rec.tensors) > 2 else None
            outs.append(
                replica.forward("replay", rec.tensors[0], rec.tensors[1], mask, last_token_only=rec.last_token_only)
            )
    finally:
        replica.close_session("replay")
    # The session returns every committed row of chunks 0..c; this chunk's are compared here.
    keep = [i for i, p in enumerate(wanted.positions) if p // 32 == (chunk & 0xFFFFFFFF)]
    rows = gather_rows(wanted, outs)[0][keep]
    return with_claimed_padding(rows, [wanted.positions[i] for i in keep], committed, claimed)


def run(
    model_dir: Path, jobs: int, batch: int, max_new: int, worker_threads: int, replica_threads: int
) -> dict[str, Any]:
    manifest = load_manifest(model_dir)
    tokenizer = load_tokenizer(model_dir, manifest)
    tol = shipped_model_tolerances()[manifest.name][manifest.dtype]
    half = manifest.num_layers // 2
    workers = [Stage(model_dir, 0, half), Stage(model_dir, half, manifest.num_layers)]
    replicas = [Stage(model_dir, 0, half), Stage(model_dir, half, manifest.num_layers)]
    eos = set(manifest.generation.eos_token_ids)  # type: ignore[union-attr]
    checks = fails_sketch = fails_v1 = fails_full = exact = tokens = 0
    failures: list[str] = []
    started = time.monotonic()
    for job in range(jobs):
        prompt, mask = job_prompts(manifest, tokenizer, job, batch)
        record: Recorded = []
        finished = torch.zeros(batch, dtype=torch.bool)

        def sample(logits: torch.Tensor) -> torch.Tensor:
            nonlocal finished
            nxt = greedy(logits)
            nxt = torch.where(finished, torch.full_like(nxt, int(manifest.generation.pad_token_id)), nxt)
            finished = finished | torch.tensor([int(t) in eos for t in nxt])
            return nxt

        torch.set_num_threads(worker_threads)
        out = run_pipeline_local(
            workers, prompt, max_new, attention_mask=mask, sample=sample, record=record, session_id=f"job{job}"
        )
        tokens += int(out.numel())
        # What the worker returned for each call: recompute it exactly as recorded (same calls, same sessions).
        claimed: list[list[torch.Tensor]] = [[], []]
        for stage in workers:
            stage.open_session("claim")
        for index, x, pos, m in record:
            claimed[index].append(workers[index].forward("claim", x, pos, m, last_token_only=workers[index].is_last))
        for stage in workers:
            stage.close_session("claim")
        torch.set_num_threads(replica_threads)
        for index, replica in enumerate(replicas):
            part = recorded_part(record, index, replica.is_last)
            claim = torch.cat(claimed[index], dim=1)  # [B, T, hidden] or [B, steps, vocab]: row i at committed[i]
            for seq in range(batch):
                for pc in sorted({p // 32 for p in part.committed}):
                    rows = [i for i, p in enumerate(part.committed) if p // 32 == pc]
                    c = claim[seq, rows]
                    r = replay_chunk(replica, part, chunk_id(seq, pc), c)
                    v_full = compare_hidden_states(c, r, tol)
                    v_sketch = compare_sketch(sketch_chunk(c), r, tol, output_sha256=tensor_sha256(c))
                    v_v1 = compare_sketch(sketch_chunk(c, 8, version=1), r, tol, k=8)  # the old commitment
                    checks += 1
                    fails_full += not v_full.ok
                    fails_sketch += not v_sketch.ok
                    fails_v1 += not v_v1.ok
                    exact += bool(v_full.metrics.exact_match)
                    for mode, v in (("full", v_full), ("sketch v2", v_sketch), ("sketch v1 k=8", v_v1)):
                        if not v.ok:
                            met = v.metrics
                            failures.append(
                                f"job {job} stage {index} sequence {seq} chunk {pc} ({c.shape[0]} rows), {mode}: "
                                f"{v.reason} (max_rel {met.max_rel_err:.3g}, mean_rel {met.mean_rel_err:.3g}, overlap "
                                f"{met.topk_overlap:.3g}, value_max {met.value_max_err:.3g}, value_mean "
                                f"{met.value_mean_err:.3g}, projection {met.projection_err:.3g})"
                            )
                            print("  FAILED " + failures[-1], flush=True)
    return {
        "checks": checks,
        "fails_sketch": fails_sketch,
        "fails_v1": fails_v1,
        "fails_full": fails_full,
        "exact": exact,
        "failures": failures,
        "tokens": tokens,
        "seconds": time.monotonic() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--worker-threads", type=int, default=1)
    parser.add_argument("--dtype", action="append", choices=("float32", "bfloat16"), help="default: both")
    parser.add_argument("--replica-threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    command = "python bench/real_verify.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    models = REPO_ROOT / "var" / "bench" / "real-models"
    load = os.getloadavg()[0]
    results = {}
    for dtype in args.dtype or ("float32", "bfloat16"):
        model_dir, manifest, _ = add_builtin("smollm2", models, dtype=dtype)
        print(f"{manifest.name}: {args.jobs} honest jobs ...", flush=True)
        results[dtype] = run(
            model_dir, args.jobs, args.batch, args.max_new_tokens, args.worker_threads, args.replica_threads
        )
        print(f"  {results[dtype]}", flush=True)
    lines = [
        TITLE,
        "",
        f"Command: `{command}` — machine: `nproc` = {os.cpu_count()}, `uname -m` = {platform.machine()}, torch "
        f"{torch.__version__}; load average at start {load:.1f} (shared with other engineers' agents).",
        "",
        f"Honest jobs on SmolLM2-135M-Instruct: each a batch of {args.batch} chat prompts (left-padded), two stages "
        f"([0, 15) and [15, 30)), greedy KV-cache decode for {args.max_new_tokens} steps (a sequence past its "
        "end-of-sequence token is fed the pad id, as the coordinator does) at "
        f"{args.worker_threads} thread(s); the verifier's replay of a chunk is a prefill of that sequence alone "
        "answering every row (logits on the last stage, as a prompt-scoring request) up to a random point past the "
        "chunk's end, then 0..1 one-token decode steps, in a fresh session at "
        f"{args.replica_threads} threads (`verify_replay.chunk_replay`, what the market asks a replica). "
        "Every committed chunk of both stages is judged with the model's shipped tolerance "
        "(`market/verifier/tolerances/`): from the sketch as committed (version 2, k = 1: top-1 and a projection "
        "seeded by the chunk's sha256), from the version-1 k = 8 sketch committed before, and from the full tensor.",
        "",
        "| dtype | jobs | positions decoded (batch x steps) | chunks checked | failed (sketch v2 k=1, as committed) "
        "| failed (sketch v1 k=8, before) | failed (full tensor) | bit-identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype, r in results.items():
        lines.append(
            f"| {dtype} | {args.jobs} | {r['tokens']} | {r['checks']} | {r['fails_sketch']} | {r['fails_v1']} | "
            f"{r['fails_full']} | {r['exact']} |"
        )
    failed = [f"{dtype}, {f}" for dtype, r in results.items() for f in r["failures"]]
    lines += [
        "",
        f"Honest checks failed: {len(failed) or 'none'} of {sum(r['checks'] for r in results.values())} chunks x 3 "
        "modes. The market judges hidden-state chunks (stage 0) from the full tensor and logits (the last stage) "
        "from the committed sketch plus its own projections; a failed check is one replica's vote against the "
        "worker, a slash needs 2 of 3.",
        *[f"- {f}" for f in failed],
    ]
    body = "\n".join(lines) + "\n"
    print()
    print(body)
    if not args.no_write:
        text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
        pattern = re.compile(rf"^{re.escape(TITLE)}\n.*?(?=^## |\Z)", re.S | re.M)
        if pattern.search(text):
            text = pattern.sub(lambda _: body + "\n", text, count=1).rstrip("\n") + "\n"
        else:
            text = text.rstrip("\n") + "\n\n" + body
        BENCHMARKS.write_text(text)
        print(f"wrote {TITLE!r} in {BENCHMARKS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

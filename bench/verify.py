"""Verification cost and power on a tiny Llama; writes the "## Verification" section of BENCHMARKS.md.

    python bench/verify.py              # ~8 min on 2 busy cores; prints the section and replaces it in BENCHMARKS.md
    python bench/verify.py --no-write   # print only

Measured (process CPU time, torch threads as given):
1. cost: a job = B sequences through 2 stages of 2 layers (prefill of the prompt, then token-by-token decode with
   the KV cache, as workers run it), with the worker's commitments (sketch + signature per 32-token chunk, signed
   root). Verification of that job at the default policy: the sampling draw, then for each sampled chunk the
   replica's replay (a prefill of the recorded stage input up to the chunk's end) and the check (signatures,
   Merkle proof, sketch comparison). Replays of one sequence are grouped into one prefill up to the last sampled
   chunk (a replica that replays chunk c computes every chunk before it anyway).
2. power: P(a worker cheating on a fraction f of its chunks is caught within 1 and 10 jobs), analytic
   (`sampling.detection_probability`) and Monte Carlo through the real sampler (`sample_segments`, fresh seeds).
3. replay vs generation speed: prefill tokens/s vs decode tokens/s of one stage.
4. false slashes: every chunk of honest outputs under every drift source compared with the reference replay.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from eth_account import Account  # noqa: E402

from globai.protocol import merkle  # noqa: E402
from globai.protocol.commitments import chunk_bounds, chunk_id, commit_chunk, sign_commitment, sign_task_root  # noqa: E402
from globai.protocol.signing import ChunkScope  # noqa: E402
from market.verifier import sampling  # noqa: E402
from market.verifier.calibrate import CalibrationSettings, scenarios  # noqa: E402
from market.verifier.compare import DEFAULT_TOLERANCES, compare_sketch  # noqa: E402
from market.verifier.disputes import check_claim  # noqa: E402
from market.verifier.tiny import TinyLlamaSpec, calibration_model, embed, new_cache, run_stage  # noqa: E402

BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
STAGES = ((0, 2), (2, 4))
ESTABLISHED = sampling.WorkerHistory(verified=10_000, failed=0)


def cpu() -> float:
    return time.process_time()


def run_job(model, batch: int, prompt: int, new: int, account):  # type: ignore[no-untyped-def]
    """Generation through both stages; returns (per-stage inputs [B, T, H], per-stage outputs, CPU s, commit s)."""
    g = torch.Generator().manual_seed(batch * 1000 + prompt)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=g)
    caches = [new_cache(model) for _ in STAGES]
    ins: list[list[torch.Tensor]] = [[] for _ in STAGES]
    outs: list[list[torch.Tensor]] = [[] for _ in STAGES]
    t0 = cpu()
    h = embed(model, ids)
    for step in range(new + 1):
        x = h
        for s, layers in enumerate(STAGES):
            ins[s].append(x)
            x = run_stage(model, x, layers, cache=caches[s])
            outs[s].append(x)
        if step < new:  # next token from the last hidden state (greedy through the LM head)
            logits = model.lm_head(model.model.norm(x[:, -1:]))
            h = embed(model, logits.argmax(-1))
    job_s = cpu() - t0
    stage_in = [torch.cat(i, dim=1) for i in ins]
    stage_out = [torch.cat(o, dim=1) for o in outs]
    t0 = cpu()
    parts = [commit_part(stage_out[s], s, account) for s in range(len(STAGES))]
    commit_s = cpu() - t0
    return stage_in, stage_out, parts, job_s, commit_s


def scope(stage: int) -> ChunkScope:
    return ChunkScope(31337, b"\x01" * 32, bytes([stage + 2]) * 32, stage, b"\x09" * 32)


def commit_part(out: torch.Tensor, stage: int, account):  # type: ignore[no-untyped-def]
    commitments = [
        commit_chunk(scope(stage), chunk_id(seq, pc), out[seq, a:b])
        for seq in range(out.shape[0])
        for pc, a, b in chunk_bounds(out.shape[1])
    ]
    signed = {c.chunk_index: sign_commitment(c, account) for c in commitments}
    return signed, sign_task_root(commitments, account), merkle.MerkleTree([c.leaf for c in commitments])


def verify_job(model, stage_in, parts, account, history) -> tuple[float, int, int]:  # type: ignore[no-untyped-def]
    """CPU seconds, sampled chunks, failures for verifying every stage part at the policy's rate."""
    t0 = cpu()
    sampled = failures = 0
    for s, layers in enumerate(STAGES):
        signed, root, tree = parts[s]
        rate = sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, history, len(signed))
        seed = os.urandom(32)
        segs = sampling.sample_segments(seed, [sampling.TaskChunks(scope(s).task_id, s, sorted(signed), rate)])
        by_seq: dict[int, list[int]] = {}
        for seg in segs:
            by_seq.setdefault(seg.chunk_index >> 32, []).append(seg.chunk_index)
        for seq, chunks in by_seq.items():
            end = max(min(((c & 0xFFFFFFFF) + 1) * 32, stage_in[s].shape[1]) for c in chunks)
            replay = run_stage(model, stage_in[s][seq : seq + 1, :end], layers)[0]  # the replica's prefill
            for c in chunks:
                pc = c & 0xFFFFFFFF
                claim = signed[c]
                v = check_claim(
                    claim,
                    tree.proof(claim.commitment.leaf),
                    replay[pc * 32 : (pc + 1) * 32],
                    DEFAULT_TOLERANCES["float32"],
                    expected_scope=scope(s),
                    chunk_index=c,
                    worker=account.address,
                    signed_root=root,
                )
                sampled += 1
                failures += not v.ok
    return cpu() - t0, sampled, failures


def speed(model, batch: int, tokens: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(prefill tokens/s, decode tokens/s) of one stage, batch `batch`."""
    x = torch.randn(batch, tokens, model.config.hidden_size)
    t0 = time.perf_counter()
    run_stage(model, x, STAGES[0])
    prefill = batch * tokens / (time.perf_counter() - t0)
    cache = new_cache(model)
    run_stage(model, x[:, :1], STAGES[0], cache=cache)
    t0 = time.perf_counter()
    for t in range(1, tokens):
        run_stage(model, x[:, t : t + 1], STAGES[0], cache=cache)
    decode = batch * (tokens - 1) / (time.perf_counter() - t0)
    return prefill, decode


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
                seed = rng.randbytes(32)
                task = sampling.TaskChunks(b"\x07" * 32, 1, cheated, p)
                if sampling.sample_segments(seed, [task]):
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


def false_positives(model, n_jobs: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(chunks compared, failures): all chunks of honest outputs under every drift source vs the reference."""
    s = CalibrationSettings(stage=(1, 3), prefix_len=20)
    drifts = {k: v for k, v in scenarios(s).items() if k not in s.informational}
    g = torch.Generator().manual_seed(4242)
    compared = fails = 0
    for j in range(n_jobs):
        lengths = [int(n) for n in torch.randint(20, 130, (3,), generator=g)]
        inputs = [
            run_stage(model, embed(model, torch.randint(0, 1024, (1, n), generator=g)), (0, 1))[0] for n in lengths
        ]
        name = list(drifts)[j % len(drifts)]
        for i, x in enumerate(inputs):
            out = drifts[name](model, inputs, i)
            with torch.no_grad():
                torch.set_num_threads(s.threads[0])
                ref = run_stage(model, x.unsqueeze(0), s.stage)[0]
                torch.set_num_threads(2)
            for _, a, b in chunk_bounds(x.shape[0]):
                from globai.protocol.sketch import sketch_chunk

                v = compare_sketch(sketch_chunk(out[a:b]), ref[a:b], DEFAULT_TOLERANCES["float32"], k=8)
                compared += 1
                fails += not v.ok
    return compared, fails


def replace_section(text: str, section: str) -> str:
    pattern = re.compile(r"^## Verification\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1).rstrip("\n") + "\n"
    return (text.rstrip("\n") + "\n\n" if text.strip() else "# Benchmarks\n\n") + section.rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="1 keeps CPU time free of spin-waiting")
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--honest-jobs", type=int, default=60)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = calibration_model(TinyLlamaSpec())
    account = Account.create()
    rows = []
    for batch, prompt, new in (
        (4, 64, 64),
        (8, 128, 128),
        (8, 256, 256),
        (16, 256, 256),
        (32, 256, 256),
        (64, 256, 256),
    ):
        stage_in, _, parts, job_s, commit_s = run_job(model, batch, prompt, new, account)
        chunks = len(parts[0][0])
        for label, history in (("established", ESTABLISHED), ("new", sampling.WorkerHistory())):
            ver_s, sampled, fails = verify_job(model, stage_in, parts, account, history)
            p = sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, history, chunks)
            rows.append((batch, prompt, new, chunks, label, p, sampled, job_s, commit_s, ver_s, fails))
            print(rows[-1], flush=True)
    pre, dec = speed(model, 4, 256)
    pre1, dec1 = speed(model, 1, 256)
    table = detection_table(128, args.trials, random.Random(7))
    compared, fp = false_positives(calibration_model(TinyLlamaSpec()), args.honest_jobs)

    lines = [
        "## Verification",
        "",
        f"`python bench/verify.py` on {platform.machine()} / {os.cpu_count()} cores (shared with other work), "
        f"torch {torch.__version__} CPU, {args.threads} threads; tiny Llama (hidden 256, 4 layers), "
        "2 stages of 2 layers, fp32, default policy (`DEFAULT_ECONOMICS`, `DEFAULT_POLICY`).",
        "",
        "**Cost** (process CPU seconds; a job = B sequences, prompt P, N generated tokens; the worker commits per "
        "32-token chunk; verification = sampling + replica prefill replays + checks of every stage part):",
        "",
        "| B x P + N | chunks / stage | worker | rate p | chunks replayed | job CPU s | commit CPU s | verify CPU s "
        "| verify / job | false fails |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch, prompt, new, chunks, label, p, sampled, job_s, commit_s, ver_s, fails in rows:
        lines.append(
            f"| {batch} x {prompt} + {new} | {chunks} | {label} | {p:.3f} | {sampled} | {job_s:.2f} | "
            f"{commit_s:.3f} | {ver_s:.3f} | {100 * ver_s / job_s:.1f} % | {fails} |"
        )
    established = [r for r in rows if r[4] == "established"]
    shares = [100 * r[9] / r[7] for r in established]
    commit_shares = [100 * r[8] / r[7] for r in rows]
    met = [f"{r[0]} x {r[1]} + {r[2]}" for r, s in zip(established, shares, strict=True) if s <= 5.0]
    lines += [
        "",
        "The detection target (10 % cheating caught within 10 jobs at 99.9 %, with 10 % colluding replicas) needs "
        "p x chunks ~ -ln(0.001) / (0.1 x 10 x 0.9) ~ 7.7 replayed chunks per stage part whatever the job size, so "
        "the verification share of established workers falls as jobs grow: "
        f"{', '.join(f'{s:.1f} %' for s in shares)} over the rows above. The goal (<= 5 % of job compute) is "
        + (
            f"met from {met[0]} up."
            if met
            else "not met in the measured range. For an established worker the "
            f"rate stops falling at p = {min(r[5] for r in established):.3f} (the economic rate "
            "C/((1-r)(R+S)) times its safety factor keeps it there: cheating must not pay), and a replay re-runs "
            "each sampled sequence's prefix up to the sampled chunk, so on the larger jobs the verification work "
            f"grows with the job and the share levels off at {min(shares[-3:]):.1f}-{max(shares[-3:]):.1f} % "
            "instead of falling further. Reaching 5 % needs a larger slash S relative to the cost C (a lower "
            "economic rate), or replays of chunk-sized windows from a recorded KV state."
        )
        + " New or recently failed workers are checked at p >= 0.75 on purpose, which costs more until they have a "
        "verified history. Worker-side commitments (a top-k sketch and an ECDSA signature per 32-token chunk, plus "
        f"the signed root) cost {min(commit_shares):.0f}-{max(commit_shares):.0f} % of this tiny model's job: a "
        "fixed cost per chunk (Python sketching + signing), independent of model size, so its share shrinks on "
        "real models.",
        "",
        f"**Replay vs generation** (one stage, 256 positions): prefill {pre:,.0f} tokens/s vs decode {dec:,.0f} "
        f"tokens/s at batch 4 ({pre / dec:.0f}x); batch 1: {pre1:,.0f} vs {dec1:,.0f} tokens/s ({pre1 / dec1:.0f}x). "
        "A replay is a prefill of the recorded input, so a replayed chunk costs a small fraction of generating it.",
        "",
        f"**Detection** (established worker, 128 chunks per job, p = "
        f"{sampling.sampling_rate(sampling.DEFAULT_ECONOMICS, ESTABLISHED, 128):.4f}; Monte Carlo: {args.trials} "
        "runs of 10 jobs through `sample_segments` with fresh seeds):",
        "",
        "| cheat fraction f | P(caught in 1 job) | P(caught within 10 jobs) | Monte Carlo (10 jobs) "
        "| 10 jobs, 10 % colluding replicas |",
        "|---|---|---|---|---|",
    ]
    for f, one, ten, mc, col in table:
        lines.append(f"| {f:.0%} | {one:.4f} | {ten:.6f} | {mc:.3f} | {col:.6f} |")
    lines += [
        "",
        f"**False slashes**: {compared} honest chunks ({args.honest_jobs} jobs x 3 sequences, every drift source: "
        f"thread count, batch composition and padding, KV-cache decode, 32-token pieces) compared in sketch mode "
        f"with the reference replay: {fp} failures. The Celery suite (`tests/verification/test_cheating.py::"
        "test_honest_workers_are_never_slashed`) runs 200 honest jobs (fp32 and bf16) through the whole pipeline "
        "(replays, disputes, settlement on Anvil): 0 false failures, 0 slashes.",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        existing = BENCHMARKS.read_text() if BENCHMARKS.is_file() else ""
        BENCHMARKS.write_text(replace_section(existing, section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

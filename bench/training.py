"""DiLoCo vs a single AdamW worker on a tiny Llama; writes the "## Training" section of BENCHMARKS.md.

    python bench/training.py               # ~3 min on 2 busy cores; prints the section and replaces it in BENCHMARKS.md
    python bench/training.py --no-write    # print only
    python bench/training.py --rounds 3 --inner-steps 10 --no-write   # quick smoke run

Runs, all from the same initial checkpoint, on the corpus kept with the tests (held-out loss every H steps):

- DiLoCo, W workers x H inner AdamW steps per round, R rounds, through the distributed path (store, int8 codec,
  robust aggregation, outer Nesterov); the W workers of a round run one after another in this process.
- one worker, R*H AdamW steps at the per-worker batch (same sequential steps, 1/W of the compute);
- one worker, R*H AdamW steps at W x the batch: what synchronous data parallelism over W workers computes (same
  tokens and compute as DiLoCo), and the communication baseline (fp32 gradients every step);
- one worker, W*R*H AdamW steps at the per-worker batch (same total steps and tokens as DiLoCo, run serially).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from globai.models.build import build_causal_lm
from market.training.checkpoints import CheckpointStore
from market.training.data import prepare
from market.training.local import run_local_job
from market.training.model import evaluate_loss, initial_checkpoint, params_of, tiny_llama_config
from market.training.spec import ConfigModelRef, TrainingJobSpec, derive_seed
from worker.training import run_inner_steps

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
CORPUS = REPO_ROOT / "tests" / "data" / "corpus.txt"


@dataclass
class Run:
    name: str
    eval_loss: list[float]  # at step 0 and after every H (sequential) steps
    seconds: float
    steps: int  # AdamW steps summed over workers
    tokens: int


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def single_worker(spec: TrainingJobSpec, corpus: bytes, name: str, *, batch: int, steps: int, every: int) -> Run:
    """Plain AdamW on all training windows, one persistent optimizer; held-out loss every ``every`` steps."""
    _progress(f"baseline: {name}")
    config, params = initial_checkpoint(spec)
    data = prepare(spec, corpus)
    model = build_causal_lm(config, params).train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.inner_lr, weight_decay=spec.inner_weight_decay)
    g = torch.Generator().manual_seed(derive_seed(spec.seed, "baseline", name))
    losses = [evaluate_loss(config, params, data.eval)]
    started = time.perf_counter()
    for step in range(1, steps + 1):
        batch_rows = torch.randint(0, data.train.shape[0], (batch,), generator=g)
        window = data.train[batch_rows]
        logits = model(input_ids=window[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        if step % every == 0:
            losses.append(evaluate_loss(config, params_of(model), data.eval))
    return Run(name, losses, time.perf_counter() - started, steps, steps * batch * spec.seq_len)


def _machine() -> str:
    return (
        f"`uname -m` {platform.machine()}, `nproc` {os.cpu_count()}, torch {torch.__version__} CPU, "
        f"torch threads: {torch.get_num_threads()}, Python {platform.python_version()}"
    )


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def render(spec: TrainingJobSpec, runs: list[Run], n_params: int, diloco_up: int, diloco_down: int, argv: str) -> str:
    W, H, R = spec.workers_per_round, spec.inner_steps, spec.rounds
    dp_up = R * H * W * 4 * n_params  # every worker sends its fp32 gradient at every step
    dp_both = 2 * dp_up  # ... and receives the averaged one
    lines = [
        "## Training",
        "",
        f"Command: `python bench/training.py{(' ' + argv) if argv else ''}` — machine: {_machine()}.",
        "",
        f"Tiny Llama ({n_params:,} parameters: hidden {spec.model.config['hidden_size']}, "  # type: ignore[union-attr]
        f"{spec.model.config['num_hidden_layers']} layers, byte vocab), seq {spec.seq_len}, per-worker batch "  # type: ignore[union-attr]
        f"{spec.batch_size}, inner AdamW lr {spec.inner_lr:g}, outer Nesterov lr {spec.outer_lr} momentum μ "
        f"(per column), {spec.aggregation}, compression {spec.compression}; W={W}, H={H}, R={R}. "
        "Held-out loss in nats/token on the test corpus (`tests/data/corpus.txt`, 10% held out); uniform = "
        f"ln(260) ≈ 5.56.",
        "",
        "Held-out loss against rounds (a round = H sequential steps for the single-worker runs):",
        "",
        "| round | " + " | ".join(r.name for r in runs) + " |",
        "|---:|" + "---:|" * len(runs),
    ]
    for i in range(R + 1):
        cells = [f"{r.eval_loss[i]:.3f}" if i < len(r.eval_loss) else "" for r in runs]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines += ["", "| run | AdamW steps (all workers) | tokens | wall time |", "|---|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r.name} | {r.steps:,} | {r.tokens:,} | {r.seconds:.1f} s |")
    lines += [
        "",
        "Communication over the whole run (model traffic only; the data shard is the same for both):",
        "",
        "| | per-step data parallel (fp32 grads) | DiLoCo | ratio |",
        "|---|---:|---:|---:|",
        f"| worker → market (gradients / pseudo-gradients) | {_mb(dp_up)} | {_mb(diloco_up)} | "
        f"**{dp_up / diloco_up:,.0f}×** less |",
        f"| both directions (DiLoCo: + fp32 checkpoint per task) | {_mb(dp_both)} | {_mb(diloco_up + diloco_down)} | "
        f"{dp_both / (diloco_up + diloco_down):,.0f}× less |",
        "",
        "Notes: with only R rounds, DiLoCo's usual outer momentum 0.9 builds up slowly and trails the single "
        "worker at equal sequential steps; μ = 0.5 beats it, and per-step data parallelism (same tokens, "
        f"{H}× the communication rounds) stays ahead. "
        "DiLoCo's W workers ran one after another in one process, so its wall time is the summed compute "
        "(in a real job they run in parallel: ~1/W of it plus one round trip per round). Workers download the full "
        "fp32 checkpoint each round; sending the int8 outer update instead would cut the download ~4× but needs the "
        "workers to track the checkpoint exactly (not done yet).",
    ]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """`text` with its "## Training" section (up to the next "## " heading) replaced by `section`, or appended."""
    pattern = re.compile(r"^## Training\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1).rstrip("\n") + "\n"
    return (text.rstrip("\n") + "\n\n" if text.strip() else "# Benchmarks\n\n") + section.rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--inner-steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compression", default="int8")
    parser.add_argument(
        "--outer-momenta",
        type=lambda text: [float(x) for x in text.split(",")],
        default=[0.9, 0.5],
        help="one DiLoCo run per outer Nesterov momentum (comma-separated)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    corpus = CORPUS.read_bytes()
    spec = TrainingJobSpec(
        model=ConfigModelRef(config=tiny_llama_config(hidden=args.hidden, layers=args.layers), init_seed=1),
        seq_len=64,
        batch_size=8,
        inner_steps=args.inner_steps,
        rounds=args.rounds,
        workers_per_round=args.workers,
        inner_lr=2e-3,
        outer_lr=0.7,
        outer_momentum=0.9,
        aggregation="trimmed_mean",
        compression=args.compression,
        seed=3,
    )
    W, H, R = spec.workers_per_round, spec.inner_steps, spec.rounds
    runs: list[Run] = []
    first = None
    for momentum in args.outer_momenta:
        variant = spec.model_copy(update={"outer_momentum": momentum})
        with tempfile.TemporaryDirectory() as tmp:
            _progress(f"DiLoCo W={W} H={H} R={R} outer momentum {momentum}")
            started = time.perf_counter()
            result = run_local_job(variant, corpus, CheckpointStore(tmp), "bench", run_inner_steps)
            seconds = time.perf_counter() - started
            n_params = sum(t.numel() for t in CheckpointStore(tmp).load("bench").params.values())
        first = first or result
        tokens = R * W * H * spec.batch_size * spec.seq_len
        runs.append(Run(f"DiLoCo W={W} H={H}, μ={momentum}", result.eval_loss, seconds, R * W * H, tokens))
    assert first is not None
    b = spec.batch_size
    runs.append(single_worker(spec, corpus, f"1 worker, {R * H} steps, batch {b}", batch=b, steps=R * H, every=H))
    runs.append(
        single_worker(
            spec, corpus, f"1 worker, {R * H} steps, batch {W * b} (= sync DP)", batch=W * b, steps=R * H, every=H
        )
    )
    runs.append(
        single_worker(spec, corpus, f"1 worker, {R * W * H} steps, batch {b}", batch=b, steps=R * W * H, every=W * H)
    )
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    section = render(spec, runs, n_params, first.bytes_up, first.bytes_down, shown.replace("--no-write", "").strip())
    print(section)
    if not args.no_write:
        existing = BENCHMARKS.read_text() if BENCHMARKS.is_file() else ""
        BENCHMARKS.write_text(replace_section(existing, section))
    dp_up = R * H * W * 4 * n_params
    return 0 if dp_up / first.bytes_up >= 100 else 1


if __name__ == "__main__":
    sys.exit(main())

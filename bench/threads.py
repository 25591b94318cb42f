"""Worker thread policy side by side: one SmolLM2 stage (all 30 layers, one process per run) under each policy.

    python bench/threads.py [--model smollm2-135m-instruct] [--rounds 2]

Each run is its own process (OpenMP reads its settings at load), alternating shared-1 / shared-2 / dedicated-2
then back, and reports the median decode-step time of 2 x 16 greedy steps after a 42-token prefill. The model
directory comes from `bench/serving.py` (var/bench/real-models).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("shared", 1), ("shared", 2), ("dedicated", 2)]


def child(policy: str, threads: int, model: str) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from worker import threads as thread_policies

    count = thread_policies.apply(policy, threads)  # before torch loads
    import torch

    from worker.stage import Stage

    torch.set_num_threads(count)
    stage = Stage(REPO_ROOT / "var" / "bench" / "real-models" / model, 0, 30)
    steps = []
    for rep in range(2):
        stage.open_session(f"s{rep}")
        prompt = torch.randint(3, 40000, (1, 42), generator=torch.Generator().manual_seed(0))
        out = stage.forward(f"s{rep}", prompt, last_token_only=True)
        for _ in range(16):
            token = out[:, -1].argmax(-1, keepdim=True)
            started = time.perf_counter()
            out = stage.forward(f"s{rep}", token, last_token_only=True)
            steps.append(time.perf_counter() - started)
    median = statistics.median(steps)
    print(f"{policy} ({count} threads): median step {median * 1e3:.1f} ms = {1 / median:.1f} tokens/s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.model)
        return 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "KMP_"))}
    print(f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    for round_ in range(args.rounds):
        for policy, threads in CONFIGS if round_ % 2 == 0 else CONFIGS[::-1]:
            cmd = [sys.executable, __file__, "--model", args.model, "--child", policy, str(threads)]
            subprocess.run(cmd, env=env, check=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

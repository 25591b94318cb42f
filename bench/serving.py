"""Serving speed on SmolLM2-135M-Instruct at 4 stages: weight formats, eight concurrent streams, thread policies.

    python bench/serving.py --no-write        # print the section only
    python bench/serving.py                   # also writes "## Serving: SmolLM2-135M-Instruct" in BENCHMARKS.md
    python bench/serving.py --configs fp32:shared,bf16-int4:shared --concurrent 8

Each config starts four `globai worker run` processes (layers split evenly) behind one real `globai market serve`
(uvicorn, SQLite, Anvil for stake) and drives `POST /v1/inference` (greedy, `ignore_eos`, a 42-token chat prompt):
- single stream: decode tokens/s from the coordinator's `done` timings (best of 2), per-hop overhead p50 (the
  wall time of a decode call minus the worker's own time);
- N concurrent streams (separate requests, one thread each): aggregate tokens/s = N x new tokens / wall time of
  the whole set, against the single stream's new tokens / wall time of one request (both include prefill);
- the monolithic baseline: transformers `generate` (float32, default configuration) in its own process, run
  between the configs (so it sees the same window), best of its runs.
- llama.cpp on the Q4_1 GGUF file the model is imported from (`bench/llamacpp.py`, run with the python of a
  bench-only venv holding `llama-cpp-python`: `--llamacpp-python` or `$GLOBAI_LLAMACPP_PYTHON`; skipped with a
  printed reason when absent), single stream at 1 and 2 threads on the same prompt ids, before and between the
  configs like the monolithic baseline, greedy tokens compared with transformers'.
Memory bandwidth is measured once (a large tensor copy at 1 and 2 threads); bytes per token = the weight bytes a
decode step reads (every shard but the embeddings, of which one row per token is read, plus the whole embedding
where the head is tied to it). The section ends with the issue's four goals, met or not, for this window.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch
from eth_account import Account

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.pipeline import (  # noqa: E402
    GLOBAI,
    Market,
    generate,
    replace_section,
    splits,
    stake,
    stop_workers,
    wait_workers,
)
from globai.chain.client import ChainClient  # noqa: E402
from globai.chain.deploy import deploy_all  # noqa: E402
from globai.chain.local import dev_accounts  # noqa: E402
from globai.client import sign_in  # noqa: E402
from globai.dev.services import anvil_service  # noqa: E402

BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
TITLE = "## Serving: SmolLM2-135M-Instruct"
FORMATS = {  # config name -> (dtype, weight format)
    "fp32": ("float32", None),
    "bf16": ("bfloat16", None),
    "bf16-int8": ("bfloat16", "int8"),
    "bf16-int4": ("bfloat16", "int4"),
}
POLICY_THREADS = {"shared": 1, "shared2": 2, "dedicated": 2}  # policy label -> --threads


def bandwidth_gb_s(threads: int) -> float:
    torch.set_num_threads(threads)
    src = torch.ones(64 << 20)  # 256 MB of float32
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.numel() * 4 / best / 1e9  # read + write


def monolithic(model_dir: Path, new_tokens: int) -> dict[str, float]:
    """transformers `generate` in its own process, default configuration (no OMP_* / thread settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "KMP_"))}
    cmd = [sys.executable, str(REPO_ROOT / "bench" / "pipeline.py"), "--monolithic-only", "--model", "smollm2"]
    cmd += ["--new-tokens", str(new_tokens), "--threads", "0", "--no-stage"]
    child = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=REPO_ROOT)
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def llamacpp(python: str | None, prompt: list[int], new_tokens: int) -> dict[str, Any] | None:
    """llama.cpp on the GGUF file the model came from, in the bench-only venv (`bench/llamacpp.py`); None if absent."""
    if not python:
        return None
    from globai.models.builtin import SMOLLM2

    cmd = [python, str(REPO_ROOT / "bench" / "llamacpp.py"), "--gguf", str(SMOLLM2.source())]
    cmd += ["--prompt-ids", json.dumps(prompt), "--new-tokens", str(new_tokens), "--threads", "1,2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "KMP_"))}
    child = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=REPO_ROOT)
    return dict(json.loads(child.stdout.strip().splitlines()[-1]))


def run_config(
    market: Market,
    model: str,
    layers: int,
    accounts: list[Any],
    policy: str,
    prompt: list[list[int]],
    new_tokens: int,
    concurrent: int,
    workdir: Path,
    label: str,
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "KMP_"))}
    thread_policy = "dedicated" if policy == "dedicated" else "shared"
    procs = []
    for i, span in enumerate(splits(layers, 4)):
        cmd = [
            GLOBAI,
            "worker",
            "run",
            "--market",
            market.url,
            "--key",
            "0x" + accounts[i].key.hex().removeprefix("0x"),
        ]
        cmd += ["--model", model, "--layers", span, "--threads", str(POLICY_THREADS[policy])]
        cmd += ["--thread-policy", thread_policy, "--no-progress", "--cache-dir", str(workdir / f"cache{i}")]
        log = open(workdir / f"{label}-worker{i}.log", "wb")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        with httpx.Client(base_url=market.url, timeout=600) as http:
            token = sign_in(http, Account.from_key(bytes([0x99]) * 32), ["requester"])
            http.headers["Authorization"] = f"Bearer {token}"
            wait_workers(http, model, 4, procs, f"{workdir}/{label}-worker*.log")
            ids = torch.tensor(prompt)
            generate(http, model, ids, 2)  # warm-up
            singles = []
            for _ in range(2):
                started = time.perf_counter()
                done = generate(http, model, ids, new_tokens)
                singles.append((done, time.perf_counter() - started))
            best, single_wall = min(singles, key=lambda d: d[0]["timings"]["decode_s"])
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrent) as pool:
                many = list(pool.map(lambda _: generate(http, model, ids, new_tokens), range(concurrent)))
            many_wall = time.perf_counter() - started
    finally:
        stop_workers(procs)
    t = best["timings"]
    return {
        "decode_tok_s": (new_tokens - 1) / t["decode_s"],
        "hop_ms": t.get("hop_overhead_ms_p50", float("nan")),
        "single_wall_tok_s": new_tokens / single_wall,
        "many_tok_s": concurrent * new_tokens / many_wall,
        "tokens": best["tokens"],
        "many_same": all(d["tokens"] == best["tokens"] for d in many),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs", default="fp32:shared,fp32:shared2,fp32:dedicated,bf16:shared,bf16-int8:shared,bf16-int4:shared"
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--llamacpp-python",
        default=os.environ.get("GLOBAI_LLAMACPP_PYTHON"),
        help="python of a venv with llama-cpp-python (default $GLOBAI_LLAMACPP_PYTHON; absent: llama.cpp skipped)",
    )
    args = parser.parse_args(argv)
    command = "python bench/serving.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    load_start = os.getloadavg()
    started_at = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    from globai.models.builtin import add_builtin
    from globai.models.manifest import load_manifest
    from globai.models.tokenizer import load_tokenizer
    from market.coordinator.chat import render_chat

    cache = REPO_ROOT / "var" / "bench" / "real-models"
    configs = [c.split(":") for c in args.configs.split(",")]
    dirs = {}
    for name in sorted({f for f, _ in configs}):
        dtype, weight_format = FORMATS[name]
        dirs[name], _, _ = add_builtin("smollm2", cache, dtype=dtype, weight_format=weight_format)
    base = load_manifest(dirs.get("fp32") or add_builtin("smollm2", cache)[0])
    question = "Tell me about the history of Paris in a few paragraphs."
    prompt = [
        render_chat(
            load_tokenizer(dirs.get("fp32") or cache / base.name), base, [{"role": "user", "content": question}]
        )
    ]
    bandwidth = {n: bandwidth_gb_s(n) for n in (1, 2)}
    monos = [monolithic(cache / base.name, args.new_tokens)]
    print(f"monolithic: {monos[-1]['decode_tok_s']:.1f} tok/s; bandwidth {bandwidth}", flush=True)
    llamas = [r for r in [llamacpp(args.llamacpp_python, prompt[0], args.new_tokens)] if r is not None]
    if not args.llamacpp_python:
        print("llama.cpp skipped: no --llamacpp-python / $GLOBAI_LLAMACPP_PYTHON (a venv with llama-cpp-python)")
    for r in llamas:
        print(f"llama.cpp: {r['decode_tok_s_1']:.1f} tok/s (1 thread), {r['decode_tok_s_2']:.1f} (2)", flush=True)

    anvil = anvil_service()
    workdir = Path(tempfile.mkdtemp(prefix="globai-serving-"))
    market = None
    rows = []
    try:
        client = ChainClient(anvil.url)
        deployment = deploy_all(client, admin=dev_accounts(1)[0], treasury=dev_accounts(1)[0])
        accounts = [Account.from_key(bytes([0x60 + i]) * 32) for i in range(4)]
        for account in accounts:
            stake(client, deployment, account)
        market = Market(workdir, cache, anvil.url, deployment)
        for name, policy in configs:
            manifest = load_manifest(dirs[name])
            row = run_config(
                market, manifest.name, manifest.num_layers, accounts, policy, prompt, args.new_tokens,
                args.concurrent, workdir, f"{name}-{policy}",
            )  # fmt: skip
            row.update(config=name, policy=policy, precision=manifest.precision)
            # every shard but the embeddings (one row per token), plus the embedding a tied head reads whole
            row["bytes_per_token"] = sum(s.size for s in manifest.shards if s.name != "embed") + (
                manifest.shard("embed").size if manifest.tied else 0
            )
            rows.append(row)
            monos.append(monolithic(cache / base.name, args.new_tokens))
            llamas += [r for r in [llamacpp(args.llamacpp_python, prompt[0], args.new_tokens)] if r is not None]
            print(
                f"{name}/{policy}: {row['decode_tok_s']:.1f} tok/s, hop {row['hop_ms']:.2f} ms, "
                f"{args.concurrent} streams {row['many_tok_s']:.1f} vs 1 stream {row['single_wall_tok_s']:.1f} tok/s; "
                f"monolithic {monos[-1]['decode_tok_s']:.1f}",
                flush=True,
            )
    finally:
        if market is not None:
            market.stop()
        anvil.stop()
    load_end = os.getloadavg()
    from globai.models.reference import generate_reference

    expected = generate_reference(cache / base.name, torch.tensor(prompt), args.new_tokens).tolist()
    body = section(
        args, command, started_at, load_start, load_end, bandwidth, monos, llamas, rows, expected, len(prompt[0])
    )
    print()
    print(body)
    if not args.no_write:
        BENCHMARKS.write_text(replace_section(BENCHMARKS.read_text(), body))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def section(
    args: argparse.Namespace,
    command: str,
    started_at: str,
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
    bandwidth: dict[int, float],
    monos: list[dict[str, float]],
    llamas: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    expected: list[list[int]],
    prompt_len: int,
) -> str:
    mono = max(m["decode_tok_s"] for m in monos)
    machine = f"`nproc` = {os.cpu_count()}, `uname -m` = {platform.machine()}, torch {torch.__version__}"
    lines = [
        TITLE,
        "",
        f"Command: `{command}` (run {started_at}) — machine: {machine}; load average (1 min) "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end: the 2 cores are shared with other "
        "engineers' test suites and benchmarks throughout, so absolute figures move with their load.",
        "",
        f"SmolLM2-135M-Instruct, 4 `globai worker run` processes (layers split evenly), a {prompt_len}-token chat "
        f"prompt, greedy, {args.new_tokens} new tokens (`ignore_eos`), verification commitments on (every answer "
        "signed, every chunk committed). Monolithic baseline: transformers `generate` "
        "(float32) in its own process, default configuration, run before and between the configs: "
        + ", ".join(f"{m['decode_tok_s']:.1f}" for m in monos)
        + f" tokens/s (best {mono:.1f}). Memory bandwidth (256 MB copy): {bandwidth[1]:.1f} GB/s at 1 thread, "
        f"{bandwidth[2]:.1f} GB/s at 2.",
        "",
    ]
    if llamas:
        best_1 = max(r["decode_tok_s_1"] for r in llamas)
        best_2 = max(r["decode_tok_s_2"] for r in llamas)
        gguf = gguf_bytes()
        agree = common_prefix(llamas[0]["tokens"], expected[0])
        lines += [
            "llama.cpp (`llama-cpp-python` in a bench-only venv, `bench/llamacpp.py`, the Q4_1 GGUF the model was "
            "imported from, same prompt ids, greedy, `n_ubatch=1`), run before and between the configs: "
            + "; ".join(f"{r['decode_tok_s_1']:.1f} (1 thread) / {r['decode_tok_s_2']:.1f} (2)" for r in llamas)
            + f" tokens/s (best {best_1:.1f} at 1 thread, {best_2:.1f} at 2); reads the whole "
            f"{gguf / 1e6:.0f} MB file per token: bandwidth bound {bandwidth[1] * 1e9 / gguf:.0f} tokens/s at 1 "
            f"thread ({best_1 * gguf / bandwidth[1] / 1e9:.0%} of it). Its greedy tokens equal fp32 `generate`'s "
            f"for the first {agree} of {len(expected[0])} (llama.cpp quantises activations to 8 bits for Q4_1 "
            "matrix products; our weights are the same dequantised values).",
            "",
        ]
    lines += [
        "| weights | thread policy (threads/worker) | decode tokens/s, 1 stream | vs monolithic (best) "
        f"| per-hop overhead p50 | 1 stream, wall tokens/s | {args.concurrent} streams, aggregate tokens/s | ratio "
        "| bytes read per token | bandwidth bound (1 thread) | share of bound | greedy = `generate` |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        bound = bandwidth[1] * 1e9 / r["bytes_per_token"]
        agree = common_prefix(r["tokens"][0], expected[0])
        same = "yes" if r["tokens"] == expected else f"first {agree}" if r["precision"] != "float32" else "NO"
        lines.append(
            f"| {r['precision']} | {r['policy']} ({POLICY_THREADS[r['policy']]}) | {r['decode_tok_s']:.1f} | "
            f"{r['decode_tok_s'] / mono:.2f}x | {r['hop_ms']:.2f} ms | {r['single_wall_tok_s']:.1f} | "
            f"{r['many_tok_s']:.1f} | {r['many_tok_s'] / r['single_wall_tok_s']:.1f}x | "
            f"{r['bytes_per_token'] / 1e6:.0f} MB | {bound:.0f} tok/s | {r['decode_tok_s'] / bound:.0%} | {same} |"
        )
    lines += ["", "Goals (this window):"]
    fp32 = [r for r in rows if r["precision"] == "float32"]
    if fp32:
        ratio = max(r["decode_tok_s"] for r in fp32) / mono
        lines.append(
            f"- single stream, float32, 4 stages >= 0.90x monolithic (best window): {met(ratio >= 0.9)} ({ratio:.2f}x)"
        )
    many = max(rows, key=lambda r: r["many_tok_s"] / r["single_wall_tok_s"])
    ratio = many["many_tok_s"] / many["single_wall_tok_s"]
    lines.append(
        f"- {args.concurrent} streams >= 4x one stream: {met(ratio >= 4)} (best {ratio:.1f}x, {many['precision']}; "
        + ", ".join(f"{r['precision']} {r['many_tok_s'] / r['single_wall_tok_s']:.1f}x" for r in rows)
        + ")"
    )
    best = max(rows, key=lambda r: r["decode_tok_s"])
    if llamas:
        llama = max(max(r["decode_tok_s_1"], r["decode_tok_s_2"]) for r in llamas)
        ratio = best["decode_tok_s"] / llama
        lines.append(
            f"- best format at 4 stages >= 0.5x llama.cpp Q4_1 (its best thread count): {met(ratio >= 0.5)} "
            f"({best['precision']} {best['decode_tok_s']:.1f} vs {llama:.1f} tokens/s = {ratio:.2f}x)"
        )
    else:
        lines.append("- best format vs llama.cpp: not measured (no llama-cpp-python venv given)")
    hops = [r["hop_ms"] for r in rows]
    lines.append(
        f"- per-hop overhead p50 <= 0.5 ms: {met(max(hops) <= 0.5)} ({min(hops):.2f}-{max(hops):.2f} ms across configs)"
    )
    return "\n".join(lines) + "\n"


def met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def gguf_bytes() -> int:
    from globai.models.builtin import SMOLLM2

    return SMOLLM2.source().stat().st_size


if __name__ == "__main__":
    raise SystemExit(main())

"""Binding and coverage of verification: what they cost and what they catch; writes the "## Verification: binding
and coverage" section of BENCHMARKS.md.

    python bench/binding.py              # ~1 min; prints the section and replaces it in BENCHMARKS.md
    python bench/binding.py --no-write   # print only

Measured:
1. bytes per 32 tokens: the worker's signed chunk commitment (sketch version 2, k = 1, the default; version 1 at
   k = 8, the old default), and what the market keeps to compare whole rows (the hidden-state rows themselves; for
   last-token logits, 16 seeded projections per row);
2. binding cost per forward answer: the worker's sha256 + signature over the output bytes (`sent`), the
   coordinator's sha256 + signature recovery before relaying; the market's projection of a logits row; the
   worker's commitment of one chunk in each sketch format;
3. detection per sampled chunk, tiny Llama (hidden 256) stage [1, 3), every honest drift source of the calibration
   for false failures, and cheats that change the output where the 8-value sketch is blind: in full-tensor mode
   (hidden states), projection mode (logits: sketch + projections) and sketch-only mode, for each sketch format.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from eth_account import Account  # noqa: E402

from globai.protocol.commitments import chunk_bounds, commit_chunk, tensor_sha256  # noqa: E402
from globai.protocol.signing import ChunkScope, recover_signer, sent_digest, sign_digest  # noqa: E402
from globai.protocol.sketch import DEFAULT_K, DEFAULT_VERSION, sketch_chunk  # noqa: E402
from market.verifier.calibrate import CalibrationSettings, scenarios, stage_inputs, torch_threads  # noqa: E402
from market.verifier.compare import (  # noqa: E402
    DEFAULT_TOLERANCES,
    PROJECTIONS,
    compare_hidden_states,
    compare_projections,
    compare_sketch,
    project_rows,
)
from market.verifier.tiny import calibration_model, run_stage  # noqa: E402

BENCHMARKS = REPO_ROOT / "BENCHMARKS.md"
TITLE = "## Verification: binding and coverage"
SCOPE = ChunkScope(31337, b"\x01" * 32, b"\x02" * 32, 1, b"\x03" * 32)


def per_call_ms(fn, n: int = 200) -> float:  # type: ignore[no-untyped-def]
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def binding_costs() -> list[tuple[str, float]]:
    account = Account.create()
    rows = []
    for name, shape, dtype in (
        ("decode step, 8 x 1 x 576 bf16", (8, 1, 576), torch.bfloat16),
        ("prefill, 8 x 128 x 576 bf16", (8, 128, 576), torch.bfloat16),
    ):
        out = torch.randn(shape).to(dtype)

        def worker_sign(out: torch.Tensor = out) -> None:
            sign_digest(account, sent_digest(SCOPE, 1, 0, tensor_sha256(out)))

        signature = sign_digest(account, sent_digest(SCOPE, 1, 0, tensor_sha256(out)))

        def coordinator_check(out: torch.Tensor = out, signature: bytes = signature) -> None:
            recover_signer(sent_digest(SCOPE, 1, 0, tensor_sha256(out)), signature)

        rows.append((f"worker: sha256 + sign, {name}", per_call_ms(worker_sign)))
        rows.append((f"coordinator: sha256 + recover, {name}", per_call_ms(coordinator_check)))
    logits = torch.randn(8, 49152)
    project_rows(logits, 1)  # the seeded matrix is drawn once per run
    rows.append(
        ("market: projections of 8 logit rows (vocab 49,152)", per_call_ms(lambda: project_rows(logits, 1), 50))
    )
    for name, chunk in (
        ("32 x 576 bf16 hidden states", torch.randn(32, 576).to(torch.bfloat16)),
        ("32 x 49,152 fp32 logits", torch.randn(32, 49152)),
    ):
        for label, version, k in SKETCHES:

            def commit(chunk: torch.Tensor = chunk, version: int = version, k: int = k) -> None:
                sha = tensor_sha256(chunk)
                sketch_chunk(chunk, k, version=version, output_sha256=sha)

            rows.append((f"worker: sha256 + sketch ({label}) of one chunk, {name}", per_call_ms(commit, 20)))
    return rows


def cheats(out: torch.Tensor) -> dict[str, torch.Tensor]:
    keep = torch.zeros_like(out, dtype=torch.bool).scatter_(1, out.abs().topk(8, dim=1).indices, True)
    sparse = out.clone()
    sparse[:, ::64] += out.std() * 0.5  # 4 of 256 coordinates per row, mostly outside the top-8
    return {
        "outside top-8 x 0.9": torch.where(keep, out, out * 0.9),
        "x (1 + 3e-5) (below fp16)": out * (1 + 3e-5),
        "4 coordinates + 0.5 sd": sparse,
        "x 1.10": out * 1.10,
    }


# Sketch formats compared (label, version, k): the old default, the old format at k = 1, the new default.
SKETCHES = (("v1 k=8", 1, 8), ("v1 k=1", 1, 1), (f"v{DEFAULT_VERSION} k={DEFAULT_K}", DEFAULT_VERSION, DEFAULT_K))


def detection(dtype: str) -> tuple[list[tuple[str, list[float]]], list[int]]:
    """Per cheat: fraction of chunks failed in full mode, then projection mode (sketch + projections) and sketch-only
    mode for each format in SKETCHES; honest: (chunks, then failures in the same columns)."""
    s = CalibrationSettings(stage=(1, 3), prefix_len=20)
    torch_dtype = getattr(torch, dtype)
    model = calibration_model(s.spec, torch_dtype)
    inputs = stage_inputs(model, s)
    tol = DEFAULT_TOLERANCES[dtype]
    drifts = {k: v for k, v in scenarios(s).items() if k not in s.informational}
    counts: dict[str, list[int]] = {}  # name -> [chunks, full, proj per k..., sketch per k...]
    seed = 12345
    for i, x in enumerate(inputs):
        with torch_threads(s.threads[0]), torch.no_grad():
            ref = run_stage(model, x.unsqueeze(0), s.stage)[0]
        outs = {f"honest:{name}": fn(model, inputs, i) for name, fn in drifts.items()}
        outs.update(cheats(ref))
        for name, out in outs.items():
            key = "honest" if name.startswith("honest:") else name
            acc = counts.setdefault(key, [0] * (2 + 2 * len(SKETCHES)))
            for _, a, b in chunk_bounds(x.shape[0]):
                c, r = out[a:b].to(torch_dtype), ref[a:b]
                sha = tensor_sha256(c)
                acc[0] += 1
                acc[1] += not compare_hidden_states(c, r, tol).ok
                projected_ok = compare_projections(project_rows(c, seed), r, seed, tol).ok
                for j, (_, version, k) in enumerate(SKETCHES):
                    sketch = sketch_chunk(c, k, version=version, output_sha256=sha)
                    sketch_ok = compare_sketch(sketch, r, tol, k=k, output_sha256=sha).ok
                    acc[2 + j] += not (sketch_ok and projected_ok)
                    acc[2 + len(SKETCHES) + j] += not sketch_ok
    honest = counts.pop("honest")
    rows = [(name, [v / acc[0] for v in acc[1:]]) for name, acc in counts.items()]
    return rows, honest


def section() -> str:
    torch.set_num_threads(1)
    costs = binding_costs()
    scope = SCOPE
    chunk = torch.randn(32, 576)
    sizes = {label: len(commit_chunk(scope, 0, chunk, k, version=version).sketch) for label, version, k in SKETCHES}
    default = SKETCHES[-1][0]
    commit_bytes = sizes[default] + 32 + 65
    lines = [
        TITLE,
        "",
        f"`python bench/binding.py` on {platform.machine()} / {os.cpu_count()} cores (shared with other work), torch "
        f"{torch.__version__}, 1 thread. Docs: docs/verification.md (Binding, Coverage).",
        "",
        f"**Bytes per 32 tokens.** The worker's signed chunk commitment: sha256 (32) + the sketch ({default}: top-1 "
        f"index and fp16 value + one fp16 projection per token on a direction drawn from the chunk's sha256, "
        f"{sizes[default]} bytes) + signature (65) = **{commit_bytes} bytes** (goal <= 300; TOPLOC: 258; before: "
        f"v1 k=8, {sizes['v1 k=8'] + 97} bytes; v1 k=1: {sizes['v1 k=1'] + 97}). What the market keeps to compare "
        "whole rows, not "
        "part of the commitment: hidden-state rows themselves (32 x hidden x dtype size, e.g. 36 KiB for SmolLM2 in "
        f"bf16), and for last-token logits {PROJECTIONS} fp32 projections per row = **{32 * PROJECTIONS * 4} bytes** "
        "(the rows would be 6 MiB in fp32 for a 49,152 vocabulary). Detection rests on what the market keeps (whole "
        "tensors, projections with a seed the worker never sees); the sketch only adds to the projection mode and "
        "is alone only where the market keeps neither (no production source: the inference source keeps both). "
        f"The tables below compare {', '.join(label for label, _, _ in SKETCHES)} side by side on the same chunks.",
        "",
        "**Binding cost per forward answer** (ms, mean of 200):",
        "",
        "| what | ms |",
        "|---|---|",
        *[f"| {name} | {ms:.3f} |" for name, ms in costs],
        "",
    ]
    for dtype in ("float32", "bfloat16"):
        rows, honest = detection(dtype)
        ks = " | ".join(f"projection {label}" for label, _, _ in SKETCHES)
        ks += " | " + " | ".join(f"sketch only {label}" for label, _, _ in SKETCHES)
        lines += [
            f"**Detection per sampled chunk, {dtype}** (tiny Llama stage [1, 3), 8 sequences, 28 chunks per "
            "variant; full = whole tensor (hidden-state stages), projection = sketch + seeded projections (logits), "
            "sketch = sketch only):",
            "",
            f"| output change | full | {ks} |",
            "|---|---|" + "---|" * (2 * len(SKETCHES)),
            *[f"| {n} | " + " | ".join(f"{v:.0%}" for v in values) + " |" for n, values in rows],
            f"| honest, {len(scenarios(CalibrationSettings())) - 2} drift sources ({honest[0]} chunks): false "
            "failures | " + " | ".join(str(v) for v in honest[1:]) + " |",
            "",
        ]
    lines += [
        "Notes: in bf16 a x (1 + 3e-5) change is no change at all (below bf16 resolution: the bytes are the same). "
        "Projections (the market's and the sketch's) are judged against the dtype's `max_rel_err` (1e-4 in fp32), "
        "so a uniform change of relative size below ~5e-5 passes them in fp32 (the whole-tensor `mean_rel_err` "
        "limit, 1e-5, catches it where the tensor is kept; in sketch-only mode only rounding flips of the sketched "
        "fp16 values show it, which is why no format catches it on every chunk). The version-2 sketch's "
        "projections (one per row, on a direction drawn from the chunk's own sha256) see a change anywhere in a "
        "row: the top-8-blind and sparse changes, which the k = 8 sketch alone misses on most chunks, are caught "
        "on every chunk from 200 bytes of sketch. "
        "Through the whole pipeline (Celery, Anvil), `tests/verification/test_cheating.py` catches and slashes the "
        "`unbound`, `outside_topk`, `sub_fp16` and lazy-replica workers with version-2 commitments, and its 200 "
        "honest jobs (fp32 and bf16, whole tensors and projections) gave 953 replayed chunks, 0 false failures, "
        "0 slashes (run 2026-12-02); the real "
        'SmolLM2 jobs are in "Verification: SmolLM2".',
        "",
    ]
    return "\n".join(lines).rstrip() + "\n"


def replace_section(text: str, new: str) -> str:
    start = text.find(TITLE)
    if start < 0:
        return text.rstrip() + "\n\n" + new
    end = text.find("\n## ", start + len(TITLE))
    return text[:start] + new + ("" if end < 0 else text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    text = section()
    print(text)
    if not args.no_write:
        BENCHMARKS.write_text(replace_section(BENCHMARKS.read_text(), text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

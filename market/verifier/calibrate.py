"""Calibrate verification tolerances from measured honest drift, and show they separate every cheat.

Honest drift: the verifier's replay of a stage is a prefill of the recorded stage input, alone in its batch,
at `threads[0]` torch threads with eager attention (the *reference*). The worker's honest output may have been
computed differently; each such way is a scenario:

- `threads_<n>`: another torch thread count;
- `batched_padded` / `batched_reordered`: the sequence inside a right-padded batch with the job's other
  sequences (other batch position, other padded length);
- `kv_decode`: prefill of a prefix, then token-by-token decode with the KV cache;
- `kv_chunked`: prefill of a prefix, then 32-token pieces against the KV cache;
- `sdpa_attention`: another attention kernel. Informational by default (measured and reported, not used for
  thresholds): the protocol pins the attention kernel in the model manifest, because in bf16 its drift is as
  large as what int8 weights cause (docs/verification.md has the numbers).

Per dtype, every scenario's output is compared chunk by chunk with the reference (`compare_hidden_states`).
Threshold per metric = max(observed max x (1 + margin), floor) (for `topk_overlap`: min(observed min - margin,
cap)). Floors encode what any machine may legitimately do that this one didn't (one fp16 rounding flip, kernel
reduction order of other CPUs). Every honest chunk is also judged from the sketch a worker commits to
(`sketch_k`, version 2: top-k and Fiat-Shamir projections) with those thresholds: the report's `honest.sketch`
counts its false positives (0 required) and its worst metrics. Then every cheat in `cheats.all_cheats` is compared
the same way, in full tensor mode and in sketch-only mode, and the report says on which fraction of chunks each is
caught.

All compute is here; reading/writing files is the CLI's job (`market/commands/verifier.py`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import cast

import torch
from transformers import LlamaForCausalLM

from globai.models import quant
from globai.protocol.commitments import chunk_bounds, tensor_sha256
from globai.protocol.sketch import DEFAULT_K, sketch_chunk
from market.verifier import cheats
from market.verifier.compare import Metrics, Tolerance, Verdict, compare_hidden_states, compare_sketch, judge
from market.verifier.tiny import TinyLlamaSpec, calibration_model, embed, new_cache, run_stage

# Metric name in `Metrics` -> field of `Tolerance` and whether larger values are worse.
THRESHOLDED = {
    "max_rel_err": ("max_rel_err", True),
    "mean_rel_err": ("mean_rel_err", True),
    "topk_overlap": ("min_topk_overlap", False),
    "value_max_err": ("value_max_err", True),
    "value_mean_err": ("value_mean_err", True),
}

# Lower bounds on thresholds (upper bound for overlap), per dtype. Why these values: fp32 kernels on other CPUs
# reorder reductions (~1e-6 relative on small models); a single fp16 rounding flip of a sketch value is 1 ULP;
# bf16 carries 8 significant bits, so one bf16 step is 2^-8 relative and 8 fp16 ULPs.
FLOORS: dict[str, Tolerance] = {
    "float32": Tolerance(
        max_rel_err=1e-4, mean_rel_err=1e-5, min_topk_overlap=0.95, value_max_err=2.0, value_mean_err=0.05
    ),
    "bfloat16": Tolerance(
        max_rel_err=8e-3, mean_rel_err=1e-3, min_topk_overlap=0.85, value_max_err=16.0, value_mean_err=1.0
    ),
}


@dataclass(frozen=True)
class CalibrationSettings:
    spec: TinyLlamaSpec = field(default_factory=TinyLlamaSpec)
    stage: tuple[int, int] = (1, 3)
    seq_lens: tuple[int, ...] = (128, 100, 128, 76, 96, 128, 64, 110)
    prefix_len: int = 45
    input_seed: int = 0
    threads: tuple[int, int] = (1, 2)
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    margin: float = 3.0
    overlap_margin: float = 0.05
    sketch_k: int = DEFAULT_K  # the committed sketch's k (version 2); full-tensor metrics use compare.FULL_K
    informational: tuple[str, ...] = ("sdpa_attention", "eager_attention")
    # Where the verifier's replica runs ("cpu", "cuda"): with "cuda" the reference is a GPU replay of the same
    # weights (TF32 off, torch's default), so thresholds cover CPU-worker vs GPU-replica drift as well.
    replay_device: str = "cpu"
    # A real model (a manifest directory) instead of the seeded tiny Llama: its own weights, its attention
    # kernel (the manifest's, as workers run it), stage inputs from real text through its tokenizer.
    model_dir: str | None = None


Scenario = Callable[[LlamaForCausalLM, list[torch.Tensor], int], torch.Tensor]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def attention(model: LlamaForCausalLM, impl: str) -> Iterator[None]:
    before = model.config._attn_implementation
    model.config._attn_implementation = impl
    try:
        yield
    finally:
        model.config._attn_implementation = before


def _batched(inputs: list[torch.Tensor], order: Sequence[int], model: LlamaForCausalLM, stage: tuple[int, int]):
    width = max(x.shape[0] for x in inputs)
    batch = torch.zeros(len(order), width, inputs[0].shape[1], dtype=inputs[0].dtype)
    mask = torch.zeros(len(order), width, dtype=torch.long)
    for row, i in enumerate(order):
        batch[row, : inputs[i].shape[0]] = inputs[i]
        mask[row, : inputs[i].shape[0]] = 1
    return run_stage(model, batch, stage, attention_mask=mask)


def scenarios(s: CalibrationSettings) -> dict[str, Scenario]:
    """Honest ways of computing sequence i's stage output, each returning [tokens, hidden]."""

    def alone(model: LlamaForCausalLM, inputs: list[torch.Tensor], i: int) -> torch.Tensor:
        return run_stage(model, inputs[i].unsqueeze(0), s.stage)[0]

    def other_threads(model: LlamaForCausalLM, inputs: list[torch.Tensor], i: int) -> torch.Tensor:
        with torch_threads(s.threads[1]):
            return alone(model, inputs, i)

    def batched(reverse: bool) -> Scenario:
        def run(model: LlamaForCausalLM, inputs: list[torch.Tensor], i: int) -> torch.Tensor:
            order = list(range(len(inputs)))[:: -1 if reverse else 1]
            return _batched(inputs, order, model, s.stage)[order.index(i), : inputs[i].shape[0]]

        return run

    def kv(piece: int) -> Scenario:
        def run(model: LlamaForCausalLM, inputs: list[torch.Tensor], i: int) -> torch.Tensor:
            x, cache = inputs[i].unsqueeze(0), new_cache(model)
            outs = [run_stage(model, x[:, : s.prefix_len], s.stage, cache=cache)]
            for start in range(s.prefix_len, x.shape[1], piece):
                outs.append(run_stage(model, x[:, start : start + piece], s.stage, cache=cache))
            return torch.cat(outs, dim=1)[0]

        return run

    # The other attention kernel than the one the reference uses (tiny: eager, so sdpa; real models: sdpa).
    other = "eager" if s.model_dir is not None else "sdpa"

    def other_kernel(model: LlamaForCausalLM, inputs: list[torch.Tensor], i: int) -> torch.Tensor:
        with attention(model, other):
            return alone(model, inputs, i)

    return {
        "repeat": alone,
        f"threads_{s.threads[1]}": other_threads,
        "batched_padded": batched(False),
        "batched_reordered": batched(True),
        "kv_decode": kv(1),
        "kv_chunked": kv(32),
        f"{other}_attention": other_kernel,
    }


def stage_inputs(model: LlamaForCausalLM, s: CalibrationSettings) -> list[torch.Tensor]:
    """Realistic stage inputs: the honest output of the layers before the stage, per sequence (random token ids
    for the tiny model; for a real model, windows of real text at seeded offsets)."""
    g = torch.Generator().manual_seed(s.input_seed)
    text_ids = _text_ids(s.model_dir, max(s.seq_lens)) if s.model_dir is not None else None
    out = []
    for n in s.seq_lens:
        if text_ids is None:
            ids = torch.randint(0, s.spec.vocab_size, (1, n), generator=g)
        else:
            start = int(torch.randint(0, len(text_ids) - n + 1, (1,), generator=g))
            ids = torch.tensor([text_ids[start : start + n]])
        out.append(run_stage(model, embed(model, ids), (0, s.stage[0]))[0])
    return out


def _text_ids(model_dir: str, at_least: int) -> list[int]:
    from globai.models.tiny import CORPUS
    from globai.models.tokenizer import load_tokenizer

    ids = load_tokenizer(Path(model_dir)).encode(CORPUS, add_special_tokens=False).ids
    while len(ids) < 2 * at_least:
        ids = ids + ids
    return ids


def sketch_verdict(claimed: torch.Tensor, replayed: torch.Tensor, tol: Tolerance, k: int = DEFAULT_K) -> Verdict:
    """A chunk judged from the sketch its worker commits to (version 2, seeded by the chunk's own sha256)."""
    sha = tensor_sha256(claimed)
    return compare_sketch(sketch_chunk(claimed, k, output_sha256=sha), replayed, tol, k=k, output_sha256=sha)


SKETCH_METRICS = ("topk_overlap", "value_max_err", "value_mean_err", "projection_err")


def _chunks(claimed: torch.Tensor, reference: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for _, start, stop in chunk_bounds(reference.shape[0]):
        yield claimed[start:stop], reference[start:stop]


_LOOSE = Tolerance(math.inf, math.inf, 0.0, math.inf, math.inf)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    t = torch.tensor(list(values), dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
    return {
        "n": len(values),
        "min": float(t.min()),
        "p50": q[0],
        "p90": q[1],
        "p99": q[2],
        "max": float(t.max()),
    }


def thresholds(observed: Sequence[Metrics], floor: Tolerance, margin: float, overlap_margin: float) -> Tolerance:
    """Pure: tolerance from honest observations (see module docstring)."""
    values: dict[str, float] = {}
    for metric, (tol_field, higher_is_bad) in THRESHOLDED.items():
        seen = [getattr(m, metric) for m in observed]
        limit = getattr(floor, tol_field)
        if higher_is_bad:
            values[tol_field] = max(max(seen) * (1 + margin), limit)
        else:
            values[tol_field] = max(min(min(seen) - overlap_margin, limit), 0.0)
    return Tolerance(**values)


def _model(s: CalibrationSettings, precision: str) -> LlamaForCausalLM:
    """The model in `precision`: a dtype, or "dtype+format" for quantised linear weights (`globai.models.quant`)."""
    dtype, _, weight_format = precision.partition("+")
    model: torch.nn.Module
    if s.model_dir is None:
        model = calibration_model(s.spec, getattr(torch, dtype))
    else:
        from globai.models.hf import load_full_model

        _, model = load_full_model(Path(s.model_dir))
        # Cast the weights only: RoPE's inv_freq stays float32, as a bfloat16 manifest's stages compute it.
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.to(getattr(torch, dtype))
    if weight_format and not any(isinstance(m, quant.QuantLinear) for m in model.modules()):
        quant.quantise_linears(model, weight_format, getattr(torch, dtype))
    return cast(LlamaForCausalLM, model.eval())


def _replays(model: LlamaForCausalLM, inputs: list[torch.Tensor], s: CalibrationSettings) -> list[torch.Tensor]:
    if s.replay_device == "cpu":
        return [run_stage(model, x.unsqueeze(0), s.stage)[0] for x in inputs]
    replica = torch.nn.Module.to(copy.deepcopy(model), s.replay_device)
    device = torch.device(s.replay_device)
    return [run_stage(replica, x.unsqueeze(0).to(device), s.stage)[0].cpu() for x in inputs]


def calibrate_dtype(s: CalibrationSettings, dtype: str) -> dict:
    """Measure honest drift and cheats for one dtype; returns the JSON-able section of the report."""
    model = _model(s, dtype)
    with torch_threads(s.threads[0]):
        inputs = stage_inputs(model, s)
        refs = _replays(model, inputs, s)
        honest: dict[str, list[Metrics]] = {}
        pairs_by_scenario: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for name, run in scenarios(s).items():
            pairs_by_scenario[name] = [
                pair for i in range(len(inputs)) for pair in _chunks(run(model, inputs, i), refs[i])
            ]
            honest[name] = [compare_hidden_states(c, r, _LOOSE).metrics for c, r in pairs_by_scenario[name]]
        everything = [m for name, ms in honest.items() if name not in s.informational for m in ms]
        tol = thresholds(everything, FLOORS[dtype.partition("+")[0]], s.margin, s.overlap_margin)
        sketched = [
            sketch_verdict(c, r, tol, s.sketch_k)
            for name, pairs in pairs_by_scenario.items()
            if name not in s.informational
            for c, r in pairs
        ]
        cheat_report = {}
        for name, cheat in cheats.all_cheats(model.dtype).items():
            pairs = [
                pair
                for i, x in enumerate(inputs)
                for pair in _chunks(cheat(model, x.unsqueeze(0), s.stage)[0], refs[i])
            ]
            full = [compare_hidden_states(c, r, tol) for c, r in pairs]
            sketch = [sketch_verdict(c, r, tol, s.sketch_k) for c, r in pairs]
            cheat_report[name] = {
                "chunks": len(pairs),
                "caught_full": sum(not v.ok for v in full) / len(pairs),
                "caught_sketch": sum(not v.ok for v in sketch) / len(pairs),
                "closest_to_honest": _closest([v.metrics for v in full]),
                "margin_over_threshold": _ratios([v.metrics for v in full], tol),
            }
    false_positives = sum(not judge(m, tol).ok for m in everything)  # 0 unless a floor/cap was set too tight
    return {
        "tolerance": asdict(tol),
        "honest": {
            "chunks": len(everything),
            "false_positives": false_positives,
            "distribution": {metric: percentiles([getattr(m, metric) for m in everything]) for metric in THRESHOLDED},
            "worst_by_scenario": {
                name: {metric: _worst(ms, metric) for metric in THRESHOLDED} for name, ms in honest.items()
            },
            "sketch": {
                "k": s.sketch_k,
                "chunks": len(sketched),
                "false_positives": sum(not v.ok for v in sketched),
                "worst": {
                    metric: (min if metric == "topk_overlap" else max)(getattr(v.metrics, metric) for v in sketched)
                    for metric in SKETCH_METRICS
                },
            },
            "informational": {
                name: {
                    "used_for_thresholds": False,
                    "pass_rate": sum(judge(m, tol).ok for m in honest[name]) / len(honest[name]),
                }
                for name in s.informational
                if name in honest
            },
        },
        "cheats": cheat_report,
    }


def _worst(ms: Sequence[Metrics], metric: str) -> float:
    values = [getattr(m, metric) for m in ms]
    return max(values) if THRESHOLDED[metric][1] else min(values)


def _closest(ms: Sequence[Metrics]) -> dict[str, float]:
    """The cheat's least suspicious value of each metric over its chunks."""
    out = {}
    for metric, (_, higher_is_bad) in THRESHOLDED.items():
        values = [getattr(m, metric) for m in ms]
        out[metric] = min(values) if higher_is_bad else max(values)
    return out


def _ratios(ms: Sequence[Metrics], tol: Tolerance) -> dict[str, float]:
    """Per metric, the cheat's least suspicious value over the threshold (> 1 means every chunk exceeds it)."""
    closest = _closest(ms)
    out = {}
    for metric, (tol_field, higher_is_bad) in THRESHOLDED.items():
        limit = getattr(tol, tol_field)
        if higher_is_bad:
            out[metric] = closest[metric] / limit if limit > 0 else math.inf
        else:
            out[metric] = (1 - closest[metric]) / (1 - limit) if limit < 1 else math.inf
    return out


def calibrate(s: CalibrationSettings | None = None) -> dict:
    """Full calibration report (what `globai verifier calibrate` writes); `tolerances` feeds `load_tolerances`."""
    s = s or CalibrationSettings()
    per_dtype = {dtype: calibrate_dtype(s, dtype) for dtype in s.dtypes}
    model = "tiny-llama-calibration"
    if s.model_dir is not None:
        from globai.models.manifest import load_manifest

        model = load_manifest(Path(s.model_dir)).name
    return {
        "version": 1,
        "model": model,
        "settings": {f.name: _jsonable(getattr(s, f.name)) for f in fields(s)},
        "torch": torch.__version__,
        "tolerances": {dtype: section["tolerance"] for dtype, section in per_dtype.items()},
        "dtypes": per_dtype,
    }


def model_settings(model_dir: str | Path, **overrides: object) -> CalibrationSettings:
    """Settings for a real model: its first half of layers as the stage (what the demo's first worker serves),
    real text of the default lengths."""
    from globai.models.manifest import load_manifest

    manifest = load_manifest(Path(model_dir))
    base = CalibrationSettings(model_dir=str(model_dir), stage=(0, max(1, manifest.num_layers // 2)))
    return replace(base, **overrides)  # type: ignore[arg-type]


def _jsonable(v: object) -> object:
    if isinstance(v, TinyLlamaSpec):
        return asdict(v)
    return list(v) if isinstance(v, tuple) else v

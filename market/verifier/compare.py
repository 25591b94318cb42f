"""Compare a worker's claimed stage output with a replica's replay: pure, tensors in, `Verdict` out.

Two modes, one set of metrics:
- `compare_hidden_states(claimed, replayed, tol)`: the full claimed chunk [tokens, hidden] is available;
- `compare_sketch(claimed_sketch_bytes, replayed, tol, output_sha256=...)`: only the committed sketch is (200 bytes
  per 32 tokens in version 2).

Errors are scale-free so one calibration carries across layers and activation magnitudes (`scale` = RMS of
the replayed chunk): `max_rel_err` = max |c - r| / (|r| + scale) (relative per element, with the RMS as a floor so
near-zero elements don't blow it up; large outlier activations get their own relative error), `mean_rel_err` =
mean |c - r| / scale. Sketch metrics: per token, the fraction of the claimed top-k indices that are also in the
replay's top-k (`topk_overlap`, averaged over tokens), and on those matched indices the difference between the
claimed fp16 value and the replayed value rounded to fp16, in fp16 ULPs (`value_max_err`, `value_mean_err`).
Honest drift far below an fp16 step mostly rounds to the same value (at most a 1-ULP flip); a systematic change
(other weights, other dtype, skipped work) moves many values by a step or more. A version-2 sketch also carries
each row's projection on a direction drawn from the commitment's `output_sha256` (`sketch.project`):
`projection_err` = max over rows of the distance from the replayed row's projection to the claimed fp16 value's
rounding interval, over the replayed row's RMS (a change of relative L2 size rho anywhere in a row moves it by
~rho x N(0, 1)); it is judged against `max_rel_err`, like the market's own projections (`compare_projections`).

Fail closed: malformed sketches, shape mismatches and non-finite claims are verdicts with ok=False; a
non-finite *replay* raises `ValueError` because it says nothing about the worker (the caller retries it).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from globai.protocol.commitments import CHUNK_TOKENS, tensor_sha256
from globai.protocol.sketch import (
    DEFAULT_K,
    FP16_MAX,
    MalformedSketch,
    Sketch,
    compute_sketch,
    parse_sketch,
    project,
    top_indices,
)

# Top-k size of the sketch metrics in full-tensor mode (the tolerances' value/overlap metrics were calibrated on it);
# independent of the k a worker commits to.
FULL_K = 8


@dataclass(frozen=True)
class Tolerance:
    """Largest honest deviation accepted for one dtype (metric definitions in the module docstring)."""

    max_rel_err: float
    mean_rel_err: float
    min_topk_overlap: float
    value_max_err: float
    value_mean_err: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tolerance:
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"tolerance needs exactly the fields {sorted(names)}")
        values = {name: float(data[name]) for name in names}
        if any(not (v >= 0.0 and v == v) for v in values.values()) or values["min_topk_overlap"] > 1.0:
            raise ValueError("tolerance values must be finite, >= 0, and min_topk_overlap <= 1")
        return cls(**values)


# From `globai verifier calibrate` (tiny Llama, seed 1234; docs/verification.md), rounded. float32: CPU replica
# (a CUDA replica with TF32 off drifts the same, 1.9e-6). bfloat16: CPU worker vs CUDA replica
# (market/verifier/calibration-cuda-replica.json), because a CPU-only calibration (drift exactly 0, thresholds at the
# floors) falsely fails 16 of 28 honest chunks replayed on a GPU. A pool with one device class and one kernel can
# load market/verifier/calibration.json instead for tighter bf16 thresholds.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(
        max_rel_err=1e-4, mean_rel_err=1e-5, min_topk_overlap=0.95, value_max_err=4.0, value_mean_err=0.05
    ),
    "bfloat16": Tolerance(
        max_rel_err=0.05, mean_rel_err=5.3e-3, min_topk_overlap=0.85, value_max_err=64.0, value_mean_err=3.3
    ),
}
# Quantised weights (`globai.models.quant`; a replica replays with the same format, the manifest binds it):
# `globai verifier calibrate --dtype bfloat16+int8 --dtype bfloat16+int4` (and float32+int8/int4; the report is
# market/verifier/calibration-quantised.json) measured honest bfloat16 drift exactly 0 between CPU runs (thresholds
# at the bfloat16 floors) and float32 drift <= 1.5e-6 (within the float32 tolerance). A GPU replica dequantises
# instead of using the CPU int8/int4 kernels, so the CPU-vs-GPU tolerance of the compute dtype applies to them.
for _format in ("int8", "int4"):
    DEFAULT_TOLERANCES[f"bfloat16+{_format}"] = DEFAULT_TOLERANCES["bfloat16"]
    DEFAULT_TOLERANCES[f"float32+{_format}"] = DEFAULT_TOLERANCES["float32"]


def load_tolerances(path: str | Path | None = None) -> dict[str, Tolerance]:
    """Tolerances per dtype name ("float32", "bfloat16") from a calibration JSON, or the embedded defaults.

    The JSON is what `globai verifier calibrate` writes; only its `"tolerances"` object is read here. Dtypes
    it doesn't cover keep their defaults.
    """
    tolerances = dict(DEFAULT_TOLERANCES)
    if path is None:
        return tolerances
    data = json.loads(Path(path).read_text())
    for dtype, tol in data["tolerances"].items():
        tolerances[dtype] = Tolerance.from_json(tol)
    return tolerances


MODEL_TOLERANCES_DIR = Path(__file__).parent / "tolerances"
# Variants of a model (e.g. `smollm2-135m-instruct-bf16`, `...-bf16-int4`) share its calibration file; the
# precision (dtype, or dtype+weight format) picks the entry.
_VARIANT_SUFFIXES = tuple(d + w for d in ("", "-fp32", "-bf16", "-fp16") for w in ("", "-int8", "-int4"))


def shipped_model_tolerances(directory: Path = MODEL_TOLERANCES_DIR) -> dict[str, dict[str, Tolerance]]:
    """Tolerances calibrated on a real model (`globai verifier calibrate --model DIR`), shipped as that model's
    default: `tolerances/<model>.json` holds the calibration report, whose `"model"` names the model."""
    found: dict[str, dict[str, Tolerance]] = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        data = json.loads(path.read_text())
        per_dtype = {dtype: Tolerance.from_json(tol) for dtype, tol in data["tolerances"].items()}
        for suffix in _VARIANT_SUFFIXES:
            found[str(data["model"]) + suffix] = per_dtype
    return found


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Metrics:
    """What was measured; NaN where a metric does not apply (e.g. full-tensor errors in sketch mode)."""

    n_tokens: int = 0
    scale: float = float("nan")
    max_abs_err: float = float("nan")
    mean_abs_err: float = float("nan")
    max_rel_err: float = float("nan")
    mean_rel_err: float = float("nan")
    topk_overlap: float = float("nan")
    value_max_err: float = float("nan")
    value_mean_err: float = float("nan")
    # Seeded random projections of whole rows (`compare_projections`): max |claimed - replayed| / |row|.
    projection_err: float = float("nan")
    exact_match: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-safe (Postgres JSON rejects NaN/Infinity): non-finite floats become null (not measurable)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Verdict:
    """`ok` is the decision; `reason` is "exact", "within_tolerance", "malformed", "shape_mismatch",
    "non_finite", "hash_mismatch", or the comma-joined names of the metrics outside tolerance."""

    ok: bool
    reason: str
    metrics: Metrics


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.float().clamp(-FP16_MAX, FP16_MAX).half().float()


def _fp16_ulp(x: torch.Tensor) -> torch.Tensor:
    """Spacing of fp16 numbers at |x| (subnormal spacing 2^-24 below 2^-14)."""
    exponent = torch.floor(torch.log2(x.abs().clamp(min=2.0**-14)))
    return torch.exp2(exponent - 10)


def _check_replay(replayed: torch.Tensor) -> torch.Tensor:
    if replayed.dim() != 2:
        raise ValueError(f"replayed chunk must be [tokens, hidden], got {tuple(replayed.shape)}")
    x = replayed.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("replay produced non-finite values")
    return x


def _scale(x: torch.Tensor) -> float:
    # A floor keeps an all-zero replay (never honest for a hidden state) from dividing by zero.
    return max(float(x.pow(2).mean().sqrt()), 1e-12)


def _sketch_metrics(sketch: Sketch, replayed: torch.Tensor) -> tuple[float, float, float]:
    """(topk_overlap, value_max_err, value_mean_err). The overlap and the mean are taken over at least a full
    chunk's k x 32 entries: the tolerances were calibrated on full chunks, and on a partial chunk of a few tokens
    one honest near-tie swap or one fp16 rounding flip (a replay's prefill vs the worker's KV-cache decode) would
    otherwise weigh up to k x 32 times more; `value_max_err` still bounds every single value."""
    k = sketch.k
    claimed_idx = sketch.index_tensor()
    claimed_val = sketch.value_tensor()
    replay_top = top_indices(replayed, k)
    matched = (claimed_idx.unsqueeze(2) == replay_top.unsqueeze(1)).any(dim=2)  # [tokens, k]
    budget = max(matched.numel(), k * CHUNK_TOKENS)
    overlap = 1.0 - float((~matched).sum()) / budget
    if not bool(matched.any()):
        return overlap, float("inf"), float("inf")
    replay_val = _fp16(replayed.gather(1, claimed_idx))
    err = ((claimed_val - replay_val).abs() / _fp16_ulp(replay_val))[matched]
    return overlap, float(err.max()), float(err.sum()) / max(int(err.numel()), k * CHUNK_TOKENS)


def _projection_err(sketch: Sketch, replayed: torch.Tensor, output_sha256: bytes) -> float:
    """Max over rows of the distance from the replay's projection to the claimed fp16 projection's rounding
    interval (saturated values: open-ended), over the replayed row's RMS."""
    claimed = sketch.projection_tensor()
    half_ulp = _fp16_ulp(claimed.float()).double() / 2
    low = torch.where(claimed <= -FP16_MAX, -math.inf, claimed - half_ulp)
    high = torch.where(claimed >= FP16_MAX, math.inf, claimed + half_ulp)
    r = project(replayed, output_sha256)
    dist = (low - r).clamp_min(0) + (r - high).clamp_min(0)
    rms = replayed.double().pow(2).mean(dim=1).sqrt().clamp_min(1e-30)
    return float((dist / rms).max())


def judge(metrics: Metrics, tol: Tolerance) -> Verdict:
    """Decide on measured metrics (NaN metrics are not applicable and pass)."""
    failed = [
        name
        for name, value, limit, higher_is_bad in (
            ("max_rel_err", metrics.max_rel_err, tol.max_rel_err, True),
            ("mean_rel_err", metrics.mean_rel_err, tol.mean_rel_err, True),
            ("topk_overlap", metrics.topk_overlap, tol.min_topk_overlap, False),
            ("value_max_err", metrics.value_max_err, tol.value_max_err, True),
            ("value_mean_err", metrics.value_mean_err, tol.value_mean_err, True),
            # a projection error is bounded by the relative L2 error of the row: the max_rel_err limit applies
            ("projection_err", metrics.projection_err, tol.max_rel_err, True),
        )
        if value == value and (value > limit if higher_is_bad else value < limit)  # NaN: not measured
    ]
    if failed:
        return Verdict(False, ",".join(failed), metrics)
    return Verdict(True, "within_tolerance", metrics)


def compare_sketch(
    claimed_sketch: bytes,
    replayed: torch.Tensor,
    tol: Tolerance,
    *,
    k: int | None = DEFAULT_K,
    output_sha256: bytes | None = None,
) -> Verdict:
    """Check a committed sketch against a replayed chunk [tokens, hidden].

    `k` is the sketch size the job requires (None accepts any); hidden size and token count must match the
    replay. Anything unparsable or inconsistent is `malformed`. A version-2 sketch is checked with the
    commitment's `output_sha256` (it seeds the projection direction; `ValueError` without it).
    """
    x = _check_replay(replayed)
    try:
        sketch = parse_sketch(claimed_sketch, hidden=x.shape[1], k=k, n_tokens=x.shape[0])
    except MalformedSketch:
        return Verdict(False, "malformed", Metrics(n_tokens=x.shape[0]))
    overlap, vmax, vmean = _sketch_metrics(sketch, x)
    projection_err = float("nan")
    if sketch.version == 2:
        if output_sha256 is None:
            raise ValueError("a version-2 sketch is checked with its commitment's output_sha256")
        projection_err = _projection_err(sketch, x, output_sha256)
    metrics = Metrics(
        n_tokens=x.shape[0],
        scale=_scale(x),
        topk_overlap=overlap,
        value_max_err=vmax,
        value_mean_err=vmean,
        projection_err=projection_err,
    )
    return judge(metrics, tol)


PROJECTIONS = 16


@functools.lru_cache(maxsize=8)
def projection_matrix(seed: int, width: int, m: int = PROJECTIONS) -> torch.Tensor:
    """[width, m] standard normal directions from a seed (CPU generator: the same on every machine)."""
    return torch.randn(width, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def project_rows(rows: torch.Tensor, seed: int, m: int = PROJECTIONS) -> torch.Tensor:
    """[n, width] -> [n, m] float32: each whole row projected on m seeded random directions."""
    return rows.detach().float() @ projection_matrix(seed, int(rows.shape[-1]), m)


def compare_projections(claimed: torch.Tensor, replayed: torch.Tensor, seed: int, tol: Tolerance) -> Verdict:
    """Check rows the market projected (secret seed, drawn by the market, never sent to the worker) against the
    replay projected the same way. A change anywhere in a row moves its projections by ~ its L2 size, so it is
    caught wherever it sits (unlike a top-k sketch); error = max |claimed - replayed| / |replayed row|."""
    x = _check_replay(replayed)
    if claimed.dim() != 2 or claimed.shape[0] != x.shape[0]:
        return Verdict(False, "shape_mismatch", Metrics(n_tokens=x.shape[0]))
    c = claimed.detach().float()
    if not bool(torch.isfinite(c).all()):
        return Verdict(False, "non_finite", Metrics(n_tokens=x.shape[0]))
    norms = x.float().norm(dim=1, keepdim=True).clamp_min(1e-30)
    err = float(((c - project_rows(x, seed, int(c.shape[1]))).abs() / norms).max())
    return judge(Metrics(n_tokens=x.shape[0], scale=_scale(x), projection_err=err), tol)


def compare_hidden_states(
    claimed: torch.Tensor,
    replayed: torch.Tensor,
    tol: Tolerance,
    *,
    claimed_sha256: bytes | None = None,
    k: int = FULL_K,
) -> Verdict:
    """Check a full claimed chunk against a replayed one (both [tokens, hidden]).

    With `claimed_sha256` (from the signed commitment) the claimed bytes must hash to it first: otherwise the
    tensor is not what the worker committed to (`hash_mismatch`). Bit-identical tensors are `exact`.
    """
    x = _check_replay(replayed)
    if claimed.shape != replayed.shape:
        return Verdict(False, "shape_mismatch", Metrics(n_tokens=x.shape[0]))
    if claimed_sha256 is not None and tensor_sha256(claimed) != claimed_sha256:
        return Verdict(False, "hash_mismatch", Metrics(n_tokens=x.shape[0]))
    c = claimed.detach().float()
    if not bool(torch.isfinite(c).all()):
        return Verdict(False, "non_finite", Metrics(n_tokens=x.shape[0]))
    exact = claimed.dtype == replayed.dtype and tensor_sha256(claimed) == tensor_sha256(replayed)
    scale = _scale(x)
    diff = (c - x).abs()
    overlap, vmax, vmean = _sketch_metrics(compute_sketch(c, min(k, x.shape[1])), x)
    metrics = Metrics(
        n_tokens=x.shape[0],
        scale=scale,
        max_abs_err=float(diff.max()),
        mean_abs_err=float(diff.mean()),
        max_rel_err=float((diff / (x.abs() + scale)).max()),
        mean_rel_err=float(diff.mean()) / scale,
        topk_overlap=overlap,
        value_max_err=vmax,
        value_mean_err=vmean,
        exact_match=exact,
    )
    if exact:
        return Verdict(True, "exact", metrics)
    return judge(metrics, tol)

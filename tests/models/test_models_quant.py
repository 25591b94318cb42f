"""Weight-only quantised formats (int8, int4): exact round trip bounds, the manifest binds the format, a quantised
stage's output is within its calibrated tolerance of a replica's replay in the same format, and not of another."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from globai.models import quant
from globai.models.importer import recast
from globai.models.manifest import load_manifest
from globai.models.reference import generate_reference, prefill_positions, run_pipeline_local
from market.verifier.compare import DEFAULT_TOLERANCES, compare_hidden_states
from worker.stage import Stage


@pytest.mark.parametrize("weight_format", quant.WEIGHT_FORMATS)
def test_quantise_round_trip_is_within_half_a_step(weight_format: str) -> None:
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    w[3] = 0.0  # an all-zero row must not divide by zero
    q = quant.quantise_weight(w, weight_format, torch.float32)
    back = quant.dequantise(q, weight_format)
    step = q[quant.SCALE] if weight_format == "int8" else q[quant.SCALE].repeat_interleave(quant.GROUP, dim=1)
    step = step if step.dim() == 2 else step[:, None]
    assert ((back - w).abs() <= step / 2 + 1e-5).all()
    assert torch.equal(back[3], torch.zeros(96))
    if weight_format == "int4":  # a GGUF Q4_1 block (q * d + m, q in 0..15 using both ends) comes back exactly
        d, m = torch.tensor(0.25), torch.tensor(-1.5)
        block = torch.arange(16).repeat(2)[torch.randperm(32, generator=torch.Generator().manual_seed(1))]
        q41 = (block * d + m).view(1, 32)
        assert torch.equal(quant.dequantise(quant.quantise_weight(q41, "int4", torch.float32), "int4"), q41)
    bytes_per_weight = q[quant.QWEIGHT].numel() * q[quant.QWEIGHT].element_size() / w.numel()
    assert bytes_per_weight == {"int8": 1.0, "int4": 0.5}[weight_format]


@pytest.fixture(scope="module")
def formats(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("formats")
    made = {"float32": tiny_llama}
    for weight_format in quant.WEIGHT_FORMATS:
        target = out / f"tiny-bf16-{weight_format}"
        recast(tiny_llama, target, dtype="bfloat16", name=target.name, weight_format=weight_format)
        made[f"bfloat16+{weight_format}"] = target
    return made


def test_the_manifest_binds_the_format(formats: dict[str, Path]) -> None:
    manifests = {p: load_manifest(d) for p, d in formats.items()}
    assert {p: m.precision for p, m in manifests.items()} == {p: p for p in formats}
    assert len({m.digest() for m in manifests.values()}) == len(formats)
    sizes = {p: sum(s.size for s in m.shards) for p, m in manifests.items()}
    assert sizes["bfloat16+int4"] < sizes["bfloat16+int8"] < sizes["float32"] / 3
    stage = Stage(formats["bfloat16+int4"], 0, 2)
    assert all(isinstance(layer.mlp.up_proj, quant.QuantLinear) for layer in stage.modules.layers)
    # a float32 manifest keeps its canonical JSON (and digest) without the new field
    assert "weight_format" not in (formats["float32"] / "manifest.json").read_text()


@pytest.mark.parametrize("precision", ["bfloat16+int8", "bfloat16+int4"])
def test_a_quantised_stage_is_verified_by_a_replica_of_its_format(formats: dict[str, Path], precision: str) -> None:
    """The worker: prefill then token-by-token decode with its KV cache; the replica: one prefill replay of the
    recorded inputs in a fresh session, as the verifier asks it. Same format: within the calibrated tolerance.
    A replica of another format (float32 weights) would judge the honest quantised output a cheat."""
    ids = torch.randint(3, 500, (1, 40), generator=torch.Generator().manual_seed(5))
    worker = Stage(formats[precision], 0, 2)
    worker.open_session("s")
    rows = [worker.forward("s", ids[:, :8])]
    rows += [worker.forward("s", ids[:, t : t + 1]) for t in range(8, 40)]
    claimed = torch.cat(rows, dim=1)[0, :32]  # the first committed chunk
    positions = prefill_positions(torch.ones_like(ids))
    replica = Stage(formats[precision], 0, 2).forward(None, ids, positions)[0, :32]
    verdict = compare_hidden_states(claimed, replica, DEFAULT_TOLERANCES[precision])
    assert verdict.ok, verdict
    other = Stage(formats["float32"], 0, 2).forward(None, ids, positions)[0, :32]
    assert not compare_hidden_states(claimed, other.to(claimed.dtype), DEFAULT_TOLERANCES[precision]).ok
    # and the pipeline's greedy tokens equal the unsharded quantised model's `generate`
    prompt = ids[:, :6]
    stages = [Stage(formats[precision], 0, 2), Stage(formats[precision], 2, 4)]
    assert torch.equal(run_pipeline_local(stages, prompt, 6), generate_reference(formats[precision], prompt, 6))


@pytest.mark.parametrize("weight_format", quant.WEIGHT_FORMATS)
def test_the_cpu_kernel_computes_what_the_format_says(weight_format: str) -> None:
    """bfloat16 activations on a CPU take torch's int8/int4 weight-pack kernels; others dequantise first."""
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(2))
    layer = quant.QuantLinear(96, 64, weight_format, bias=False, dtype=torch.bfloat16)
    layer.load_state_dict(quant.quantise_weight(w, weight_format, torch.bfloat16))
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(3))
    fused = layer(x.to(torch.bfloat16)).float()
    weight = quant.dequantise(quant.quantise_weight(w, weight_format, torch.bfloat16), weight_format).float()
    exact = x.to(torch.bfloat16).float() @ weight.t()
    # bfloat16 rounding: of the output, and (int4) of the kernel's zero point = offset + 8 x scale
    torch.testing.assert_close(fused, exact, rtol=0.02, atol=0.05 if weight_format == "int8" else 0.2)
    assert (fused - exact).abs().mean() < 0.01 * exact.abs().mean()


def test_a_tied_head_is_quantised_as_a_tensor_of_its_own(tmp_path: Path) -> None:
    """Quantising a model whose head is tied to the embedding gives the head its own packed weight (the
    embedding stays in the compute dtype); a bfloat16 cast without a weight format keeps the tie."""
    from globai.models.tiny import build_tiny_model

    tied = tmp_path / "qwen2"
    assert build_tiny_model(tied, family="qwen2", hidden=64, layers=2).tied
    cast = recast(tied, tmp_path / "bf16", dtype="bfloat16", name="bf16")
    assert cast.tied and "lm_head.weight" not in cast.shard("head").tensors
    packed = recast(tied, tmp_path / "int8", dtype="bfloat16", name="int8", weight_format="int8")
    assert packed.tied == {} and "lm_head.qweight" in packed.shard("head").tensors
    prompt = torch.randint(3, 500, (1, 6), generator=torch.Generator().manual_seed(2))
    for model in (tmp_path / "bf16", tmp_path / "int8"):
        stages = [Stage(model, 0, 1), Stage(model, 1, 2)]
        assert torch.equal(run_pipeline_local(stages, prompt, 6), generate_reference(model, prompt, 6))

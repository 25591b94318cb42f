"""Ways a dishonest worker could compute a stage more cheaply, as functions of (model, stage input).

Used by calibration (to show that thresholds separate every cheat from honest drift) and by tests; the
end-to-end cheating suite can reuse them inside a worker variant. Each returns the stage output the cheater
would claim, in the job's dtype.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from transformers import LlamaForCausalLM

from market.verifier.tiny import run_stage, to_dtype

StageFn = Callable[[LlamaForCausalLM, torch.Tensor, tuple[int, int]], torch.Tensor]


def _stage_params(model: LlamaForCausalLM, layers: tuple[int, int]) -> list[torch.nn.Parameter]:
    lo, hi = layers
    return [p for i in range(lo, hi) for p in model.model.layers[i].parameters()]


def perturbed_weights(rel: float = 1e-3, seed: int = 99) -> StageFn:
    """Weights multiplied by (1 + rel * N(0, 1)): a slightly different (e.g. fine-tuned or corrupted) model."""

    def run(model: LlamaForCausalLM, h: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
        cheat = copy.deepcopy(model)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in _stage_params(cheat, layers):
                noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
                p.copy_((p.float() * (1 + rel * noise)).to(p.dtype))
        return run_stage(cheat, h, layers)

    return run


def int8_weights(model: LlamaForCausalLM, h: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
    """Linear weights quantised to int8 with one scale per output row, then dequantised (a cheaper model)."""
    cheat = copy.deepcopy(model)
    with torch.no_grad():
        for p in _stage_params(cheat, layers):
            if p.dim() != 2:
                continue  # norms stay as they are, as real int8 schemes do
            w = p.float()
            scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
            p.copy_(((w / scale).round().clamp(-127, 127) * scale).to(p.dtype))
    return run_stage(cheat, h, layers)


def bf16_instead(model: LlamaForCausalLM, h: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
    """Computed in bf16 although the job asked for the model's dtype (fp32)."""
    cheat = to_dtype(copy.deepcopy(model), torch.bfloat16)
    return run_stage(cheat, h.to(torch.bfloat16), layers).to(h.dtype)


def skipped_layer(model: LlamaForCausalLM, h: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
    """The stage's last layer is not run."""
    return run_stage(model, h, layers, skip_layers=frozenset({layers[1] - 1}))


def identity_stage(model: LlamaForCausalLM, h: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
    """The input is returned as the output: no work at all."""
    return h.clone()


def scaled_output(factor: float = 1.10) -> StageFn:
    """The honest output times `factor` (the "noise x1.10" cheat: a systematic 10% distortion)."""

    def run(model: LlamaForCausalLM, h: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
        return run_stage(model, h, layers) * factor

    return run


def noisy_output(rel: float = 0.10, seed: int = 7) -> StageFn:
    """The honest output plus Gaussian noise of `rel` times its RMS."""

    def run(model: LlamaForCausalLM, h: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
        out = run_stage(model, h, layers)
        g = torch.Generator().manual_seed(seed)
        rms = out.float().pow(2).mean().sqrt()
        return (out.float() + rel * rms * torch.randn(out.shape, generator=g)).to(out.dtype)

    return run


def all_cheats(dtype: torch.dtype) -> dict[str, StageFn]:
    """Every cheat that makes sense for a job in `dtype` (bf16-instead-of-fp32 only for fp32 jobs)."""
    cheats: dict[str, StageFn] = {
        "perturbed_weights_1e-3": perturbed_weights(1e-3),
        "int8_weights": int8_weights,
        "skipped_layer": skipped_layer,
        "identity_stage": identity_stage,
        "output_x1.10": scaled_output(1.10),
        "output_noise_10pct": noisy_output(0.10),
    }
    if dtype == torch.float32:
        cheats["bf16_instead_of_fp32"] = bf16_instead
    return cheats

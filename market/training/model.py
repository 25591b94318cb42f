"""Market-side model helpers: the initial checkpoint of a job, held-out loss, parameter dicts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from globai.models.build import build_causal_lm
from market.training.spec import ConfigModelRef, HFDirModelRef, TrainingJobSpec

Tensors = dict[str, torch.Tensor]


def params_of(model: torch.nn.Module) -> Tensors:
    """Detached fp32 copies of the trainable parameters, by state-dict name."""
    return {name: p.detach().to(torch.float32).clone() for name, p in model.named_parameters()}


def initial_checkpoint(spec: TrainingJobSpec) -> tuple[dict[str, Any], Tensors]:
    """The job's model config dict and checkpoint-0 parameters."""
    ref = spec.model
    if isinstance(ref, ConfigModelRef):
        config = dict(ref.config)
        return config, params_of(build_causal_lm(config, seed=ref.init_seed))
    assert isinstance(ref, HFDirModelRef)
    root = Path(ref.path)
    config = json.loads((root / "config.json").read_text())
    model = build_causal_lm(config)
    weights: Tensors = {}
    for file in sorted(root.glob("*.safetensors")):
        weights.update(load_file(file))
    missing = model.load_state_dict(weights, strict=False)
    if missing.missing_keys:
        raise ValueError(f"{root}: missing weights {missing.missing_keys[:4]}")
    return config, params_of(model)


@torch.no_grad()
def evaluate_loss(
    config: Mapping[str, Any], params: Mapping[str, torch.Tensor], windows: torch.Tensor, batch_size: int = 32
) -> float:
    """Mean next-token cross-entropy (nats/token) of ``params`` over ``[N, T+1]`` windows."""
    model = build_causal_lm(config, params)
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        logits = model(input_ids=chunk[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += chunk[:, 1:].numel()
    return total / max(count, 1)


def tiny_llama_config(vocab_size: int = 260, hidden: int = 64, layers: int = 2, heads: int = 4) -> dict[str, Any]:
    """A tiny Llama config dict for tests, demos and the bench."""
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    }

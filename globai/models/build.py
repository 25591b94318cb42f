"""Llama models built in memory from a config: a seeded random init (the built-in tiny models, the calibration
model, a training job's checkpoint 0) or given parameters (training checkpoints, a worker's inner steps).

The one place such a model is made, so the market, the worker and the tests agree on every weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM

# Keys of an HF config.json that are bookkeeping, not architecture.
_NOT_CONFIG = ("model_type", "architectures", "transformers_version")


def llama_config(config: Mapping[str, Any] | LlamaConfig) -> LlamaConfig:
    """A `LlamaConfig` from a config dict (or the config itself). Embeddings stay untied unless the dict ties them:
    tied weights appear twice in a state dict and safetensors refuses shared storage."""
    from transformers import LlamaConfig

    if isinstance(config, LlamaConfig):
        return config
    fields = {k: v for k, v in config.items() if k not in _NOT_CONFIG}
    fields.setdefault("tie_word_embeddings", False)
    return LlamaConfig(**fields)


def build_llama(
    config: Mapping[str, Any] | LlamaConfig,
    params: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` in eval mode.

    `seed`: the random init is the same on every machine (CPU init after `torch.manual_seed(seed)`), and the
    caller's RNG stream is left as it was. `params`: loaded strictly (every name must match). Initialised in
    float32, then cast to `dtype`, so every dtype starts from the same random numbers.
    """
    from transformers import LlamaForCausalLM

    cfg = llama_config(config)
    if seed is None:
        model = LlamaForCausalLM(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(cfg)
    if params is not None:
        model.load_state_dict(dict(params), strict=True)
    if dtype != torch.float32:
        model = torch.nn.Module.to(model, dtype)  # type: ignore[assignment]  # transformers types `.to` oddly
    return model.eval()

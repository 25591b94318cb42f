"""Causal LMs (any decoder family) built in memory from a config: a seeded random init (the built-in tiny
models, the calibration model, a training job's checkpoint 0) or given parameters (training checkpoints, a
worker's inner steps).

The one place such a model is made, so the market, the worker and the tests agree on every weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

# Keys of an HF config.json that are bookkeeping, not architecture.
_NOT_CONFIG = ("model_type", "architectures", "transformers_version")


def model_config(config: Mapping[str, Any] | PretrainedConfig) -> PretrainedConfig:
    """The config object of the family `config["model_type"]` names (default llama), from a config dict (or the
    config itself). Embeddings stay untied unless the dict ties them: tied weights appear twice in a state dict
    and safetensors refuses shared storage."""
    from transformers import PretrainedConfig

    from globai.models.errors import UnsupportedModelError
    from globai.models.families import family_for_model_type

    if isinstance(config, PretrainedConfig):
        return config
    family = family_for_model_type(str(config.get("model_type", "llama")))
    if family.task != "causal-lm":
        raise UnsupportedModelError(f"{family.name} is not a causal LM")
    fields = {k: v for k, v in config.items() if k not in _NOT_CONFIG}
    fields.setdefault("tie_word_embeddings", False)
    return family.config_class(**fields)


def build_causal_lm(
    config: Mapping[str, Any] | PretrainedConfig,
    params: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """A causal LM of the config's family (`globai.models.families`) in eval mode.

    `seed`: the random init is the same on every machine (CPU init after `torch.manual_seed(seed)`), and the
    caller's RNG stream is left as it was. `params`: loaded strictly (every name must match). Initialised in
    float32, then cast to `dtype`, so every dtype starts from the same random numbers.
    """
    from globai.models.families import family_for_model_type

    cfg = model_config(config)
    family = family_for_model_type(str(cfg.model_type))
    if seed is None:
        model = family.init_model(cfg)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = family.init_model(cfg)
    if params is not None:
        model.load_state_dict(dict(params), strict=True)
    if dtype != torch.float32:
        model = torch.nn.Module.to(model, dtype)  # type: ignore[assignment]  # transformers types `.to` oddly
    return model.eval()

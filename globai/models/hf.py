"""transformers configs, and the unsharded model rebuilt from a manifest's shards (the reference)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from transformers import AutoModel, AutoModelForCausalLM, BertConfig, LlamaConfig, PretrainedConfig, PreTrainedModel

from globai.models.manifest import HEAD, Manifest, load_manifest, read_verified

# One attention kernel everywhere (stages and the unsharded reference): bit-identical results depend on it.
ATTN_IMPLEMENTATION = "sdpa"


def hf_config(manifest: Manifest) -> PretrainedConfig:
    """The transformers config of a manifest, with the project's attention implementation pinned."""
    cls = {"llama": LlamaConfig, "bert": BertConfig}[manifest.family]
    config = cls(**manifest.config)
    config._attn_implementation = ATTN_IMPLEMENTATION
    return config


def load_full_model(model_dir: Path, *, device: str = "cpu") -> tuple[Manifest, PreTrainedModel]:
    """The whole model in one process, from the very shards the stages use (each sha256-checked)."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    state: dict[str, torch.Tensor] = {}
    for shard in manifest.shards:
        state.update(load_safetensors(read_verified(model_dir, shard)))
    config = hf_config(manifest)
    # from_config(dtype=...) builds as from_pretrained does: weights in the manifest dtype but RoPE's inv_freq
    # in float32 (`model.to(bfloat16)` would round it and change every logit).
    dtype = getattr(torch, manifest.dtype)
    model: PreTrainedModel
    if manifest.family == "llama":
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        pooler = bool(manifest.shard(HEAD).tensors)
        model = AutoModel.from_config(config, dtype=dtype, add_pooling_layer=pooler)
    model.load_state_dict(state, strict=True)
    model.to(device)  # type: ignore[arg-type]  # transformers types `.to` through a decorator
    return manifest, model.eval()

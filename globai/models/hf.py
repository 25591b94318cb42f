"""The unsharded model rebuilt from a manifest's shards (the reference), through the model's family."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from transformers import PreTrainedModel

from globai.models import quant
from globai.models.families import get_family
from globai.models.families._base import ATTN_IMPLEMENTATION
from globai.models.manifest import HEAD, Manifest, load_manifest, read_verified

__all__ = ["ATTN_IMPLEMENTATION", "load_full_model"]


def load_full_model(model_dir: Path, *, device: str = "cpu") -> tuple[Manifest, PreTrainedModel]:
    """The whole model in one process, from the very shards the stages use (each sha256-checked)."""
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    state: dict[str, torch.Tensor] = {}
    for shard in manifest.shards:
        state.update(load_safetensors(read_verified(model_dir, shard)))
    state.update({head_key: state[embed_key] for head_key, embed_key in manifest.tied.items()})
    family = get_family(manifest.family)
    # Built as from_pretrained builds it: weights in the manifest dtype but RoPE's inv_freq in float32
    # (`model.to(bfloat16)` would round it and change every logit).
    config, dtype = family.hf_config(manifest.config), getattr(torch, manifest.dtype)
    model = family.full_model(config, dtype, head_tensors=bool(manifest.shard(HEAD).tensors))
    if manifest.weight_format is not None:
        quant.install(model, state, manifest.weight_format, dtype)
    model.load_state_dict(state, strict=True)
    model.to(device)  # type: ignore[arg-type]  # transformers types `.to` through a decorator
    return manifest, model.eval()

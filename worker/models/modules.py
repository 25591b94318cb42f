"""Build only a stage's modules (never the whole model) and fill them from its verified shards.

Modules are created on the `meta` device (no memory, no random init) and then take the shard tensors with
`load_state_dict(assign=True)`; only buffers the checkpoint does not carry are materialised by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load as load_safetensors
from torch import nn
from transformers import LlamaConfig, PretrainedConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer, BertPooler
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from globai.models.errors import ManifestError
from globai.models.hf import hf_config
from globai.models.layout import FamilyLayout, layout_for_family
from globai.models.manifest import EMBED, HEAD, Manifest, ShardEntry, layer_shard_name, read_verified


class LlamaHead(nn.Module):
    """Final RMSNorm + LM head: what the last stage of a decoder adds after its layers."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)


class EmptyHead(nn.Module):
    """Encoders saved without a pooler still have a (tensor-less) head shard."""


@dataclass
class StageModules:
    config: PretrainedConfig
    embed: nn.Module | None
    layers: nn.ModuleList  # layers[i] is global layer start + i
    head: nn.Module | None
    rotary: nn.Module | None  # decoders only: computes (cos, sin) from positions; has no weights


def _local_state(
    tensors: dict[str, torch.Tensor], prefixes: dict[str, str], shard: ShardEntry
) -> dict[str, torch.Tensor]:
    """Rename canonical keys to the keys of the stage module built for this shard."""
    local = {}
    for key, tensor in tensors.items():
        for canonical_prefix, local_prefix in prefixes.items():
            if key.startswith(canonical_prefix):
                local[local_prefix + key[len(canonical_prefix) :]] = tensor
                break
        else:
            raise ManifestError(f"shard {shard.name} holds unexpected tensor {key!r}")
    return local


def _fill(module: nn.Module, state: dict[str, torch.Tensor], shard: ShardEntry) -> nn.Module:
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatch: the shard is not for this config
        raise ManifestError(f"shard {shard.name} does not fit the model config: {exc}") from None
    return module.eval()


def _shard_prefixes(layout: FamilyLayout, name: str) -> dict[str, str]:
    if name.startswith("layer."):
        return {layout.layer_prefix_of(int(name.split(".", 1)[1])): ""}
    if layout.family == "llama":
        return {"model.embed_tokens.": ""} if name == EMBED else {"model.norm.": "norm.", "lm_head.": "lm_head."}
    return {"embeddings.": ""} if name == EMBED else {"pooler.": ""}


def _construct(config: PretrainedConfig, family: str, name: str, has_tensors: bool) -> nn.Module:
    with torch.device("meta"):
        if family == "llama":
            if name == EMBED:
                return nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
            if name == HEAD:
                return LlamaHead(cast(LlamaConfig, config))
            return LlamaDecoderLayer(cast(LlamaConfig, config), layer_idx=int(name.split(".", 1)[1]))
        if name == EMBED:
            return BertEmbeddings(config)
        if name == HEAD:
            return BertPooler(config) if has_tensors else EmptyHead()
        return BertLayer(config, layer_idx=int(name.split(".", 1)[1]))


def _materialise_buffers(module: nn.Module, device: torch.device) -> None:
    """Non-persistent buffers are not in checkpoints: rebuild known ones, refuse anything left on meta."""
    if isinstance(module, BertEmbeddings):
        n = module.position_ids.shape[-1]
        module.position_ids = torch.arange(n, device=device).expand((1, -1))
        module.token_type_ids = torch.zeros((1, n), dtype=torch.long, device=device)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            raise ManifestError(f"{type(module).__name__}.{name} was not loaded from the shard")


def load_shard_module(
    model_dir: Path, manifest: Manifest, config: PretrainedConfig, shard: ShardEntry, device: torch.device
) -> nn.Module:
    """Verify one shard file's sha256, then build its module and move the weights in."""
    data = read_verified(model_dir, shard)
    tensors = {k: v.to(device) for k, v in load_safetensors(data).items()}
    layout = layout_for_family(manifest.family)
    module = _construct(config, manifest.family, shard.name, bool(tensors))
    module = _fill(module, _local_state(tensors, _shard_prefixes(layout, shard.name), shard), shard)
    _materialise_buffers(module, device)
    return module


def build_stage_modules(
    model_dir: Path, manifest: Manifest, start: int, end: int, *, device: torch.device | str = "cpu"
) -> StageModules:
    """Load the embed (if start == 0), layers [start, end) and head (if end == num_layers) of a model."""
    device = torch.device(device)
    config = hf_config(manifest)
    modules: dict[str, nn.Module] = {}
    for shard in manifest.stage_shards(start, end):
        modules[shard.name] = load_shard_module(model_dir, manifest, config, shard, device)
    rotary = None
    if manifest.family == "llama":
        rotary = LlamaRotaryEmbedding(config=cast(LlamaConfig, config)).to(
            device
        )  # recomputed from config; no weights to load
    return StageModules(
        config=config,
        embed=modules.get(EMBED),
        layers=nn.ModuleList([modules[layer_shard_name(i)] for i in range(start, end)]),
        head=modules.get(HEAD),
        rotary=rotary,
    )

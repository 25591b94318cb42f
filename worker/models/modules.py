"""Build only a stage's modules (never the whole model) and fill them from its verified shards.

Which module a shard becomes is the model family's business (`globai.models.families`): modules are created
on the `meta` device (no memory, no random init) and then take the shard tensors with
`load_state_dict(assign=True)`; only buffers the checkpoint does not carry are materialised by the family.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from torch import nn
from transformers import PretrainedConfig

from globai.models import quant
from globai.models.errors import ManifestError
from globai.models.families import get_family
from globai.models.families._base import ModelFamily, StageModules
from globai.models.manifest import EMBED, HEAD, Manifest, ShardEntry, layer_shard_name, read_verified

__all__ = ["StageModules", "build_stage_modules", "load_shard_module"]


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


def _check_materialised(module: nn.Module) -> None:
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            raise ManifestError(f"{type(module).__name__}.{name} was not loaded from the shard")


def load_shard_module(
    model_dir: Path,
    family: ModelFamily,
    config: PretrainedConfig,
    shard: ShardEntry,
    device: torch.device,
    *,
    weight_format: str | None = None,
    dtype: torch.dtype = torch.float32,
    tied: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """Verify one shard file's sha256, then build its module and move the weights in (quantised linear layers
    where the model's `weight_format` says so). `tied`: canonical key -> a tensor stored in another shard (the
    embedding a tied head uses; the module takes that very tensor, not a copy)."""
    data = read_verified(model_dir, shard)
    tensors = {k: v.to(device) for k, v in load_safetensors(data).items()}
    tensors.update(tied or {})
    with torch.device("meta"):
        module, prefixes = family.shard_module(config, shard.name, has_tensors=bool(tensors))
    state = _local_state(tensors, prefixes, shard)
    if weight_format is not None:
        try:
            with torch.device("meta"):
                module = quant.install(module, state, weight_format, dtype)
        except ValueError as exc:
            raise ManifestError(f"shard {shard.name}: {exc}") from None
    module = _fill(module, state, shard)
    family.materialise_buffers(module, device)
    _check_materialised(module)
    return module


def _canonical_tensor(module: nn.Module, family: ModelFamily, config: PretrainedConfig, key: str) -> torch.Tensor:
    """The tensor a loaded embed module holds for the canonical key `key`."""
    with torch.device("meta"):
        _, prefixes = family.shard_module(config, EMBED, has_tensors=True)
    prefix = next(p for p in prefixes if key.startswith(p))
    return module.get_parameter(prefixes[prefix] + key[len(prefix) :]).data


def build_stage_modules(
    model_dir: Path, manifest: Manifest, start: int, end: int, *, device: torch.device | str = "cpu"
) -> StageModules:
    """Load the embed (if start == 0), layers [start, end) and head (if end == num_layers) of a model."""
    device = torch.device(device)
    family = get_family(manifest.family)
    config = family.hf_config(manifest.config)
    dtype = getattr(torch, manifest.dtype)
    modules: dict[str, nn.Module] = {}
    tied: dict[str, torch.Tensor] = {}
    for shard in manifest.stage_shards(start, end):
        if shard.name == EMBED and start != 0:  # only the tensors a tied head uses: no embedding module
            embed = {k: v.to(device) for k, v in load_safetensors(read_verified(model_dir, shard)).items()}
            tied = {head_key: embed[embed_key] for head_key, embed_key in manifest.tied.items()}
            continue
        if shard.name == HEAD and manifest.tied and start == 0:  # the embedding module's own tensor, held once
            tied = {h: _canonical_tensor(modules[EMBED], family, config, e) for h, e in manifest.tied.items()}
        modules[shard.name] = load_shard_module(
            model_dir,
            family,
            config,
            shard,
            device,
            weight_format=manifest.weight_format,
            dtype=dtype,
            tied=tied if shard.name == HEAD else None,
        )
    return StageModules(
        config=config,
        embed=modules.get(EMBED),
        layers=nn.ModuleList([modules[layer_shard_name(i)] for i in range(start, end)]),
        head=modules.get(HEAD),
        rotary=family.position_module(config, device),  # recomputed from the config; no weights to load
    )

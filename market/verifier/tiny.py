"""A tiny Llama built from a config and a seed, and a stage runner (a range of decoder layers), for calibration.

No hub download exists here, so calibration and tests use a deterministic random-init model. The stage runner
follows the recipe in TOOLCHAIN.md (own causal mask, rotary embeddings, per-stage `DynamicCache` with
`layer_idx` = the stage's first layer) so it computes what a worker's stage computes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import create_causal_mask

from globai.models.build import build_causal_lm


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Shape and seed of the calibration model (Llama family: RMSNorm, RoPE, GQA, SwiGLU)."""

    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    vocab_size: int = 1024
    max_position_embeddings: int = 512
    seed: int = 1234

    def config(self) -> LlamaConfig:
        fields = asdict(self)
        fields.pop("seed")
        config = LlamaConfig(**fields, tie_word_embeddings=False)
        config._attn_implementation = "eager"  # pinned: the attention kernel is part of what is verified
        return config


def calibration_model(spec: TinyLlamaSpec, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """Same spec, same weights, on every machine (`globai.models.build.build_causal_lm` with the spec's seed)."""
    model = build_causal_lm(spec.config(), seed=spec.seed, dtype=dtype)
    assert isinstance(model, LlamaForCausalLM)  # a Llama config builds a Llama
    return model


def to_dtype(model: LlamaForCausalLM, dtype: torch.dtype) -> LlamaForCausalLM:
    # transformers' `.to` overload confuses type checkers; nn.Module.to is the same call.
    return cast(LlamaForCausalLM, torch.nn.Module.to(model, dtype))


def embed(model: LlamaForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    return model.model.embed_tokens(input_ids)


@torch.no_grad()
def run_stage(
    model: LlamaForCausalLM,
    hidden: torch.Tensor,
    layers: tuple[int, int],
    *,
    position_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    cache: DynamicCache | None = None,
    skip_layers: frozenset[int] = frozenset(),
) -> torch.Tensor:
    """Decoder layers [lo, hi) on `hidden` [batch, tokens, hidden_size].

    `position_ids` default to continuing after what `cache` holds; `attention_mask` is the 2-D padding mask
    [batch, past + tokens] (1 = real token). `skip_layers` exists only to build the skipped-layer cheat.
    """
    lo, hi = layers
    batch, tokens, _ = hidden.shape
    if position_ids is None:
        past = cache.get_seq_length(lo) if cache is not None else 0
        position_ids = torch.arange(past, past + tokens, device=hidden.device).unsqueeze(0).expand(batch, -1)
    cos_sin = model.model.rotary_emb(hidden, position_ids=position_ids)
    mask = create_causal_mask(
        config=model.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        past_key_values=cache,
        position_ids=position_ids,
        layer_idx=lo,
    )
    h = hidden
    for idx in range(lo, hi):
        if idx in skip_layers:
            continue
        h = model.model.layers[idx](
            h,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
            position_embeddings=cos_sin,
        )
    return h


def new_cache(model: LlamaForCausalLM) -> DynamicCache:
    return DynamicCache(config=model.config)

"""Mistral: Llama's layout with sliding-window attention (a window of `sliding_window` past tokens)."""

from __future__ import annotations

from transformers import MistralConfig, MistralForCausalLM
from transformers.models.mistral.modeling_mistral import (
    MistralDecoderLayer,
    MistralRMSNorm,
    MistralRotaryEmbedding,
)

from globai.models.families._base import TINY_INIT, RotaryDecoderFamily

FAMILY = RotaryDecoderFamily(
    name="mistral",
    model_types=("mistral",),
    architecture="MistralForCausalLM",
    config_class=MistralConfig,
    causal_lm_class=MistralForCausalLM,
    layer_class=MistralDecoderLayer,
    norm_class=MistralRMSNorm,
    rotary_class=MistralRotaryEmbedding,
    # A window shorter than the tests' sequences, so the sliding mask and cache are really exercised.
    tiny_extra=lambda hidden: {**TINY_INIT, "sliding_window": 8, "head_dim": hidden // max(1, hidden // 64)},
)
